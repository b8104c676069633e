"""What a request costs and earns at a budget, and the oracle's objective. PURE.

**Quality.** A request draws one question of the quality table (seeded,
independently of the strategy, so every strategy answers the same questions).
Served at budget ``b`` it is scored at the table's *level* ``L(b)``: the
nearest setting whose budget is not above ``b``.  Graded A counts as an exact
match; B (wrong) and C (not attempted) do not.  Below the smallest setting
there is no evidence: the answer counts as not attempted (a miss) and spends
``min(b, tokens at the smallest setting)`` thinking tokens — a model cut off
before it could think as much as the least it was measured with.  (With a
``no_think`` setting, budget 0, every budget >= 0 has a level.)

**Tokens.** The trade-off comes from the quality file: a request's thinking
tokens are the tokens the drawn question used at ``L(b)`` (``reasoning_tokens``
as recorded, including the model's small overshoots of its budget).  The
trace's ``GeneratedTokens`` are the visible answer, which a thinking budget
does not shorten.  So a request generates

* ``kind: thinking``: ``thinking(L(b)) + answer`` tokens;
* ``kind: output`` (the budget caps everything generated):
  ``min(thinking(L(b)) + answer, b)`` tokens.

and its work for the fleet is those tokens plus the prefill of its context
(:class:`~stopbudget.sim.fleet.FleetConfig`).  Every outcome depends on ``b``
only through ``L(b)`` and, for ``output``, monotonically on ``b`` within a
level; so among budgets of one level the level's own budget (or ``budget.min``
when the level starts below it) costs least and scores the same.  These are
the oracle's *candidates*.

**The oracle's objective**, per control interval ``k``, over the requests that
arrive in ``k`` (their questions and their answers are known to it): the
score of a budget is, lexicographically smaller being better,

* tier 0: the interval's exact-match rate >= ``emTarget`` and its work fits
  the fleet's capacity (work <= capacity x interval: the fleet keeps up);
* tier 1: EM >= ``emFloor`` and the work fits (under load, trade down to the
  floor, never below);
* tier 2: EM >= ``emFloor`` (even the floor does not fit: quality first);
* tier 3: nothing meets the floor: most exact matches;

then fewest generated tokens.  The oracle takes the best-scoring candidate;
since every budget scores no better than its candidate, no strategy that moves
its budget at the control ticks beats it in any interval.  The plan assumes a
budget applies at once; the engine runs it through the same fleet and sink as
every strategy, so the oracle is charged the same restarts and propagation
delay (it is the best plan, not a bound on the figures once budgets lag).
"""

from __future__ import annotations

import math
import random
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

from stopbudget.api import BudgetKind
from stopbudget.sim.inputs import QualityTable, Trace

#: Slack of the EM comparisons (float rounding of target x count).
_EPS = 1e-9


def meets(hits: int, count: int, em: float) -> bool:
    """Whether ``hits`` exact matches out of ``count`` reach the rate ``em``."""
    return hits + _EPS >= em * count


def level_of(levels: Sequence[int], budget: int) -> int:
    """Index of the nearest level not above ``budget``; -1 below the smallest."""
    return bisect_right(levels, budget) - 1


def answer(quality: QualityTable, question: int, budget: int) -> tuple[bool, int]:
    """(exact match, thinking tokens) of ``question`` answered at ``budget``."""
    level = level_of(quality.levels, budget)
    if level < 0:
        return False, min(budget, quality.tokens[0][question])
    return quality.correct[level][question], quality.tokens[level][question]


def candidates(quality: QualityTable, low: int, high: int) -> tuple[int, ...]:
    """The budgets within [low, high] that no other budget beats: ``low`` and the levels."""
    return tuple(sorted({low} | {b for b in quality.levels if low <= b <= high}))


