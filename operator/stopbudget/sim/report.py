"""Text of a comparison: the header, the table (Markdown) and ``results.csv``."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from stopbudget import api
from stopbudget.sim.engine import Comparison, Run, Summary, cheapest_static_meeting_target


def _pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def header(comparison: Comparison) -> str:
    """What was simulated, in a few lines."""
    c = comparison
    spec, fleet, w = c.spec, c.options.fleet, c.workload
    audits = c.run("stopbudget").audits if any(r.name == "stopbudget" for r in c.runs) else ()
    lines = [
        f"requests {len(w):,} over {c.horizon / 60:.1f} simulated minutes "
        f"(time scale {c.options.time_scale:g}, {len(w) / max(c.horizon, 1e-9):.2f} req/s), "
        f"seed {c.options.seed}",
        f"fleet {fleet.replicas} replica(s) x {fleet.max_batch} sequences, "
        f"{fleet.replica_throughput:,.0f} tokens/s each at a full batch, "
        f"capacity {fleet.capacity:,.0f} tokens/s",
        f"emTarget {spec.quality.em_target:g}, emFloor {spec.quality.em_floor:g}, "
        f"interval {c.workload.interval:g}s, latency SLO {c.slo_s:g}s ({c.slo_source}), "
        f"{len(audits)} audit(s) of stopbudget",
        sink_line(comparison),
    ]
    lines.append(
        f"audits take {c.audit_duration_s:,.0f}s from start to use ({c.audit_duration_source})"
    )
    lines += cold_start_lines(comparison)
    return "\n".join(lines + [f"note: {n}" for n in notes(comparison)])


def sink_line(comparison: Comparison) -> str:
    """How a budget change reaches the requests, and what the oracle is charged."""
    options, spec = comparison.options, comparison.spec
    sink = options.sink_of(spec)
    rolling = options.rolling_update(spec)
    if rolling is None:
        how = f"read live, a new budget serves requests {options.propagation_s:g}s after the patch"
    else:
        how = (
            f"in the pod template, every patch rolls the pods (maxSurge {rolling.max_surge}, "
            f"maxUnavailable {rolling.max_unavailable}, {rolling.restart_s:g}s to start a pod)"
        )
    return (
        f"sink {sink}: {how}; the oracle plans as if budgets applied at once and is "
        "charged the same"
    )


def cold_start_lines(comparison: Comparison) -> list[str]:
    """With ``--cold-start``: where the run starts and the time to first evidence."""
    cold = comparison.cold_start
    if cold is None:
        return []
    again = "; the trace repeats after its end" if cold.wrapped else ""
    out = [
        f"cold start: quality.prior dropped; policy created at the busiest minute, minute "
        f"{cold.minute} of the trace ({cold.requests} requests), "
        f"{cold.trace.start + timedelta(seconds=cold.warmup):%Y-%m-%d %H:%M:%S} UTC, for "
        f"an hour{again}; the {cold.warmup / 60:g} minutes before load the fleet at "
        "budget.initial (every strategy) and the figures count from the creation"
    ]
    if any(r.name == "stopbudget" for r in comparison.runs):
        first = comparison.run("stopbudget").first_evidence_s
        when = "never" if first is None else f"{first:,.0f}s"
        out.append(f"time to first evidence (creation to the first decision with a curve): {when}")
    return out


def notes(comparison: Comparison) -> list[str]:
    """What the reader should know about how the policy was simulated."""
    spec = comparison.spec
    levels = comparison.quality_levels
    out = []
    if spec.control.mode != api.Mode.AUTO:
        out.append(f"control.mode is {spec.control.mode.value}: simulated as Auto")
    ladder = spec.audit.budgets if spec.audit is not None else []
    below = sorted(b for b in {*ladder, spec.budget.min} if b < levels[0])
    if below:
        out.append(
            f"budget(s) {', '.join(map(str, below))} below the quality file's smallest setting "
            f"({levels[0]}): answers there count as misses"
        )
    return out


ROW_HEADER = (
    "strategy",
    "tokens/req",
    "EM",
    "EM>=target",
    "below floor",
    "p95 latency s",
    "SLO met",
    "changes/h",
    "cost",
    "restarts/h",
    "replica-s lost",
)


def _cells(s: Summary) -> list[str]:
    return [
        s.strategy,
        _num(s.tokens_per_request),
        _pct(s.em),
        _pct(s.em_target_attainment),
        _pct(s.time_below_floor),
        _num(s.p95_latency_s),
        _pct(s.slo_attainment),
        _num(s.budget_changes_per_hour),
        _num(s.cost, 2),
        _num(s.restarts_per_hour),
        _num(s.replica_s_lost, 0),
    ]


def markdown(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, columns padded; the first column left-aligned, the others right."""
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        out = [
            str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i])
            for i, c in enumerate(cells)
        ]
        return "| " + " | ".join(out) + " |"

    rule = "|".join(
        ":" + "-" * (w + 1) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)
    )
    rule = f"|{rule}|"
    return "\n".join([line(head), rule, *(line(r) for r in rows)])


def table(comparison: Comparison) -> str:
    """One row per strategy: the figures of ``results.csv``, for people."""
    return markdown(ROW_HEADER, [_cells(r.summary) for r in comparison.runs])


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def _diff(a: float, b: float) -> str:
    return f"{round((a - b) * 100, 1) + 0.0:+.1f} pt"


def ratios(comparison: Comparison) -> str:
    """Each strategy against the oracle and the cheapest static budget meeting emTarget."""
    oracle = comparison.run("oracle").summary
    static: Run | None = cheapest_static_meeting_target(comparison)
    head = ["strategy", "tokens vs oracle", "EM vs oracle", "SLO vs oracle"]
    if static is not None:
        head += [f"tokens vs {static.name}", f"EM vs {static.name}", f"SLO vs {static.name}"]
    rows = []
    for run in comparison.runs:
        s = run.summary
        row = [
            s.strategy,
            _ratio(s.tokens_per_request, oracle.tokens_per_request),
            _diff(s.em, oracle.em),
            _diff(s.slo_attainment, oracle.slo_attainment),
        ]
        if static is not None:
            b = static.summary
            row += [
                _ratio(s.tokens_per_request, b.tokens_per_request),
                _diff(s.em, b.em),
                _diff(s.slo_attainment, b.slo_attainment),
            ]
        rows.append(row)
    text = markdown(head, rows)
    if static is None:
        text += "\n(no static budget meets emTarget on average)"
    return text


def _csv_value(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def results_csv(comparison: Comparison) -> str:
    """``results.csv``: one row per strategy, ``strategy`` first; fractions in [0, 1]."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(Summary.COLUMNS), lineterminator="\n")
    writer.writeheader()
    for run in comparison.runs:
        writer.writerow({k: _csv_value(v) for k, v in run.summary.row().items()})
    return out.getvalue()


def write_results(comparison: Comparison, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.csv"
    path.write_text(results_csv(comparison), encoding="utf-8")
    return path
