"""The paired rule for flat curves (core/paired.py) and where the law uses it (evidence.py)."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stopbudget import api
from stopbudget.core import paired
from stopbudget.core.curve import Answers, Curve, Point, from_prior
from stopbudget.core.law import Observation, State, decide
from stopbudget.core.law.evidence import target_and_floor

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def binomial_tail(worse: int, n: int) -> Fraction:
    """P(X >= worse), X ~ Binomial(n, 1/2), by the definition."""
    return Fraction(sum(math.comb(n, k) for k in range(worse, n + 1)), 2**n)


@pytest.mark.parametrize(
    ("worse", "better", "expected"),
    [
        (0, 0, 1.0),  # no discordant question: no evidence at all
        (5, 0, 1 / 32),  # five times worse, never better
        (0, 5, 1.0),
        (3, 3, 0.65625),  # 42/64
        (10, 2, 0.019287109375),  # 79/4096
    ],
)
def test_mcnemar_known_values(worse: int, better: int, expected: float) -> None:
    assert paired.mcnemar_worse(worse, better) == pytest.approx(expected, rel=1e-12)


@given(worse=st.integers(0, 400), better=st.integers(0, 400))
def test_mcnemar_is_the_binomial_tail(worse: int, better: int) -> None:
    p = paired.mcnemar_worse(worse, better)
    assert p == pytest.approx(float(binomial_tail(worse, worse + better)), rel=1e-12)
    assert 0 < p <= 1
    assert paired.mcnemar_worse(worse + 1, better) <= p  # one more loss: more evidence


@settings(deadline=None, max_examples=40)
@given(worse=st.integers(0, 2500), n=st.integers(1900, 2500))
def test_above_the_exact_range_the_tail_is_summed_in_logs(worse: int, n: int) -> None:
    worse = min(worse, n)
    exact = float(binomial_tail(worse, n))
    assert paired._tail_in_logs(worse, n) == pytest.approx(exact, rel=1e-9, abs=1e-300)


def test_mcnemar_rejects_negative_counts() -> None:
    with pytest.raises(ValueError, match="discordant counts"):
        paired.mcnemar_worse(-1, 0)


LADDER = (256, 512, 1024, 2048)


@st.composite
def paired_curves(draw: st.DrawFn) -> Curve:
    """A ladder audited ``audits`` times on the same questions; budgets correlated as
    truncation makes them (a question right at one budget is mostly right above)."""
    audits = draw(st.integers(1, 3))
    questions = draw(st.integers(5, 200))
    ems = sorted(draw(st.lists(st.floats(0, 1), min_size=4, max_size=4)))
    flip = draw(st.floats(0, 0.3))
    rng = random.Random(draw(st.integers(0, 2**32)))
    per_budget: dict[int, list[Answers]] = {b: [] for b in LADDER}
    for _ in range(audits):
        everyone = (1 << questions) - 1
        failed = sum(1 << q for q in range(questions) if rng.random() < 0.05)
        scored = everyone & ~failed
        level = [rng.random() for _ in range(questions)]
        for b, em in zip(LADDER, ems, strict=True):
            correct = sum(
                1 << q for q in range(questions) if (level[q] < em) != (rng.random() < flip)
            )
            per_budget[b].append(Answers(scored, correct & scored))
    points = [
        Point(
            b,
            sum(a.correct.bit_count() for a in answers),
            sum(a.scored.bit_count() for a in answers),
            audits=audits,
            answers=tuple(answers),
        )
        for b, answers in per_budget.items()
    ]
    confidence = draw(st.sampled_from([0.8, 0.9, 0.95, 0.99]))
    return Curve.of(points, confidence, api.CurveSource.AUDIT)


@given(curve=paired_curves(), low=st.sampled_from(LADDER), high=st.sampled_from(LADDER))
def test_the_paired_rule_never_picks_a_budget_the_test_rejects(
    curve: Curve, low: int, high: int
) -> None:
    choice = paired.cheapest_not_worse(curve, low, high)
    if low > high:
        assert choice is None
        return
    assert choice is not None
    within = [p for p in curve.points if low <= p.budget <= high]
    assert choice.best == max(within, key=lambda p: (p.em, -p.budget)).budget
    alpha = 1 - curve.confidence
    (chosen,) = [p for p in curve.points if p.budget == choice.budget]
    (top,) = [p for p in curve.points if p.budget == choice.best]
    p, _ = paired.test(curve, chosen, top)
    assert p == choice.p >= alpha  # the test does not reject the chosen budget
    for cheaper in curve.points:  # and rejects every cheaper one within the bounds
        if low <= cheaper.budget < choice.budget:
            assert paired.test(curve, cheaper, top)[0] < alpha
    assert low <= choice.budget <= choice.best <= high


def test_a_prior_has_no_paired_rule() -> None:
    prior = [api.PriorPoint(budget=b, em=0.5, samples=400) for b in LADDER]
    assert paired.cheapest_not_worse(from_prior(prior, 0.95), 256, 2048) is None


def _spec(em_target: float, em_floor: float) -> api.StopPolicySpec:
    return api.StopPolicySpec.model_validate(
        {
            "targetRef": {"name": "t"},
            "budget": {"min": 256, "max": 2048, "step": 128, "sink": {"type": "env", "name": "B"}},
            "quality": {"emTarget": em_target, "emFloor": em_floor},
        }
    )


def _flat(questions: int = 400) -> Curve:
    """A flat curve: every budget answers the same 200 of 400 questions, except that 256
    misses 40 of them."""
    everyone = (1 << questions) - 1
    right = (1 << (questions // 2)) - 1
    cut = right & ~((1 << 40) - 1)
    points = [
        Point(b, c.bit_count(), questions, audits=1, answers=(Answers(everyone, c),))
        for b, c in ((256, cut), (512, right), (1024, right), (2048, right))
    ]
    return Curve.of(points, 0.95, api.CurveSource.AUDIT)


def test_a_flat_curve_takes_the_cheapest_budget_not_worse_than_the_best() -> None:
    evidence = target_and_floor(_spec(0.8, 0.6), _flat())
    assert evidence is not None
    assert (evidence.target, evidence.floor) == (512, 512)
    assert evidence.unreachable == (
        "no budget within [256, 2048] reaches emTarget nor emFloor (target 0.8, floor 0.6) "
        "on the audit curve; 512 has the best measured EM: using 512"
    )


def test_the_reason_names_the_test() -> None:
    curve = _flat()
    points = list(curve.points)
    # 1024 now gets 3 more questions right than 512 and 2 fewer: not significant.
    a512 = points[1].answers[0]
    more = Answers(a512.scored, (a512.correct | (0b111 << 300)) & ~0b11)
    points[2] = Point(1024, more.correct.bit_count(), 400, audits=1, answers=(more,))
    points[3] = Point(2048, more.correct.bit_count(), 400, audits=1, answers=(more,))
    evidence = target_and_floor(_spec(0.8, 0.6), Curve.of(points, 0.95, api.CurveSource.AUDIT))
    assert evidence is not None
    assert evidence.target == 512
    assert evidence.unreachable is not None
    assert evidence.unreachable.endswith(
        "; 512 is not significantly worse than 1024 (McNemar exact, p=0.50 >= 0.05 "
        "on 400 paired questions): using 512"
    )


def test_the_target_never_goes_below_a_reachable_floor() -> None:
    # emFloor 0.45 is reached by 512 (EM 0.5 on 400), emTarget 0.8 by none.
    evidence = target_and_floor(_spec(0.8, 0.45), _flat())
    assert evidence is not None
    assert evidence.floor == 512
    assert evidence.target == 512
    assert "reaches emTarget (target" in (evidence.unreachable or "")


def test_the_law_applies_it_and_the_prior_keeps_max() -> None:
    spec = _spec(0.8, 0.6)
    decision = decide(spec, _flat(), Observation(), State(), NOW)
    assert decision.budget == 512
    assert decision.unreachable is not None
    assert "using 512" in decision.unreachable
    prior = from_prior([api.PriorPoint(budget=b, em=0.5, samples=400) for b in LADDER], 0.95)
    old = decide(spec, prior, Observation(), State(), NOW)
    assert old.budget == 2048
    assert old.unreachable is not None
    assert old.unreachable.endswith("using max")
