"""One tick of one StopPolicy: read the world, run the law, write the target, rebuild status.

The kopf layer (``handlers.py``) calls :func:`tick` from each policy's daemon
and writes what it returns; everything in between lives here, so the handlers
stay thin and the control law (``control.py``) never sees Kubernetes.

Per tick:

1. Parse the spec (an invalid one -> ``Ready=False, InvalidSpec``, nothing else).
2. Merge what arrived in memory since the last tick: Alertmanager alerts
   (``status.alerts``, the AlertFiring condition) and a finished audit (the
   curve, ``lastAudit``).  The tick is the only writer of status, so nothing a
   webhook or an audit task learns can be overwritten by a tick in flight.
3. Read the target and the sink's current value (the world, not status, says
   what is applied).
4. Unless paused: read Prometheus, run :func:`stopbudget.core.law.decide`, and in
   ``Auto`` mode patch the sink (recording ``status.originalValue`` first).
5. Schedule audits (:mod:`stopbudget.core.audits.schedule`) and start one in the
   background when due.
6. Rebuild status and conditions, update the operator's metrics, and return
   the Events to post.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ValidationError

from stopbudget import api
from stopbudget.clients import audit_runner, webhook
from stopbudget.clients.kube import Kube, KubeError, PatchConflict, TargetNotFound
from stopbudget.clients.metrics import OperatorMetrics
from stopbudget.clients.prometheus import PrometheusReader
from stopbudget.clients.settings import Settings
from stopbudget.core import conditions, curve, law, sinks
from stopbudget.core.audits import dataset, schedule

log = logging.getLogger(__name__)

C = api.ConditionType
DEFAULT_INTERVAL = 30.0
#: Seconds a stopping operator waits for the ticks in flight before closing its clients.
CLOSE_WAIT = 10.0


# ============================================================================ process state


@dataclass(frozen=True)
class AuditReport:
    """A finished audit, waiting for the policy's next tick to write it."""

    trigger: api.AuditTrigger
    started: datetime
    spec: api.StopPolicySpec
    outcome: audit_runner.AuditOutcome | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is not None and self.outcome.ok

    @property
    def message(self) -> str:
        if self.error is not None:
            return self.error
        assert self.outcome is not None
        return self.outcome.message


