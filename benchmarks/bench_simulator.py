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

For each it prints the table of ``stopbudget simulate`` and the ratios of every
strategy to the oracle and to the cheapest static budget whose EM meets the
target on average, then the spread of the main figures over ten seeds (the
seed draws the question of every request and the sample of every audit).
``--out DIR`` also writes results.csv and plots per workload.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

from stopbudget.cli import simulate
from stopbudget.sim import report
from stopbudget.sim.engine import Comparison, Summary

SEEDS = range(10)

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


def _spread(values: list[float], fmt: str) -> str:
    mean = sum(values) / len(values)
    return f"{mean:{fmt}} [{min(values):{fmt}}, {max(values):{fmt}}]"


def summaries(comparison: Comparison) -> dict[str, Summary]:
    return {run.name: run.summary for run in comparison.runs}


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


def main() -> int:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--out", metavar="DIR", help="also write results.csv and plots here")
    given = options.parse_args()
    os.chdir(ROOT)
    top = argparse.ArgumentParser(prog="stopbudget")
    simulate.add_parser(top.add_subparsers(dest="command"))
    started = time.perf_counter()
    print(
        f"# stopbudget simulator benchmark (Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs)\n"
    )
    for title, key, argv in WORKLOADS:
        line = ["stopbudget", "simulate", *argv]
        if given.out:
            line += ["--out", str(Path(given.out) / key)]
        args = top.parse_args(line[1:])
        t0 = time.perf_counter()
        advance, close = simulate.progress_bar(disabled=False)
        try:
            comparison = simulate.simulate_from_args(args, advance)
        finally:
            close()
        elapsed = time.perf_counter() - t0
        print(f"## {title}\n")
        print("```")
        print("$ " + " ".join(line))
        print(report.header(comparison))
        print("```\n")
        print(report.table(comparison))
        print()
        print(report.ratios(comparison))
        print(f"\n(simulated {len(comparison.runs)} strategies in {elapsed:.1f} s)\n")
        t0 = time.perf_counter()
        runs = [summaries(comparison)]
        for seed in SEEDS:
            if seed != args.seed:
                again = top.parse_args([*line[1:], "--seed", str(seed), "--no-progress"])
                runs.append(summaries(simulate.simulate_from_args(again)))
        print(f"Over seeds {SEEDS.start}-{SEEDS.stop - 1}, mean [min, max]:\n")
        print(seed_spread(runs))
        print(f"\n({len(runs)} seeds in {time.perf_counter() - t0:.1f} s)\n")
        if given.out:
            out = Path(args.out)
            written = [report.write_results(comparison, out)]
            from stopbudget.sim.plots import write_plots

            written += write_plots(comparison, out)
            print("wrote " + ", ".join(str(p) for p in written) + "\n")
    print(f"total {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
