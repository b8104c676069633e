"""The paired rule for flat curves: McNemar's exact test on the same questions. PURE.

When no budget's EM lower bound reaches a bound (emTarget or emFloor), the law used
to go to ``budget.max``, even on a flat curve where every budget does as well.  With
per-question outcomes (every budget of an audit is scored on the same questions,
with ``truncate`` on the same generations) it takes instead the cheapest budget
whose EM is *not significantly worse* than the best-measured budget's: McNemar's
exact test, one-sided, on the discordant questions pooled over the audits (``c``
questions the best budget got right and the cheaper one wrong, ``b`` the other way
round; under "no worse" each discordant question goes either way with probability
1/2, so the p-value is P(X >= c) for X ~ Binomial(b + c, 1/2)).  The cheaper budget
is rejected when ``p < 1 - quality.confidence``.  A curve without per-question data
(``quality.prior``, a curve stored before this rule) has no paired rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from stopbudget.core.curve import Curve, Point


def mcnemar_worse(worse: int, better: int) -> float:
    """One-sided exact McNemar p-value that the candidate is worse.

    ``worse``: discordant questions the candidate got wrong (the reference right);
    ``better``: the other way round.  1 without discordant questions.
    """
    if worse < 0 or better < 0:
        raise ValueError(f"discordant counts must be >= 0, got {worse} and {better}")
    n = worse + better
    if n > EXACT_UP_TO:
        return _tail_in_logs(worse, n)
    tail, term = 0, math.comb(n, worse)
    for k in range(worse, n + 1):
        tail += term
        term = term * (n - k) // (k + 1)
    return float(Fraction(tail, 2**n))


#: Discordant questions up to which the tail is summed in whole numbers; above, in
#: logarithms (the same binomial tail to ~1e-12 relative, without n-bit arithmetic).
EXACT_UP_TO = 2000


def _tail_in_logs(worse: int, n: int) -> float:
    """P(X >= worse), X ~ Binomial(n, 1/2), summed from the largest term in logarithms."""

    def log_term(k: int) -> float:
        return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2)

    top = max(worse, n // 2)  # the largest term of the tail
    peak = log_term(top)
    total = 0.0
    for k in range(worse, n + 1):
        term = math.exp(log_term(k) - peak)
        total += term
        if k > top and term < 1e-17:
            break
    return min(1.0, math.exp(peak) * total)


@dataclass(frozen=True)
class Choice:
    """The paired rule's choice and the test behind it."""

    budget: int
    #: The best-measured budget (highest pooled EM, the cheapest on a tie).
    best: int
    p: float
    alpha: float
    #: Questions scored at both budgets, pooled over the audits.
    questions: int

    def describe(self) -> str:
        if self.budget == self.best:
            return f"{self.best} has the best measured EM"
        return (
            f"{self.budget} is not significantly worse than {self.best} "
            f"(McNemar exact, p={self.p:.2f} >= {self.alpha:.2g} "
            f"on {self.questions} paired questions)"
        )


def test(curve: Curve, candidate: Point, best: Point) -> tuple[float, int]:
    """The p-value that ``candidate`` is worse than ``best``, and the paired questions."""
    cand_only, best_only, questions = curve.discordant(candidate, best)
    return mcnemar_worse(best_only, cand_only), questions


def cheapest_not_worse(curve: Curve, low: int, high: int) -> Choice | None:
    """The cheapest budget within [low, high] the test does not find worse than the best.

    None without per-question data or without a budget within [low, high].
    """
    if not curve.paired:
        return None
    within = [p for p in curve.points if low <= p.budget <= high]
    if not within:
        return None
    best = max(within, key=lambda p: (p.em, -p.budget))
    alpha = 1 - curve.confidence
    for point in within:
        if point.budget > best.budget:
            break
        p, questions = test(curve, point, best)
        if p >= alpha:
            return Choice(point.budget, best.budget, p, alpha, questions)
    raise AssertionError("unreachable: the best budget is never worse than itself")
