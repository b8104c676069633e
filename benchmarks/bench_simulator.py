"""Benchmark: stopbudget's real control law against static budgets, a reactive rule and an
oracle, on real traces and real per-question quality data (``make bench``).

Two workloads, each one ``stopbudget simulate`` command (printed as run):

* the Azure conversation trace (19,366 requests in an hour) served with a
  thinking budget, scored on Gemini 2.5 Flash's FRAMES results
  (``benchmarks/policy.yaml``), on 2 replicas: the traffic peak of minutes
  20-40 exceeds their capacity at the EM-target budget;
* the Azure code trace (8,819 bursty requests) scored on SimpleQA
  (``benchmarks/policy-simpleqa.yaml``), on 1 replica: bursts of up to 17
  requests/s exceed it at any budget.

For each it prints the table of ``stopbudget simulate`` (the policies' own sink,
configMap, read live by the gate) and the ratios of every strategy to the oracle
and to the cheapest static budget whose EM meets the target on average, then the
spread of the main figures over ten seeds (the seed draws the question of every
request and the sample of every audit).

Then the goals, with restarts charged (``--restart-seconds``, Kubernetes' default
rolling update, ``--propagation-seconds``; the simulator's defaults): on both
workloads and seeds 0-9, for the budget written through the ``arg`` sink (every
patch rolls the pods) and through the gate (``configMap``): stopbudget's tokens per
request against the oracle's, its SLO attainment (and ratio to the oracle's), its
EM-target attainment (difference to the oracle's) and its restarts per hour, per
seed and the worst seed, and whether each goal is met.  The oracle plans with
perfect foresight as if budgets applied at once and runs through the same fleet:
it is charged the same restarts.  Runs go on two processes at most.
``--out DIR`` also writes results.csv and plots of seed 0 per workload.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from stopbudget.cli import simulate
from stopbudget.sim import report
from stopbudget.sim.engine import Summary

SEEDS = range(10)
#: The sinks of the goals: every patch rolls the pods, and the gate reads it live.
SINKS = ("arg", "configMap")
#: The goals of the gate (stopbudget against the oracle, on every seed).
MAX_TOKENS_RATIO = 1.10
MIN_SLO_RATIO = 0.9
MAX_EM_TARGET_SHORTFALL = 0.02
WORKERS = 2

ROOT = Path(__file__).resolve().parent.parent

WORKLOADS = [
    (
        "conversation trace x FRAMES (thinking budget), 2 replicas",
        "conv",
        [
            "--trace",
            "data/traces/AzureLLMInferenceTrace_conv.csv",
            "--quality",
            "data/quality/wide_gemini-2.5-flash_frames.csv",
            "--policy",
            "benchmarks/policy.yaml",
            "--replicas",
            "2",
            "--seed",
            "0",
        ],
    ),
    (
        "code trace x SimpleQA (thinking budget), 1 replica",
        "code",
        [
            "--trace",
            "data/traces/AzureLLMInferenceTrace_code.csv",
            "--quality",
            "data/quality/wide_gemini-2.5-flash_simpleqa.csv",
            "--policy",
            "benchmarks/policy-simpleqa.yaml",
            "--replicas",
            "1",
            "--seed",
            "0",
        ],
    ),
]


@dataclass(frozen=True)
class Job:
    """One ``stopbudget simulate`` run: a workload, a seed, a sink (None: the policy's)."""

    key: str
    argv: tuple[str, ...]
    seed: int
    sink: str | None
    #: Keep the texts (seed 0 of the policy's sink), and write results and plots here.
    full: bool = False
    out: str | None = None
    #: ``--law``: the load step of stopbudget's law (None: the policy's control.model).
    law: str | None = None


@dataclass(frozen=True)
class Result:
    job: Job
    summaries: dict[str, Summary]
    elapsed: float
    header: str = ""
    table: str = ""
    ratios: str = ""
    written: tuple[str, ...] = ()


def _parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="stopbudget")
    simulate.add_parser(top.add_subparsers(dest="command"))
    return top


def command(job: Job) -> list[str]:
    """The ``stopbudget simulate`` command line of a job."""
    line = ["stopbudget", "simulate", *job.argv]
    if job.seed != 0:
        line[line.index("--seed") + 1] = str(job.seed)
    if job.sink is not None:
        line += ["--sink", job.sink]
    if job.law is not None:
        line += ["--law", job.law]
    if job.out is not None:
        line += ["--out", job.out]
    return line


