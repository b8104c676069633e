"""Benchmark: the two load steps of stopbudget's law, ``reactive`` and ``queueing``
(``spec.control.model``), on the simulator (``make bench``).

The two workloads of ``bench_simulator.py`` (the same ``stopbudget simulate``
commands: the Azure conversation trace x FRAMES on 2 replicas, the Azure code
trace x SimpleQA on 1), seeds 0-9, with the policies' own sink (configMap, read
live by the gate) and the simulator's default restart and propagation flags, once
with ``--law reactive`` and once with ``--law queueing``; two processes at most.

Per workload it prints, for each law, the mean and the worst seed of stopbudget's
tokens per request against the oracle's, its SLO attainment and its EM-target
attainment; then each seed side by side, and on how many seeds queueing spends
fewer tokens, keeps the SLO at least as well, meets the EM target at least as
often, and all three (it *beats* reactive). Last, the verdict of the rule:
queueing becomes the default only if it beats reactive on both traces and on
every seed (fewer tokens against the oracle, SLO attainment at least as good,
EM-target attainment no worse).  The oracle does not depend on the law, so
"fewer tokens against the oracle" is fewer tokens.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_simulator import SEEDS, WORKERS, WORKLOADS, Job, Result, Versus, command, run
from stopbudget.sim import report

LAWS = ("reactive", "queueing")


@dataclass(frozen=True)
class Pair:
    """stopbudget against the oracle on one seed, with each law."""

    seed: int
    reactive: Versus
    queueing: Versus


def fewer_tokens(p: Pair) -> bool:
    return p.queueing.tokens_ratio < p.reactive.tokens_ratio


def slo_as_good(p: Pair) -> bool:
    return p.queueing.slo >= p.reactive.slo


def em_target_as_good(p: Pair) -> bool:
    return p.queueing.em_target >= p.reactive.em_target


def beats(p: Pair) -> bool:
    """Queueing beats reactive on this seed: fewer tokens, SLO and EM target no worse."""
    return fewer_tokens(p) and slo_as_good(p) and em_target_as_good(p)


#: What is counted over the seeds, and the rule's whole test last.
CRITERIA: tuple[tuple[str, Callable[[Pair], bool]], ...] = (
    ("fewer tokens", fewer_tokens),
    ("SLO met at least as often", slo_as_good),
    ("EM>=target at least as often", em_target_as_good),
    ("all three (beats)", beats),
)


def counts(pairs: Sequence[Pair]) -> dict[str, int]:
    """On how many seeds queueing meets each criterion."""
    return {name: sum(test(p) for p in pairs) for name, test in CRITERIA}


@dataclass(frozen=True)
class Verdict:
    """Whether queueing becomes the default, and the seeds where it does not beat reactive."""

    default: str
    #: Per workload, the seeds queueing does not beat reactive on.
    losing: dict[str, list[int]]

    @property
    def adopted(self) -> bool:
        return self.default == "queueing"

    def text(self) -> str:
        if self.adopted:
            return (
                "queueing beats reactive on every workload and seed: queueing becomes the default"
            )
        if not self.losing:
            return "no runs: reactive stays the default"
        where = "; ".join(
            f"{key}: seed(s) {', '.join(map(str, seeds))}"
            for key, seeds in self.losing.items()
            if seeds
        )
        return f"reactive stays the default (queueing does not beat it on {where})"


def verdict(pairs: Mapping[str, Sequence[Pair]]) -> Verdict:
    """The rule: queueing becomes the default only if it beats reactive on every workload and
    every seed; with no workload, or a workload without seeds, reactive stays."""
    losing = {key: [p.seed for p in rows if not beats(p)] for key, rows in pairs.items()}
    adopted = bool(pairs) and all(pairs.values()) and not any(losing.values())
    if not adopted and not any(losing.values()):
        losing = {}
    return Verdict("queueing" if adopted else "reactive", losing)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def law_table(pairs: Sequence[Pair]) -> str:
    """Mean and worst seed of each law's figures (worst: most tokens, least attainment)."""
    rows = []
    for law in LAWS:
        runs: list[Versus] = [getattr(p, law) for p in pairs]
        tokens = [v.tokens_ratio for v in runs]
        slo = [v.slo * 100 for v in runs]
        em = [v.em_target * 100 for v in runs]
        rows.append(
            [
                law,
                f"{_mean(tokens):.2f}x",
                f"{max(tokens):.2f}x",
                f"{_mean(slo):.1f}%",
                f"{min(slo):.1f}%",
                f"{_mean(em):.1f}%",
                f"{min(em):.1f}%",
            ]
        )
    head = [
        "law",
        "tokens vs oracle (mean)",
        "(worst)",
        "SLO met (mean)",
        "(worst)",
        "EM>=target (mean)",
        "(worst)",
    ]
    return report.markdown(head, rows)


