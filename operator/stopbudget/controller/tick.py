"""One tick of one StopPolicy, as named steps (it reads like VPA's ``RunOnce``).

:func:`tick` is what each policy's loop (``controller/handlers.py``) runs every
``spec.control.interval``:

1. :func:`parse_spec` — an invalid spec becomes ``Ready=False, InvalidSpec``, nothing else;
2. :func:`take_arrivals` — what arrived in the mailbox: alerts from the webhook, a
   finished audit (the curve, ``lastAudit``);
3. :func:`find_sink` — the target and what its sink holds now (the world, not status,
   says what is applied), found once;
4. :func:`decide_and_patch` — unless paused: Prometheus, the law
   (:func:`stopbudget.core.law.decide`), and in ``Auto`` mode the patch, with
   ``status.originalValue`` recorded first;
5. :func:`plan_audits` — the scheduler (:mod:`stopbudget.core.audits.schedule`) and
   the audit it starts (without evidence, a cold start: at once, never deferred);
6. :func:`stopbudget.core.status.build` — the new status and conditions, from the old
   status and what happened; :func:`write_status` writes it; the metrics follow.

The tick is the only writer of a policy's status (:func:`write_status`); the
handler posts the Events it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from stopbudget import api
from stopbudget.clients.kube import KubeError, PatchConflict, TargetNotFound
from stopbudget.controller import audits, exports, refresh
from stopbudget.controller.mailbox import PolicyMailbox
from stopbudget.controller.operator import Operator
from stopbudget.core import curve, law, pooling, sinks
from stopbudget.core.audits import alerts, schedule
from stopbudget.core.status import (
    REBUILT,
    Event,
    Facts,
    Problem,
    StoredStatus,
    build,
    build_invalid,
    patch_body,
    read_status,
)

log = logging.getLogger(__name__)

#: Interval of a policy whose spec cannot be read (its own when that much is readable).
DEFAULT_INTERVAL = 30.0


class PolicyGone(Exception):  # noqa: N818 - the name says what happened
    """The StopPolicy was deleted while the tick ran: its loop ends."""


@dataclass(frozen=True)
class TickResult:
    """What the loop does after a tick: post these Events, wait ``interval`` seconds."""

    events: tuple[Event, ...]
    interval: float


async def tick(
    operator: Operator,
    mailbox: PolicyMailbox,
    meta: Mapping[str, Any],
    raw_spec: Mapping[str, Any],
    raw_status: Mapping[str, Any] | None,
) -> TickResult:
    """One tick for one policy; never raises for the world's failures (they become status),
    only :class:`PolicyGone`."""
    started = asyncio.get_running_loop().time()
    try:
        return await _run(operator, mailbox, meta, raw_spec, raw_status)
    finally:
        operator.metrics.reconcile_duration.observe(asyncio.get_running_loop().time() - started)


async def _run(
    operator: Operator,
    mailbox: PolicyMailbox,
    meta: Mapping[str, Any],
    raw_spec: Mapping[str, Any],
    raw_status: Mapping[str, Any] | None,
) -> TickResult:
    now = operator.clock()
    stored = stored_status(mailbox, raw_status)
    spec = parse_spec(raw_spec)
    if isinstance(spec, str):
        return await invalid_spec(operator, mailbox, stored, spec, raw_spec, meta, now)
    exports.export_spec(operator.metrics, mailbox.namespace, mailbox.name, spec)
    arrived = take_arrivals(operator, mailbox, spec, stored.status, now)
    found = await find_sink(operator, mailbox.namespace, spec)
    annotations = mailbox.requests_in(meta.get("annotations") or {})
    paused = paused_by(spec, annotations)
    acted = await decide_and_patch(operator, mailbox, spec, stored, arrived, found, paused, now)
    planned = plan_audits(operator, mailbox, spec, arrived, acted, meta, annotations, now)
    facts = facts_of(spec, meta, now, arrived, found, acted, planned, paused)
    new, events = build(stored.status, facts)
    await write_status(operator, mailbox, patch_body(new, stored))
    if planned.remove_annotation:
        await remove_audit_request(operator, mailbox, annotations)
    em_point = facts.curve.at(new.budget) if new.budget is not None else None
    exports.export_tick(operator.metrics, mailbox.namespace, mailbox.name, spec, new,
                        acted.decision, acted.observation, em_point)  # fmt: skip
    happened = (*arrived.events, *acted.events, *planned.events, *events)
    return TickResult(happened, spec.control.interval.total_seconds())


# ============================================================================ 1. the spec


def stored_status(mailbox: PolicyMailbox, raw_status: Mapping[str, Any] | None) -> StoredStatus:
    """The status as stored: this process's last write if any (newer than the watched
    object), read field by field."""
    stored = read_status(mailbox.status if mailbox.status is not None else raw_status)
    if stored.unreadable:
        log.warning(
            "%s/%s: status fields %s are not readable by this version: %s kept as stored",
            mailbox.namespace, mailbox.name, sorted(stored.unreadable),
            sorted(stored.unreadable - REBUILT) or "none",
        )  # fmt: skip
    return stored


def parse_spec(raw_spec: Mapping[str, Any]) -> api.StopPolicySpec | str:
    """The spec, or what is wrong with it (one line, every problem with its field)."""
    try:
        return api.StopPolicySpec.model_validate(dict(raw_spec))
    except ValidationError as exc:
        return "; ".join(f"spec.{p}: {m}" for p, m in api.problems_of(exc))


async def invalid_spec(
    operator: Operator,
    mailbox: PolicyMailbox,
    stored: StoredStatus,
    problems: str,
    raw_spec: Mapping[str, Any],
    meta: Mapping[str, Any],
    now: datetime,
) -> TickResult:
    """Ready=False, InvalidSpec, and nothing else; a fix of the spec wakes the loop."""
    new, events = build_invalid(stored.status, problems, now, meta.get("generation"))
    await write_status(operator, mailbox, patch_body(new, stored))
    return TickResult(tuple(events), interval_of(raw_spec))


def interval_of(raw_spec: Mapping[str, Any]) -> float:
    """``control.interval`` in seconds from a spec that may be invalid; 30 s if unreadable."""
    control = raw_spec.get("control")
    raw = control.get("interval", "30s") if isinstance(control, Mapping) else "30s"
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
    return spread * interval_of(raw_spec) / 2


def paused_by(spec: api.StopPolicySpec, annotations: Mapping[str, str]) -> str | None:
    """Why the policy is paused (the mode or the annotation), or None."""
    if spec.control.mode == api.Mode.PAUSED:
        return "spec.control.mode is Paused"
    if annotations.get(api.ANNOTATION_PAUSED, "").strip().lower() in {"true", "1", "yes"}:
        return f"annotation {api.ANNOTATION_PAUSED} is true"
    return None


def meet(
    mailbox: PolicyMailbox, raw_spec: Mapping[str, Any], raw_status: Mapping[str, Any] | None
) -> None:
    """Make the policy known to the webhook now, before its first tick (which an operator
    restart delays by up to half an interval): alerts that select it are not lost."""
    spec = parse_spec(raw_spec)
    if not isinstance(spec, str):
        records = read_status(raw_status).status.alerts
        mailbox.target = alerts.PolicyTarget.from_spec(
            mailbox.namespace, mailbox.name, spec, records
        )
    mailbox.met = True


# ============================================================================ 2. arrivals


@dataclass(frozen=True)
class Arrivals:
    """What the mailbox held: alerts merged into status, a finished audit applied."""

    alerts: tuple[api.AlertRecord, ...]
    firing: tuple[str, ...]
    audit_state: api.AuditScheduleState | None
    last_audit: api.LastAudit | None
    curve: curve.Curve
    events: tuple[Event, ...]
    #: The audits the curve pools (``status.auditHistory``).
    history: tuple[pooling.Run, ...] = ()


def take_arrivals(
    operator: Operator,
    mailbox: PolicyMailbox,
    spec: api.StopPolicySpec,
    old: api.StopPolicyStatus,
    now: datetime,
) -> Arrivals:
    events: list[Event] = []
    audit_state = old.audit_schedule
    records = list(old.alerts)
    for update in mailbox.take_alert_updates():
        records = list(update.alerts)
        if update.trigger_audit:
            audit_state = schedule.request(audit_state, api.AuditTrigger.ALERT)
        events.append(Event("Normal", "AlertReceived", update.reason))
    kept = tuple(alerts.expire(records, now))
    firing = alerts.firing(kept, now)
    mailbox.target = alerts.PolicyTarget.from_spec(mailbox.namespace, mailbox.name, spec, kept)
    names = tuple(r.alertname or r.fingerprint for r in kept if r.status == "firing")
    last_audit, points, source = old.last_audit, list(old.curve), old.curve_source
    history = tuple(pooling.from_status(r) for r in old.audit_history)
    confidence = spec.quality.confidence
    report = mailbox.finished_audit()
    if report is not None:
        done = audits.report_as_status(report)
        exports.export_audit(
            operator.metrics, mailbox.namespace, mailbox.name, report, done.measured, now
        )
        last_audit = done.last
        if done.measured is not None:
            points, source = done.measured.to_status(), api.CurveSource.AUDIT
        if done.run is not None:
            history, outcome = pooling.admit(history, done.run, confidence)
            last_audit = audits.with_pool_note(last_audit, history, outcome)
        events.append(done.event)
    if history:  # a status written before pooling has no history: its curve stands
        in_use = pooling.pooled(history, confidence)
    else:
        in_use = curve.in_use(points, source, spec.quality.prior, confidence)
    return Arrivals(
        kept, names if firing else (), audit_state, last_audit, in_use, tuple(events), history
    )


# ============================================================================ 3. the sink


async def find_sink(
    operator: Operator, namespace: str, spec: api.StopPolicySpec
) -> sinks.LocatedSink | Problem:
    """The sink and what it holds, or why it cannot be read."""
    kind, name = sinks.target_of(spec.budget, spec.target_ref)
    try:
        obj = await operator.kube.get_sink_object(kind, namespace, name)
        if kind != "Deployment":  # the Deployment it serves must exist too
            await operator.kube.get_deployment(namespace, spec.target_ref.name)
        return sinks.LocatedSink.found_in(spec.budget, spec.target_ref, obj)
    except TargetNotFound as exc:
        return Problem("TargetNotFound", str(exc))
    except sinks.SinkError as exc:
        return Problem("SinkError", str(exc))
    except KubeError as exc:
        return Problem("KubernetesError", str(exc))


# ============================================================================ 4. the law


@dataclass(frozen=True)
class Acted:
    """What the metrics, the law and the patch did (or that nothing acted)."""

    observation: law.Observation | None = None
    decision: law.Decision | None = None
    #: The Ready condition after the law and the patch; None: the policy did not act.
    ready: Problem | None = None
    #: Budget the sink holds after the tick.
    budget: int | None = None
    original: api.OriginalValue | None = None
    last_patch_time: datetime | None = None
    failures: int = 0
    history: tuple[api.HistoryEntry, ...] = ()
    events: tuple[Event, ...] = field(default=())


async def decide_and_patch(
    operator: Operator,
    mailbox: PolicyMailbox,
    spec: api.StopPolicySpec,
    stored: StoredStatus,
    arrived: Arrivals,
    found: sinks.LocatedSink | Problem,
    paused: str | None,
    now: datetime,
) -> Acted:
    old = stored.status
    held = Acted(
        budget=found.value.budget if isinstance(found, sinks.LocatedSink) else None,
        original=old.original_value,
        last_patch_time=old.last_patch_time,
        failures=old.failures,
        history=tuple(old.history),
    )
    if isinstance(found, Problem) or paused is not None:
        return held
    observation = await operator.reader.observe(mailbox.namespace, mailbox.name, spec)
    decision = law.decide(
        spec,
        arrived.curve,
        observation,
        law.State(
            budget=found.value.budget,
            last_patch_time=old.last_patch_time,
            failures=old.failures,
            history=tuple((h.time, h.budget) for h in old.history),
        ),
        now,
        raise_for_alert=raises_for_alert(spec, arrived),
    )
    operator.metrics.decisions.labels(mailbox.namespace, mailbox.name, decision.rule.value).inc()
    acted = Acted(
        observation=observation,
        decision=decision,
        ready=Problem("Reconciled", decision.reason),
        budget=found.value.budget,
        original=old.original_value,
        last_patch_time=old.last_patch_time,
        failures=decision.state.failures,
        history=tuple(api.HistoryEntry(time=t, budget=b) for t, b in decision.state.history),
    )
    if spec.control.mode != api.Mode.AUTO or not decision.changes:
        return acted
    return await apply(operator, mailbox, spec, stored, found, acted, decision)


def raises_for_alert(spec: api.StopPolicySpec, arrived: Arrivals) -> bool:
    """A firing alert asks for the EM-target budget at once (``raiseBudgetOnFiring``)."""
    return bool(
        spec.audit is not None and spec.audit.alerts.raise_budget_on_firing and arrived.firing
    )


async def apply(
    operator: Operator,
    mailbox: PolicyMailbox,
    spec: api.StopPolicySpec,
    stored: StoredStatus,
    found: sinks.LocatedSink,
    acted: Acted,
    decision: law.Decision,
) -> Acted:
    """Patch the sink to the decided budget, the original value recorded first."""
    patch = found.set_patch(decision.budget)
    if patch is None:  # the sink holds it already
        return replace(acted, budget=decision.budget)
    if "originalValue" in stored.unreadable:
        return replace(acted, ready=Problem(
            "StatusUnreadable",
            "status.originalValue cannot be read, so the sink is not patched (the value "
            "to restore on delete would be lost): fix status.originalValue or remove it",
        ))  # fmt: skip
    original = acted.original
    if original is None:  # recorded before the first write, so a crash cannot lose it
        original = found.value.original()
        await write_status(operator, mailbox, {"originalValue": original.to_json()})
    ns, name = mailbox.namespace, mailbox.name
    try:
        written = await operator.kube.apply(ns, patch)
    except PatchConflict as exc:
        operator.metrics.patch_errors.labels(ns, name, "conflict").inc()
        why = f"{exc}: the target changed meanwhile; next tick"
        return replace(acted, original=original, ready=Problem("Reconciled", why))
    except KubeError as exc:
        operator.metrics.patch_errors.labels(ns, name, "api").inc()
        failed = Event("Warning", "PatchFailed", str(exc))
        return replace(acted, original=original, ready=Problem("PatchFailed", str(exc)),
                        events=(failed,))  # fmt: skip
    operator.metrics.patches.labels(ns, name, spec.budget.sink.type.value).inc()
    changed = Event(
        "Normal",
        "BudgetChanged",
        f"{found.value.budget} -> {decision.budget}: {decision.reason} ({patch.summary})",
    )
    refreshed = await refresh.refresh_pods(operator, ns, spec, written)
    return replace(
        acted,
        budget=decision.budget,
        original=original,
        # The law owns when a patch counts as a restart (its stability step reads it back);
        # the tick only says the patch took effect.
        last_patch_time=decision.state.last_patch_time,
        events=(changed, *refreshed),
    )


# ============================================================================ 5. audits


@dataclass(frozen=True)
class Planned:
    """The scheduler's plan and what it changed."""

    plan: schedule.ScheduleDecision
    audit_state: api.AuditScheduleState | None
    last_audit: api.LastAudit | None
    remove_annotation: bool
    events: tuple[Event, ...]


