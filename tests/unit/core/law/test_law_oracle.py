"""The law as a chain of steps decides exactly as the law before the refactor did.

``tests/support/law_reference.py`` is the pre-refactor ``decide``, frozen as an oracle. On
hypothesis-generated specs, curves, observations and states (wider than the
invariants' in ``test_control.py``: budgets applied outside [min, max], several
signals, failed EM queries, every sink type, ``budget.initial``), the two return
equal :class:`~stopbudget.core.law.Decision` objects: budget, recommendation, rule,
reason string, flags and the state to remember. A second test runs both over
sequences of ticks, each fed its own previous state, so the windows of the
stabilization, the cooldown and the failure counts are compared as they build up.

The law changed since in one place only: when no budget reaches a bound on a curve
with per-question outcomes (``Curve.paired``), the paired rule (``core/paired.py``)
replaces ``max``. The generated curves here have no per-question outcomes (as a
prior), so the oracle still applies to every one of them; ``_old_rule_applies``
says so and skips any that would not. The paired rule's own tests are in
``tests/unit/core/test_paired.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from stopbudget import api
from stopbudget.core.curve import Curve, Point
from stopbudget.core.law import Observation, SignalReading, State, decide
from tests.support import law_reference

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

SINK_NAMES = {
    "env": "B",
    "arg": "--max-tokens",
    "annotation": "stopbudget.io/b",
    "configMap": "max_tokens",
}


def _old_rule_applies(curve: Curve) -> bool:
    """Without per-question outcomes the paired rule never acts: the oracle is the law."""
    return not curve.paired


@st.composite
def specs(draw: st.DrawFn) -> api.StopPolicySpec:
    low = draw(st.integers(min_value=1, max_value=512))
    high = draw(st.integers(min_value=low, max_value=4096))
    step = draw(st.sampled_from([1, 8, 32, 64, 100]))
    floor = draw(st.floats(0, 1))
    sink = draw(st.sampled_from(sorted(SINK_NAMES)))
    cap = draw(st.none() | st.integers(low, 8192))
    budget: dict[str, Any] = {
        "min": low,
        "max": high,
        "step": step,
        "sink": {"type": sink, "name": SINK_NAMES[sink]}
        | ({"configMapName": "limits"} if sink == "configMap" else {}),
    }
    if draw(st.booleans()):
        budget["initial"] = draw(st.integers(low, high))
    control: dict[str, Any] = {
        "cooldown": f"{draw(st.integers(0, 600))}s",
        "downscaleStabilization": f"{draw(st.integers(0, 600))}s",
        "tolerance": draw(st.sampled_from([0.0, 0.05, 0.1, 0.3, 0.9])),
        "fallback": {
            "failureThreshold": draw(st.integers(1, 4)),
            "behavior": draw(st.sampled_from(["hold", "target", "max"])),
        },
    }
    for key in ("maxStepUp", "maxStepDown"):
        limits = st.integers(step, 2048) | st.sampled_from([step, 2 * step, 4 * step, 128, 256])
        if (limit := draw(st.none() | limits)) is not None:
            control[key] = limit
    return api.StopPolicySpec.model_validate(
        {
            "targetRef": {"name": "t"},
            "budget": budget,
            "quality": {"emTarget": draw(st.floats(floor, 1)), "emFloor": floor},
            "cost": {"priority": draw(st.sampled_from(["quality", "cost"]))}
            | ({"maxTokensPerRequest": cap} if cap is not None else {}),
            "control": control,
        }
    )


@st.composite
def curves(draw: st.DrawFn, spec: api.StopPolicySpec) -> Curve:
    low, high = spec.budget.min, spec.budget.max
    # Ladder budgets outside [min, max] too: the law must ignore them.
    ladder = draw(st.lists(st.integers(max(1, low - 64), high + 64), max_size=6, unique=True))
    ems = draw(st.lists(st.floats(0, 1), min_size=len(ladder), max_size=len(ladder)))
    if draw(st.booleans()):  # EM rising with the budget, as measured curves mostly do
        ladder, ems = sorted(ladder), sorted(ems)
    samples = draw(st.sampled_from([20, 200, 5000]))
    return Curve.of(
        [Point(b, round(em * samples), samples) for b, em in zip(ladder, ems, strict=True)],
        0.95,
        api.CurveSource.AUDIT,
    )


def sometimes(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """None one time in five, else ``strategy``: most ticks read their metrics."""
    return st.sampled_from(range(5)).flatmap(lambda k: st.none() if k == 4 else strategy)


def readings() -> st.SearchStrategy[SignalReading]:
    value = sometimes(st.floats(0, 500) | st.sampled_from([0.0, 2.5, 5.0, 10.0, 20.0, 40.0]))
    return st.builds(
        lambda name, target, v, error: SignalReading(name, target, v, error if v is None else None),
        st.sampled_from(["queue", "latency", "kv"]),
        st.sampled_from([0.5, 10.0, 60.0]),
        value,
        st.sampled_from(["connection refused", "empty result", "NaN"]),
    )


def observations() -> st.SearchStrategy[Observation]:
    return st.builds(
        Observation,
        signals=st.lists(readings(), max_size=3).map(tuple),
        em=st.none() | st.none() | st.floats(0, 1),
        em_error=st.sampled_from([None, None, None, None, "timeout"]),
    )


@st.composite
def states(draw: st.DrawFn, spec: api.StopPolicySpec, curve: Curve, now: datetime = NOW) -> State:
    # Applied budgets outside [min, max] too: the sink may hold any value. And the
    # grid, the ladder's budgets, their halves and doubles: where the arithmetic meets bounds.
    low, high = spec.budget.min, spec.budget.max
    step = spec.budget.step
    on_grid = st.integers(max(1, low // step), max(1, high // step)).map(lambda k: k * step)
    budgets = st.integers(low, high) | st.integers(1, high + 200) | on_grid
    if not curve.empty:
        near = sorted({k for p in curve.points for k in (p.budget // 2, p.budget, 2 * p.budget)})
        budgets |= st.sampled_from(near)
    history = draw(st.lists(st.tuples(st.integers(0, 900), budgets), max_size=4))
    last_patch = draw(st.none() | st.integers(0, 900))
    return State(
        budget=draw(sometimes(budgets)),
        last_patch_time=None if last_patch is None else now - timedelta(seconds=last_patch),
        failures=draw(st.integers(0, 5)),
        history=tuple((now - timedelta(seconds=s), b) for s, b in history),
    )


@st.composite
def ticks(draw: st.DrawFn) -> dict[str, Any]:
    spec = draw(specs())
    curve = draw(curves(spec))
    return {
        "spec": spec,
        "curve": curve,
        "observation": draw(observations()),
        "state": draw(states(spec, curve)),
        "alert": draw(st.sampled_from([False, False, False, True])),
    }


@pytest.mark.slow
@settings(max_examples=1500, deadline=None)
@given(ticks())
def test_one_tick_decides_as_before(t: dict[str, Any]) -> None:
    assume(_old_rule_applies(t["curve"]))
    args = (t["spec"], t["curve"], t["observation"], t["state"], NOW)
    expected = law_reference.decide(*args, raise_for_alert=t["alert"])
    assert decide(*args, raise_for_alert=t["alert"]) == expected


@st.composite
def runs(draw: st.DrawFn) -> dict[str, Any]:
    spec = draw(specs())
    steps = draw(
        st.lists(
            st.tuples(st.integers(0, 400), observations(), st.booleans()), min_size=2, max_size=8
        )
    )
    curve = draw(curves(spec))
    return {"spec": spec, "curve": curve, "state": draw(states(spec, curve)), "steps": steps}


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(runs())
def test_a_run_of_ticks_decides_as_before(r: dict[str, Any]) -> None:
    assume(_old_rule_applies(r["curve"]))
    now, state, expected_state = NOW, r["state"], r["state"]
    for seconds, observation, alert in r["steps"]:
        now += timedelta(seconds=seconds)
        got = decide(r["spec"], r["curve"], observation, state, now, raise_for_alert=alert)
        expected = law_reference.decide(
            r["spec"], r["curve"], observation, expected_state, now, raise_for_alert=alert
        )
        assert got == expected
        state, expected_state = got.state, expected.state