@dataclass
class Runtime:
    """What this process knows of one policy between ticks (lost on restart, by design)."""

    namespace: str
    name: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: The status this process wrote last; newer than the watched object's.
    status: dict[str, Any] | None = None
    audit_task: asyncio.Task[AuditReport] | None = None
    alert_updates: list[webhook.PolicyAlerts] = field(default_factory=list)
    #: The policy as the Alertmanager webhook sees it (refreshed every tick).
    target: webhook.PolicyTarget | None = None
    #: This process has met the policy (its daemon started): see Services.webhook_ready.
    met: bool = False
    #: The value of the audit-request annotation this process removed when its audit
    #: started: until a tick sees the annotation gone, that value is not a new request
    #: (the watched object can lag behind our own removal by a tick).
    consumed_request: str | None = None

    def requests_in(self, annotations: Mapping[str, str]) -> Mapping[str, str]:
        """``annotations`` without an audit request this process has already consumed."""
        value = annotations.get(api.ANNOTATION_AUDIT_REQUESTED)
        if value is None:
            self.consumed_request = None
            return annotations
        if value == self.consumed_request:
            return {k: v for k, v in annotations.items() if k != api.ANNOTATION_AUDIT_REQUESTED}
        return annotations

    @property
    def auditing(self) -> bool:
        return self.audit_task is not None and not self.audit_task.done()

    async def sleep(
        self, seconds: float, stopping: Callable[[], Awaitable[object]] | None = None
    ) -> None:
        """Wait ``seconds``, or until woken (spec change, alert, finished audit) or stopping."""
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self.wake.wait())]
        if stopping is not None:
            waits.append(asyncio.ensure_future(stopping()))
        try:
            await asyncio.wait(waits, timeout=max(0.0, seconds), return_when="FIRST_COMPLETED")
        finally:
            for waiting in waits:
                waiting.cancel()
            self.wake.clear()

    async def stop_audit(self) -> None:
        task, self.audit_task = self.audit_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Services:
    """What one operator process shares between its policies."""

    settings: Settings
    kube: Kube
    reader: PrometheusReader
    metrics: OperatorMetrics
    clock: Callable[[], datetime] = _now
    runtimes: dict[tuple[str, str], Runtime] = field(default_factory=dict)
    audit_slots: asyncio.Semaphore | None = None
    #: The policies listed at start-up (None: not listed): until each is met, the webhook
    #: answers 503 rather than accept an alert it could match to no policy and lose.
    expected: set[tuple[str, str]] | None = None
    #: Loop time after which the webhook accepts alerts anyway (a policy deleted before
    #: its daemon started, or a failed listing, must not close it for ever).
    settle_deadline: float = 0.0
    #: Set by the operator's cleanup: no tick starts any more (the clients are closing).
    closing: bool = False
    _in_flight: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    @contextlib.asynccontextmanager
    async def ticking(self) -> AsyncIterator[bool]:
        """Around one tick and its writes: yields False once the operator is closing, so
        that no tick uses a client that :meth:`close` is shutting down."""
        if self.closing:
            yield False
            return
        self._in_flight += 1
        self._idle.clear()
        try:
            yield True
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def close(self) -> None:
        """Stop starting ticks, let the ones in flight finish (up to CLOSE_WAIT seconds),
        stop the audits, then close the clients."""
        self.closing = True
        if self._in_flight:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_WAIT):
                    await self._idle.wait()
        for key in list(self.runtimes):
            await self.runtimes.pop(key).stop_audit()
        await self.kube.close()
        self.reader.close()

    def runtime(self, namespace: str, name: str) -> Runtime:
        key = (namespace, name)
        if key not in self.runtimes:
            self.runtimes[key] = Runtime(namespace, name)
        return self.runtimes[key]

    def webhook_ready(self) -> bool:
        """Whether every policy listed at start-up has been met (or the wait is over)."""
        if asyncio.get_running_loop().time() >= self.settle_deadline:
            return True
        if self.expected is None:
            return False
        return all(key in self.runtimes and self.runtimes[key].met for key in self.expected)

    async def forget(self, namespace: str, name: str) -> None:
        """A policy is gone: stop its audit, drop its series and its in-memory state."""
        if self.expected is not None:
            self.expected.discard((namespace, name))
        runtime = self.runtimes.pop((namespace, name), None)
        if runtime is not None:
            await runtime.stop_audit()
        self.metrics.forget(namespace, name)

    def targets(self) -> list[webhook.PolicyTarget]:
        """The policies as the Alertmanager webhook matches them."""
        return [r.target for r in self.runtimes.values() if r.target is not None]

    async def on_alerts(self, update: webhook.PolicyAlerts) -> None:
        """The webhook's callback: hand the update to the policy's next tick, now."""
        runtime = self.runtimes.get(update.key)
        if runtime is None:  # deleted meanwhile
            return
        runtime.alert_updates.append(update)
        runtime.wake.set()


# ============================================================================ a tick


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the policy."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class TickResult:
    """What the handler writes after a tick."""

    #: The whole status, as a merge patch (None fields delete, maps list removed keys).
    status: dict[str, Any]
    events: tuple[Event, ...]
    #: Seconds until the next tick.
    interval: float
    #: Remove the annotation ``stopbudget.io/audit-requested`` (an audit started).
    remove_audit_annotation: bool = False


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return None


@dataclass(frozen=True)
class StoredStatus:
    """The status as stored, read field by field."""

    status: api.StopPolicyStatus
    #: Top-level fields the model could not read: dropped here, and never written back
    #: (so a field this version cannot read is kept as stored, not erased).
    unreadable: frozenset[str] = frozenset()


