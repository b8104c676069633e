"""audits/schedule.py: when an audit starts, table-driven and with hypothesis properties."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from stopbudget.api import (
    ANNOTATION_AUDIT_REQUESTED,
    Audit,
    AuditResult,
    AuditTrigger,
    LastAudit,
)
from stopbudget.core.audits.schedule import (
    DEFERRABLE,
    MISSED_RUNS_CAP,
    PRECEDENCE,
    Action,
    AuditScheduleState,
    ScheduleDecision,
    audit_spec_hash,
    decide,
    latest_slot,
    missed_slots,
    next_due,
    request,
)

CREATED = datetime(2024, 1, 1, 0, 0, tzinfo=UTC)
NOW = datetime(2024, 1, 10, 12, 0, tzinfo=UTC)
TODAY_3AM = datetime(2024, 1, 10, 3, 0, tzinfo=UTC)
TOMORROW_3AM = datetime(2024, 1, 11, 3, 0, tzinfo=UTC)
REQUESTED = {ANNOTATION_AUDIT_REQUESTED: "please"}

ALERT, GUARD, MANUAL, SPEC, SCHED = (
    AuditTrigger.ALERT,
    AuditTrigger.QUALITY_GUARD,
    AuditTrigger.MANUAL,
    AuditTrigger.SPEC_CHANGE,
    AuditTrigger.SCHEDULE,
)


def make_audit(**changes: Any) -> Audit:
    doc: dict[str, Any] = {
        "schedule": "0 3 * * *",
        "endpoint": "http://vllm.serving:8000",
        "model": "llama",
        "dataset": {"configMapRef": {"name": "golden"}},
        "budgets": [128, 256, 512],
    }
    doc.update(changes)
    return Audit.model_validate(doc)


AUDIT = make_audit()
HASH = audit_spec_hash(AUDIT)
#: A policy whose last scheduled audit ran today at 03:00 and whose spec has not changed since.
SETTLED = AuditScheduleState(last_schedule_time=TODAY_3AM, spec_hash=HASH)


@dataclass(frozen=True)
class Case:
    id: str
    action: Action
    trigger: AuditTrigger | None = None
    audit: Audit | None = AUDIT
    state: AuditScheduleState | None = SETTLED
    now: datetime = NOW
    running: bool = False
    pressure: float | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    remove_annotation: bool = False
    reason: str = ""
    due: tuple[AuditTrigger, ...] | None = None


CASES = [
    Case(
        "settled: nothing due", Action.NONE, reason="next scheduled audit at 2024-01-11T03:00:00Z"
    ),
    Case("new policy: first audit at once", Action.START, SPEC, state=None, reason="is new"),
    Case(
        "new policy under pressure: deferred",
        Action.DEFER,
        SPEC,
        state=None,
        pressure=1.5,
        reason="pressure 1.50 > 1",
    ),
    Case(
        "spec change of a measurement field",
        Action.START,
        SPEC,
        audit=make_audit(budgets=[128, 1024]),
        reason="audit section changed",
    ),
    Case(
        "schedule change alone is no spec change", Action.NONE, audit=make_audit(schedule="@daily")
    ),
    Case("concurrency change is no spec change", Action.NONE, audit=make_audit(concurrency=32)),
    Case(
        "slot due",
        Action.START,
        SCHED,
        now=TOMORROW_3AM + timedelta(seconds=20),
        reason="scheduled run due",
    ),
    Case("slot due exactly now", Action.START, SCHED, now=TOMORROW_3AM),
    Case("just before the slot", Action.NONE, now=TOMORROW_3AM - timedelta(microseconds=1)),
    Case(
        "three days down: one catch-up",
        Action.START,
        SCHED,
        now=TOMORROW_3AM + timedelta(days=2, hours=1),
        reason="3 scheduled runs missed since 2024-01-10T03:00:00Z: one catch-up run",
    ),
    Case(
        "a year down on a per-minute schedule: capped, one catch-up",
        Action.START,
        SCHED,
        audit=make_audit(schedule="* * * * *"),
        state=AuditScheduleState(
            last_schedule_time=NOW - timedelta(days=365),
            spec_hash=audit_spec_hash(make_audit(schedule="* * * * *")),
        ),
        reason="more than 100 scheduled runs missed since 2023-01-10T12:00:00Z",
    ),
    Case(
        "no state yet: schedule counts from creation",
        Action.START,
        SCHED,
        state=AuditScheduleState(spec_hash=HASH),
        reason="10 scheduled runs missed since 2024-01-01T00:00:00Z",
    ),
    Case(
        "no schedule: only other triggers",
        Action.NONE,
        audit=make_audit(schedule=None),
        state=AuditScheduleState(spec_hash=audit_spec_hash(make_audit(schedule=None))),
        now=NOW + timedelta(days=30),
        reason="no audit due",
    ),
    Case(
        "clock went back: nothing due",
        Action.NONE,
        state=AuditScheduleState(last_schedule_time=NOW + timedelta(days=3), spec_hash=HASH),
    ),
    Case(
        "cron that never fires",
        Action.NONE,
        audit=make_audit(schedule="0 0 30 2 *"),
        state=AuditScheduleState(spec_hash=audit_spec_hash(make_audit(schedule="0 0 30 2 *"))),
    ),
    Case(
        "manual",
        Action.START,
        MANUAL,
        annotations=REQUESTED,
        remove_annotation=True,
        reason=f"requested by the annotation {ANNOTATION_AUDIT_REQUESTED}",
    ),
    Case(
        "manual with an empty value",
        Action.START,
        MANUAL,
        annotations={ANNOTATION_AUDIT_REQUESTED: ""},
        remove_annotation=True,
    ),
    Case(
        "manual under pressure is never deferred",
        Action.START,
        MANUAL,
        pressure=9.0,
        annotations=REQUESTED,
        remove_annotation=True,
    ),
    Case(
        "manual while running: waits, annotation kept",
        Action.WAIT,
        MANUAL,
        running=True,
        annotations=REQUESTED,
        reason="waits for the running audit to end",
    ),
    Case(
        "alert",
        Action.START,
        ALERT,
        state=request(SETTLED, ALERT),
        reason="a firing alert asked for it",
    ),
    Case(
        "alert under pressure is never deferred",
        Action.START,
        ALERT,
        state=request(SETTLED, ALERT),
        pressure=5.0,
    ),
    Case(
        "alert while running: waits",
        Action.WAIT,
        ALERT,
        state=request(SETTLED, ALERT),
        running=True,
    ),
    Case(
        "everything due: alert wins and takes all",
        Action.START,
        ALERT,
        audit=make_audit(seed=7),
        state=request(SETTLED, ALERT),
        now=TOMORROW_3AM + timedelta(hours=1),
        annotations=REQUESTED,
        remove_annotation=True,
        pressure=2.0,
        reason="(also due: manual, spec-change, schedule)",
        due=(ALERT, MANUAL, SPEC, SCHED),
    ),
    Case(
        "quality guard",
        Action.START,
        GUARD,
        state=request(SETTLED, GUARD),
        reason="quality-guard audit starts: the quality guard asked for it: live EM below emFloor",
    ),
    Case(
        "quality guard under pressure is never deferred",
        Action.START,
        GUARD,
        state=request(SETTLED, GUARD),
        pressure=5.0,
    ),
    Case(
        "quality guard while running: waits",
        Action.WAIT,
        GUARD,
        state=request(SETTLED, GUARD),
        running=True,
        reason="quality-guard audit waits for the running audit to end",
    ),
    Case(
        "alert and quality guard: labelled alert, both consumed",
        Action.START,
        ALERT,
        state=request(request(SETTLED, GUARD), ALERT),
        pressure=3.0,
        reason="(also due: quality-guard)",
        due=(ALERT, GUARD),
    ),
    Case(
        "quality guard beats manual, spec-change and schedule, under pressure too",
        Action.START,
        GUARD,
        audit=make_audit(seed=7),
        state=request(SETTLED, GUARD),
        now=TOMORROW_3AM + timedelta(hours=1),
        annotations=REQUESTED,
        remove_annotation=True,
        pressure=2.0,
        reason="(also due: manual, spec-change, schedule)",
        due=(GUARD, MANUAL, SPEC, SCHED),
    ),
    Case(
        "manual beats spec-change and schedule",
        Action.START,
        MANUAL,
        audit=make_audit(seed=7),
        now=TOMORROW_3AM,
        annotations=REQUESTED,
        remove_annotation=True,
        due=(MANUAL, SPEC, SCHED),
    ),
    Case(
        "spec-change beats schedule",
        Action.START,
        SPEC,
        audit=make_audit(seed=7),
        now=TOMORROW_3AM,
        due=(SPEC, SCHED),
    ),
    Case(
        "schedule under pressure: deferred",
        Action.DEFER,
        SCHED,
        now=TOMORROW_3AM,
        pressure=1.01,
        reason="maxDeferral 2h",
    ),
    Case("pressure exactly 1 does not defer", Action.START, SCHED, now=TOMORROW_3AM, pressure=1.0),
    Case("unknown pressure does not defer", Action.START, SCHED, now=TOMORROW_3AM, pressure=None),
    Case(
        "deferUnderPressure false",
        Action.START,
        SCHED,
        audit=make_audit(deferUnderPressure=False),
        state=AuditScheduleState(
            last_schedule_time=TODAY_3AM,
            spec_hash=audit_spec_hash(make_audit(deferUnderPressure=False)),
        ),
        now=TOMORROW_3AM,
        pressure=3.0,
    ),
    Case(
        "deferred for less than maxDeferral: still deferred",
        Action.DEFER,
        SCHED,
        state=SETTLED.model_copy(update={"deferred_since": TOMORROW_3AM}),
        now=TOMORROW_3AM + timedelta(hours=1, minutes=59),
        pressure=2.0,
    ),
    Case(
        "maxDeferral reached: runs despite pressure",
        Action.START,
        SCHED,
        state=SETTLED.model_copy(update={"deferred_since": TOMORROW_3AM}),
        now=TOMORROW_3AM + timedelta(hours=2),
        pressure=2.0,
        reason="running despite pressure 2.00: deferred since 2024-01-11T03:00:00Z, "
        "maxDeferral 2h reached",
    ),
    Case(
        "maxDeferral 0s: never deferred",
        Action.START,
        SCHED,
        audit=make_audit(maxDeferral="0s"),
        state=AuditScheduleState(
            last_schedule_time=TODAY_3AM, spec_hash=audit_spec_hash(make_audit(maxDeferral="0s"))
        ),
        now=TOMORROW_3AM,
        pressure=2.0,
    ),
    Case("schedule while running: waits", Action.WAIT, SCHED, now=TOMORROW_3AM, running=True),
    Case(
        "no audit section",
        Action.NONE,
        audit=None,
        state=request(SETTLED, ALERT),
        reason="no audit section",
    ),
    Case(
        "no audit section: annotation removed",
        Action.NONE,
        audit=None,
        annotations=REQUESTED,
        remove_annotation=True,
        reason="ignored and removed",
    ),
]


def tick(
    audit: Audit | None,
    state: AuditScheduleState | None,
    now: datetime,
    *,
    running: bool = False,
    pressure: float | None = None,
    annotations: dict[str, str] | None = None,
) -> ScheduleDecision:
    return decide(
        audit,
        state,
        now=now,
        created=CREATED,
        running=running,
        pressure=pressure,
        annotations=annotations or {},
    )


def run(case: Case, **override: Any) -> ScheduleDecision:
    args: dict[str, Any] = {
        "now": case.now,
        "created": CREATED,
        "running": case.running,
        "pressure": case.pressure,
        "annotations": case.annotations,
    }
    args.update(override)
    return decide(case.audit, case.state, **args)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_decision_table(case: Case) -> None:
    d = run(case)
    assert (d.action, d.trigger, d.remove_annotation) == (
        case.action,
        case.trigger,
        case.remove_annotation,
    ), d.reason
    assert case.reason in d.reason
    assert "\n" not in d.reason
    if case.due is not None:
        assert d.due == case.due
    if case.audit is not None and case.audit.schedule and d.next_audit_time is not None:
        assert d.next_audit_time > case.now
    if d.action is Action.START:
        # Starting consumes everything due: deciding again at once finds nothing.
        assert d.state.pending == []
        assert d.state.deferred_since is None
        assert d.state.spec_hash == audit_spec_hash(case.audit)  # type: ignore[arg-type]
        again = tick(case.audit, d.state, case.now, pressure=case.pressure)
        assert again.action is Action.NONE, again.reason
    if d.action is Action.DEFER:
        assert d.defer_until is not None
        assert d.defer_until > case.now
        assert d.state.deferred_since is not None
    if d.action in {Action.WAIT, Action.NONE} and case.audit is not None:
        assert d.state.pending == (case.state.pending if case.state else [])


def test_start_records_the_latest_slot_and_next_due() -> None:
    d = tick(AUDIT, SETTLED, TOMORROW_3AM + timedelta(days=2, hours=1))
    assert d.state.last_schedule_time == TOMORROW_3AM + timedelta(days=2)
    assert d.next_audit_time == TOMORROW_3AM + timedelta(days=3)
    assert d.missed_runs == 3


def test_capped_catch_up_is_fast_and_finds_the_latest_slot() -> None:
    audit = make_audit(schedule="* * * * *")
    old = AuditScheduleState(last_schedule_time=NOW - timedelta(days=3650), spec_hash=None)
    now = NOW + timedelta(seconds=30)
    d = tick(audit, old, now)
    assert d.missed_runs == MISSED_RUNS_CAP + 1
    assert d.state.last_schedule_time == NOW
    assert d.next_audit_time == NOW + timedelta(minutes=1)


def test_deferral_keeps_its_start_and_ends_at_max_deferral() -> None:
    now = TOMORROW_3AM
    state: AuditScheduleState | None = SETTLED
    first = None
    for minutes in range(0, 121, 10):
        d = tick(AUDIT, state, now + timedelta(minutes=minutes), pressure=1.5)
        if minutes < 120:
            assert d.action is Action.DEFER
            first = first or d.defer_until
            assert d.defer_until == first == now + timedelta(hours=2)
        else:
            assert d.action is Action.START
            assert "maxDeferral 2h reached" in d.reason
        state = d.state


def test_pressure_falling_clears_the_deferral() -> None:
    deferred = tick(AUDIT, SETTLED, TOMORROW_3AM, pressure=2.0)
    started = tick(AUDIT, deferred.state, TOMORROW_3AM + timedelta(minutes=5), pressure=0.5)
    assert (deferred.action, started.action) == (Action.DEFER, Action.START)
    assert started.state.deferred_since is None


def test_interrupted_audit_is_reported() -> None:
    running = LastAudit(time=NOW, trigger=SCHED, result=AuditResult.RUNNING)
    done = LastAudit(time=NOW, trigger=SCHED, result=AuditResult.SUCCEEDED)
    kw: dict[str, Any] = {"now": NOW, "created": CREATED, "pressure": None, "annotations": {}}
    assert decide(AUDIT, SETTLED, running=False, last_audit=running, **kw).interrupted
    assert not decide(AUDIT, SETTLED, running=True, last_audit=running, **kw).interrupted
    assert not decide(AUDIT, SETTLED, running=False, last_audit=done, **kw).interrupted
    assert decide(None, SETTLED, running=False, last_audit=running, **kw).interrupted


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        tick(AUDIT, SETTLED, NOW.replace(tzinfo=None))


def test_other_timezones_are_converted() -> None:
    cet = NOW.astimezone(ZoneInfo("Europe/Berlin"))
    a, b = tick(AUDIT, None, cet), tick(AUDIT, None, NOW)
    assert a == b
    assert a.next_audit_time is not None
    assert a.next_audit_time.tzinfo is UTC


def test_request_keeps_precedence_order_and_is_idempotent() -> None:
    state = request(request(request(None, SCHED), ALERT), ALERT)
    assert state.pending == [ALERT, SCHED]
    state = request(request(request(state, MANUAL), GUARD), GUARD)
    assert state.pending == [ALERT, GUARD, MANUAL, SCHED]


def test_every_trigger_has_its_place_in_the_precedence() -> None:
    """A trigger missing from PRECEDENCE would be dropped by request(): never lost."""
    assert sorted(PRECEDENCE) == sorted(AuditTrigger)
    assert len(set(PRECEDENCE)) == len(PRECEDENCE)
    assert PRECEDENCE[:2] == (ALERT, GUARD)  # quality-guard is as urgent as an alert
    assert GUARD not in DEFERRABLE
    state = AuditScheduleState()
    for trigger in AuditTrigger:
        state = request(state, trigger)
    wire = state.model_dump(mode="json", by_alias=True)
    assert wire["pending"] == [t.value for t in PRECEDENCE]
    assert AuditScheduleState.model_validate(wire) == state  # within maxItems


def test_state_round_trips_through_status_json() -> None:
    state = request(SETTLED.model_copy(update={"deferred_since": NOW}), ALERT)
    wire = state.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert set(wire) == {"lastScheduleTime", "deferredSince", "specHash", "pending"}
    assert wire["pending"] == ["alert"]
    assert AuditScheduleState.model_validate(wire) == state


def test_spec_hash_tracks_measurement_fields_only() -> None:
    same = [
        make_audit(schedule="*/5 * * * *"),
        make_audit(concurrency=64),
        make_audit(timeout="1h"),
        make_audit(deferUnderPressure=False, maxDeferral="10m"),
        make_audit(alerts={"matchLabels": {"team": "ml"}, "raiseBudgetOnFiring": True}),
        make_audit(budgets=[512, 128, 256]),
    ]
    different = [
        make_audit(endpoint="http://other:8000"),
        make_audit(model="other"),
        make_audit(api="chat"),
        make_audit(dataset={"configMapRef": {"name": "golden"}, "key": "other.jsonl"}),
        make_audit(budgets=[128, 256]),
        make_audit(method="truncate"),
        make_audit(sampleSize=7),
        make_audit(seed=1),
        make_audit(answerPattern="answer: (\\S+)"),
    ]
    assert {audit_spec_hash(a) for a in same} == {HASH}
    hashes = {audit_spec_hash(a) for a in different}
    assert len(hashes) == len(different)
    assert HASH not in hashes


def test_cron_helpers() -> None:
    assert next_due("0 3 * * *", TODAY_3AM) == TOMORROW_3AM
    assert latest_slot("0 3 * * *", TODAY_3AM) == TODAY_3AM
    assert latest_slot("0 3 * * *", TODAY_3AM - timedelta(microseconds=1)) == TODAY_3AM - (
        timedelta(days=1)
    )
    assert missed_slots("0 3 * * *", TODAY_3AM, TODAY_3AM) == (0, None)
    assert missed_slots("0 3 * * *", TODAY_3AM, TOMORROW_3AM) == (1, TOMORROW_3AM)
    assert next_due("0 0 31 4 *", NOW) is None
    assert latest_slot("0 0 31 4 *", NOW) is None
    assert missed_slots("0 0 31 4 *", CREATED, NOW) == (0, None)


# --------------------------------------------------------------------------- properties

SCHEDULES = [
    "*/5 * * * *",
    "0 3 * * *",
    "@hourly",
    "30 6-16/4 * * 1-5",
    "0 0 29 2 *",
    "* * * * * */20",
    None,
]


@dataclass
class Step:
    gap: timedelta
    pressure: float | None
    annotate: bool
    alert: bool
    guard: bool
    finish: bool
    change_spec: bool


steps = st.builds(
    Step,
    gap=st.one_of(
        st.integers(0, 600).map(lambda s: timedelta(seconds=s)),
        st.integers(0, 72 * 60).map(lambda m: timedelta(minutes=m)),
        st.integers(0, 400).map(lambda d: timedelta(days=d)),
    ),
    pressure=st.sampled_from([None, 0.0, 0.9, 1.0, 1.2, 3.0]),
    annotate=st.integers(0, 7).map(lambda i: i == 0),
    alert=st.integers(0, 7).map(lambda i: i == 0),
    guard=st.integers(0, 7).map(lambda i: i == 0),
    finish=st.integers(0, 3).map(lambda i: i != 0),
    change_spec=st.integers(0, 9).map(lambda i: i == 0),
)


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(
    schedule=st.sampled_from(SCHEDULES),
    defer=st.booleans(),
    max_deferral=st.sampled_from(["0s", "30m", "2h", "24h"]),
    start=st.datetimes(
        min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
    ),
    plan=st.lists(steps, min_size=1, max_size=25),
)
def test_properties_over_a_run_of_ticks(
    schedule: str | None, defer: bool, max_deferral: str, start: datetime, plan: list[Step]
) -> None:
    audit = make_audit(schedule=schedule, deferUnderPressure=defer, maxDeferral=max_deferral)
    state: AuditScheduleState | None = None
    annotations: dict[str, str] = {}
    running = False
    now = start
    first_deferred: datetime | None = None
    seed = 0
    for step in plan:
        now += step.gap
        if step.finish:
            running = False
        if step.annotate:
            annotations[ANNOTATION_AUDIT_REQUESTED] = "1"
        if step.alert:
            state = request(state, ALERT)
        if step.guard:
            state = request(state, GUARD)
        if step.change_spec:
            seed += 1
            audit = audit.model_copy(update={"seed": seed})
        args: dict[str, Any] = {
            "now": now,
            "created": start,
            "running": running,
            "pressure": step.pressure,
            "annotations": dict(annotations),
        }
        d = decide(audit, state, **args)
        event(f"{d.action.value}:{d.trigger.value if d.trigger else None}")

        # Deterministic: the same input gives the same decision.
        assert decide(audit, state, **args) == d
        # The next due time is after now.
        if schedule is not None and d.next_audit_time is not None:
            assert d.next_audit_time > now
        # Never two at once.
        if running:
            assert d.action is not Action.START
        # Alert-driven, guard-driven and manual audits are never deferred.
        if d.action is Action.DEFER:
            assert d.trigger in DEFERRABLE
            assert ALERT not in d.due
            assert GUARD not in d.due
            assert MANUAL not in d.due
        if not running and (ALERT in d.due or GUARD in d.due or MANUAL in d.due):
            assert d.action is Action.START
        if d.trigger is not None:
            assert d.trigger == min(d.due, key=PRECEDENCE.index)
        # Deferral is bounded by maxDeferral.
        if d.action is Action.DEFER:
            assert step.pressure is not None
            assert step.pressure > 1
            assert d.defer_until is not None
            assert now < d.defer_until
            first_deferred = first_deferred or now
            assert d.defer_until == first_deferred + audit.max_deferral
        elif not running:
            first_deferred = None
        state = d.state
        if d.action is Action.START:
            running = True
            if d.remove_annotation:
                annotations.clear()
            # At most one catch-up: once started, nothing else is due at the same instant.
            again = decide(audit, state, **(args | {"running": False, "annotations": {}}))
            assert again.action is Action.NONE, again.reason
        else:
            assert not d.remove_annotation or audit is None
