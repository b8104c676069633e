"""The budget law: every step of DESIGN section 4, table by table, and its invariants."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from stopbudget import api
from stopbudget.core import law
from stopbudget.core.curve import Curve, Point, from_prior
from stopbudget.core.law import Observation, Rule, SignalReading, State, decide

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

# A curve measured on 10,000 questions per budget: lower bound ~= EM - 0.007.
BIG = 10_000
LADDER = {128: 0.40, 256: 0.72, 384: 0.78, 512: 0.84, 1024: 0.86}


def _curve(points: dict[int, float] | None = None, samples: int = BIG) -> Curve:
    points = LADDER if points is None else points
    return Curve.of(
        [Point(b, round(em * samples), samples) for b, em in points.items()],
        0.95,
        api.CurveSource.AUDIT,
    )


def _spec(**changes: Any) -> api.StopPolicySpec:
    doc: dict[str, Any] = {
        "targetRef": {"name": "vllm"},
        "budget": {"min": 64, "max": 1024, "initial": 512, "sink": {"type": "env", "name": "M"}},
        "quality": {"emTarget": 0.8, "emFloor": 0.7},
        "control": {"cooldown": "0s", "downscaleStabilization": "0s", "tolerance": 0.0},
    }
    for path, value in changes.items():
        node = doc
        *parents, last = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return api.StopPolicySpec.model_validate(doc)


def _load(pressure: float) -> Observation:
    return Observation(signals=(SignalReading("queue", 10.0, pressure * 10.0),))


IDLE = Observation()


# ---------------------------------------------------------------- steps 1-3


@pytest.mark.parametrize(
    ("pressure", "expected", "rule"),
    [
        (0.0, 512, Rule.TARGET),  # cheapest with lower >= 0.8 is 512 (0.84)
        (1.0, 512, Rule.TARGET),
        (1.25, 410, Rule.LOAD),  # 512 / 1.25 = 409.6 -> 410
        (1.8, 285, Rule.LOAD),  # 512 / 1.8 = 284.4 -> 285
        (4.0, 256, Rule.LOAD),  # floor: cheapest with lower >= 0.7 is 256 (0.72)
        (100.0, 256, Rule.LOAD),
    ],
)
def test_load_trades_down_toward_the_floor(pressure: float, expected: int, rule: Rule) -> None:
    d = decide(_spec(), _curve(), _load(pressure), State(budget=512), NOW)
    assert (d.target, d.floor) == (512, 256)
    assert d.budget == expected
    assert d.rule == rule
    assert d.state.budget == expected


def test_reason_names_the_signal_and_the_arithmetic() -> None:
    d = decide(_spec(), _curve(), _load(2.0), State(budget=512), NOW)
    assert d.reason == "pressure 2 (queue 20/10): 512/2 = 256, floor 256; 512 -> 256"


def test_without_evidence_the_budget_stays_at_initial() -> None:
    d = decide(_spec(), Curve.of([], 0.95, api.CurveSource.NONE), _load(5.0), State(), NOW)
    assert d.budget == 512
    assert d.rule == Rule.NO_EVIDENCE
    assert d.target is None
    assert d.floor is None
    assert "no prior and no audit" in d.reason


def test_prior_is_used_before_the_first_audit() -> None:
    spec = _spec(**{"quality.prior": [{"budget": 256, "em": 0.9, "samples": 5000}]})
    d = decide(spec, from_prior(spec.quality.prior, 0.95), IDLE, State(), NOW)
    assert d.budget == 256
    assert d.changes


@pytest.mark.parametrize(
    ("target", "floor", "budget", "unreachable"),
    [
        (0.95, 0.7, 1024, "no budget within [64, 1024] reaches emTarget"),
        (0.95, 0.9, 1024, "reaches emTarget nor emFloor"),
    ],
)
def test_unreachable_target_goes_to_max_and_says_so(
    target: float, floor: float, budget: int, unreachable: str
) -> None:
    spec = _spec(**{"quality.emTarget": target, "quality.emFloor": floor})
    d = decide(spec, _curve(), IDLE, State(budget=512), NOW)
    assert d.budget == budget
    assert d.unreachable is not None
    assert unreachable in d.unreachable


@pytest.mark.parametrize(
    ("cap", "priority", "pressure", "expected", "floor"),
    [
        (384, "quality", 0.0, 384, 256),  # the cap lowers the target
        (200, "quality", 0.0, 256, 256),  # ... but not below the floor
        (200, "cost", 0.0, 200, 200),  # unless cost comes first
        (200, "cost", 5.0, 200, 200),
        (2048, "quality", 0.0, 512, 256),  # a cap above the target changes nothing
    ],
)
def test_cost_cap_and_priority(
    cap: int, priority: str, pressure: float, expected: int, floor: int
) -> None:
    spec = _spec(**{"budget.max": 4096, "cost.maxTokensPerRequest": cap, "cost.priority": priority})
    d = decide(spec, _curve(), _load(pressure), State(budget=512), NOW)
    assert d.budget == expected
    assert d.floor == floor


# ---------------------------------------------------------------- step 4


def test_quality_guard_raises_at_once_and_asks_for_an_audit() -> None:
    spec = _spec(**{"control.cooldown": "1h", "control.downscaleStabilization": "1h"})
    obs = Observation(signals=_load(3.0).signals, em=0.61)
    state = State(budget=256, last_patch_time=NOW - timedelta(seconds=5))
    d = decide(spec, _curve(), obs, state, NOW)
    assert d.budget == 512
    assert d.rule == Rule.QUALITY_GUARD
    assert d.request_audit
    assert d.reason.startswith("live EM 0.61 < floor 0.7: raising to EM-target budget 512")


def test_quality_guard_at_the_target_budget_goes_to_max() -> None:
    d = decide(_spec(), _curve(), Observation(em=0.5), State(budget=512), NOW)
    assert d.budget == 1024
    assert "max until an audit re-measures" in d.reason


def test_live_em_above_the_floor_changes_nothing() -> None:
    d = decide(_spec(), _curve(), Observation(em=0.75), State(budget=512), NOW)
    assert d.budget == 512
    assert not d.request_audit


def test_firing_alert_raises_to_target_immediately() -> None:
    spec = _spec(**{"control.cooldown": "1h"})
    state = State(budget=256, last_patch_time=NOW - timedelta(seconds=1))
    d = decide(spec, _curve(), _load(4.0), state, NOW, raise_for_alert=True)
    assert d.budget == 512
    assert d.rule == Rule.ALERT
    without = decide(spec, _curve(), _load(4.0), state, NOW)
    assert without.budget == 256


# ---------------------------------------------------------------- step 5


def test_budgets_are_quantised_up_to_step() -> None:
    d = decide(_spec(**{"budget.step": 64}), _curve(), _load(1.8), State(budget=512), NOW)
    assert d.budget == 320  # 284.4 -> 320


def test_tolerance_ignores_small_moves() -> None:
    spec = _spec(**{"control.tolerance": 0.25})
    d = decide(spec, _curve(), _load(1.25), State(budget=512), NOW)  # 410 is 20 % below
    assert d.budget == 512
    assert d.rule == Rule.TOLERANCE
    d = decide(spec, _curve(), _load(1.8), State(budget=512), NOW)  # 285 is 44 % below
    assert d.budget == 285


def test_downscale_waits_for_the_stabilization_window() -> None:
    spec = _spec(**{"control.downscaleStabilization": "5m"})
    state = State(budget=512, history=((NOW - timedelta(minutes=2), 512),))
    d = decide(spec, _curve(), _load(2.0), state, NOW)
    assert d.budget == 512
    assert d.rule == Rule.STABILIZATION
    assert "highest recommendation in the last 5m is 512" in d.reason
    later = decide(spec, _curve(), _load(2.0), d.state, NOW + timedelta(minutes=4))
    assert later.budget == 256
    assert [b for _, b in later.state.history] == [256, 256]


def test_stabilization_goes_down_to_the_highest_recent_recommendation() -> None:
    spec = _spec(**{"control.downscaleStabilization": "5m"})
    history = ((NOW - timedelta(minutes=6), 1024), (NOW - timedelta(minutes=1), 384))
    d = decide(spec, _curve(), _load(4.0), State(budget=512, history=history), NOW)
    assert d.budget == 384
    assert "stabilized to 384" in d.reason


def test_going_up_is_not_stabilized() -> None:
    spec = _spec(**{"control.downscaleStabilization": "1h"})
    history = ((NOW - timedelta(minutes=1), 256),)
    d = decide(spec, _curve(), IDLE, State(budget=256, history=history), NOW)
    assert d.budget == 512


@pytest.mark.parametrize(
    ("field", "value", "start", "pressure", "expected"),
    [
        ("control.maxStepDown", 100, 512, 4.0, 412),
        ("control.maxStepUp", 100, 256, 0.0, 356),
    ],
)
def test_step_limits(field: str, value: int, start: int, pressure: float, expected: int) -> None:
    d = decide(_spec(**{field: value}), _curve(), _load(pressure), State(budget=start), NOW)
    assert d.budget == expected
    assert d.rule == Rule.STEP_LIMIT


def test_step_limits_land_on_multiples_of_step() -> None:
    spec = _spec(**{"budget.step": 32, "control.maxStepUp": 100, "control.maxStepDown": 100})
    up = decide(spec, _curve(), IDLE, State(budget=256), NOW)
    assert up.budget == 352  # 256 + 100 = 356 -> down to 352
    down = decide(spec, _curve(), _load(4.0), State(budget=512), NOW)
    assert down.budget == 416  # 512 - 100 = 412 -> up to 416


@pytest.mark.parametrize(("sink", "held"), [("env", True), ("arg", True), ("annotation", False)])
def test_cooldown_only_holds_sinks_that_restart_pods(sink: str, held: bool) -> None:
    name = {"env": "M", "arg": "--max", "annotation": "stopbudget.io/m"}[sink]
    spec = _spec(**{"control.cooldown": "10m", "budget.sink": {"type": sink, "name": name}})
    state = State(budget=512, last_patch_time=NOW - timedelta(minutes=3))
    d = decide(spec, _curve(), _load(2.0), state, NOW)
    assert (d.budget == 512) is held
    if held:
        assert d.rule == Rule.COOLDOWN
        assert "last patch 3m ago, cooldown 10m" in d.reason
        after = decide(spec, _curve(), _load(2.0), state, NOW + timedelta(minutes=8))
        assert after.budget == 256
        assert after.state.last_patch_time == NOW + timedelta(minutes=8)


def test_below_the_floor_is_raised_through_cooldown() -> None:
    spec = _spec(**{"control.cooldown": "1h", "control.tolerance": 0.5})
    state = State(budget=128, last_patch_time=NOW)
    d = decide(spec, _curve(), _load(50.0), state, NOW)
    assert d.budget == 256
    assert d.rule == Rule.FLOOR


# ---------------------------------------------------------------- step 6


FAILED = Observation(signals=(SignalReading("queue", 10.0, None, "connection refused"),))


@pytest.mark.parametrize(("behavior", "expected"), [("hold", 384), ("target", 512), ("max", 1024)])
def test_fallback_after_threshold(behavior: str, expected: int) -> None:
    spec = _spec(**{"control.fallback": {"failureThreshold": 3, "behavior": behavior}})
    state = State(budget=384)
    for tick in (1, 2):
        d = decide(spec, _curve(), FAILED, state, NOW)
        assert d.budget == 384
        assert d.rule == Rule.METRICS_WAIT
        assert not d.fallback
        assert f"metrics unavailable ({tick}/3: queue: connection refused): holding" in d.reason
        state = d.state
    d = decide(spec, _curve(), FAILED, state, NOW)
    assert d.fallback
    assert d.rule == Rule.FALLBACK
    assert d.budget == expected
    assert f"fallback {behavior}" in d.reason
    recovered = decide(spec, _curve(), _load(0.5), d.state, NOW)
    assert not recovered.fallback
    assert recovered.state.failures == 0
    assert recovered.budget == 512


def test_no_data_is_a_failure_not_zero_load() -> None:
    obs = Observation(signals=(SignalReading("queue", 10.0, None, "empty result"),))
    d = decide(_spec(), _curve(), obs, State(budget=256), NOW)
    assert d.budget == 256  # held, not raised to the no-load target
    assert d.state.failures == 1


def test_first_tick_applies_without_stability_rules() -> None:
    spec = _spec(**{"control.cooldown": "1h", "control.tolerance": 0.5})
    d = decide(spec, _curve(), _load(2.0), State(), NOW)
    assert d.budget == 256
    assert d.changes


# ---------------------------------------------------------------- invariants


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    low = draw(st.integers(min_value=1, max_value=512))
    high = draw(st.integers(min_value=low, max_value=4096))
    step = draw(st.sampled_from([1, 8, 32, 64]))
    ladder = draw(st.lists(st.integers(low, high), min_size=0, max_size=6, unique=True))
    ems = draw(st.lists(st.floats(0, 1), min_size=len(ladder), max_size=len(ladder)))
    samples = draw(st.sampled_from([20, 200, 5000]))
    floor = draw(st.floats(0, 1))
    target = draw(st.floats(floor, 1))
    sink = draw(st.sampled_from(["env", "annotation"]))
    cap = draw(st.none() | st.integers(low, 8192))
    spec = api.StopPolicySpec.model_validate(
        {
            "targetRef": {"name": "t"},
            "budget": {
                "min": low,
                "max": high,
                "step": step,
                "sink": {"type": sink, "name": "stopbudget.io/b" if sink != "env" else "B"},
            },
            "quality": {"emTarget": target, "emFloor": floor},
            "cost": {"priority": draw(st.sampled_from(["quality", "cost"]))}
            | ({"maxTokensPerRequest": cap} if cap else {}),
            "control": {
                "cooldown": f"{draw(st.integers(0, 600))}s",
                "downscaleStabilization": f"{draw(st.integers(0, 600))}s",
                "tolerance": draw(st.sampled_from([0.0, 0.05, 0.1, 0.3])),
                "maxStepUp": draw(st.none() | st.integers(64, 2048)) or None,
                "maxStepDown": draw(st.none() | st.integers(64, 2048)) or None,
                "fallback": {
                    "failureThreshold": draw(st.integers(1, 4)),
                    "behavior": draw(st.sampled_from(["hold", "target", "max"])),
                },
            },
        }
    )
    spec_json = spec.to_json()
    for key in ("maxStepUp", "maxStepDown"):
        if spec_json["control"].get(key) is None:
            spec_json["control"].pop(key, None)
    curve = Curve.of(
        [Point(b, round(em * samples), samples) for b, em in zip(ladder, ems, strict=True)],
        0.95,
        api.CurveSource.AUDIT,
    )
    current = draw(st.none() | st.integers(low, high))
    history = tuple(
        (NOW - timedelta(seconds=s), b)
        for s, b in draw(
            st.lists(st.tuples(st.integers(1, 900), st.integers(low, high)), max_size=4)
        )
    )
    last_patch = draw(st.none() | st.integers(0, 900).map(lambda s: NOW - timedelta(seconds=s)))
    state = State(current, last_patch, draw(st.integers(0, 5)), history)
    pressure = draw(st.floats(0, 50))
    em = draw(st.none() | st.floats(0, 1))
    failed = draw(st.booleans())
    return {
        "spec": spec,
        "curve": curve,
        "state": state,
        "pressure": pressure,
        "em": em,
        "failed": failed,
        "alert": draw(st.booleans()),
    }


def _obs(pressure: float, em: float | None, failed: bool) -> Observation:
    value = None if failed else pressure * 10.0
    return Observation(
        signals=(SignalReading("q", 10.0, value, "down" if failed else None),), em=em
    )


def _run(s: dict[str, Any], pressure: float | None = None) -> law.Decision:
    p = s["pressure"] if pressure is None else pressure
    return decide(
        s["spec"],
        s["curve"],
        _obs(p, s["em"], s["failed"]),
        s["state"],
        NOW,
        raise_for_alert=s["alert"],
    )


QUALITY_RULES = {Rule.QUALITY_GUARD, Rule.ALERT, Rule.FLOOR}


@pytest.mark.slow
@settings(max_examples=600, deadline=None)
@given(scenarios())
def test_invariants(s: dict[str, Any]) -> None:
    spec: api.StopPolicySpec = s["spec"]
    d = _run(s)
    low, high, step = spec.budget.min, spec.budget.max, spec.budget.step
    current = s["state"].budget

    # Always within [min, max], and on the step grid (or at a bound).
    assert low <= d.budget <= high
    assert d.budget % step == 0 or d.budget in {low, high} or d.budget == current

    # Never below the floor, unless priority cost lets the cap win.
    if not s["curve"].empty:
        true_floor = s["curve"].cheapest_meeting(spec.quality.em_floor, low, high) or high
        cap = spec.cost.max_tokens_per_request
        if spec.cost.priority == api.Priority.COST and cap is not None:
            true_floor = min(true_floor, cap)
        assert d.budget >= min(true_floor, high)

    # Same input, same output.
    assert _run(s) == d

    if current is not None and d.budget != current and d.rule not in QUALITY_RULES:
        # Never moves inside the tolerance (but the EM-target budget is always reached).
        if d.budget != d.target:
            assert abs(d.budget - current) > spec.control.tolerance * current
        # Never patches a restarting sink within the cooldown, except up for quality.
        last = s["state"].last_patch_time
        if spec.budget.sink.type in api.RESTARTING_SINKS and last is not None:
            assert NOW - last >= spec.control.cooldown


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(scenarios(), st.floats(0, 50), st.floats(0, 50))
def test_budget_does_not_rise_with_pressure(s: dict[str, Any], p1: float, p2: float) -> None:
    assume(p1 != p2)
    lower, higher = sorted((p1, p2))
    assert _run(s, lower).budget >= _run(s, higher).budget


def test_never_raises_while_overloaded() -> None:
    # Pressure is measured at 256: 512/1.2 would raise the budget into the overload.
    d = decide(_spec(), _curve(), _load(1.2), State(budget=256), NOW)
    assert d.budget == 256
    assert "256/1.2 = 213.33, floor 256" in d.reason


@pytest.mark.parametrize(
    ("pressure", "expected"), [(0.9, 285), (0.5, 512), (0.0, 512), (0.99, 259)]
)
def test_going_up_uses_the_headroom_only(pressure: float, expected: int) -> None:
    d = decide(_spec(), _curve(), _load(pressure), State(budget=256), NOW)
    assert d.budget == expected
    assert d.rule == Rule.TARGET


def test_tolerance_never_keeps_the_budget_just_short_of_the_target() -> None:
    spec = _spec(**{"control.tolerance": 0.1})
    d = decide(spec, _curve(), IDLE, State(budget=480), NOW)  # 512 is 6.7 % away
    assert d.budget == 512
    held = decide(spec, _curve(), _load(0.98), State(budget=480), NOW)  # headroom 490
    assert held.budget == 480
    assert held.rule == Rule.TOLERANCE


def test_firing_alert_raise_skips_cooldown_without_load_too() -> None:
    # Found by hypothesis: at pressure 0 the law already aims at b_target, and the
    # raise must still skip the cooldown, or less load would mean a lower budget.
    spec = _spec(**{"control.cooldown": "1h"})
    state = State(budget=256, last_patch_time=NOW - timedelta(seconds=1))
    d = decide(spec, _curve(), IDLE, state, NOW, raise_for_alert=True)
    assert d.budget == 512
    assert d.rule == Rule.ALERT
