"""Cold start (audits/schedule.py): a policy without evidence audits at once, never deferred.

Without a prior and without an audited curve the law holds ``budget.initial``; an audit
deferred by load (up to ``maxDeferral``) would keep it there, so the scheduler never
defers while ``evidence`` is False, and a policy never audited has the ``cold-start``
trigger due at every tick until its audit starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from stopbudget.api import (
    ANNOTATION_AUDIT_REQUESTED,
    AuditResult,
    AuditTrigger,
    LastAudit,
)
from stopbudget.core.audits.schedule import (
    Action,
    AuditScheduleState,
    ScheduleDecision,
    decide,
    request,
)
from tests.unit.core.audits.test_audit_schedule import (
    AUDIT,
    CREATED,
    NOW,
    SCHEDULES,
    SETTLED,
    TOMORROW_3AM,
    make_audit,
)

COLD, SPEC, SCHED, ALERT = (
    AuditTrigger.COLD_START,
    AuditTrigger.SPEC_CHANGE,
    AuditTrigger.SCHEDULE,
    AuditTrigger.ALERT,
)
FAILED = LastAudit(time=NOW, trigger=COLD, result=AuditResult.FAILED, message="HTTP 503")
RUNNING = LastAudit(time=NOW, trigger=COLD, result=AuditResult.RUNNING)
DONE = LastAudit(time=NOW, trigger=COLD, result=AuditResult.SUCCEEDED)
#: A scheduled audit deferred an hour ago (maxDeferral 2h: it would wait another hour).
DEFERRED = SETTLED.model_copy(update={"deferred_since": TOMORROW_3AM})


@dataclass(frozen=True)
class Case:
    id: str
    action: Action
    trigger: AuditTrigger | None
    state: AuditScheduleState | None = SETTLED
    now: datetime = NOW
    #: When the policy was created (NOW: a new policy, no cron slot missed).
    created: datetime = CREATED
    running: bool = False
    pressure: float | None = 3.0
    last_audit: LastAudit | None = None
    evidence: bool = False
    reason: str = ""
    due: tuple[AuditTrigger, ...] | None = None


CASES = [
    Case(
        "new policy without prior under load: at once, labelled spec-change",
        Action.START,
        SPEC,
        state=None,
        created=NOW,
        reason="(also due: cold-start); not deferred despite pressure 3.00: no evidence yet",
        due=(SPEC, COLD),
    ),
    Case("the same with a prior: deferred", Action.DEFER, SPEC, state=None, evidence=True),
    Case("no pressure: at once", Action.START, SPEC, state=None, pressure=None),
    Case("settled spec, never audited (prior removed)", Action.START, COLD, due=(COLD,)),
    Case("audit running: the cold start waits", Action.WAIT, COLD, running=True),
    Case(
        "the cold-start audit runs: nothing more is due",
        Action.NONE,
        None,
        running=True,
        last_audit=RUNNING,
    ),
    Case("first audit succeeded but no curve yet: nothing", Action.NONE, None, last_audit=DONE),
    Case(
        "first audit failed: no back-to-back retry",
        Action.NONE,
        None,
        last_audit=FAILED,
        reason="next scheduled audit",
    ),
    Case(
        "first audit failed, slot due under load: not deferred",
        Action.START,
        SCHED,
        now=TOMORROW_3AM + timedelta(hours=1),
        last_audit=FAILED,
        reason="not deferred despite pressure",
        due=(SCHED,),
    ),
    Case(
        "a deferral in progress ends when the evidence is gone",
        Action.START,
        SCHED,
        state=DEFERRED,
        now=TOMORROW_3AM + timedelta(hours=1),
        last_audit=FAILED,
    ),
    Case(
        "first audit interrupted by a restart: re-run at once",
        Action.START,
        COLD,
        last_audit=RUNNING,
    ),
    Case(
        "an alert outranks the cold start's label",
        Action.START,
        ALERT,
        state=request(None, ALERT),
        created=NOW,
        due=(ALERT, SPEC, COLD),
    ),
]


def run(case: Case, **override: Any) -> ScheduleDecision:
    args: dict[str, Any] = {
        "now": case.now,
        "created": case.created,
        "running": case.running,
        "pressure": case.pressure,
        "annotations": {},
        "last_audit": case.last_audit,
        "evidence": case.evidence,
    }
    args.update(override)
    return decide(AUDIT, case.state, **args)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cold_start_table(case: Case) -> None:
    d = run(case)
    assert (d.action, d.trigger) == (case.action, case.trigger), d.reason
    assert case.reason in d.reason
    if case.due is not None:
        assert d.due == case.due
    if d.action is Action.START:
        assert d.state.deferred_since is None
        # Once started (status says Running, the task runs), nothing is due at the same instant.
        again = run(case, running=False, last_audit=RUNNING.model_copy(update={"time": case.now}))
        assert again.action is not Action.START or again.interrupted


def test_without_an_audit_section_nothing_runs() -> None:
    d = decide(
        None, None, now=NOW, created=CREATED, running=False, pressure=3.0, annotations={},
        evidence=False,
    )  # fmt: skip
    assert (d.action, d.trigger) == (Action.NONE, None)


# --------------------------------------------------------------------------- properties


@dataclass(frozen=True)
class Step:
    gap: timedelta
    pressure: float | None
    running: bool
    annotate: bool
    alert: bool


steps = st.builds(
    Step,
    gap=st.one_of(
        st.integers(0, 600).map(lambda s: timedelta(seconds=s)),
        st.integers(0, 72 * 60).map(lambda m: timedelta(minutes=m)),
    ),
    pressure=st.one_of(st.none(), st.floats(0, 50, allow_nan=False)),
    running=st.booleans(),
    annotate=st.integers(0, 7).map(lambda i: i == 0),
    alert=st.integers(0, 7).map(lambda i: i == 0),
)
states = st.one_of(
    st.none(),
    st.just(SETTLED),
    st.builds(
        lambda minutes: SETTLED.model_copy(
            update={"deferred_since": TOMORROW_3AM - timedelta(minutes=minutes)}
        ),
        st.integers(0, 600),
    ),
)


@settings(max_examples=200, deadline=None)
@given(
    schedule=st.sampled_from(SCHEDULES),
    defer=st.booleans(),
    max_deferral=st.sampled_from(["0s", "30m", "2h", "168h"]),
    state=states,
    plan=st.lists(steps, min_size=1, max_size=20),
)
def test_cold_start_never_defers_and_starts_at_the_first_free_tick(
    schedule: str | None,
    defer: bool,
    max_deferral: str,
    state: AuditScheduleState | None,
    plan: list[Step],
) -> None:
    """Whatever the load: never deferred, and started at the first tick with no audit running.

    The ``running`` flags stand for an audit already running when the policy lost its
    evidence (or any other): the cold start waits for it, never longer.
    """
    audit = make_audit(schedule=schedule, deferUnderPressure=defer, maxDeferral=max_deferral)
    now = TOMORROW_3AM
    annotations: dict[str, str] = {}
    last_audit: LastAudit | None = None
    started = False
    for step in plan:
        now += step.gap
        if step.annotate:
            annotations[ANNOTATION_AUDIT_REQUESTED] = "1"
        if step.alert:
            state = request(state, ALERT)
        running = step.running and not started
        d = decide(
            audit, state, now=now, created=CREATED, running=running, pressure=step.pressure,
            annotations=annotations, last_audit=last_audit, evidence=False,
        )  # fmt: skip
        event(f"{d.action.value}:{d.trigger.value if d.trigger else None}")
        assert d.action is not Action.DEFER, d.reason
        if running:
            assert d.action is Action.WAIT
            continue
        if not started:
            assert d.action is Action.START, d.reason  # the first tick with no audit running
        state = d.state
        if d.action is Action.START:
            started = True
            annotations.clear()
            last_audit = LastAudit(time=now, trigger=d.trigger or COLD, result=AuditResult.RUNNING)
            # The audit ends (and fails: no evidence still) before the next tick.
            last_audit = last_audit.model_copy(update={"result": AuditResult.FAILED})


@settings(max_examples=100, deadline=None)
@given(
    pressure=st.floats(1.0001, 1e6, allow_nan=False),
    last_result=st.sampled_from([None, *AuditResult]),
    state=states,
)
def test_the_evidence_alone_decides_whether_load_can_defer(
    pressure: float, last_result: AuditResult | None, state: AuditScheduleState | None
) -> None:
    """Same inputs, a due automatic audit under load: deferred with evidence, never without."""
    last = None if last_result is None else LastAudit(time=NOW, trigger=SCHED, result=last_result)
    now = TOMORROW_3AM + timedelta(minutes=1)
    kw: dict[str, Any] = {"now": now, "created": CREATED, "running": False,
                          "pressure": pressure, "annotations": {}, "last_audit": last}  # fmt: skip
    without = decide(AUDIT, state, evidence=False, **kw)
    assert without.action is Action.START
    with_evidence = decide(AUDIT, state, evidence=True, **kw)
    if with_evidence.trigger in (SPEC, SCHED) and with_evidence.action is not Action.START:
        assert with_evidence.action is Action.DEFER
