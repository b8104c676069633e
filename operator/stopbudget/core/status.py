"""A policy's status: read as stored, built anew from what a tick found and did. PURE.

The tick (``controller/tick.py``) gathers the facts of one evaluation into a
:class:`Facts` record: the spec, the time, what the sink holds, the metrics read,
the law's decision, what the patch did, the audit plan.  :func:`build` turns the
old status and those facts into the new status and the Events a change deserves,
with no I/O and no clock, so it is tested as a table
(``tests/unit/core/test_status.py``).

Reading is as careful as writing: :func:`read_status` reads the stored status
field by field, so a field this version cannot read costs that field only, and
:func:`patch_body` never erases such a field (except the ones in :data:`REBUILT`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ValidationError

from stopbudget import api
from stopbudget.api import AuditResult, ConditionStatus, ConditionType
from stopbudget.core import conditions
from stopbudget.core.audits import schedule
from stopbudget.core.curve import Curve
from stopbudget.core.law import Decision, Observation

#: Status fields rebuilt from the spec and the audits, so one that cannot be read is
#: replaced rather than kept as stored.  A curve stored before ``n`` became ``samples``
#: comes back from the API server without its counts (it prunes ``n``); kept, it would
#: make the server refuse every status write (it checks the whole status), the
#: InvalidSpec condition that says what to fix included.  The prior stands in for it
#: until the next audit.
REBUILT = frozenset({"curve"})


# ============================================================================ reading


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
                return StoredStatus(api.StopPolicyStatus(), frozenset(data))
            unreadable |= bad
            for key in bad:
                del data[key]
        else:
            return StoredStatus(status, frozenset(unreadable))


def patch_body(new: api.StopPolicyStatus, stored: StoredStatus) -> dict[str, Any]:
    """The status as a merge patch: absent fields deleted, stale map keys removed, and
    fields that could not be read left as stored (unless :data:`REBUILT`)."""
    body = new.model_dump(mode="json", by_alias=True, exclude_none=False)
    gone = set(stored.status.signals) - set(new.signals)
    body["signals"] = {**dict.fromkeys(gone), **body["signals"]}
    kept = stored.unreadable - REBUILT
    return {k: v for k, v in body.items() if k not in kept}


# ============================================================================ facts


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the policy."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Problem:
    """Why the policy cannot act: a Ready reason and a message that says what to do."""

    reason: str
    message: str


@dataclass(frozen=True)
class Facts:
    """What one tick found and did: everything the new status is built from."""

    spec: api.StopPolicySpec
    now: datetime
    generation: int | None
    alerts: tuple[api.AlertRecord, ...]
    #: Names of the firing alerts that select the policy.
    firing: tuple[str, ...]
    curve: Curve
    #: The most recent audit, as status shows it (one this tick started is Running).
    last_audit: api.LastAudit | None
    #: The most recent audit before this tick's plan: what the Audited and Degraded
    #: conditions report (an audit started now does not change them yet).
    audited: api.LastAudit | None
    #: Why the policy is paused; None when it is active.
    paused: str | None
    #: The target or its sink could not be read.
    target_problem: Problem | None
    #: Budget the sink holds after this tick (None: the sink is absent or unreadable).
    budget: int | None
    observation: Observation | None
    decision: Decision | None
    #: The Ready condition after the law and the patch (reason, message); None: not acting.
    acted: Problem | None
    original: api.OriginalValue | None
    last_patch_time: datetime | None
    failures: int
    history: tuple[api.HistoryEntry, ...]
    plan: schedule.ScheduleDecision
    audit_state: api.AuditScheduleState | None
    #: The audits the curve pools (:mod:`stopbudget.core.pooling`), as status keeps them.
    audit_history: tuple[api.PooledAudit, ...] = ()


# ============================================================================ building


def build(old: api.StopPolicyStatus, facts: Facts) -> tuple[api.StopPolicyStatus, list[Event]]:
    """The new status, and the Events of conditions that changed (posted once, not every
    tick)."""
    conds = _conditions(old, facts)
    em_point = facts.curve.at(facts.budget) if facts.budget is not None else None
    observation, decision = facts.observation, facts.decision
    observed_em = observation.em if observation is not None else None
    new = api.StopPolicyStatus(
        budget=facts.budget,
        recommendation=_recommendation(decision) if decision is not None else old.recommendation,
        pressure=round(observation.pressure, 4) if observation is not None else None,
        signals=_signals(observation),
        observed_em=observed_em
        if observed_em is not None
        else (round(em_point.em, 4) if em_point is not None else None),
        truncation_ratio=observation.truncation if observation is not None else None,
        curve=facts.curve.to_status(),
        curve_source=facts.curve.source,
        audit_history=list(facts.audit_history),
        last_audit=facts.last_audit,
        next_audit_time=facts.plan.next_audit_time,
        last_patch_time=facts.last_patch_time,
        last_evaluation_time=facts.now,
        original_value=facts.original,
        failures=facts.failures,
        history=list(facts.history),
        audit_schedule=facts.audit_state,
        alerts=list(facts.alerts),
        conditions=conds,
        observed_generation=facts.generation,
    )
    return new, _transition_events(old, facts)


def build_invalid(
    old: api.StopPolicyStatus, problems: str, now: datetime, generation: int | None
) -> tuple[api.StopPolicyStatus, list[Event]]:
    """The status of a policy whose spec the operator cannot read: Ready=False, InvalidSpec,
    one Event when it becomes invalid; nothing else changes."""
    was = conditions.find(old.conditions, ConditionType.READY)
    events = [] if was is not None and was.reason == "InvalidSpec" else [
        Event("Warning", "InvalidSpec", problems)
    ]  # fmt: skip
    conds = conditions.set_condition(
        old.conditions, ConditionType.READY, False, "InvalidSpec", problems, now, generation
    )
    new = old.model_copy(
        update={"conditions": conds, "observed_generation": generation, "last_evaluation_time": now}
    )
    return new, events


def _recommendation(decision: Decision) -> api.Recommendation:
    return api.Recommendation(
        target=decision.target,
        floor=decision.floor,
        budget=decision.recommended,
        reason=decision.reason[:1024],
    )


def _signals(observation: Observation | None) -> dict[str, float]:
    if observation is None:
        return {}
    return {s.name: round(s.value, 6) for s in observation.signals if s.value is not None}


# ---------------------------------------------------------------------------- conditions

#: One condition: (type, status or None for Unknown, reason, message); None removes it.
_Set = tuple[ConditionType, bool | None, str, str]


def _conditions(old: api.StopPolicyStatus, facts: Facts) -> list[api.Condition]:
    conds = list(old.conditions)
    for change in (
        _alert_firing(facts),
        _audited(facts),
        _evidence_ready(facts),
        _paused(facts),
        _ready(facts),
        _metrics_available(facts),
        _fallback(facts),
        _target_unreachable(facts),
    ):
        conds = _apply(conds, change, facts)
    return _apply(conds, _degraded(conds, facts), facts)


def _apply(
    conds: list[api.Condition], change: _Set | ConditionType | None, facts: Facts
) -> list[api.Condition]:
    if change is None:
        return conds
    if isinstance(change, ConditionType):
        return conditions.remove_condition(conds, change)
    type_, ok, reason, message = change
    return conditions.set_condition(conds, type_, ok, reason, message, facts.now, facts.generation)


def _alert_firing(facts: Facts) -> _Set:
    if facts.firing:
        return (ConditionType.ALERT_FIRING, True, "AlertFiring", ", ".join(facts.firing))
    return (ConditionType.ALERT_FIRING, False, "NoAlert", "no firing alert selects this policy")


def _audited(facts: Facts) -> _Set | ConditionType:
    last = facts.audited
    if last is not None and last.result == AuditResult.SUCCEEDED:
        ok, reason, message = True, "AuditSucceeded", last.message
    elif last is not None and last.result == AuditResult.FAILED:
        ok, reason, message = False, "AuditFailed", last.message
    elif facts.spec.audit is not None:
        ok, reason, message = False, "NotAuditedYet", "no audit has finished yet"
    else:
        return ConditionType.AUDITED
    if facts.plan.action == schedule.Action.DEFER:
        reason, message = "AuditDeferred", facts.plan.reason
    return (ConditionType.AUDITED, ok, reason, message)


def _evidence_ready(facts: Facts) -> _Set:
    """Whether the law has a curve; without one, which audit it waits for (cold start)."""
    curve = facts.curve
    if not curve.empty:
        if curve.source == api.CurveSource.AUDIT:
            return (ConditionType.EVIDENCE_READY, True, "AuditCurve", "the law uses the audits")
        prior = "the law uses quality.prior until the first audit lands"
        return (ConditionType.EVIDENCE_READY, True, "PriorCurve", prior)
    holds = f"budget.initial ({facts.spec.budget.start}) holds until then"
    if facts.spec.audit is None:
        return (ConditionType.EVIDENCE_READY, False, "NoEvidence",
                f"no quality.prior and no spec.audit: budget.initial ({facts.spec.budget.start}) "
                "holds for ever; add quality.prior or an audit section")  # fmt: skip
    last, plan = facts.last_audit, facts.plan
    if last is not None and last.result == AuditResult.RUNNING:
        waiting = f"the {last.trigger.value} audit started at {_fmt(last.time)} is running"
    elif plan.trigger is not None and plan.action in (schedule.Action.WAIT, schedule.Action.DEFER):
        waiting = f"the {plan.trigger.value} audit is queued: {plan.reason}"
    elif plan.next_audit_time is not None:
        waiting = f"the next audit is scheduled at {_fmt(plan.next_audit_time)}"
    else:
        request = api.ANNOTATION_AUDIT_REQUESTED
        waiting = f"no audit is due: request one with the annotation {request}"
    if last is not None and last.result == AuditResult.FAILED:
        waiting = f"the last audit failed ({last.message}); {waiting}"
    message = f"no evidence yet (no quality.prior, no audited curve): {waiting}; {holds}"
    return (ConditionType.EVIDENCE_READY, False, "WaitingForEvidence", message)


def _fmt(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _paused(facts: Facts) -> _Set:
    if facts.paused is not None:
        return (ConditionType.PAUSED, True, "Paused", facts.paused)
    return (ConditionType.PAUSED, False, "Active", f"mode {facts.spec.control.mode.value}")


def _ready(facts: Facts) -> _Set:
    if facts.target_problem is not None:
        problem = facts.target_problem
        return (ConditionType.READY, False, problem.reason, problem.message)
    if facts.acted is not None:
        ready = facts.acted.reason == "Reconciled"
        return (ConditionType.READY, ready, facts.acted.reason, facts.acted.message)
    return (ConditionType.READY, True, "Paused", "paused: the budget is not changed")


def _metrics_available(facts: Facts) -> _Set | None:
    observation = facts.observation
    if observation is None:
        return None
    if not observation.ok:
        return (
            ConditionType.METRICS_AVAILABLE,
            False,
            "QueryFailed",
            "; ".join(observation.failures),
        )
    read = f"{len(observation.signals)} signal(s) read"
    if facts.spec.quality.query:
        read += ", live EM read"
    return (ConditionType.METRICS_AVAILABLE, True, "MetricsAvailable", read)


def _fallback(facts: Facts) -> _Set | None:
    decision = facts.decision
    if decision is None:
        return None
    if decision.fallback:
        behavior = facts.spec.control.fallback.behavior.value.title()
        return (ConditionType.FALLBACK, True, f"Fallback{behavior}", decision.reason)
    return (ConditionType.FALLBACK, False, "MetricsOK", "metrics are available")


def _target_unreachable(facts: Facts) -> _Set | None:
    decision = facts.decision
    if decision is None:
        return None
    if decision.unreachable is not None:
        return (ConditionType.TARGET_UNREACHABLE, True, "TargetUnreachable", decision.unreachable)
    if facts.curve.empty:
        why = "no curve yet: keeping budget.initial"
    else:
        why = f"budget {decision.target} meets emTarget on the {facts.curve.source.value} curve"
    return (ConditionType.TARGET_UNREACHABLE, False, "TargetReachable", why)


def _degraded(conds: list[api.Condition], facts: Facts) -> _Set:
    degrading = {ConditionType.FALLBACK.value, ConditionType.TARGET_UNREACHABLE.value}
    why = [c.message for c in conds if c.status == ConditionStatus.TRUE and c.type in degrading]
    last = facts.audited
    if last is not None and last.result == AuditResult.FAILED:
        why.append(f"last audit failed: {last.message}")
    return (ConditionType.DEGRADED, bool(why), "Degraded" if why else "Healthy", "; ".join(why))


# ---------------------------------------------------------------------------- events


def _transition_events(old: api.StopPolicyStatus, facts: Facts) -> list[Event]:
    """Events about a state the policy enters, posted once when it enters it."""
    events: list[Event] = []
    was_ready = conditions.find(old.conditions, ConditionType.READY)
    problem = facts.target_problem
    if problem is not None and (was_ready is None or was_ready.reason != problem.reason):
        events.append(Event("Warning", problem.reason, problem.message))
    decision = facts.decision
    threshold = facts.spec.control.fallback.failure_threshold
    if decision is not None and decision.fallback and not old.failures >= threshold:
        events.append(Event("Warning", "FallbackActive", decision.reason))
    deferred_before = old.audit_schedule is not None and old.audit_schedule.deferred_since
    if facts.plan.action == schedule.Action.DEFER and not deferred_before:
        events.append(Event("Normal", "AuditDeferred", facts.plan.reason))
    return events
