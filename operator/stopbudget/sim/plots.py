"""PNG plots of a comparison (matplotlib, Agg backend: no display needed).

* ``timeline.png``: offered load (arrivals per second), each strategy's load
  pressure (as the policy measures it), budget and EM per interval over time;
* ``frontier.png``: tokens per request against EM, one point per strategy, the
  static budgets joined as the frontier a fixed budget can reach.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stopbudget.sim.engine import Comparison


class PlotsUnavailableError(RuntimeError):
    """matplotlib is not installed."""


def _pyplot() -> Any:
    try:
        import matplotlib as mpl
    except ImportError:
        raise PlotsUnavailableError(
            "plots need matplotlib: install stopbudget[plot] (pip install 'stopbudget[plot]')"
        ) from None
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    return plt


#: Colours of the static budgets (red, orange and black mark the other strategies).
_STATIC_COLOURS = (
    "tab:blue",
    "tab:green",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:olive",
    "tab:cyan",
    "tab:gray",
)


def _style(name: str, index: int = 0) -> dict[str, Any]:
    if name == "stopbudget":
        return {"color": "tab:red", "linewidth": 2.0, "zorder": 5}
    if name == "oracle":
        return {"color": "black", "linewidth": 1.2, "linestyle": ":", "zorder": 4}
    if name == "reactive":
        return {"color": "tab:orange", "linewidth": 1.4}
    colour = _STATIC_COLOURS[index % len(_STATIC_COLOURS)]
    return {"color": colour, "linewidth": 0.9, "alpha": 0.8}


def _smooth(values: list[float | None], span: int) -> list[float]:
    out = []
    for i in range(len(values)):
        window = [v for v in values[max(0, i - span + 1) : i + 1] if v is not None]
        out.append(sum(window) / len(window) if window else float("nan"))
    return out


def write_plots(comparison: Comparison, out: Path) -> list[Path]:
    """Write the PNGs into ``out``; :class:`PlotsUnavailableError` without matplotlib."""
    plt = _pyplot()
    out.mkdir(parents=True, exist_ok=True)
    return [_timeline(plt, comparison, out / "timeline.png"),
            _frontier(plt, comparison, out / "frontier.png")]  # fmt: skip


def _timeline(plt: Any, comparison: Comparison, path: Path) -> Path:
    """Load, pressure, budget and EM over time, one line per strategy."""
    spec = comparison.spec
    interval = comparison.workload.interval
    minutes = [k * interval / 60 for k in range(comparison.workload.intervals)]
    span = max(1, round(300 / interval))

    fig, axes = plt.subplots(4, 1, figsize=(11, 11), sharex=True)
    load, pressure, budget, em = axes
    load.step(minutes, comparison.arrival_rate(), where="post", color="tab:blue")
    load.set_ylabel("arrivals / s")
    load.set_title("Offered load")
    for index, run in enumerate(comparison.runs):
        style = _style(run.name, index)
        pressure.plot(minutes, [max(p, 1e-2) for p in run.pressure], label=run.name, **style)
        budget.step(minutes, run.budgets, where="post", label=run.name, **style)
        em.plot(minutes, _smooth(list(run.interval_em), span), label=run.name, **style)
    pressure.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    pressure.set_yscale("log")
    pressure.set_ylabel("pressure (max value/target)")
    pressure.set_title("Load pressure each strategy causes, as the policy measures it")
    budget.set_ylabel("budget (tokens)")
    budget.set_title("Budget in force")
    em.axhline(spec.quality.em_target, color="green", linewidth=0.8, linestyle="--")
    em.axhline(spec.quality.em_floor, color="grey", linewidth=0.8, linestyle="--")
    em.set_ylabel("EM")
    em.set_title(f"EM of the requests served (moving average over {span} intervals)")
    em.set_xlabel("simulated minutes")
    budget.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _frontier(plt: Any, comparison: Comparison, path: Path) -> Path:
    """Tokens per request against EM: the static budgets' frontier and each strategy."""
    spec = comparison.spec
    fig, ax = plt.subplots(figsize=(8, 6))
    statics = [r for r in comparison.runs if r.name.startswith("static-")]
    if statics:
        ax.plot(
            [r.summary.tokens_per_request for r in statics],
            [r.summary.em for r in statics],
            color="grey",
            linewidth=1.0,
            marker="o",
            label="static budgets",
        )
    for run in comparison.runs:
        s = run.summary
        if not run.name.startswith("static-"):
            style = _style(run.name)
            ax.plot(
                [s.tokens_per_request],
                [s.em],
                marker="D",
                linestyle="",
                color=style.get("color"),
                label=run.name,
            )
        ax.annotate(
            f"{run.name}\nSLO {s.slo_attainment * 100:.0f}%",
            (s.tokens_per_request, s.em),
            textcoords="offset points",
            xytext=(6, -14),
            fontsize="small",
        )
    ax.axhline(spec.quality.em_target, color="green", linewidth=0.8, linestyle="--")
    ax.axhline(spec.quality.em_floor, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("generated tokens per request")
    ax.set_ylabel("EM")
    ax.set_title("Tokens against EM (dashed: emTarget, emFloor)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
