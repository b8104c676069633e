"""The EM-vs-budget curve: Wilson bounds and the cheapest budget meeting a target."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stopbudget.api import CurvePoint, CurveSource, PriorPoint
from stopbudget.core import curve


@pytest.mark.parametrize(
    ("hits", "samples", "confidence", "expected"),
    [
        (84, 100, 0.95, 0.7709),  # by hand: p=.84, z=1.6449
        (0, 10, 0.95, 0.0),
        (10, 10, 0.95, 0.7873),  # all correct on 10: far from 1
        (1000, 1000, 0.95, 0.9973),
        (50, 100, 0.5, 0.5),  # z = 0 at 50 %: the bound is the estimate
    ],
)
def test_wilson_lower_known_values(
    hits: int, samples: int, confidence: float, expected: float
) -> None:
    assert curve.wilson_lower(hits, samples, confidence) == pytest.approx(expected, abs=1e-3)


def test_wilson_lower_without_samples_is_zero() -> None:
    assert curve.wilson_lower(0, 0, 0.95) == 0.0


def test_wilson_lower_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError, match="hits must be within"):
        curve.wilson_lower(11, 10, 0.95)


@given(
    samples=st.integers(min_value=1, max_value=5000),
    frac=st.floats(min_value=0, max_value=1),
    confidence=st.floats(min_value=0.5, max_value=0.999),
)
def test_wilson_lower_is_a_lower_bound(samples: int, frac: float, confidence: float) -> None:
    hits = round(frac * samples)
    lower = curve.wilson_lower(hits, samples, confidence)
    assert 0.0 <= lower <= hits / samples + 1e-12


@given(samples=st.integers(min_value=1, max_value=2000), frac=st.floats(min_value=0, max_value=1))
def test_wilson_lower_grows_with_evidence_and_hits(samples: int, frac: float) -> None:
    hits = round(frac * samples)
    more = curve.wilson_lower(hits * 4, samples * 4, 0.95)
    assert more >= curve.wilson_lower(hits, samples, 0.95) - 1e-12
    if hits < samples:
        assert curve.wilson_lower(hits + 1, samples, 0.95) > curve.wilson_lower(hits, samples, 0.95)


@given(confidence=st.floats(min_value=0.5, max_value=0.99))
def test_higher_confidence_is_more_cautious(confidence: float) -> None:
    assert curve.wilson_lower(70, 100, confidence + 0.009) <= curve.wilson_lower(
        70, 100, confidence
    )


def _prior(*points: tuple[int, float, int]) -> list[PriorPoint]:
    return [PriorPoint(budget=b, em=em, samples=s) for b, em, s in points]


def test_cheapest_budget_meeting_a_target_uses_the_lower_bound() -> None:
    c = curve.from_prior(_prior((128, 0.5, 1000), (256, 0.8, 1000), (512, 0.8, 50)), 0.95)
    assert c.cheapest_meeting(0.77, 1, 10_000) == 256  # 0.8 on 1000 has lower ~0.778
    assert c.cheapest_meeting(0.79, 1, 10_000) is None  # 0.8 is not enough evidence for 0.79
    assert c.cheapest_meeting(0.4, 1, 10_000) == 128
    assert c.cheapest_meeting(0.4, 200, 10_000) == 256  # bounds exclude 128
    assert c.cheapest_meeting(0.4, 1, 100) is None


def test_prior_points_are_sorted_and_unique() -> None:
    c = curve.from_prior(_prior((512, 0.9, 10), (128, 0.5, 10), (256, 0.7, 10)), 0.9)
    assert [p.budget for p in c.points] == [128, 256, 512]
    assert c.source == CurveSource.PRIOR
    assert curve.from_prior([], 0.9).source == CurveSource.NONE
    assert curve.from_prior([], 0.9).empty


def test_at_takes_the_nearest_budget_not_above() -> None:
    c = curve.from_prior(_prior((128, 0.5, 10), (256, 0.7, 10)), 0.9)
    assert c.at(100) is None
    point = c.at(200)
    assert point is not None
    assert point.budget == 128
    point = c.at(4096)
    assert point is not None
    assert point.budget == 256


def test_status_round_trip_keeps_the_curve() -> None:
    c = curve.Curve.of(
        [curve.Point(128, 40, 100, 97.5, 12), curve.Point(256, 81, 100, 180.25, 1)],
        0.95,
        CurveSource.AUDIT,
    )
    stored = c.to_status()
    assert stored[0] == CurvePoint(
        budget=128,
        em=0.4,
        samples=100,
        lower=round(c.lower(c.points[0]), 6),
        mean_tokens=97.5,
        truncated=12,
    )
    again = curve.from_status(stored, 0.95, CurveSource.AUDIT)
    assert again == c


def test_curve_in_use_prefers_the_audit() -> None:
    audited = [CurvePoint(budget=256, em=0.9, samples=100, lower=0.85)]
    prior = _prior((128, 0.5, 10))
    assert curve.in_use(audited, CurveSource.AUDIT, prior, 0.9).source == CurveSource.AUDIT
    assert curve.in_use([], CurveSource.NONE, prior, 0.9).source == CurveSource.PRIOR
    assert curve.in_use([], CurveSource.NONE, [], 0.9).empty
