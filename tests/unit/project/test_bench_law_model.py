"""benchmarks/bench_law_model.py: when queueing beats reactive on a seed, the counts over
the seeds, and the rule that makes queueing the default (beats on every trace and seed)."""

from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

from bench_law_model import Pair, beats, counts, law_table, seed_table, verdict
from bench_simulator import Versus


def versus(tokens: float, slo: float, em_target: float, seed: int = 0) -> Versus:
    return Versus(
        seed=seed,
        tokens_ratio=tokens,
        slo=slo,
        slo_ratio=slo,
        em_target=em_target,
        em_target_diff=0.0,
        restarts=0.0,
        oracle_restarts=0.0,
        lost=0.0,
    )


def pair(
    seed: int, reactive: tuple[float, float, float], queueing: tuple[float, float, float]
) -> Pair:
    return Pair(seed, versus(*reactive, seed=seed), versus(*queueing, seed=seed))


WIN = ((1.20, 0.90, 0.80), (1.10, 0.90, 0.80))  # fewer tokens, the same SLO and EM target


def test_beats_needs_fewer_tokens_and_no_worse_slo_or_em_target() -> None:
    assert beats(pair(0, *WIN))
    assert beats(pair(0, (1.20, 0.90, 0.80), (1.10, 0.95, 0.90)))
    assert not beats(pair(0, (1.20, 0.90, 0.80), (1.20, 0.90, 0.80)))  # a tie on tokens
    assert not beats(pair(0, (1.20, 0.90, 0.80), (1.10, 0.89, 0.80)))  # worse SLO
    assert not beats(pair(0, (1.20, 0.90, 0.80), (1.10, 0.90, 0.75)))  # worse EM target


def test_verdict_on_a_small_table() -> None:
    conv = [pair(0, *WIN), pair(1, *WIN)]
    code = [pair(0, *WIN), pair(1, (1.30, 0.88, 0.75), (1.20, 0.87, 0.75))]
    assert verdict({"conv": conv, "code": conv}).adopted
    lost = verdict({"conv": conv, "code": code})
    assert not lost.adopted
    assert lost.default == "reactive"
    assert lost.losing == {"conv": [], "code": [1]}
    assert "code: seed(s) 1" in lost.text()
    assert "conv" not in lost.text()
    assert counts(code) == {
        "fewer tokens": 2,
        "SLO met at least as often": 1,
        "EM>=target at least as often": 2,
        "all three (beats)": 1,
    }


def test_no_runs_keep_reactive() -> None:
    assert verdict({}).default == "reactive"
    assert verdict({"conv": [pair(0, *WIN)], "code": []}).default == "reactive"


def test_tables_show_both_laws_and_every_seed() -> None:
    pairs = [pair(0, *WIN), pair(1, (1.30, 0.88, 0.75), (1.20, 0.87, 0.50))]
    table = law_table(pairs)
    assert "| reactive" in table
    assert "| queueing" in table
    assert "1.25x" in table  # reactive's mean tokens against the oracle
    assert "1.30x" in table  # and its worst seed
    assert "50.0%" in table  # queueing's worst EM-target attainment
    rows = seed_table(pairs).splitlines()[2:]
    assert [r.split("|")[-2].strip() for r in rows] == ["yes", "no"]


ratios = st.floats(0.5, 2.0)
shares = st.floats(0.0, 1.0)
figures = st.tuples(ratios, shares, shares)


@given(st.lists(st.tuples(figures, figures), min_size=1, max_size=6), st.integers(0, 5))
def test_queueing_is_adopted_only_when_every_seed_is_won(
    table: list[tuple[tuple[float, float, float], tuple[float, float, float]]], worse: int
) -> None:
    pairs = [pair(i, r, q) for i, (r, q) in enumerate(table)]
    outcome = verdict({"conv": pairs, "code": pairs})
    assert outcome.adopted == all(beats(p) for p in pairs)
    # One seed where queueing spends as many tokens as reactive undoes the adoption.
    k = worse % len(pairs)
    tied = [*pairs[:k], Pair(k, pairs[k].reactive, pairs[k].reactive), *pairs[k + 1 :]]
    assert not verdict({"conv": pairs, "code": tied}).adopted