def read_status(raw: Mapping[str, Any] | None) -> StoredStatus:
    """The stored status; a field the model cannot read costs that field, never the others."""
    data = dict(raw or {})
    unreadable: set[str] = set()
    while True:
        try:
            status = api.StopPolicyStatus.model_validate(data)
        except ValidationError as exc:
            bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]} & data.keys()
            if not bad:  # not attributable to a field (the status is not an object)
                log.warning("status is not readable, starting from a fresh one: %s", exc)
                return StoredStatus(api.StopPolicyStatus(), frozenset(data))
            log.warning("status fields %s are not readable, kept as stored: %s", sorted(bad), exc)
            unreadable |= bad
            for key in bad:
                del data[key]
        else:
            return StoredStatus(status, frozenset(unreadable))


def _raw_interval(raw_spec: Mapping[str, Any]) -> float:
    """``control.interval`` in seconds from a spec that may be invalid; 30 s if unreadable."""
    control_ = raw_spec.get("control")
    raw = control_.get("interval", "30s") if isinstance(control_, Mapping) else "30s"
    try:
        seconds = api.parse_duration(str(raw)).total_seconds()
    except ValueError:
        return DEFAULT_INTERVAL
    return seconds if 1.0 <= seconds <= 3600.0 else DEFAULT_INTERVAL


def first_delay(namespace: str, name: str, raw_spec: Mapping[str, Any]) -> float:
    """A stable offset in [0, interval/2) for a policy's first tick, from its name.

    So that hundreds of policies started together (an operator restart) do not
    tick in step for ever; stable, so a restart does not reshuffle them.
    """
    spread = zlib.crc32(f"{namespace}/{name}".encode()) / 2**32
    return spread * _raw_interval(raw_spec) / 2


def meet(
    runtime: Runtime, raw_spec: Mapping[str, Any], raw_status: Mapping[str, Any] | None
) -> None:
    """Make the policy known to the webhook now, before its first tick (which an operator
    restart delays by up to half an interval): alerts that select it are not lost."""
    with contextlib.suppress(ValidationError):
        spec = api.StopPolicySpec.model_validate(dict(raw_spec))
        records = read_status(raw_status).status.alerts
        runtime.target = webhook.PolicyTarget.from_spec(
            runtime.namespace, runtime.name, spec, records
        )
    runtime.met = True


def paused_by_annotation(annotations: Mapping[str, str]) -> bool:
    return annotations.get(api.ANNOTATION_PAUSED, "").strip().lower() in {"true", "1", "yes"}


async def tick(
    services: Services,
    runtime: Runtime,
    meta: Mapping[str, Any],
    raw_spec: Mapping[str, Any],
    raw_status: Mapping[str, Any] | None,
) -> TickResult:
    """One tick for one policy; never raises for the world's failures (they become status)."""
    started = asyncio.get_running_loop().time()
    try:
        return await _tick(services, runtime, meta, raw_spec, raw_status)
    finally:
        services.metrics.reconcile_duration.observe(asyncio.get_running_loop().time() - started)