def plan_audits(
    operator: Operator,
    mailbox: PolicyMailbox,
    spec: api.StopPolicySpec,
    arrived: Arrivals,
    acted: Acted,
    meta: Mapping[str, Any],
    annotations: Mapping[str, str],
    now: datetime,
) -> Planned:
    audit_state = arrived.audit_state
    if acted.decision is not None and acted.decision.request_audit and spec.audit is not None:
        audit_state = schedule.request(audit_state, api.AuditTrigger.QUALITY_GUARD)
    observation = acted.observation
    plan = schedule.decide(
        spec.audit,
        audit_state,
        now=now,
        created=_parse_time(meta.get("creationTimestamp")) or now,
        running=mailbox.auditing,
        pressure=observation.pressure if observation is not None and observation.ok else None,
        annotations=annotations,
        last_audit=arrived.last_audit,
        evidence=not arrived.curve.empty,
    )
    last_audit = arrived.last_audit
    if plan.interrupted and last_audit is not None:
        last_audit = last_audit.model_copy(
            update={
                "result": api.AuditResult.FAILED,
                "message": "interrupted by an operator restart",
            }
        )
    state = plan.state if spec.audit is not None else None
    if not (plan.action == schedule.Action.START and spec.audit is not None and plan.trigger):
        return Planned(plan, state, last_audit, False, ())
    audits.start(operator, mailbox, spec, plan.trigger, now)
    running = api.LastAudit(
        time=now, trigger=plan.trigger, result=api.AuditResult.RUNNING, message=plan.reason
    )
    started = Event("Normal", "AuditStarted", plan.reason)
    return Planned(plan, state, running, plan.remove_annotation, (started,))


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return None


