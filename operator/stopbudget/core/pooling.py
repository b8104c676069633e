"""Pooled evidence: the curve in use pools the recent audits of one measurement. PURE.

One audit of a few hundred questions is noisy: used alone, it moves the floor and
the target budgets back and forth from one audit to the next.  So the curve in use
pools (adds up the hits and samples of) the last :data:`WINDOW` audits of the same
*measurement*: the same measurement fields of ``spec.audit``
(:data:`stopbudget.core.audits.schedule.MEASUREMENT_FIELDS`: endpoint, model, api,
dataset, ladder, method, sample size, seed, answer pattern) and the same golden-set
content (:func:`measurement_of`).  An audit of another measurement starts a new pool.

An audit that differs significantly from the pool at some budget (two-proportion z
test, two-sided, at ``1 - quality.confidence`` split over the ladder's budgets:
:func:`consistent`) is **held**: kept in the history, left out of the curve.  When
the next audit differs from the pool too, the model has shifted: the pool restarts
from those two audits.  Otherwise (the next audit agrees with the pool) the held
audit is dropped.  Hence the two properties the tests check (``tests/unit/core/test_pooling.py``):

* **one audit alone never moves the floor against the evidence**: adding one audit
  to a non-empty pool changes whether a budget's lower bound reaches ``emFloor``
  (or anything else about the curve) only if the audit is consistent with the pool
  at every budget, or is the second in a row to differ from it; a first
  inconsistent audit leaves the curve exactly as it was.
* **a shift persisting for two audits is followed**: two audits in a row that
  differ from the pool make the pool exactly those two.

Windowed over weighted: counts stay whole numbers (Wilson bounds and the paired
test need them), status shows which audits back the curve, and ``WINDOW`` was
chosen with the simulator (``make bench``; see the commit that set it).
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from statistics import NormalDist

from stopbudget.api import CurveSource, EvidencePoint, PooledAudit
from stopbudget.core.curve import Answers, Curve, Point

#: Audits pooled at most (the held one not counted).
WINDOW = 3


def measurement_of(audit_hash: str, golden_set: str) -> str:
    """The measurement an audit makes: its spec's measurement hash and the golden set."""
    blob = f"{audit_hash}\n".encode() + golden_set.encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class Run:
    """One audit's points (``audits`` 1, ``answers`` of length 0 or 1) and its identity."""

    time: datetime
    measurement: str
    questions: int
    points: tuple[Point, ...]
    held: bool = False


# ---------------------------------------------------------------------------- tests


def _differ(a: Point, b: Point, z: float) -> bool:
    """Two-proportion z test: the EMs of ``a`` and ``b`` differ beyond ``z``."""
    if a.samples == 0 or b.samples == 0:
        return False
    p = (a.hits + b.hits) / (a.samples + b.samples)
    se = math.sqrt(p * (1 - p) * (1 / a.samples + 1 / b.samples))
    diff = abs(a.em - b.em)
    return diff > 0 if se == 0 else diff / se > z


def _critical(confidence: float, budgets: int) -> float:
    alpha = (1 - confidence) / max(1, budgets)
    return NormalDist().inv_cdf(1 - alpha / 2)


def total(runs: Sequence[Run]) -> tuple[Point, ...]:
    """The points of ``runs`` pooled: hits, samples and truncated added, tokens weighted."""
    by_budget: dict[int, list[Point]] = {}
    for run in runs:
        for point in run.points:
            by_budget.setdefault(point.budget, []).append(point)
    out = []
    for budget in sorted(by_budget):
        points = by_budget[budget]
        samples = sum(p.samples for p in points)
        known = [p for p in points if p.mean_tokens is not None]
        weight = sum(p.samples for p in known)
        tokens = (
            sum(p.mean_tokens * p.samples for p in known if p.mean_tokens is not None) / weight
            if known and weight
            else None
        )
        answers = tuple(a for p in points for a in p.answers)
        paired = all(p.answers for p in points)
        out.append(
            Point(
                budget,
                sum(p.hits for p in points),
                samples,
                tokens,
                sum(p.truncated for p in points),
                audits=len(points),
                answers=answers if paired else (),
            )
        )
    return tuple(out)