@dataclass(frozen=True)
class Workload:
    """The requests of one simulation, with the question each one draws."""

    #: Arrival times in simulated seconds (the trace's, divided by the time scale).
    arrivals: tuple[float, ...]
    context: tuple[int, ...]
    #: Visible answer tokens (the trace's GeneratedTokens).
    answer: tuple[int, ...]
    question: tuple[int, ...]
    #: Control interval, in seconds, and the number of intervals.
    interval: float
    intervals: int

    @staticmethod
    def of(
        trace: Trace, quality: QualityTable, interval: float, time_scale: float, seed: int
    ) -> Workload:
        if time_scale <= 0 or not math.isfinite(time_scale):
            raise ValueError(f"time scale must be a positive number, got {time_scale}")
        draw = random.Random(f"questions:{seed}")  # noqa: S311 - a simulation, not security
        arrivals = tuple(t / time_scale for t in trace.arrivals)
        return Workload(
            arrivals=arrivals,
            context=trace.context,
            answer=trace.generated,
            question=tuple(draw.randrange(quality.questions) for _ in arrivals),
            interval=interval,
            intervals=int(arrivals[-1] // interval) + 1,
        )

    def __len__(self) -> int:
        return len(self.arrivals)

    def bounds(self, k: int) -> tuple[int, int]:
        """Requests ``[lo, hi)`` arriving in interval ``k``: ``[k, k+1) x interval``."""
        return (
            bisect_left(self.arrivals, k * self.interval),
            bisect_left(self.arrivals, (k + 1) * self.interval),
        )


@dataclass(frozen=True)
class Served:
    """Every request of a workload served at one budget (what each would cost and score)."""

    budget: int
    correct: tuple[bool, ...]
    generated: tuple[int, ...]
    work: tuple[float, ...]
    kv: tuple[int, ...]
    #: Prefix sums over requests, for interval totals in O(1).
    hits_upto: tuple[int, ...]
    tokens_upto: tuple[int, ...]
    work_upto: tuple[float, ...]

    def totals(self, lo: int, hi: int) -> tuple[int, int, float]:
        """(exact matches, generated tokens, work) of requests ``[lo, hi)``."""
        return (
            self.hits_upto[hi] - self.hits_upto[lo],
            self.tokens_upto[hi] - self.tokens_upto[lo],
            self.work_upto[hi] - self.work_upto[lo],
        )


def serve(
    workload: Workload,
    quality: QualityTable,
    budget: int,
    kind: BudgetKind,
    prefill_weight: float,
) -> Served:
    correct: list[bool] = []
    generated: list[int] = []
    work: list[float] = []
    kv: list[int] = []
    hits_upto, tokens_upto, work_upto = [0], [0], [0.0]
    by_question = [answer(quality, q, budget) for q in range(quality.questions)]
    for question, context, visible in zip(
        workload.question, workload.context, workload.answer, strict=True
    ):
        hit, thinking = by_question[question]
        tokens = thinking + visible
        if kind == BudgetKind.OUTPUT:
            tokens = min(tokens, budget)
        units = tokens + prefill_weight * context
        correct.append(hit)
        generated.append(tokens)
        work.append(units)
        kv.append(context + tokens)
        hits_upto.append(hits_upto[-1] + hit)
        tokens_upto.append(tokens_upto[-1] + tokens)
        work_upto.append(work_upto[-1] + units)
    return Served(
        budget,
        tuple(correct),
        tuple(generated),
        tuple(work),
        tuple(kv),
        tuple(hits_upto),
        tuple(tokens_upto),
        tuple(work_upto),
    )


Score = tuple[int, int, int]


@dataclass(frozen=True)
class Objective:
    """The oracle's objective (see the module docstring)."""

    em_target: float
    em_floor: float
    #: Work units the fleet can do in one interval.
    capacity: float

    def score(self, served: Served, lo: int, hi: int) -> Score:
        """Score of serving requests ``[lo, hi)`` at ``served.budget``; smaller is better."""
        count = hi - lo
        if count == 0:
            return (0, 0, 0)
        hits, tokens, work = served.totals(lo, hi)
        fits = work <= self.capacity * (1 + _EPS)
        if fits and meets(hits, count, self.em_target):
            return (0, 0, tokens)
        floor = meets(hits, count, self.em_floor)
        if fits and floor:
            return (1, 0, tokens)
        if floor:
            return (2, 0, tokens)
        return (3, -hits, tokens)

    def best(self, options: Sequence[Served], lo: int, hi: int) -> Served:
        """The best-scoring of ``options`` (the cheaper budget on a tie)."""
        return min(options, key=lambda s: (self.score(s, lo, hi), s.budget))
