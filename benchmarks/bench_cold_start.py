"""Benchmark: cold start, a policy without prior created at the busiest minute (issue 12).

For each workload of ``bench_simulator.py`` it runs ``stopbudget simulate --cold-start``
(quality.prior dropped, the policy created at the trace's busiest minute, an hour from
there) and prints stopbudget's time to first evidence and its figures against the
oracle's, for:

* ``cold start``: the operator's rule now: the first audit starts at creation, never
  deferred by load;
* ``deferred (before)``: the same run with the scheduler told the policy has evidence,
  as it behaved before: the first audit is deferred while pressure > 1, up to
  ``maxDeferral`` (2 h);

each with audits taking the simulator's default 5 minutes and with ``--audit-duration
model`` (derived from the audit's work; the header of ``stopbudget simulate`` says how),
then the modelled duration of the policy's audit with other methods and concurrencies.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench_simulator import ROOT, WORKLOADS
from stopbudget.cli import simulate
from stopbudget.sim import report, strategies
from stopbudget.sim.engine import Comparison
from stopbudget.sim.inputs import QualityTable, load_quality


@contextmanager
def evidence_ignored() -> Iterator[None]:
    """The scheduler as before issue 12: every policy is taken to have evidence."""
    original = strategies.schedule_audit

    def before(*args: Any, **kwargs: Any) -> Any:
        return original(*args, **(kwargs | {"evidence": True}))

    strategies.schedule_audit = before
    try:
        yield
    finally:
        strategies.schedule_audit = original


def _run(argv: list[str]) -> Comparison:
    top = argparse.ArgumentParser(prog="stopbudget")
    simulate.add_parser(top.add_subparsers(dest="command"))
    return simulate.simulate_from_args(top.parse_args(["simulate", *argv]))


def _row(label: str, comparison: Comparison) -> list[str]:
    run, oracle = comparison.run("stopbudget"), comparison.run("oracle").summary
    s = run.summary
    first = "never" if run.first_evidence_s is None else f"{run.first_evidence_s:,.0f}"
    return [
        label,
        f"{comparison.audit_duration_s:,.0f}",
        first,
        f"{s.tokens_per_request:.0f}",
        f"{s.tokens_per_request / oracle.tokens_per_request:.2f}x",
        f"{s.slo_attainment * 100:.1f}",
        f"{oracle.slo_attainment * 100:.1f}",
        f"{s.em * 100:.1f}",
        f"{oracle.em * 100:.1f}",
    ]


def main() -> int:
    os.chdir(ROOT)
    head = ["run", "audit s", "first evidence s", "tokens/req", "vs oracle", "SLO met %",
            "oracle SLO %", "EM %", "oracle EM %"]  # fmt: skip
    for title, _, argv in WORKLOADS:
        rows = []
        for duration in ("5m", "model"):
            line = [*argv, "--cold-start", "--audit-duration", duration]
            print(f"$ stopbudget simulate {' '.join(line)}", file=sys.stderr)
            cold = _run(line)
            with evidence_ignored():
                before = _run(line)
            rows.append(_row(f"cold start, audit {duration}", cold))
            rows.append(_row(f"deferred (before), audit {duration}", before))
        print(f"## {title}\n")
        print("\n".join(report.cold_start_lines(cold)[:1]))
        print()
        print(report.markdown(head, rows))
        print()
        print(audit_durations(cold, load_quality(argv[argv.index("--quality") + 1])))
        print()
    return 0


def audit_durations(comparison: Comparison, quality: QualityTable) -> str:
    """The modelled duration of the policy's audit with other methods and concurrencies."""
    audit = comparison.spec.audit
    assert audit is not None
    rows = []
    for method, concurrency in (("direct", 4), ("truncate", 4), ("truncate", 16), ("truncate", 32)):
        changed = audit.model_copy(update={"method": method, "concurrency": concurrency})
        seconds = strategies.audit_seconds(changed, quality, comparison.options.fleet)
        rows.append([method, str(concurrency), f"{seconds:,.0f}"])
    head = [f"audit ({audit.sample_size} questions)", "concurrency", "modelled audit s"]
    return report.markdown(head, rows)


if __name__ == "__main__":  # run as a script: its directory is on sys.path
    raise SystemExit(main())