def consistent(run: Run, pool: Sequence[Run], confidence: float) -> bool:
    """Whether ``run`` agrees with ``pool`` at every budget (no significant difference)."""
    pooled = {p.budget: p for p in total(pool)}
    z = _critical(confidence, len(run.points))
    return not any(_differ(p, pooled[p.budget], z) for p in run.points if p.budget in pooled)


# ---------------------------------------------------------------------------- history


class Outcome(StrEnum):
    """What :func:`admit` did with an audit."""

    #: The first audit of a measurement: the pool starts from it.
    NEW = "new"
    #: Consistent with the pool: pooled (the oldest beyond the window dropped).
    POOLED = "pooled"
    #: Significantly different from the pool: held out of the curve.
    HELD = "held"
    #: Different from the pool, as the held audit before it: the pool is those two.
    SHIFT = "shift"


def admit(
    history: Sequence[Run], new: Run, confidence: float, window: int = WINDOW
) -> tuple[tuple[Run, ...], Outcome]:
    """The history after ``new`` and what happened to it (see the module docstring)."""
    same = [r for r in history if r.measurement == new.measurement]
    pool = [r for r in same if not r.held]
    if not pool:
        return (replace(new, held=False),), Outcome.NEW
    if consistent(new, pool, confidence):
        return (*pool, replace(new, held=False))[-window:], Outcome.POOLED
    if same[-1].held:  # the second audit in a row that differs from the pool
        return (replace(same[-1], held=False), replace(new, held=False)), Outcome.SHIFT
    return (*pool[-window:], replace(new, held=True)), Outcome.HELD


def pooled(history: Sequence[Run], confidence: float) -> Curve:
    """The curve of the pooled (not held) audits of the newest measurement; empty without."""
    if not history:
        return Curve.of((), confidence, CurveSource.NONE)
    current = history[-1].measurement
    runs = [r for r in history if r.measurement == current and not r.held]
    return Curve.of(total(runs), confidence, CurveSource.AUDIT)


# ---------------------------------------------------------------------------- status


def encode_bits(bits: int) -> str:
    """A bitset as base64 of its little-endian bytes ("" for none)."""
    raw = bits.to_bytes((bits.bit_length() + 7) // 8, "little")
    return base64.b64encode(raw).decode()


def decode_bits(text: str) -> int:
    """The bitset :func:`encode_bits` wrote."""
    return int.from_bytes(base64.b64decode(text, validate=True), "little")


def to_status(run: Run) -> PooledAudit:
    everyone = (1 << run.questions) - 1
    return PooledAudit(
        time=run.time,
        measurement=run.measurement,
        questions=run.questions,
        held=run.held,
        points=[
            EvidencePoint(
                budget=p.budget,
                hits=p.hits,
                samples=p.samples,
                mean_tokens=None if p.mean_tokens is None else round(p.mean_tokens, 3),
                truncated=p.truncated,
                correct=encode_bits(p.answers[0].correct) if p.answers else None,
                scored=(
                    encode_bits(p.answers[0].scored)
                    if p.answers and p.answers[0].scored != everyone
                    else None
                ),
            )
            for p in run.points
        ],
    )


def from_status(record: PooledAudit) -> Run:
    everyone = (1 << record.questions) - 1
    points = []
    for p in record.points:
        answers: tuple[Answers, ...] = ()
        if p.correct is not None:
            scored = decode_bits(p.scored) if p.scored is not None else everyone
            answers = (Answers(scored, decode_bits(p.correct) & scored),)
        points.append(Point(p.budget, p.hits, p.samples, p.mean_tokens, p.truncated, 1, answers))
    return Run(record.time, record.measurement, record.questions, tuple(points), record.held)
