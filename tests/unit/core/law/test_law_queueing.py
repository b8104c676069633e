"""The model-based load step (``spec.control.model: queueing``, core/law/queueing.py).

Table tests of :func:`predict_load` on its own, then through :func:`decide`, and
hypothesis invariants: more arrivals never raise the budget; the budget stays
within [min, max] and never below the floor the quality steps enforce.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from stopbudget import api
from stopbudget.core.curve import Curve, Point
from stopbudget.core.law import Context, Evidence, Observation, Proposal, Rule, State, decide
from stopbudget.core.law.load import follow_load
from stopbudget.core.law.queueing import Load, predict_load
from tests.unit.core.law.test_control import BIG, LADDER, _spec
from tests.unit.core.law.test_control import scenarios as law_scenarios

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
#: Mean tokens per request the audits measured at each budget of the ladder.
TOKENS = {128: 100.0, 256: 200.0, 384: 280.0, 512: 350.0, 1024: 500.0}
QUEUEING = {"control.model": "queueing"}


def _curve(tokens: dict[int, float] | None = TOKENS) -> Curve:
    return Curve.of(
        [
            Point(b, round(em * BIG), BIG, None if tokens is None else tokens.get(b))
            for b, em in LADDER.items()
        ],
        0.95,
        api.CurveSource.AUDIT,
    )


def _obs(
    pressure: float,
    arrivals: float | None = 2.0,
    throughput: float | None = 1000.0,
    served: float | None = None,
) -> Observation:
    return Observation(
        signals=(api_signal(pressure),),
        arrival_rate=arrivals,
        throughput=throughput,
        served_tokens=served,
    )


def api_signal(pressure: float) -> Any:
    from stopbudget.core.law import SignalReading

    return SignalReading("queue", 10.0, pressure * 10.0)


def _context(observation: Observation, budget: int | None = 512, **changes: Any) -> Context:
    spec = _spec(**(QUEUEING | changes))
    curve = _curve()
    return Context(
        spec, curve, observation, State(budget=budget), NOW, False, Evidence(target=512, floor=256)
    )


def _step(observation: Observation, budget: int | None = 512) -> Proposal:
    """follow_load's proposal, then predict_load's."""
    context = _context(observation, budget)
    start = Proposal(512.0, Rule.TARGET, "EM-target budget 512")
    return predict_load(follow_load(start, context), context)


# ---------------------------------------------------------------- the step


@pytest.mark.parametrize(
    ("pressure", "arrivals", "throughput", "expected", "rule"),
    [
        # p(b) = p x max(arrivals x tokens(b) / throughput, tokens(b) / tokens(512)).
        (1.0, 2.0, 700.0, 512, Rule.TARGET),  # 2 x 350 / 700 = 1: the target fits
        (1.0, 2.5, 700.0, 384, Rule.LOAD),  # 512: 1.25; 384: 2.5 x 280 / 700 = 1
        (1.0, 5.0, 700.0, 256, Rule.LOAD),  # nothing fits: the floor
        (2.0, 1.0, 700.0, 256, Rule.LOAD),  # scaled: 384 -> 2 x 280/350 = 1.6; 256 -> 1.14
        (1.5, 1.0, 1000.0, 256, Rule.LOAD),  # scaled: 256 -> 1.5 x 200/350 = 0.86
        (1.2, 0.0, 0.0, 384, Rule.LOAD),  # a lull: the pressure scaled by tokens, 384 -> 0.96
    ],
)
def test_the_highest_budget_predicted_at_or_under_pressure_1(
    pressure: float, arrivals: float, throughput: float, expected: int, rule: Rule
) -> None:
    p = _step(_obs(pressure, arrivals, throughput))
    assert (p.budget, p.rule) == (expected, rule)
    assert p.reason.startswith(f"queueing: pressure {pressure:g}")


def test_the_reasons_arithmetic() -> None:
    p = _step(_obs(1.0, 2.5, 700.0))
    assert p.reason == (
        "queueing: pressure 1 at 700 tokens/s, 2.5 req/s: budget 384 "
        "(predicted pressure 1), floor 256, target 512"
    )


def test_going_up_no_further_than_the_reactive_headroom() -> None:
    # From 256 at pressure 0.55 the reactive headroom is 256/0.55 = 465.45; the model
    # alone would take 512 (0.55 x max(2 x 350 / 1000, 350 / 200) = 0.9625).
    p = _step(_obs(0.55, 2.0, 1000.0), budget=256)
    assert p.budget == pytest.approx(256 / 0.55)
    # At 0.6 the model's 384 (0.6 x 280 / 200 = 0.84; 512: 1.05) is below the headroom.
    assert _step(_obs(0.6, 2.0, 1000.0), budget=256).budget == 384
    idle = _step(_obs(0.0, 0.0, 0.0), budget=256)
    assert (idle.budget, idle.rule) == (512, Rule.TARGET)


def test_served_tokens_beyond_the_audits_count_toward_the_load() -> None:
    # Served requests generate 150 tokens more than the audit at 512 (500 vs 350):
    # 384 then costs 2 x 430 / 1000 = 0.86, 512 costs 1.0 -> the target still fits ...
    assert _step(_obs(1.0, 2.0, 1000.0, served=500.0)).budget == 512
    # ... and at 2.2 req/s only 384 does (2.2 x 430 / 1000 = 0.946; 512: 1.1).
    assert _step(_obs(1.0, 2.2, 1000.0, served=500.0)).budget == 384


def test_load_prediction() -> None:
    load = Load(pressure=2.0, arrival_rate=1.0, throughput=100.0, extra=10.0, applied=90.0)
    assert load.predicted(40.0) == pytest.approx(2.0 * max(50.0 / 100.0, 50.0 / 100.0))
    assert load.predicted(90.0) == pytest.approx(2.0)  # p at the applied budget
    assert replace(load, pressure=0.0).predicted(1e9) == 0.0


@pytest.mark.parametrize(
    ("observation", "tokens", "why"),
    [
        (_obs(2.0, arrivals=None), TOKENS, "no arrival rate"),
        (_obs(2.0, throughput=None), TOKENS, "no throughput"),
        (_obs(2.0, throughput=0.0), TOKENS, "no tokens generated in the window"),
        (_obs(2.0), None, "no tokens per request in the curve within [floor, target]"),
    ],
)
def test_without_its_inputs_the_reactive_rule_and_why(
    observation: Observation, tokens: dict[int, float] | None, why: str
) -> None:
    spec = _spec(**QUEUEING)
    reactive = decide(_spec(), _curve(tokens), observation, State(budget=512), NOW)
    d = decide(spec, _curve(tokens), observation, State(budget=512), NOW)
    assert (d.budget, d.rule) == (reactive.budget, reactive.rule) == (256, Rule.LOAD)
    assert f"(queueing model: {why}: reactive)" in d.reason


def test_the_default_model_is_reactive_and_the_step_does_nothing() -> None:
    assert _spec().control.model is api.LoadModel.REACTIVE
    context = replace(_context(_obs(2.0)), spec=_spec())
    proposal = Proposal(300.0, Rule.LOAD, "why")
    assert predict_load(proposal, context) is proposal


def test_decide_with_the_queueing_model() -> None:
    d = decide(_spec(**QUEUEING), _curve(), _obs(1.0, 2.5, 700.0), State(budget=512), NOW)
    assert (d.budget, d.rule) == (384, Rule.LOAD)
    assert d.reason.endswith("; 512 -> 384")


def test_a_bad_model_name_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"control\.model"):
        _spec(**{"control.model": "mm1"})


# ---------------------------------------------------------------- invariants


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    """The law's scenarios, with the queueing model, tokens per budget and rates."""
    s: dict[str, Any] = draw(law_scenarios())
    spec: api.StopPolicySpec = s["spec"]
    control = spec.control.model_copy(update={"model": api.LoadModel.QUEUEING})
    s["spec"] = spec.model_copy(update={"control": control})
    points = [
        replace(p, mean_tokens=draw(st.none() | st.floats(0, 5000))) for p in s["curve"].points
    ]
    s["curve"] = Curve.of(points, 0.95, api.CurveSource.AUDIT)
    s["throughput"] = draw(st.none() | st.floats(0, 1e5))
    s["served"] = draw(st.none() | st.floats(0, 5000))
    return s