async def _tick(
    services: Services,
    runtime: Runtime,
    meta: Mapping[str, Any],
    raw_spec: Mapping[str, Any],
    raw_status: Mapping[str, Any] | None,
) -> TickResult:
    now = services.clock()
    ns, name = runtime.namespace, runtime.name
    generation = meta.get("generation")
    annotations = runtime.requests_in(meta.get("annotations") or {})
    stored = read_status(runtime.status if runtime.status is not None else raw_status)
    old = status = stored.status
    events: list[Event] = []
    conds = list(old.conditions)

    def cond(type_: api.ConditionType, ok: bool | None, reason: str, message: str) -> None:
        nonlocal conds
        conds = conditions.set_condition(conds, type_, ok, reason, message, now, generation)

    # 1. The spec.
    try:
        spec = api.StopPolicySpec.model_validate(dict(raw_spec))
    except ValidationError as exc:
        problems = "; ".join(f"spec.{p}: {m}" for p, m in api.problems_of(exc))
        was = conditions.find(conds, C.READY)
        if was is None or was.reason != "InvalidSpec":  # once, not every tick
            events.append(Event("Warning", "InvalidSpec", problems))
        cond(C.READY, False, "InvalidSpec", problems)
        status = status.model_copy(
            update={
                "conditions": conds,
                "observed_generation": generation,
                "last_evaluation_time": now,
            }
        )
        # A fix of the spec wakes the loop at once; meanwhile keep the policy's pace.
        return TickResult(_dump(status, stored), tuple(events), _raw_interval(raw_spec))
    interval = spec.control.interval.total_seconds()
    _export_spec(services.metrics, ns, name, spec)

    # 2. What arrived in memory: alerts from the webhook, a finished audit.
    audit_state = old.audit_schedule
    alert_records = list(old.alerts)
    for update in runtime.alert_updates:
        alert_records = list(update.alerts)
        if update.trigger_audit:
            audit_state = schedule.request(audit_state, api.AuditTrigger.ALERT)
        events.append(Event("Normal", "AlertReceived", update.reason))
    runtime.alert_updates.clear()
    alert_records = list(webhook.expire(alert_records, now))
    firing = webhook.firing(alert_records, now)
    runtime.target = webhook.PolicyTarget.from_spec(ns, name, spec, alert_records)
    cond(
        C.ALERT_FIRING,
        firing,
        "AlertFiring" if firing else "NoAlert",
        ", ".join(r.alertname or r.fingerprint for r in alert_records if r.status == "firing")
        if firing
        else "no firing alert selects this policy",
    )

    last_audit = old.last_audit
    curve_points, curve_source = list(old.curve), old.curve_source
    if runtime.audit_task is not None and runtime.audit_task.done():
        report = _report_of(runtime.audit_task)
        runtime.audit_task = None
        last_audit, applied, note = _apply_audit(services.metrics, ns, name, report, now)
        if applied is not None:
            curve_points, curve_source = applied.to_status(), api.CurveSource.AUDIT
        events.append(note)
    if last_audit is not None and last_audit.result == api.AuditResult.SUCCEEDED:
        cond(C.AUDITED, True, "AuditSucceeded", last_audit.message)
    elif last_audit is not None and last_audit.result == api.AuditResult.FAILED:
        cond(C.AUDITED, False, "AuditFailed", last_audit.message)
    elif spec.audit is not None:
        cond(C.AUDITED, False, "NotAuditedYet", "no audit has finished yet")
    else:
        conds = conditions.remove_condition(conds, C.AUDITED)

    the_curve = curve.in_use(
        curve_points, curve_source, spec.quality.prior, spec.quality.confidence
    )

    # 3. The target and what its sink holds now.
    current: sinks.SinkValue | None = None
    target_obj: dict[str, Any] | None = None
    kind, obj_name = sinks.target_of(spec.budget, spec.target_ref)
    target_problem: tuple[str, str] | None = None
    try:
        target_obj = await (
            services.kube.get_config_map(ns, obj_name)
            if kind == "ConfigMap"
            else services.kube.get_deployment(ns, obj_name)
        )
        if kind == "ConfigMap":
            await services.kube.get_deployment(ns, spec.target_ref.name)  # it must exist too
        current = _read(spec, target_obj, kind)
    except TargetNotFound as exc:
        target_problem = ("TargetNotFound", str(exc))
    except sinks.SinkError as exc:
        target_problem = ("SinkError", str(exc))
    except KubeError as exc:
        target_problem = ("KubernetesError", str(exc))

    paused = spec.control.mode == api.Mode.PAUSED or paused_by_annotation(annotations)
    cond(
        C.PAUSED,
        paused,
        "Paused" if paused else "Active",
        (
            "spec.control.mode is Paused"
            if spec.control.mode == api.Mode.PAUSED
            else f"annotation {api.ANNOTATION_PAUSED} is true"
        )
        if paused
        else f"mode {spec.control.mode.value}",
    )

    applied_budget = current.budget if current is not None else None
    observation: law.Observation | None = None
    decision: law.Decision | None = None
    original = old.original_value
    last_patch_time = old.last_patch_time
    failures, history = old.failures, list(old.history)

    if target_problem is not None:
        reason, message = target_problem
        if not (c := conditions.find(conds, C.READY)) or c.reason != reason:
            events.append(Event("Warning", reason, message))
        cond(C.READY, False, reason, message)
    elif not paused:
        assert current is not None
        assert target_obj is not None
        # 4. Metrics, the law, the patch.
        observation = await services.reader.observe(ns, name, spec)
        state = law.State(
            budget=current.budget,
            last_patch_time=old.last_patch_time,
            failures=old.failures,
            history=tuple((h.time, h.budget) for h in old.history),
        )
        raise_for_alert = bool(
            spec.audit is not None and spec.audit.alerts.raise_budget_on_firing and firing
        )
        decision = law.decide(
            spec, the_curve, observation, state, now, raise_for_alert=raise_for_alert
        )
        failures = decision.state.failures
        history = [api.HistoryEntry(time=t, budget=b) for t, b in decision.state.history]
        services.metrics.decisions.labels(ns, name, decision.rule.value).inc()
        if decision.request_audit and spec.audit is not None:
            audit_state = schedule.request(audit_state, api.AuditTrigger.ALERT)
        ready = ("Reconciled", decision.reason)
        if spec.control.mode == api.Mode.AUTO and decision.changes:
            patch = sinks.set_patch(
                spec.budget,
                spec.target_ref,
                decision.budget,
                deployment=target_obj if kind == "Deployment" else None,
                config_map=target_obj if kind == "ConfigMap" else None,
            )
            if patch is not None and "originalValue" in stored.unreadable:
                ready = (
                    "StatusUnreadable",
                    "status.originalValue cannot be read, so the sink is not patched (the value "
                    "to restore on delete would be lost): fix status.originalValue or remove it",
                )
            elif patch is not None:
                if original is None:
                    # Recorded before the first write, so a crash cannot lose it.
                    original = current.original()
                    await services.kube.patch_policy_status(
                        ns, name, {"originalValue": original.to_json()}
                    )
                try:
                    await services.kube.apply(ns, patch)
                except PatchConflict as exc:
                    services.metrics.patch_errors.labels(ns, name, "conflict").inc()
                    ready = ("Reconciled", f"{exc}: the target changed meanwhile; next tick")
                except KubeError as exc:
                    services.metrics.patch_errors.labels(ns, name, "api").inc()
                    events.append(Event("Warning", "PatchFailed", str(exc)))
                    ready = ("PatchFailed", str(exc))
                else:
                    applied_budget = decision.budget
                    if patch.restarts:
                        last_patch_time = now
                    services.metrics.patches.labels(ns, name, spec.budget.sink.type.value).inc()
                    events.append(
                        Event(
                            "Normal",
                            "BudgetChanged",
                            f"{current.budget} -> {decision.budget}: {decision.reason} "
                            f"({patch.summary})",
                        )
                    )
            else:
                applied_budget = decision.budget
        cond(C.READY, ready[0] == "Reconciled", ready[0], ready[1])
        if decision.fallback and not old.failures >= spec.control.fallback.failure_threshold:
            events.append(Event("Warning", "FallbackActive", decision.reason))
    else:
        cond(C.READY, True, "Paused", "paused: the budget is not changed")

    # Conditions about metrics and the curve.
    if observation is not None:
        if observation.ok:
            cond(
                C.METRICS_AVAILABLE,
                True,
                "MetricsAvailable",
                f"{len(observation.signals)} signal(s) read"
                + (", live EM read" if spec.quality.query else ""),
            )
        else:
            cond(C.METRICS_AVAILABLE, False, "QueryFailed", "; ".join(observation.failures))
    if decision is not None:
        cond(
            C.FALLBACK,
            decision.fallback,
            f"Fallback{spec.control.fallback.behavior.value.title()}"
            if decision.fallback
            else "MetricsOK",
            decision.reason if decision.fallback else "metrics are available",
        )
        cond(
            C.TARGET_UNREACHABLE,
            decision.unreachable is not None,
            "TargetUnreachable" if decision.unreachable else "TargetReachable",
            decision.unreachable
            or (
                "no curve yet: keeping budget.initial"
                if the_curve.empty
                else f"budget {decision.target} meets emTarget on the "
                f"{the_curve.source.value} curve"
            ),
        )
    degraded = [
        c.message
        for c in conds
        if c.status == api.ConditionStatus.TRUE
        and c.type in {C.FALLBACK.value, C.TARGET_UNREACHABLE.value}
    ]
    if last_audit is not None and last_audit.result == api.AuditResult.FAILED:
        degraded.append(f"last audit failed: {last_audit.message}")
    cond(C.DEGRADED, bool(degraded), "Degraded" if degraded else "Healthy", "; ".join(degraded))

    # 5. Audits.
    remove_annotation = False
    pressure = observation.pressure if observation is not None and observation.ok else None
    created = _parse_time(meta.get("creationTimestamp")) or now
    plan = schedule.decide(
        spec.audit,
        audit_state,
        now=now,
        created=created,
        running=runtime.auditing,
        pressure=pressure,
        annotations=annotations,
        last_audit=last_audit,
    )
    audit_state = plan.state if spec.audit is not None else None
    if plan.interrupted and last_audit is not None:
        last_audit = last_audit.model_copy(
            update={
                "result": api.AuditResult.FAILED,
                "message": "interrupted by an operator restart",
            }
        )
    if plan.action == schedule.Action.START and spec.audit is not None and plan.trigger:
        remove_annotation = plan.remove_annotation
        last_audit = api.LastAudit(
            time=now, trigger=plan.trigger, result=api.AuditResult.RUNNING, message=plan.reason
        )
        runtime.audit_task = asyncio.create_task(
            run_audit(services, runtime, spec, plan.trigger, now),
            name=f"audit {ns}/{name}",
        )
        events.append(Event("Normal", "AuditStarted", plan.reason))
    elif plan.action == schedule.Action.DEFER:
        if old.audit_schedule is None or old.audit_schedule.deferred_since is None:
            events.append(Event("Normal", "AuditDeferred", plan.reason))
        if (c := conditions.find(conds, C.AUDITED)) is not None:
            cond(C.AUDITED, c.status == api.ConditionStatus.TRUE, "AuditDeferred", plan.reason)

    # 6. Status and metrics.
    em_point = the_curve.at(applied_budget) if applied_budget is not None else None
    observed_em = observation.em if observation is not None else None
    new = api.StopPolicyStatus(
        budget=applied_budget,
        recommendation=(
            api.Recommendation(
                target=decision.target,
                floor=decision.floor,
                budget=decision.recommended,
                reason=decision.reason[:1024],
            )
            if decision is not None
            else old.recommendation
        ),
        pressure=round(observation.pressure, 4) if observation is not None else None,
        signals=(
            {s.name: round(s.value, 6) for s in observation.signals if s.value is not None}
            if observation is not None
            else {}
        ),
        observed_em=(
            observed_em
            if observed_em is not None
            else (round(em_point.em, 4) if em_point is not None else None)
        ),
        truncation_ratio=observation.truncation if observation is not None else None,
        curve=the_curve.to_status(),
        curve_source=the_curve.source,
        last_audit=last_audit,
        next_audit_time=plan.next_audit_time,
        last_patch_time=last_patch_time,
        last_evaluation_time=now,
        original_value=original,
        failures=failures,
        history=history,
        audit_schedule=audit_state,
        alerts=alert_records,
        conditions=conds,
        observed_generation=generation,
    )
    _export_tick(services.metrics, ns, name, spec, new, decision, observation, em_point)
    return TickResult(_dump(new, stored), tuple(events), interval, remove_annotation)