def run(job: Job) -> Result:
    os.chdir(ROOT)
    args = _parser().parse_args([*command(job)[1:], "--no-progress"])
    t0 = time.perf_counter()
    comparison = simulate.simulate_from_args(args)
    elapsed = time.perf_counter() - t0
    summaries = {r.name: r.summary for r in comparison.runs}
    if not job.full:
        return Result(job, summaries, elapsed)
    written: list[Path] = []
    if job.out is not None:
        from stopbudget.sim.plots import write_plots

        written = [report.write_results(comparison, Path(job.out))]
        written += write_plots(comparison, Path(job.out))
    return Result(
        job,
        summaries,
        elapsed,
        report.header(comparison),
        report.table(comparison),
        report.ratios(comparison),
        tuple(str(p) for p in written),
    )


def _spread(values: list[float], fmt: str) -> str:
    mean = sum(values) / len(values)
    return f"{mean:{fmt}} [{min(values):{fmt}}, {max(values):{fmt}}]"


def seed_spread(runs: list[dict[str, Summary]]) -> str:
    """Mean [min, max] over seeds of the main figures of each strategy."""
    rows = []
    for name in runs[0]:
        summaries = [by_name[name] for by_name in runs]
        oracle = [by_name["oracle"].tokens_per_request for by_name in runs]
        rows.append(
            [
                name,
                _spread([s.tokens_per_request for s in summaries], ".0f"),
                _spread(
                    [s.tokens_per_request / o for s, o in zip(summaries, oracle, strict=True)],
                    ".2f",
                ),
                _spread([s.em * 100 for s in summaries], ".1f"),
                _spread([s.slo_attainment * 100 for s in summaries], ".1f"),
                _spread([s.em_target_attainment * 100 for s in summaries], ".0f"),
            ]
        )
    head = ["strategy", "tokens/req", "tokens vs oracle", "EM %", "SLO met %", "EM>=target %"]
    return report.markdown(head, rows)


@dataclass(frozen=True)
class Versus:
    """stopbudget against the oracle on one run."""

    seed: int
    tokens_ratio: float
    slo: float
    slo_ratio: float
    em_target: float
    em_target_diff: float
    restarts: float
    oracle_restarts: float
    lost: float

    @staticmethod
    def of(seed: int, by_name: dict[str, Summary]) -> Versus:
        s, o = by_name["stopbudget"], by_name["oracle"]
        return Versus(
            seed=seed,
            tokens_ratio=s.tokens_per_request / o.tokens_per_request,
            slo=s.slo_attainment,
            slo_ratio=s.slo_attainment / o.slo_attainment if o.slo_attainment else float("inf"),
            em_target=s.em_target_attainment,
            em_target_diff=s.em_target_attainment - o.em_target_attainment,
            restarts=s.restarts_per_hour,
            oracle_restarts=o.restarts_per_hour,
            lost=s.replica_s_lost,
        )


GOALS_HEAD = [
    "seed",
    "tokens vs oracle",
    "SLO met",
    "SLO vs oracle",
    "EM>=target",
    "vs oracle",
    "restarts/h",
    "oracle restarts/h",
    "replica-s lost",
]


def _versus_cells(label: str, v: Versus) -> list[str]:
    return [
        label,
        f"{v.tokens_ratio:.2f}x",
        f"{v.slo * 100:.1f}%",
        f"{v.slo_ratio:.2f}x",
        f"{v.em_target * 100:.1f}%",
        f"{v.em_target_diff:+.3f}",
        f"{v.restarts:.1f}",
        f"{v.oracle_restarts:.1f}",
        f"{v.lost:,.0f}",
    ]


def worst(rows: list[Versus]) -> Versus:
    """The worst value of each column over the seeds (seed -1: not one seed)."""
    return Versus(
        seed=-1,
        tokens_ratio=max(v.tokens_ratio for v in rows),
        slo=min(v.slo for v in rows),
        slo_ratio=min(v.slo_ratio for v in rows),
        em_target=min(v.em_target for v in rows),
        em_target_diff=min(v.em_target_diff for v in rows),
        restarts=max(v.restarts for v in rows),
        oracle_restarts=max(v.oracle_restarts for v in rows),
        lost=max(v.lost for v in rows),
    )