def _decide(s: dict[str, Any], arrivals: float | None) -> Any:
    value = None if s["failed"] else s["pressure"] * 10.0
    from stopbudget.core.law import SignalReading

    observation = Observation(
        signals=(SignalReading("q", 10.0, value, "down" if s["failed"] else None),),
        em=s["em"],
        arrival_rate=arrivals,
        throughput=s["throughput"],
        served_tokens=s["served"],
    )
    return decide(s["spec"], s["curve"], observation, s["state"], NOW, raise_for_alert=s["alert"])


@settings(max_examples=500, deadline=None)
@given(scenarios(), st.floats(0, 100), st.floats(0, 100))
def test_more_arrivals_never_raise_the_budget(s: dict[str, Any], a1: float, a2: float) -> None:
    assume(a1 != a2)
    fewer, more = sorted((a1, a2))
    low, high = _decide(s, fewer), _decide(s, more)
    assert high.recommended <= low.recommended
    assert high.budget <= low.budget


@settings(max_examples=500, deadline=None)
@given(scenarios(), st.none() | st.floats(0, 100))
def test_within_bounds_and_never_below_the_quality_floor(
    s: dict[str, Any], arrivals: float | None
) -> None:
    spec: api.StopPolicySpec = s["spec"]
    d = _decide(s, arrivals)
    low, high = spec.budget.min, spec.budget.max
    assert low <= d.budget <= high
    assert low <= d.recommended <= high
    if not s["curve"].empty:
        floor = s["curve"].cheapest_meeting(spec.quality.em_floor, low, high) or high
        cap = spec.cost.max_tokens_per_request
        if spec.cost.priority == api.Priority.COST and cap is not None:
            floor = min(floor, cap)
        assert d.budget >= min(floor, high)
        assert d.recommended >= min(floor, high)
    assert _decide(s, arrivals) == d