def _read(spec: api.StopPolicySpec, obj: Mapping[str, Any], kind: str) -> sinks.SinkValue:
    if kind == "ConfigMap":
        return sinks.read(spec.budget, spec.target_ref, config_map=obj)
    return sinks.read(spec.budget, spec.target_ref, deployment=obj)


#: Status fields rebuilt from the spec and the audits, so one that cannot be read is
#: replaced rather than kept as stored.  A curve stored before ``n`` became ``samples``
#: comes back from the API server without its counts (it prunes ``n``); kept, it would
#: make the server refuse every status write (it checks the whole status), the
#: InvalidSpec condition that says what to fix included.  The prior stands in for it
#: until the next audit.
REBUILT = frozenset({"curve"})


def _dump(new: api.StopPolicyStatus, stored: StoredStatus) -> dict[str, Any]:
    """The status as a merge patch: absent fields deleted, stale map keys removed, and
    fields that could not be read left as stored (unless :data:`REBUILT`)."""
    body = new.model_dump(mode="json", by_alias=True, exclude_none=False)
    gone = set(stored.status.signals) - set(new.signals)
    body["signals"] = {**dict.fromkeys(gone), **body["signals"]}
    kept = stored.unreadable - REBUILT
    return {k: v for k, v in body.items() if k not in kept}


