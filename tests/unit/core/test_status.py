"""The status a tick writes, built by a pure function from the old status and what happened.

A table: each row is a situation a tick can be in (facts), and what the status and
its conditions must say, with no Prometheus and no API server.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from stopbudget import api
from stopbudget.core import curve, law
from stopbudget.core.audits import schedule
from stopbudget.core.status import Facts, Problem, build, build_invalid

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
SPEC = api.StopPolicySpec.model_validate(
    {
        "targetRef": {"name": "vllm"},
        "budget": {"min": 64, "max": 1024, "sink": {"type": "env", "name": "MAX_TOKENS"}},
        "quality": {
            "emTarget": 0.8,
            "emFloor": 0.7,
            "prior": [
                {"budget": 256, "em": 0.72, "samples": 10000},
                {"budget": 512, "em": 0.84, "samples": 10000},
            ],
        },
        "load": {"preset": "vllm", "signals": [{"name": "queue", "target": 10}]},
    }
)
CURVE = curve.in_use([], api.CurveSource.NONE, SPEC.quality.prior, SPEC.quality.confidence)
PLAN = schedule.ScheduleDecision(
    action=schedule.Action.NONE,
    trigger=None,
    reason="",
    state=api.AuditScheduleState(),
    next_audit_time=None,
)
OBSERVED = law.Observation(signals=(law.SignalReading("queue", 10.0, 25.0),))
FAILED = law.Observation(signals=(law.SignalReading("queue", 10.0, None, "HTTP 503"),))


def decision(**changes: Any) -> law.Decision:
    base = law.Decision(
        budget=256,
        recommended=256,
        target=512,
        floor=256,
        rule=law.Rule.LOAD,
        reason="pressure 2.5 (queue 25/10): 512/2.5 = 204.8, floor 256; 512 -> 256",
        state=law.State(budget=256, failures=0),
        previous=512,
    )
    return dataclasses.replace(base, **changes)


def facts(**changes: Any) -> Facts:
    base = Facts(
        spec=SPEC,
        now=NOW,
        generation=3,
        alerts=(),
        firing=(),
        curve=CURVE,
        last_audit=None,
        audited=None,
        paused=None,
        target_problem=None,
        budget=256,
        observation=OBSERVED,
        decision=decision(),
        acted=Problem("Reconciled", decision().reason),
        original=api.OriginalValue(present=True, value="1024"),
        last_patch_time=NOW,
        failures=0,
        history=(api.HistoryEntry(time=NOW, budget=256),),
        plan=PLAN,
        audit_state=None,
    )
    return dataclasses.replace(base, **changes)


def cond(status: api.StopPolicyStatus, type_: api.ConditionType) -> tuple[str, str] | None:
    found = next((c for c in status.conditions if c.type == type_.value), None)
    return None if found is None else (found.status.value, found.reason)


OLD = api.StopPolicyStatus()
READY = api.ConditionType.READY

# (id, facts changes, {condition: (status, reason) or None}, events)
TABLE: list[
    tuple[str, dict[str, Any], dict[api.ConditionType, tuple[str, str] | None], list[str]]
] = [
    (
        "under load",
        {},
        {
            READY: ("True", "Reconciled"),
            api.ConditionType.METRICS_AVAILABLE: ("True", "MetricsAvailable"),
            api.ConditionType.FALLBACK: ("False", "MetricsOK"),
            api.ConditionType.TARGET_UNREACHABLE: ("False", "TargetReachable"),
            api.ConditionType.DEGRADED: ("False", "Healthy"),
            api.ConditionType.PAUSED: ("False", "Active"),
            api.ConditionType.ALERT_FIRING: ("False", "NoAlert"),
            api.ConditionType.AUDITED: None,
        },
        [],
    ),
    (
        "target missing",
        {
            "target_problem": Problem("TargetNotFound", "Deployment serving/vllm was not found"),
            "observation": None,
            "decision": None,
            "acted": None,
            "budget": None,
        },
        {
            READY: ("False", "TargetNotFound"),
            api.ConditionType.METRICS_AVAILABLE: None,
            api.ConditionType.FALLBACK: None,
        },
        ["TargetNotFound"],
    ),
    (
        "paused",
        {
            "paused": "spec.control.mode is Paused",
            "observation": None,
            "decision": None,
            "acted": None,
        },
        {READY: ("True", "Paused"), api.ConditionType.PAUSED: ("True", "Paused")},
        [],
    ),
    (
        "fallback after the threshold",
        {
            "observation": FAILED,
            "decision": decision(fallback=True, rule=law.Rule.FALLBACK, reason="fallback max"),
            "failures": 3,
        },
        {
            api.ConditionType.METRICS_AVAILABLE: ("False", "QueryFailed"),
            api.ConditionType.FALLBACK: ("True", "FallbackHold"),
            api.ConditionType.DEGRADED: ("True", "Degraded"),
        },
        ["FallbackActive"],
    ),
    (
        "patch failed",
        {"acted": Problem("PatchFailed", "forbidden")},
        {READY: ("False", "PatchFailed")},
        [],
    ),
    (
        "target unreachable on the curve",
        {"decision": decision(unreachable="no budget within [64, 1024] reaches emTarget")},
        {
            api.ConditionType.TARGET_UNREACHABLE: ("True", "TargetUnreachable"),
            api.ConditionType.DEGRADED: ("True", "Degraded"),
        },
        [],
    ),
    (
        "alert firing",
        {"firing": ("StopPolicyEMBelowFloor",)},
        {api.ConditionType.ALERT_FIRING: ("True", "AlertFiring")},
        [],
    ),
]


@pytest.mark.parametrize(
    ("changes", "expected", "events"),
    [pytest.param(c, e, ev, id=i) for i, c, e, ev in TABLE],
)
def test_status_from_what_happened(
    changes: dict[str, Any],
    expected: dict[api.ConditionType, tuple[str, str] | None],
    events: list[str],
) -> None:
    new, posted = build(OLD, facts(**changes))
    for type_, want in expected.items():
        assert cond(new, type_) == want, type_
    assert [e.reason for e in posted] == events
    assert new.last_evaluation_time == NOW
    assert new.observed_generation == 3


def test_what_the_tick_did_is_what_status_says() -> None:
    new, _ = build(OLD, facts())
    assert new.budget == 256
    assert new.pressure == 2.5
    assert new.signals == {"queue": 25.0}
    assert new.recommendation is not None
    assert (new.recommendation.target, new.recommendation.floor) == (512, 256)
    assert new.original_value == api.OriginalValue(present=True, value="1024")
    assert new.curve_source == api.CurveSource.PRIOR
    assert new.observed_em == 0.72  # the curve's EM at the applied budget, without a live EM


def test_a_state_already_entered_posts_no_event_again() -> None:
    gone = {"target_problem": Problem("TargetNotFound", "gone"), "observation": None,
            "decision": None, "acted": None}  # fmt: skip
    first, events = build(OLD, facts(**gone))
    assert [e.reason for e in events] == ["TargetNotFound"]
    _, again = build(first, facts(**gone, now=NOW + timedelta(seconds=30)))
    assert again == []


def test_a_transition_time_moves_only_when_the_status_changes() -> None:
    first, _ = build(OLD, facts())
    later = NOW + timedelta(minutes=5)
    second, _ = build(first, facts(now=later, acted=Problem("Reconciled", "other words")))
    ready = next(c for c in second.conditions if c.type == READY.value)
    assert ready.last_transition_time == NOW  # reason and message changed, status did not
    third, _ = build(second, facts(now=later, acted=Problem("PatchFailed", "forbidden")))
    ready = next(c for c in third.conditions if c.type == READY.value)
    assert ready.last_transition_time == later


def test_a_deferred_audit_is_said_once_and_keeps_the_audited_status() -> None:
    audited = api.LastAudit(
        time=NOW, trigger=api.AuditTrigger.SCHEDULE, result=api.AuditResult.SUCCEEDED, message="ok"
    )
    deferred = dataclasses.replace(
        PLAN,
        action=schedule.Action.DEFER,
        reason="deferred: pressure 2.5",
        state=api.AuditScheduleState(deferred_since=NOW),
    )
    audit_spec = SPEC.model_copy(
        update={"audit": api.Audit.model_validate({"endpoint": "http://vllm:8000", "model": "m",
                "dataset": {"configMapRef": {"name": "golden"}}, "budgets": [256, 512]})}
    )  # fmt: skip
    new, events = build(
        OLD, facts(spec=audit_spec, plan=deferred, audited=audited, last_audit=audited)
    )
    assert cond(new, api.ConditionType.AUDITED) == ("True", "AuditDeferred")
    assert [e.reason for e in events] == ["AuditDeferred"]
    again_old = new.model_copy(update={"audit_schedule": deferred.state})
    _, again = build(again_old, facts(spec=audit_spec, plan=deferred, audited=audited))
    assert again == []


def test_an_invalid_spec_changes_ready_only_and_says_so_once() -> None:
    before, _ = build(OLD, facts())
    invalid, events = build_invalid(before, "spec.budget.min: too small", NOW, 4)
    assert cond(invalid, READY) == ("False", "InvalidSpec")
    assert [e.reason for e in events] == ["InvalidSpec"]
    assert invalid.budget == before.budget
    assert invalid.original_value == before.original_value
    _, again = build_invalid(invalid, "spec.budget.min: too small", NOW, 4)
    assert again == []


# ---------------------------------------------------------------------------- EvidenceReady

AUDIT_SPEC = SPEC.model_copy(
    update={
        "audit": api.Audit.model_validate({"endpoint": "http://vllm:8000", "model": "m",
                 "dataset": {"configMapRef": {"name": "golden"}}, "budgets": [256, 512]}),
        "quality": SPEC.quality.model_copy(update={"prior": []}),
    }
)  # fmt: skip
NO_CURVE = curve.in_use([], api.CurveSource.NONE, [], SPEC.quality.confidence)
AUDITED_CURVE = curve.Curve.of(
    [curve.Point(budget=256, hits=80, samples=100), curve.Point(budget=512, hits=90, samples=100)],
    SPEC.quality.confidence,
    api.CurveSource.AUDIT,
)
COLD_RUNNING = api.LastAudit(
    time=NOW, trigger=api.AuditTrigger.COLD_START, result=api.AuditResult.RUNNING
)
COLD_FAILED = COLD_RUNNING.model_copy(
    update={"result": api.AuditResult.FAILED, "message": "cold-start audit failed: HTTP 503"}
)
WAITING = dataclasses.replace(
    PLAN, action=schedule.Action.WAIT, trigger=api.AuditTrigger.COLD_START,
    reason="cold-start audit waits for the running audit to end",
)  # fmt: skip
NEXT = dataclasses.replace(PLAN, next_audit_time=NOW + timedelta(hours=1))
COLD = {"spec": AUDIT_SPEC, "curve": NO_CURVE}

# (id, facts changes, (status, reason), words of the message)
EVIDENCE: list[tuple[str, dict[str, Any], tuple[str, str], list[str]]] = [
    ("prior", {}, ("True", "PriorCurve"), ["quality.prior"]),
    ("audited", {"curve": AUDITED_CURVE}, ("True", "AuditCurve"), ["audits"]),
    (
        "no prior, no audit section",
        {"spec": SPEC.model_copy(update={"quality": AUDIT_SPEC.quality}), "curve": NO_CURVE},
        ("False", "NoEvidence"),
        ["add quality.prior or an audit section", "budget.initial (1024)"],
    ),
    (
        "cold-start audit running",
        {**COLD, "last_audit": COLD_RUNNING},
        ("False", "WaitingForEvidence"),
        ["the cold-start audit started at 2026-12-02T12:00:00Z is running", "budget.initial"],
    ),
    (
        "cold-start audit queued behind another",
        {**COLD, "plan": WAITING},
        ("False", "WaitingForEvidence"),
        ["the cold-start audit is queued"],
    ),
    (
        "first audit failed, next one scheduled",
        {**COLD, "last_audit": COLD_FAILED, "audited": COLD_FAILED, "plan": NEXT},
        ("False", "WaitingForEvidence"),
        ["the last audit failed (cold-start audit failed: HTTP 503)", "2026-12-02T13:00:00Z"],
    ),
    (
        "first audit failed, nothing scheduled",
        {**COLD, "last_audit": COLD_FAILED, "audited": COLD_FAILED},
        ("False", "WaitingForEvidence"),
        [api.ANNOTATION_AUDIT_REQUESTED],
    ),
]


@pytest.mark.parametrize(
    ("changes", "expected", "words"),
    [pytest.param(c, e, w, id=i) for i, c, e, w in EVIDENCE],
)
def test_evidence_ready_says_what_the_law_waits_for(
    changes: dict[str, Any], expected: tuple[str, str], words: list[str]
) -> None:
    new, _ = build(OLD, facts(**changes))
    assert cond(new, api.ConditionType.EVIDENCE_READY) == expected
    found = next(c for c in new.conditions if c.type == api.ConditionType.EVIDENCE_READY.value)
    for word in words:
        assert word in found.message


def test_evidence_ready_turns_true_when_the_first_audit_lands() -> None:
    waiting, _ = build(OLD, facts(**COLD, last_audit=COLD_RUNNING))
    later = NOW + timedelta(minutes=7)
    landed = COLD_RUNNING.model_copy(update={"result": api.AuditResult.SUCCEEDED})
    ready, _ = build(
        waiting, facts(spec=AUDIT_SPEC, curve=AUDITED_CURVE, last_audit=landed, now=later)
    )
    assert cond(ready, api.ConditionType.EVIDENCE_READY) == ("True", "AuditCurve")
    found = next(c for c in ready.conditions if c.type == api.ConditionType.EVIDENCE_READY.value)
    assert found.last_transition_time == later