def verdicts(rows: list[Versus]) -> list[str]:
    """Whether each goal is met on every seed."""
    w = worst(rows)

    def line(ok: bool, goal: str, worst_text: str, failing: list[int]) -> str:
        where = "" if ok else f" (fails on seed(s) {', '.join(map(str, failing))})"
        return f"* {goal}: worst {worst_text} -> {'met' if ok else 'NOT MET'}{where}"

    return [
        line(
            w.tokens_ratio <= MAX_TOKENS_RATIO,
            f"tokens per request <= {MAX_TOKENS_RATIO:.2f}x the oracle's",
            f"{w.tokens_ratio:.2f}x",
            [v.seed for v in rows if v.tokens_ratio > MAX_TOKENS_RATIO],
        ),
        line(
            w.slo_ratio >= MIN_SLO_RATIO,
            f"SLO attainment >= {MIN_SLO_RATIO:g}x the oracle's on every seed",
            f"{w.slo_ratio:.2f}x",
            [v.seed for v in rows if v.slo_ratio < MIN_SLO_RATIO],
        ),
        line(
            w.em_target_diff >= -MAX_EM_TARGET_SHORTFALL,
            f"EM-target attainment within {MAX_EM_TARGET_SHORTFALL:g} of the oracle's "
            "(at most that much below it)",
            f"{w.em_target_diff:+.3f}",
            [v.seed for v in rows if v.em_target_diff < -MAX_EM_TARGET_SHORTFALL],
        ),
    ]


def goals(results: dict[tuple[str, int, str | None], Result], key: str) -> str:
    out = []
    for sink in SINKS:
        rows = [Versus.of(seed, results[key, seed, sink].summaries) for seed in SEEDS]
        table = [_versus_cells(str(v.seed), v) for v in rows]
        table.append(_versus_cells("worst", worst(rows)))
        name = "arg (every patch rolls the pods)" if sink == "arg" else "configMap (the gate)"
        out.append(f"sink {name}:\n")
        out.append(report.markdown(GOALS_HEAD, table))
        out.append("")
        out.extend(verdicts(rows))
        out.append("")
    return "\n".join(out)


def jobs(out: str | None) -> list[Job]:
    todo = []
    for _, key, argv in WORKLOADS:
        for seed in SEEDS:
            full = seed == 0
            where = str(Path(out) / key) if out and full else None
            todo.append(Job(key, tuple(argv), seed, None, full, where))
            todo += [Job(key, tuple(argv), seed, sink) for sink in SINKS]
    return todo


def main() -> int:
    options = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    options.add_argument("--out", metavar="DIR", help="also write results.csv and plots here")
    options.add_argument(
        "--workers", type=int, default=WORKERS, help=f"processes, at most {WORKERS}"
    )
    given = options.parse_args()
    workers = max(1, min(given.workers, WORKERS))
    started = time.perf_counter()
    print(
        f"# stopbudget simulator benchmark (Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {workers} worker(s))\n"
    )
    todo = jobs(given.out)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        done = list(pool.map(run, todo))
    results = {(r.job.key, r.job.seed, r.job.sink): r for r in done}
    cpu = sum(r.elapsed for r in done)
    for title, key, _ in WORKLOADS:
        first = results[key, 0, None]
        print(f"## {title}\n")
        print("```")
        print("$ " + " ".join(command(first.job)))
        print(first.header)
        print("```\n")
        print(first.table)
        print()
        print(first.ratios)
        print(f"\n(simulated {len(first.summaries)} strategies in {first.elapsed:.1f} s)\n")
        runs = [results[key, seed, None].summaries for seed in SEEDS]
        print(f"Over seeds {SEEDS.start}-{SEEDS.stop - 1}, mean [min, max]:\n")
        print(seed_spread(runs))
        print()
        if first.written:
            print("wrote " + ", ".join(first.written) + "\n")
        print(
            f"### Goals: stopbudget vs the oracle, restarts charged, seeds "
            f"{SEEDS.start}-{SEEDS.stop - 1}\n"
        )
        print(
            "(restart 120 s, maxSurge/maxUnavailable 25 %, propagation 2 s: the simulator's "
            "defaults; the oracle plans as if budgets applied at once and is charged the "
            "same; `worst` is the worst of each column over the seeds)\n"
        )
        print(goals(results, key))
    print(
        f"total {time.perf_counter() - started:.1f} s ({len(done)} simulations, "
        f"{cpu:.1f} s of simulation on {workers} worker(s))"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