def seed_table(pairs: Sequence[Pair]) -> str:
    """Each seed, reactive / queueing, and whether queueing beats reactive there."""
    rows = [
        [
            str(p.seed),
            f"{p.reactive.tokens_ratio:.3f}x / {p.queueing.tokens_ratio:.3f}x",
            f"{p.reactive.slo * 100:.1f}% / {p.queueing.slo * 100:.1f}%",
            f"{p.reactive.em_target * 100:.1f}% / {p.queueing.em_target * 100:.1f}%",
            "yes" if beats(p) else "no",
        ]
        for p in pairs
    ]
    head = ["seed", "tokens vs oracle", "SLO met", "EM>=target", "queueing beats"]
    return report.markdown(head, rows)


def jobs(seeds: Sequence[int]) -> list[Job]:
    return [
        Job(key, tuple(argv), seed, None, law=law)
        for _, key, argv in WORKLOADS
        for seed in seeds
        for law in LAWS
    ]


def pairs_of(results: Mapping[tuple[str, int, str | None], Result], key: str) -> list[Pair]:
    seeds = sorted({seed for k, seed, _ in results if k == key})
    return [
        Pair(
            seed,
            Versus.of(seed, results[key, seed, "reactive"].summaries),
            Versus.of(seed, results[key, seed, "queueing"].summaries),
        )
        for seed in seeds
    ]


def main() -> int:
    options = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    options.add_argument(
        "--workers", type=int, default=WORKERS, help=f"processes, at most {WORKERS}"
    )
    options.add_argument(
        "--seeds", type=int, default=len(SEEDS), help=f"seeds 0..N-1 (default {len(SEEDS)})"
    )
    given = options.parse_args()
    workers = max(1, min(given.workers, WORKERS))
    seeds = range(max(1, given.seeds))
    started = time.perf_counter()
    print(
        f"# stopbudget's law: reactive vs queueing load step (Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, {workers} worker(s))\n"
    )
    todo = jobs(seeds)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        done = list(pool.map(run, todo))
    results = {(r.job.key, r.job.seed, r.job.law): r for r in done}
    span = f"seeds {seeds.start}-{seeds.stop - 1}"
    every: dict[str, list[Pair]] = {}
    for title, key, _ in WORKLOADS:
        print(f"## {title}\n")
        print("```")
        for law in LAWS:
            print("$ " + " ".join(command(results[key, 0, law].job)))
        print("```\n")
        print(
            f"(the policy's sink, configMap; restarts and propagation at the simulator's "
            f"defaults; {span}; worst: the most tokens, the least attainment)\n"
        )
        pairs = every[key] = pairs_of(results, key)
        print(law_table(pairs))
        print()
        print(seed_table(pairs))
        print()
        tally = counts(pairs)
        print(
            f"queueing vs reactive, seeds of {len(pairs)}: "
            + ", ".join(f"{name} {n}" for name, n in tally.items())
            + "\n"
        )
    print("## Verdict\n")
    print(
        "Rule: queueing becomes the default only if it beats reactive on both traces and "
        "all seeds (fewer tokens vs oracle and SLO attainment at least as good, without "
        "worse EM-target attainment).\n"
    )
    print(verdict(every).text() + "\n")
    cpu = sum(r.elapsed for r in done)
    print(
        f"total {time.perf_counter() - started:.1f} s ({len(done)} simulations, "
        f"{cpu:.1f} s of simulation on {workers} worker(s))"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
