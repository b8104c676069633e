"""Each step of the law on its own: a proposal and a context in, the step's proposal out.

``test_control.py`` tests the law through :func:`~stopbudget.core.law.decide`; here
one small test per step shows what it does when it acts and that it passes the
proposal on untouched otherwise. The package docstring's table is checked
against the chain itself.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from stopbudget import api
from stopbudget.core import law
from stopbudget.core.curve import Curve
from stopbudget.core.law import (
    STEPS,
    Context,
    Evidence,
    Observation,
    Proposal,
    Rule,
    SignalReading,
    State,
)
from stopbudget.core.law.evidence import cost_cap, propose, target_and_floor
from stopbudget.core.law.fallback import MetricsOrFallback, fall_back
from stopbudget.core.law.load import follow_load
from stopbudget.core.law.quality import guard_floor, guard_live_em, raise_on_alert
from stopbudget.core.law.stability import (
    apply_first,
    ignore_within_tolerance,
    keep_unchanged,
    limit_step,
    move,
    quantise_recommendation,
    raise_at_once,
    stabilize_downscale,
    wait_for_cooldown,
)
from stopbudget.core.law.step import Step, run
from tests.unit.core.law.test_control import _curve, _load, _spec

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
EVIDENCE = Evidence(target=512, floor=256)
FAILED = Observation(signals=(SignalReading("queue", 10.0, None, "connection refused"),))


def _context(
    spec: api.StopPolicySpec | None = None,
    observation: Observation | None = None,
    evidence: Evidence | None = EVIDENCE,
    **state: Any,
) -> Context:
    return Context(
        spec=spec or _spec(),
        curve=_curve(),
        observation=observation or Observation(),
        state=State(**state),
        now=NOW,
        raise_for_alert=False,
        evidence=evidence,
    )


def _proposal(budget: float = 512, rule: Rule = Rule.TARGET, **flags: Any) -> Proposal:
    return Proposal(budget=budget, rule=rule, reason="why", **flags)


def _recommended(budget: int, **flags: Any) -> Proposal:
    """A proposal past quantise_recommendation."""
    return _proposal(budget, recommended=budget, **flags)


# ---------------------------------------------------------------- 1-2: evidence


def test_target_and_floor_are_the_cheapest_budgets_meeting_the_bounds() -> None:
    assert target_and_floor(_spec(), _curve()) == Evidence(target=512, floor=256)
    assert target_and_floor(_spec(), Curve.of([], 0.95, api.CurveSource.NONE)) is None
    unreachable = target_and_floor(_spec(**{"quality.emTarget": 0.95}), _curve())
    assert unreachable is not None
    assert (unreachable.target, unreachable.floor) == (1024, 256)
    assert unreachable.unreachable == (
        "no budget within [64, 1024] reaches emTarget (target 0.95, floor 0.7) "
        "on the audit curve: using max"
    )


@pytest.mark.parametrize(
    ("cap", "priority", "expected"),
    [
        (None, "quality", EVIDENCE),
        (384, "quality", Evidence(384, 256)),
        (200, "quality", Evidence(256, 256)),  # not below the floor
        (200, "cost", Evidence(200, 200)),  # unless cost comes first
    ],
)
def test_cost_cap_lowers_the_target(cap: int | None, priority: str, expected: Evidence) -> None:
    changes = {"cost.priority": priority} | ({"cost.maxTokensPerRequest": cap} if cap else {})
    assert cost_cap(EVIDENCE, _spec(**changes)) == expected


def test_propose_the_target_or_budget_initial_without_evidence() -> None:
    assert propose(_context()) == Proposal(512.0, Rule.TARGET, "EM-target budget 512")
    first = propose(_context(evidence=None))
    assert (first.budget, first.rule) == (512.0, Rule.NO_EVIDENCE)
    assert first.reason == "no prior and no audit yet: keeping budget.initial"


# ---------------------------------------------------------------- 3: load


def test_follow_load_sheds_load_from_the_applied_budget_down_to_the_floor() -> None:
    shed = follow_load(_proposal(), _context(observation=_load(2.0), budget=512))
    assert (shed.budget, shed.rule) == (256.0, Rule.LOAD)
    assert shed.reason == "pressure 2 (queue 20/10): 512/2 = 256, floor 256"
    floored = follow_load(_proposal(), _context(observation=_load(8.0), budget=512))
    assert floored.budget == 256.0


@pytest.mark.parametrize(
    ("pressure", "budget", "reason"),
    [
        (
            0.9,
            256 / 0.9,
            "pressure 0.9 <= 1: headroom 256/0.9 = 284.44 toward the EM-target budget 512",
        ),
        (0.5, 512.0, "pressure 0.5 <= 1: EM-target budget 512"),  # the headroom reaches it exactly
        (0.0, 512.0, "pressure 0 <= 1: EM-target budget 512"),
    ],
)
def test_follow_load_goes_up_by_the_headroom(pressure: float, budget: float, reason: str) -> None:
    up = follow_load(_proposal(256), _context(observation=_load(pressure), budget=256))
    assert (up.budget, up.rule, up.reason) == (budget, Rule.TARGET, reason)


def test_follow_load_needs_evidence() -> None:
    p = _proposal(512, Rule.NO_EVIDENCE)
    assert follow_load(p, _context(observation=_load(3.0), evidence=None)) is p


# ---------------------------------------------------------------- 4: quality guard


def test_guard_live_em_raises_to_the_target_and_asks_for_an_audit() -> None:
    guarded = guard_live_em(_proposal(256), _context(observation=Observation(em=0.61), budget=256))
    assert (guarded.budget, guarded.rule) == (512.0, Rule.QUALITY_GUARD)
    assert guarded.raise_for_quality
    assert guarded.request_audit
    assert guarded.reason == "live EM 0.61 < floor 0.7: raising to EM-target budget 512"
    at_target = guard_live_em(_proposal(), _context(observation=Observation(em=0.5), budget=512))
    assert at_target.budget == 1024.0
    p = _proposal()
    assert guard_live_em(p, _context(observation=Observation(em=0.75), budget=512)) is p


def test_raise_on_alert_goes_to_the_target_unless_the_guard_did() -> None:
    context = replace(_context(budget=256), raise_for_alert=True)
    raised = raise_on_alert(_proposal(256, Rule.LOAD), context)
    assert (raised.budget, raised.rule, raised.raise_for_quality) == (512.0, Rule.ALERT, True)
    assert raised.reason == "alert firing: raising to the EM-target budget 512"
    guarded = _proposal(1024, Rule.QUALITY_GUARD, raise_for_quality=True)
    assert raise_on_alert(guarded, context) is guarded
    at_target = _proposal()
    assert raise_on_alert(at_target, replace(context, state=State(budget=512))) is at_target


# ---------------------------------------------------------------- 6: fallback


def test_metrics_or_fallback_runs_the_load_steps_only_on_usable_metrics() -> None:
    step = MetricsOrFallback((follow_load,))
    assert step(_proposal(), _context(observation=_load(2.0), budget=512)).rule == Rule.LOAD
    assert step(_proposal(), _context(observation=FAILED, budget=512)).rule == Rule.METRICS_WAIT


@pytest.mark.parametrize(("behavior", "expected"), [("hold", 384), ("target", 512), ("max", 1024)])
def test_fall_back_holds_then_applies_the_behavior(behavior: str, expected: int) -> None:
    spec = _spec(**{"control.fallback": {"failureThreshold": 3, "behavior": behavior}})
    held = fall_back(_proposal(), _context(spec, FAILED, budget=384, failures=1))
    assert (held.budget, held.rule, held.fallback) == (384.0, Rule.METRICS_WAIT, False)
    assert held.reason == "metrics unavailable (2/3: queue: connection refused): holding"
    fell = fall_back(_proposal(), _context(spec, FAILED, budget=384, failures=2))
    assert (fell.budget, fell.rule, fell.fallback) == (float(expected), Rule.FALLBACK, True)
    assert fell.reason == (
        f"metrics unavailable for 3 ticks (queue: connection refused): fallback {behavior}"
    )


# ---------------------------------------------------------------- 5 and the floor guard


def test_quantise_recommendation_rounds_up_to_step() -> None:
    spec = _spec(**{"budget.step": 64})
    recommended = quantise_recommendation(_proposal(284.4), _context(spec))
    assert (recommended.budget, recommended.recommended) == (320, 320)


def test_guard_floor_raises_a_budget_below_the_floor() -> None:
    raised = guard_floor(_recommended(128, rule=Rule.LOAD), _context(budget=128))
    assert (raised.budget, raised.recommended, raised.rule) == (256, 256, Rule.FLOOR)
    assert raised.raise_for_quality
    assert raised.reason == "budget 128 is below the EM-floor budget 256: raising"
    guard = _recommended(512, rule=Rule.QUALITY_GUARD, raise_for_quality=True)
    assert guard_floor(guard, _context(budget=128)) == guard  # its rule and reason stand
    first = guard_floor(_recommended(64, rule=Rule.METRICS_WAIT), _context())
    assert (first.budget, first.rule, first.raise_for_quality) == (256, Rule.METRICS_WAIT, False)
    above = _recommended(256)
    assert guard_floor(above, _context(budget=300)) is above


def test_apply_first_keep_unchanged_and_raise_at_once_settle() -> None:
    first = apply_first(_recommended(512), _context())
    assert (first.settled, first.reason) == (True, "why; applying 512")
    kept = keep_unchanged(_recommended(512), _context(budget=512))
    assert (kept.settled, kept.reason) == (True, "why; keeping 512")
    raised = raise_at_once(_recommended(512, raise_for_quality=True), _context(budget=256))
    assert (raised.settled, raised.reason) == (True, "why; 256 -> 512")
    p = _recommended(384)
    for step in (apply_first, keep_unchanged, raise_at_once):
        assert step(p, _context(budget=512)) is p


def test_ignore_within_tolerance_except_onto_the_target() -> None:
    spec = _spec(**{"control.tolerance": 0.25})
    held = ignore_within_tolerance(_recommended(410, rule=Rule.LOAD), _context(spec, budget=512))
    assert (held.budget, held.rule, held.settled) == (512, Rule.TOLERANCE, True)
    assert held.reason == "why; 410 is within 25% of 512: keeping 512"
    onto_target = _recommended(512)
    assert ignore_within_tolerance(onto_target, _context(spec, budget=480)) is onto_target


def test_stabilize_downscale_holds_or_bounds_the_cut() -> None:
    spec = _spec(**{"control.downscaleStabilization": "5m"})
    recent = ((NOW - timedelta(minutes=2), 512),)
    held = stabilize_downscale(_recommended(256), _context(spec, budget=512, history=recent))
    assert (held.budget, held.rule, held.settled) == (512, Rule.STABILIZATION, True)
    assert held.reason == "why; highest recommendation in the last 5m is 512: keeping 512"
    bounded = ((NOW - timedelta(minutes=1), 384), (NOW - timedelta(minutes=6), 1024))
    cut = stabilize_downscale(_recommended(256), _context(spec, budget=512, history=bounded))
    assert (cut.budget, cut.notes, cut.settled) == (384, ("stabilized to 384",), False)


@pytest.mark.parametrize(
    ("limit", "current", "budget", "expected", "note"),
    [
        ("maxStepDown", 512, 128, 416, "limited by maxStepDown 100"),  # 412 -> up to 416
        ("maxStepUp", 256, 512, 352, "limited by maxStepUp 100"),  # 356 -> down to 352
    ],
)
def test_limit_step_moves_at_most_the_limit_on_the_grid(
    limit: str, current: int, budget: int, expected: int, note: str
) -> None:
    spec = _spec(**{f"control.{limit}": 100, "budget.step": 32})
    limited = limit_step(_recommended(budget), _context(spec, budget=current))
    assert (limited.budget, limited.rule, limited.notes) == (expected, Rule.STEP_LIMIT, (note,))


@pytest.mark.parametrize(("sink", "held"), [("env", True), ("annotation", False)])
def test_wait_for_cooldown_holds_sinks_that_restart_pods(sink: str, held: bool) -> None:
    name = {"env": "M", "annotation": "stopbudget.io/m"}[sink]
    spec = _spec(**{"control.cooldown": "10m", "budget.sink": {"type": sink, "name": name}})
    context = _context(spec, budget=512, last_patch_time=NOW - timedelta(minutes=3))
    waited = wait_for_cooldown(_recommended(256), context)
    assert waited.settled is held
    if held:
        assert (waited.budget, waited.rule) == (512, Rule.COOLDOWN)
        assert waited.reason == "why; last patch 3m ago, cooldown 10m: keeping 512"


def test_move_says_what_stability_did() -> None:
    moved = move(_recommended(384, notes=("stabilized to 384",)), _context(budget=512))
    assert (moved.budget, moved.settled) == (384, True)
    assert moved.reason == "why; 512 -> 384 (stabilized to 384)"


# ---------------------------------------------------------------- the chain


def test_run_ends_at_the_step_that_settles() -> None:
    ran: list[str] = []

    def step(name: str, settles: bool) -> Step:
        def act(proposal: Proposal, context: Context, /) -> Proposal:
            ran.append(name)
            return replace(proposal, settled=settles)

        return act

    run((step("a", False), step("b", True), step("c", False)), _proposal(), _context())
    assert ran == ["a", "b"]


def _names(steps: tuple[Step, ...]) -> list[str]:
    names: list[str] = []
    for step in steps:
        names.append(getattr(step, "__name__", type(step).__name__))
        if isinstance(step, MetricsOrFallback):
            names += _names(step.steps)
    return names


def test_the_package_docstring_lists_the_chain_in_order() -> None:
    assert law.__doc__ is not None
    table = re.findall(r"^(?:\d[-+\d]*)\s+``(\w+)``", law.__doc__, flags=re.MULTILINE)
    assert table == ["target_and_floor", "cost_cap", "propose", *_names(STEPS)]