# ============================================================================ 6. status


def facts_of(
    spec: api.StopPolicySpec,
    meta: Mapping[str, Any],
    now: datetime,
    arrived: Arrivals,
    found: sinks.LocatedSink | Problem,
    acted: Acted,
    planned: Planned,
    paused: str | None,
) -> Facts:
    return Facts(
        spec=spec,
        now=now,
        generation=meta.get("generation"),
        alerts=arrived.alerts,
        firing=arrived.firing,
        curve=arrived.curve,
        audit_history=tuple(pooling.to_status(r) for r in arrived.history),
        last_audit=planned.last_audit,
        audited=arrived.last_audit,
        paused=paused,
        target_problem=found if isinstance(found, Problem) else None,
        budget=acted.budget,
        observation=acted.observation,
        decision=acted.decision,
        acted=acted.ready,
        original=acted.original,
        last_patch_time=acted.last_patch_time,
        failures=acted.failures,
        history=acted.history,
        plan=planned.plan,
        audit_state=planned.audit_state,
    )


async def write_status(operator: Operator, mailbox: PolicyMailbox, body: Mapping[str, Any]) -> None:
    """Merge-patch the policy's status; the mailbox keeps what the API server stored (never
    the patch body). The one place that writes a policy's status."""
    try:
        stored = await operator.kube.patch_policy_status(mailbox.namespace, mailbox.name, body)
    except TargetNotFound as exc:
        raise PolicyGone(str(exc)) from exc
    except KubeError as exc:
        log.warning("%s/%s: status not written: %s", mailbox.namespace, mailbox.name, exc)
        return
    mailbox.status = dict(stored.get("status") or {})


async def remove_audit_request(
    operator: Operator, mailbox: PolicyMailbox, annotations: Mapping[str, str]
) -> None:
    """The audit it asked for has started: remove ``stopbudget.io/audit-requested``."""
    try:
        await operator.kube.remove_policy_annotation(mailbox.namespace, mailbox.name)
    except TargetNotFound as exc:
        raise PolicyGone(str(exc)) from exc
    except KubeError as exc:
        log.warning("%s/%s: audit request not removed: %s", mailbox.namespace, mailbox.name, exc)
        return
    mailbox.consumed_request = annotations.get(api.ANNOTATION_AUDIT_REQUESTED)