# ============================================================================ audits


def _report_of(task: asyncio.Task[AuditReport]) -> AuditReport:
    if task.cancelled():
        raise RuntimeError("a cancelled audit task has no report")  # pragma: no cover
    exc = task.exception()
    if exc is not None:  # run_audit catches what it expects; this is a bug, not a failure
        log.error("audit task crashed", exc_info=exc)
        raise exc
    return task.result()


async def run_audit(
    services: Services,
    runtime: Runtime,
    spec: api.StopPolicySpec,
    trigger: api.AuditTrigger,
    started: datetime,
) -> AuditReport:
    """The background task of one audit: golden set from its ConfigMap, then the audit_runner."""
    audit = spec.audit
    assert audit is not None
    try:
        slots = services.audit_slots
        async with slots if slots is not None else contextlib.nullcontext():
            ref = audit.dataset
            try:
                text = await services.kube.get_config_map_key(
                    runtime.namespace, ref.config_map_ref.name, ref.key
                )
                questions = dataset.sample(
                    dataset.parse_golden(text), audit.sample_size, audit.seed
                )
            except (KubeError, dataset.DatasetError) as exc:
                message = f"golden set {ref.config_map_ref.name}/{ref.key}: {exc}"
                return AuditReport(trigger, started, spec, None, message)
            plan = audit_runner.plan_from_spec(audit, spec.quality, questions)
            outcome = await audit_runner.run_audit(plan)
            return AuditReport(trigger, started, spec, outcome)
    finally:
        runtime.wake.set()


