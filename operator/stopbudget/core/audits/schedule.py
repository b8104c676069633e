"""When to audit: cron next-due, one catch-up after downtime, deferral under load, one at a time.

PURE: no I/O and no clock; ``now`` is always an argument.  Modelled on the
Kubebuilder CronJob tutorial controller: the decision is rebuilt every tick
from the world (the spec, the annotations, whether an audit task is running
in this process) plus a small remembered state in status
(:class:`AuditScheduleState`); it is never an event that can be lost.

Per tick the operator calls :func:`decide` and acts on the
:class:`ScheduleDecision`:

* **Triggers** and their precedence (highest first): ``alert`` (queued in
  ``state.pending`` by the webhook through :func:`request`), ``quality-guard``
  (queued the same way by the tick when the control law's quality guard asks for
  one: live EM below emFloor), ``manual`` (the annotation
  ``stopbudget.io/audit-requested`` is present, whatever its value),
  ``spec-change`` (the hash of the measurement fields of ``spec.audit``,
  :func:`audit_spec_hash`, differs from ``state.specHash``; a policy whose audit
  section is new counts as changed), ``cold-start`` (the law has no evidence,
  ``evidence=False``: no ``quality.prior`` and no audited curve, and no audit
  was ever recorded in ``status.lastAudit``, or the one recorded was
  interrupted by an operator restart; recomputed every tick, never state) and
  ``schedule`` (a cron slot fell in
  ``(state.lastScheduleTime or creation, now]``).
* **One at a time**: while an audit runs every due trigger waits
  (:attr:`Action.WAIT`); nothing is lost, because every trigger is either state
  (pending, annotation, hash, schedule slot) or recomputed, so the highest one
  starts on the first tick after the running audit ends.
* **One catch-up**: any number of missed cron slots collapses into a single
  run; slots are counted up to :data:`MISSED_RUNS_CAP` and beyond that the
  latest slot is found directly (``croniter.get_prev``) instead of giving up
  as the Kubernetes CronJob controller does.
* **Deferral**: with ``deferUnderPressure`` the automatic triggers
  (``schedule``, ``spec-change``) wait while pressure > 1, at most
  ``maxDeferral`` from the first deferral; then the audit runs anyway and the
  reason says so.  ``alert``, ``quality-guard``, ``manual`` and ``cold-start``
  are never deferred.  Unknown pressure (no metrics) does not defer.
* **Cold start**: while the law has no evidence (``evidence=False``) nothing is
  deferred, whatever the trigger: without a curve the law holds
  ``budget.initial`` (often ``max``) until an audit lands, so an audit under load
  costs less than waiting up to ``maxDeferral`` at that budget.  A policy that
  was never audited has the ``cold-start`` trigger due, so its audit starts at
  the first tick where no audit is running (labelled ``spec-change`` when the
  policy is new, see :data:`PRECEDENCE`).  An audit that failed is not re-run
  by ``cold-start`` (a failing endpoint would be hit back to back); the next
  schedule slot, a manual request or a spec change re-runs it, never deferred.
* **Starting** consumes everything due: the pending triggers, the due cron slot
  (``lastScheduleTime`` becomes the latest slot <= now), the spec hash, and
  the annotation (the decision tells the caller to remove it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from croniter import CroniterError, croniter

from stopbudget.api import (
    ANNOTATION_AUDIT_REQUESTED,
    Audit,
    AuditResult,
    AuditScheduleState,
    AuditTrigger,
    LastAudit,
    format_duration,
)

#: Missed cron slots counted one by one; beyond this the count is reported as "more than".
MISSED_RUNS_CAP = 100

#: Trigger precedence, highest first: the trigger an audit is labelled with when several are due.
#: ``quality-guard`` is as urgent as ``alert`` (neither is ever deferred; precedence only
#: picks the label) and comes right after it: an alert may be the same quality drop seen
#: by a Prometheus rule, so an audit both asked for stays labelled ``alert``, as it was
#: before the guard had a trigger of its own; and it goes before ``manual``, because the
#: guard's audit would have run whether or not someone asked for one too.  ``cold-start``
#: comes after ``spec-change``: a new policy without a prior has both due and its first
#: audit stays labelled ``spec-change`` (the audit section is new), as before; it is
#: never deferred all the same (no evidence), and its reason says so.  ``cold-start``
#: labels the audits of the other cases (the prior removed before any audit, the first
#: audit interrupted by a restart).
PRECEDENCE: tuple[AuditTrigger, ...] = (
    AuditTrigger.ALERT,
    AuditTrigger.QUALITY_GUARD,
    AuditTrigger.MANUAL,
    AuditTrigger.SPEC_CHANGE,
    AuditTrigger.COLD_START,
    AuditTrigger.SCHEDULE,
)

#: Automatic triggers, deferred while pressure > 1 when ``deferUnderPressure`` is set.
DEFERRABLE: frozenset[AuditTrigger] = frozenset({AuditTrigger.SCHEDULE, AuditTrigger.SPEC_CHANGE})

#: Fields of ``spec.audit`` that change what an audit measures: a change of any of them is a
#: ``spec-change`` trigger.  When and how fast it runs (schedule, concurrency, timeouts,
#: deferral, alert matching) does not change the curve and triggers nothing.
MEASUREMENT_FIELDS: frozenset[str] = frozenset(
    {
        "endpoint",
        "model",
        "api",
        "dataset",
        "budgets",
        "method",
        "sample_size",
        "seed",
        "answer_pattern",
    }
)


class Action(StrEnum):
    """What the caller does this tick."""

    #: Start an audit now, labelled with ``decision.trigger``; write ``decision.state``.
    START = "start"
    #: A scheduled or spec-change audit is due but deferred under pressure until ``defer_until``.
    DEFER = "defer"
    #: An audit is due but another one is running: it starts after that one ends.
    WAIT = "wait"
    #: Nothing is due.
    NONE = "none"


@dataclass(frozen=True)
class ScheduleDecision:
    """The scheduler's answer for one policy and one tick."""

    action: Action
    #: The trigger of the audit started, deferred or waiting (the highest due); None if nothing.
    trigger: AuditTrigger | None
    #: One line for status (``lastAudit.message`` on start, a condition or Event otherwise).
    reason: str
    #: The state to write to ``status.auditSchedule`` (unchanged unless it moved).
    state: AuditScheduleState
    #: ``status.nextAuditTime``: the next cron slot strictly after ``now`` (None without one).
    next_audit_time: datetime | None
    #: With :attr:`Action.DEFER`: when the deferral ends and the audit runs regardless.
    defer_until: datetime | None = None
    #: The caller removes the annotation ``stopbudget.io/audit-requested`` (set on start).
    remove_annotation: bool = False
    #: Every due trigger, highest first (the started one included).
    due: tuple[AuditTrigger, ...] = ()
    #: Cron slots missed since the last consumed one (MISSED_RUNS_CAP + 1 means "more than").
    missed_runs: int = 0
    #: status.lastAudit says Running but no audit runs here (the operator restarted during
    #: it): the caller marks it Failed.  It is not re-run by itself.
    interrupted: bool = False


