"""The EM-vs-budget curve. PURE: no I/O, no clock.

A curve is a ladder of budgets, each with the number of questions answered
exactly (``hits``) out of ``samples``.  Whether a budget *meets* an EM target is
decided on the Wilson score lower bound of its EM, not on the point estimate:
a budget measured on 20 questions must do better than one measured on 2000 to
be trusted with the same target.  The bound is one-sided at the policy's
``quality.confidence`` ("EM is at least this, with that confidence").

Before the first audit the policy's ``quality.prior`` is the curve; with
neither, the curve is empty and the control law keeps ``budget.initial``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

from stopbudget.api import CurvePoint, CurveSource, PriorPoint


def wilson_lower(hits: int, samples: int, confidence: float) -> float:
    """One-sided Wilson score lower bound of a proportion ``hits / samples``.

    0 when ``samples`` is 0 (nothing is known).  ``confidence`` in (0.5, 1).
    """
    if samples <= 0:
        return 0.0
    if not 0 <= hits <= samples:
        raise ValueError(f"hits must be within [0, samples], got {hits} of {samples}")
    z = NormalDist().inv_cdf(confidence)
    p = hits / samples
    z2 = z * z
    centre = p + z2 / (2 * samples)
    margin = z * math.sqrt(p * (1 - p) / samples + z2 / (4 * samples * samples))
    return max(0.0, (centre - margin) / (1 + z2 / samples))


@dataclass(frozen=True)
class Point:
    """One budget of the ladder with its measurement."""

    budget: int
    hits: int
    samples: int
    mean_tokens: float | None = None
    truncated: int = 0
    #: Audits pooled into this point (0 for a prior, or a curve stored without the count).
    audits: int = 0
    #: Per-question outcomes, one per pooled audit (empty without per-question data).
    answers: tuple[Answers, ...] = ()

    @property
    def em(self) -> float:
        return self.hits / self.samples if self.samples else 0.0


@dataclass(frozen=True)
class Answers:
    """The questions of one audit at one budget, as bitsets: bit ``i`` is question ``i``.

    Every budget of a ladder audit is scored on the same questions (the same
    generation with ``truncate``), so two budgets' answers of the same audit pair up
    question by question (:meth:`Curve.discordant`).
    """

    #: Questions answered (a request that failed is not scored).
    scored: int
    #: Questions answered exactly (a subset of ``scored``).
    correct: int


@dataclass(frozen=True)
class Curve:
    """EM against budget, sorted by budget, one point per budget."""

    points: tuple[Point, ...]
    confidence: float
    source: CurveSource

    @staticmethod
    def of(points: Iterable[Point], confidence: float, source: CurveSource) -> Curve:
        by_budget = {p.budget: p for p in points}
        ordered = tuple(by_budget[b] for b in sorted(by_budget))
        return Curve(ordered, confidence, source if ordered else CurveSource.NONE)

    @property
    def empty(self) -> bool:
        return not self.points

    def lower(self, point: Point) -> float:
        return wilson_lower(point.hits, point.samples, self.confidence)

    def cheapest_meeting(self, em: float, low: int, high: int) -> int | None:
        """Smallest ladder budget within [low, high] whose EM lower bound is at least ``em``."""
        for point in self.points:
            if low <= point.budget <= high and self.lower(point) >= em:
                return point.budget
        return None

    @property
    def paired(self) -> bool:
        """Whether every point has per-question outcomes of the same audits."""
        counts = {len(p.answers) for p in self.points}
        return bool(self.points) and len(counts) == 1 and 0 not in counts

    def discordant(self, a: Point, b: Point) -> tuple[int, int, int]:
        """Questions ``a`` got right and ``b`` wrong, the other way round, and questions
        scored at both, pooled over the audits."""
        a_only = b_only = paired = 0
        for x, y in zip(a.answers, b.answers, strict=True):
            both = x.scored & y.scored
            a_only += (x.correct & ~y.correct & both).bit_count()
            b_only += (y.correct & ~x.correct & both).bit_count()
            paired += both.bit_count()
        return a_only, b_only, paired

    def at(self, budget: int) -> Point | None:
        """The measurement that applies at ``budget``: the nearest ladder budget not above it."""
        found = None
        for point in self.points:
            if point.budget > budget:
                break
            found = point
        return found

    def to_status(self) -> list[CurvePoint]:
        return [
            CurvePoint(
                budget=p.budget,
                em=round(p.em, 6),
                samples=p.samples,
                lower=round(self.lower(p), 6),
                mean_tokens=None if p.mean_tokens is None else round(p.mean_tokens, 3),
                truncated=p.truncated,
                audits=p.audits or None,
            )
            for p in self.points
        ]


def from_prior(prior: Sequence[PriorPoint], confidence: float) -> Curve:
    """The curve of ``quality.prior`` (hits rounded from em * samples)."""
    points = [Point(p.budget, round(p.em * p.samples), p.samples) for p in prior]
    return Curve.of(points, confidence, CurveSource.PRIOR)


def from_status(points: Sequence[CurvePoint], confidence: float, source: CurveSource) -> Curve:
    """The curve stored in ``status.curve`` (hits rounded from em * samples)."""
    return Curve.of(
        (
            Point(
                p.budget,
                round(p.em * p.samples),
                p.samples,
                p.mean_tokens,
                p.truncated,
                audits=p.audits or 0,
            )
            for p in points
        ),
        confidence,
        source,
    )


def in_use(
    audited: Sequence[CurvePoint],
    source: CurveSource,
    prior: Sequence[PriorPoint],
    confidence: float,
) -> Curve:
    """The curve the law uses: the audited one if there is one, else the prior, else empty."""
    if audited and source == CurveSource.AUDIT:
        return from_status(audited, confidence, CurveSource.AUDIT)
    return from_prior(prior, confidence)