def _apply_audit(
    metrics: OperatorMetrics, ns: str, name: str, report: AuditReport, now: datetime
) -> tuple[api.LastAudit, curve.Curve | None, Event]:
    result = api.AuditResult.SUCCEEDED if report.ok else api.AuditResult.FAILED
    metrics.audit_runs.labels(ns, name, report.trigger.value, result.value).inc()
    measured: curve.Curve | None = None
    outcome = report.outcome
    if outcome is not None:
        metrics.audit_duration.labels(ns, name).observe(outcome.duration)
        metrics.audit_tokens.labels(ns, name).inc(outcome.tokens)
        metrics.audit_requests.labels(ns, name).inc(outcome.requests)
    if report.ok and outcome is not None:
        measured = curve.Curve.of(
            outcome.points(), report.spec.quality.confidence, api.CurveSource.AUDIT
        )
        for point in measured.points:
            labels = (ns, name, str(point.budget))
            metrics.audit_em.labels(*labels).set(point.em)
            metrics.audit_em_lower.labels(*labels).set(measured.lower(point))
            metrics.audit_truncated.labels(*labels).set(
                point.truncated / point.samples if point.samples else 0.0
            )
        metrics.audit_last_success.labels(ns, name).set(now.timestamp())
        summary = ", ".join(
            f"{p.budget}: {p.em:.2f} ({p.samples} samples)" for p in measured.points
        )
        message = f"{report.trigger.value} audit: EM by budget {summary}"
        if outcome.messages:
            message += f"; {outcome.message}"
    else:
        message = f"{report.trigger.value} audit failed: {report.message}"
    last = api.LastAudit(
        time=report.started, trigger=report.trigger, result=result, message=message[:4096]
    )
    event = Event("Normal" if report.ok else "Warning", f"Audit{result.value}", message)
    return last, measured, event


