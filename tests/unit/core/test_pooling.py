"""Pooled evidence (core/pooling.py): which audits make the curve in use.

The two properties the module docstring states, on generated audit histories:

* P1, one audit alone never moves the floor against the evidence: adding one audit
  changes whether a budget's lower bound reaches emFloor only when that audit is
  consistent with the pool (it is pooled), or when it is the second in a row to differ
  from the pool (two audits: a shift). A first inconsistent audit leaves the curve
  exactly as it was.
* P2, a shift persisting for two audits is followed: two audits in a row that differ
  from the pool make the curve exactly theirs.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from hypothesis import assume, given
from hypothesis import strategies as st

from stopbudget import api
from stopbudget.core import pooling
from stopbudget.core.curve import Answers, Curve, Point, wilson_lower

LADDER = (256, 512, 1024, 2048)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
CONFIDENCE = 0.95


def audit(
    ems: Sequence[float], questions: int, seed: int, k: int = 0, measurement: str = "m"
) -> pooling.Run:
    """An audit of ``questions`` questions whose budget ``LADDER[i]`` gets each right with
    probability ``ems[i]`` (drawn from ``seed``)."""
    rng = random.Random(seed)
    everyone = (1 << questions) - 1
    points = []
    for budget, em in zip(LADDER, ems, strict=True):
        correct = sum(1 << q for q in range(questions) if rng.random() < em)
        points.append(
            Point(
                budget,
                correct.bit_count(),
                questions,
                float(budget) / 2,
                0,
                audits=1,
                answers=(Answers(everyone, correct),),
            )
        )
    return pooling.Run(T0 + timedelta(minutes=10 * k), measurement, questions, tuple(points))


def curve_after(history: Sequence[pooling.Run]) -> Curve:
    return pooling.pooled(history, CONFIDENCE)


def verdicts(curve: Curve, em_floor: float) -> dict[int, bool]:
    return {p.budget: curve.lower(p) >= em_floor for p in curve.points}


ems = st.lists(st.floats(0.05, 0.95), min_size=len(LADDER), max_size=len(LADDER))
#: An audit: its EMs (an outlier now and then), questions and seed.
audits = st.tuples(ems, st.integers(30, 300), st.integers(0, 2**32))


def build(specs: Sequence[tuple[list[float], int, int]]) -> tuple[pooling.Run, ...]:
    history: tuple[pooling.Run, ...] = ()
    for k, (e, n, seed) in enumerate(specs):
        history, _ = pooling.admit(history, audit(e, n, seed, k), CONFIDENCE)
    return history


@given(
    base=ems,
    history=st.lists(st.tuples(st.integers(30, 300), st.integers(0, 2**32)), min_size=1),
    new=audits,
    em_floor=st.floats(0.05, 0.95),
)
def test_one_audit_never_moves_the_floor_against_the_evidence(
    base: list[float],
    history: list[tuple[int, int]],
    new: tuple[list[float], int, int],
    em_floor: float,
) -> None:
    """P1. The history is audits of one model (``base``), the new audit anything."""
    before = build([(base, n, seed) for n, seed in history[:8]])
    pool = [r for r in before if not r.held]
    run = audit(*new, k=len(history) + 1)
    after, outcome = pooling.admit(before, run, CONFIDENCE)
    curve_before, curve_now = curve_after(before), curve_after(after)
    agrees = pooling.consistent(run, pool, CONFIDENCE)
    if verdicts(curve_before, em_floor) != verdicts(curve_now, em_floor):
        assert agrees or before[-1].held
    if not agrees and not before[-1].held:
        assert outcome is pooling.Outcome.HELD
        assert curve_now == curve_before  # nothing about the curve moved
    assert len([r for r in after if not r.held]) <= pooling.WINDOW


@given(
    old=ems,
    new=ems,
    history=st.lists(st.tuples(st.integers(100, 300), st.integers(0, 2**32)), min_size=1),
    shifted=st.tuples(st.integers(100, 300), st.integers(0, 2**32)),
    confirmed=st.tuples(st.integers(100, 300), st.integers(0, 2**32)),
)
def test_a_shift_persisting_for_two_audits_is_followed(
    old: list[float],
    new: list[float],
    history: list[tuple[int, int]],
    shifted: tuple[int, int],
    confirmed: tuple[int, int],
) -> None:
    """P2. The model moves from ``old`` to ``new``: two audits of it and the curve is theirs.

    (A new model version that the audits cannot tell from the old one is no shift.)"""
    before = build([(old, n, seed) for n, seed in history[:6]])
    assume(not before[-1].held)
    pool = [r for r in before if not r.held]
    first = audit(new, *shifted, k=20)
    second = audit(new, *confirmed, k=21)
    assume(not pooling.consistent(first, pool, CONFIDENCE))
    assume(not pooling.consistent(second, pool, CONFIDENCE))
    held, outcome = pooling.admit(before, first, CONFIDENCE)
    assert outcome is pooling.Outcome.HELD
    assert curve_after(held) == curve_after(before)  # one audit: not yet
    followed, outcome = pooling.admit(held, second, CONFIDENCE)
    assert outcome is pooling.Outcome.SHIFT
    assert curve_after(followed) == Curve.of(
        pooling.total([first, second]), CONFIDENCE, api.CurveSource.AUDIT
    )


def test_one_outlier_does_not_move_the_floor_and_a_real_shift_does_in_two_audits() -> None:
    """The benchmark policy's numbers: 512 has EM 0.45, emFloor 0.38; audits of 400."""
    model = [0.33, 0.45, 0.51, 0.51]
    history = build([(model, 400, seed) for seed in range(3)])
    floor = verdicts(curve_after(history), 0.38)
    assert floor[512]
    assert not floor[256]
    outlier = audit([0.33, 0.36, 0.51, 0.51], 400, 99, k=5)  # 512 measured at 0.36 once
    held, outcome = pooling.admit(history, outlier, CONFIDENCE)
    assert outcome is pooling.Outcome.HELD
    assert verdicts(curve_after(held), 0.38) == floor
    back, outcome = pooling.admit(held, audit(model, 400, 7, k=6), CONFIDENCE)
    assert outcome is pooling.Outcome.POOLED
    assert all(not r.held for r in back)  # the outlier is dropped
    shifted = [0.20, 0.30, 0.51, 0.51]  # a new model version: 512 falls below the floor
    one, _ = pooling.admit(back, audit(shifted, 400, 8, k=7), CONFIDENCE)
    two, outcome = pooling.admit(one, audit(shifted, 400, 9, k=8), CONFIDENCE)
    assert outcome is pooling.Outcome.SHIFT
    assert not verdicts(curve_after(two), 0.38)[512]