# --------------------------------------------------------------------------- helpers


def _utc(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware (UTC), got the naive {value.isoformat()}")
    return value.astimezone(UTC)


def _fmt(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def audit_spec_hash(audit: Audit) -> str:
    """A short stable hash of the fields of ``audit`` that change what an audit measures."""
    data = audit.model_dump(mode="json", include=set(MEASUREMENT_FIELDS), exclude_none=True)
    data["budgets"] = sorted(data["budgets"])  # the ladder is a set
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def next_due(schedule: str, now: datetime) -> datetime | None:
    """The first slot of the cron ``schedule`` (UTC) strictly after ``now``; None if none."""
    try:
        return _utc(croniter(schedule, _utc(now, "now")).get_next(datetime), "slot")
    except CroniterError:
        return None


def latest_slot(schedule: str, now: datetime) -> datetime | None:
    """The last slot of ``schedule`` at or before ``now``; None if none."""
    try:
        start = _utc(now, "now") + timedelta(microseconds=1)
        return _utc(croniter(schedule, start).get_prev(datetime), "slot")
    except CroniterError:
        return None


def missed_slots(schedule: str, after: datetime, now: datetime) -> tuple[int, datetime | None]:
    """Cron slots in ``(after, now]``: their count and the latest.

    Counted one by one up to :data:`MISSED_RUNS_CAP`; with more, the count is
    ``MISSED_RUNS_CAP + 1`` ("more than") and the latest slot is found directly,
    so a long downtime costs constant time and still yields one run.
    """
    after, now = _utc(after, "after"), _utc(now, "now")
    if after >= now:
        return 0, None
    try:
        slots = croniter(schedule, after)
        count, latest = 0, None
        while count <= MISSED_RUNS_CAP:
            slot = _utc(slots.get_next(datetime), "slot")
            if slot > now:
                return count, latest
            count, latest = count + 1, slot
    except CroniterError:
        return 0, None
    return count, latest_slot(schedule, now)


def request(state: AuditScheduleState | None, trigger: AuditTrigger) -> AuditScheduleState:
    """``state`` with ``trigger`` pending (e.g. a firing alert); the next :func:`decide` sees it."""
    state = state or AuditScheduleState()
    pending = set(state.pending) | {trigger}
    return state.model_copy(update={"pending": [t for t in PRECEDENCE if t in pending]})


def _missed_text(missed: int, since: datetime) -> str:
    if missed > MISSED_RUNS_CAP:
        return (
            f"more than {MISSED_RUNS_CAP} scheduled runs missed since {_fmt(since)} "
            "(operator down or clock skew): one catch-up run"
        )
    if missed > 1:
        return f"{missed} scheduled runs missed since {_fmt(since)}: one catch-up run"
    return "scheduled run due"


# --------------------------------------------------------------------------- the decision


def decide(
    audit: Audit | None,
    state: AuditScheduleState | None,
    *,
    now: datetime,
    created: datetime,
    running: bool,
    pressure: float | None,
    annotations: Mapping[str, str],
    last_audit: LastAudit | None = None,
    evidence: bool = True,
) -> ScheduleDecision:
    """Whether an audit of one policy starts now, and with which trigger.

    ``audit`` is ``spec.audit``; ``state`` is ``status.auditSchedule`` (None at
    first); ``created`` is ``metadata.creationTimestamp`` (the start of the
    schedule before any slot was consumed); ``running`` is whether an audit task
    of this policy runs in this process now (the world, not status);
    ``pressure`` is ``status.pressure`` (None if unknown); ``annotations`` are
    the policy's; ``last_audit`` is ``status.lastAudit``; ``evidence`` is whether the
    law has a curve (an audited one or ``quality.prior``): False is a cold start.
    """
    now = _utc(now, "now")
    created = _utc(created, "created")
    state = state or AuditScheduleState()
    manual = ANNOTATION_AUDIT_REQUESTED in annotations
    interrupted = (
        last_audit is not None and last_audit.result == AuditResult.RUNNING and not running
    )

    if audit is None:
        cleared = state.model_copy(
            update={"pending": [], "deferred_since": None, "spec_hash": None}
        )
        reason = "no audit section: audits never run"
        if manual:
            reason = f"{ANNOTATION_AUDIT_REQUESTED} ignored and removed: the policy has no audit"
        return ScheduleDecision(
            Action.NONE,
            None,
            reason,
            cleared,
            None,
            remove_annotation=manual,
            interrupted=interrupted,
        )

    # -- what is due, rebuilt from the world
    next_time = next_due(audit.schedule, now) if audit.schedule else None
    since = state.last_schedule_time or created
    missed, slot = missed_slots(audit.schedule, since, now) if audit.schedule else (0, None)
    spec_hash = audit_spec_hash(audit)
    why: dict[AuditTrigger, str] = dict.fromkeys(state.pending, "requested")
    if AuditTrigger.ALERT in why:
        why[AuditTrigger.ALERT] = "a firing alert asked for it"
    if AuditTrigger.QUALITY_GUARD in why:
        why[AuditTrigger.QUALITY_GUARD] = "the quality guard asked for it: live EM below emFloor"
    if manual:
        why[AuditTrigger.MANUAL] = f"requested by the annotation {ANNOTATION_AUDIT_REQUESTED}"
    if state.spec_hash != spec_hash:
        why[AuditTrigger.SPEC_CHANGE] = (
            "the audit section is new" if state.spec_hash is None else "the audit section changed"
        )
    if slot is not None:
        why[AuditTrigger.SCHEDULE] = _missed_text(missed, since)
    if not evidence and (last_audit is None or interrupted):
        why[AuditTrigger.COLD_START] = (
            "no evidence (no quality.prior, no audited curve): the law holds budget.initial "
            "until this audit lands"
        )
    due = tuple(t for t in PRECEDENCE if t in why)

    base = ScheduleDecision(
        Action.NONE,
        due[0] if due else None,
        "",
        state,
        next_time,
        due=due,
        missed_runs=missed,
        interrupted=interrupted,
    )

    if not due:
        nothing = state.model_copy(update={"deferred_since": None})
        when = f"; next scheduled audit at {_fmt(next_time)}" if next_time else ""
        return replace(base, reason=f"no audit due{when}", state=nothing)

    trigger = due[0]
    also = f" (also due: {', '.join(t.value for t in due[1:])})" if len(due) > 1 else ""
    if running:
        return replace(
            base,
            action=Action.WAIT,
            reason=f"{trigger.value} audit waits for the running audit to end: "
            f"{why[trigger]}{also}",
        )

    extra = ""
    under_pressure = audit.defer_under_pressure and pressure is not None and pressure > 1
    cold = trigger in DEFERRABLE or trigger == AuditTrigger.COLD_START
    if cold and under_pressure and not evidence and pressure is not None:
        extra = f"; not deferred despite pressure {pressure:.2f}: no evidence yet (cold start)"
    elif trigger in DEFERRABLE and under_pressure and pressure is not None:
        deferred_since = state.deferred_since or now
        until = deferred_since + audit.max_deferral
        if now < until:
            return replace(
                base,
                action=Action.DEFER,
                reason=f"{trigger.value} audit deferred: pressure {pressure:.2f} > 1; it runs "
                f"when pressure falls, at the latest at {_fmt(until)} (maxDeferral "
                f"{format_duration(audit.max_deferral)})",
                state=state.model_copy(update={"deferred_since": deferred_since}),
                defer_until=until,
            )
        extra = (
            f"; running despite pressure {pressure:.2f}: deferred since {_fmt(deferred_since)}, "
            f"maxDeferral {format_duration(audit.max_deferral)} reached"
        )

    started = AuditScheduleState(
        last_schedule_time=slot or state.last_schedule_time,
        deferred_since=None,
        spec_hash=spec_hash,
        pending=[],
    )
    return replace(
        base,
        action=Action.START,
        reason=f"{trigger.value} audit starts: {why[trigger]}{also}{extra}",
        state=started,
        remove_annotation=manual,
    )