# ============================================================================ metrics


def _export_spec(metrics: OperatorMetrics, ns: str, name: str, spec: api.StopPolicySpec) -> None:
    metrics.min_budget.labels(ns, name).set(spec.budget.min)
    metrics.max_budget.labels(ns, name).set(spec.budget.max)
    metrics.em_target.labels(ns, name).set(spec.quality.em_target)
    metrics.em_floor.labels(ns, name).set(spec.quality.em_floor)
    # Counters an alert takes increase() of must exist at 0 before their first increment.
    if spec.audit is not None:
        for trigger in api.AuditTrigger:
            for result in (api.AuditResult.SUCCEEDED, api.AuditResult.FAILED):
                metrics.audit_runs.labels(ns, name, trigger.value, result.value)
    for reason in ("conflict", "api"):
        metrics.patch_errors.labels(ns, name, reason)


def _export_tick(
    metrics: OperatorMetrics,
    ns: str,
    name: str,
    spec: api.StopPolicySpec,
    status: api.StopPolicyStatus,
    decision: law.Decision | None,
    observation: law.Observation | None,
    em_point: curve.Point | None,
) -> None:
    def gauge(metric: Any, value: float | None, *labels: str) -> None:
        if value is None:  # no value: no series (not a stale one, not a 0)
            with contextlib.suppress(KeyError):
                metric.remove(ns, name, *labels)
        else:
            metric.labels(ns, name, *labels).set(value)

    gauge(metrics.budget, status.budget)
    if status.budget is not None:
        gauge(metrics.tokens_saved, 1 - status.budget / spec.budget.max)
    gauge(metrics.pressure, status.pressure)
    gauge(metrics.expected_em, em_point.em if em_point is not None else None)
    gauge(metrics.observed_em, observation.em if observation is not None else None)
    gauge(metrics.truncation, status.truncation_ratio)
    if decision is not None:
        gauge(metrics.recommended, decision.recommended)
        gauge(metrics.target_budget, decision.target)
        gauge(metrics.floor_budget, decision.floor)
        gauge(metrics.fallback_active, 1.0 if decision.fallback else 0.0)
    if observation is not None:
        for reading in observation.signals:
            gauge(metrics.signal, reading.value, reading.name)


# ============================================================================ delete


async def restore(
    services: Services,
    namespace: str,
    raw_spec: Mapping[str, Any],
    raw_status: Mapping[str, Any] | None,
) -> str:
    """Put back what the sink held before the first patch; a one-line account of it."""
    status = read_status(raw_status).status
    if status.original_value is None:
        return "nothing to restore: the target was never patched"
    try:
        spec = api.StopPolicySpec.model_validate(dict(raw_spec))
    except ValidationError:
        return "nothing restored: the spec is invalid, the sink cannot be located"
    kind, obj_name = sinks.target_of(spec.budget, spec.target_ref)
    try:
        obj = await (
            services.kube.get_config_map(namespace, obj_name)
            if kind == "ConfigMap"
            else services.kube.get_deployment(namespace, obj_name)
        )
    except TargetNotFound:
        return f"nothing to restore: {kind} {namespace}/{obj_name} is gone"
    patch = sinks.restore_patch(
        spec.budget,
        spec.target_ref,
        status.original_value,
        deployment=obj if kind == "Deployment" else None,
        config_map=obj if kind == "ConfigMap" else None,
    )
    if patch is None:
        return "nothing to restore: the sink already holds its original value"
    await services.kube.apply(namespace, patch)
    return f"restored {patch.summary}"