def test_a_new_measurement_starts_a_new_pool() -> None:
    model = [0.3, 0.4, 0.5, 0.5]
    history = build([(model, 100, seed) for seed in range(3)])
    other = audit(model, 100, 5, k=5, measurement="edited golden set")
    after, outcome = pooling.admit(history, other, CONFIDENCE)
    assert outcome is pooling.Outcome.NEW
    assert after == (other,)
    assert {p.audits for p in curve_after(after).points} == {1}


def test_the_pool_is_a_window_of_the_last_audits() -> None:
    model = [0.3, 0.4, 0.5, 0.5]
    history = build([(model, 200, seed) for seed in range(10)])
    assert len(history) == pooling.WINDOW
    curve = curve_after(history)
    assert {(p.audits, p.samples) for p in curve.points} == {(pooling.WINDOW, 200 * 3)}
    hits = sum(r.points[1].hits for r in history)
    assert curve.points[1].hits == hits
    assert curve.lower(curve.points[1]) == wilson_lower(hits, 600, CONFIDENCE)


def test_the_measurement_hashes_the_spec_and_the_golden_set() -> None:
    a = pooling.measurement_of("abc", '{"question": "q", "answer": "1"}\n')
    assert a == pooling.measurement_of("abc", '{"question": "q", "answer": "1"}\n')
    assert a != pooling.measurement_of("abc", '{"question": "q", "answer": "2"}\n')
    assert a != pooling.measurement_of("abd", '{"question": "q", "answer": "1"}\n')


@given(
    new=audits,
    held=st.booleans(),
    failed=st.sets(st.integers(0, 299), max_size=20),
)
def test_a_pooled_audit_reads_back_from_status(
    new: tuple[list[float], int, int], held: bool, failed: set[int]
) -> None:
    """Through the API model and its JSON, as status stores it: nothing lost."""
    run = audit(*new)
    mask = sum(1 << q for q in failed if q < run.questions)
    points = tuple(
        Point(
            p.budget,
            (p.answers[0].correct & ~mask).bit_count(),
            run.questions - mask.bit_count(),
            p.mean_tokens,
            p.truncated,
            1,
            (Answers(p.answers[0].scored & ~mask, p.answers[0].correct & ~mask),),
        )
        for p in run.points
    )
    run = pooling.Run(run.time, run.measurement, run.questions, points, held)
    stored = pooling.to_status(run).model_dump(mode="json", by_alias=True, exclude_none=True)
    read = api.PooledAudit.model_validate(stored)
    assert pooling.from_status(read) == run
    assert (read.points[0].scored is None) == (mask == 0)  # omitted when every one scored


def test_a_status_without_the_new_fields_still_reads() -> None:
    """A status written before pooling: no auditHistory, curve points without audits."""
    from stopbudget.core.status import read_status

    old = {
        "curve": [{"budget": 512, "em": 0.45, "samples": 400, "lower": 0.41}],
        "curveSource": "audit",
    }
    stored = read_status(old)
    assert not stored.unreadable
    assert stored.status.audit_history == []
    assert stored.status.curve[0].audits is None
    assert stored.status.curve[0].samples == 400
