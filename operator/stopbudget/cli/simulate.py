"""``stopbudget simulate``: what a StopPolicy would have done to a real trace.

Wire it into the CLI with :func:`add_parser`; the heavy modules are imported
only when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stopbudget.api import StopPolicy
    from stopbudget.sim.engine import Comparison

DESCRIPTION = """\
Replay a request trace (Azure format: TIMESTAMP,ContextTokens,GeneratedTokens)
through a simulated serving fleet with continuous batching, scoring each request
with a per-question quality file (wide_*.csv: id, grading_S, reasoning_tokens_S),
under static budgets, a reactive EM threshold rule, stopbudget's real control law
(with simulated audits, scheduled by the operator's own scheduler: the policy is
created, and audited, at the trace's first timestamp) and an oracle with perfect
foresight. Prints one row per strategy; with --out, writes results.csv and PNG
plots there.
"""

EPILOG = """\
The fleet: each replica decodes up to --max-batch sequences together; one decode
step takes step-ms + step-per-seq-ms x batch; a prompt token costs
--prefill-weight decode steps; requests wait in one FIFO queue. Signals map to
the policy's load.signals by name (queue, kvCache, latencyP95/P99, running).

A request scores the grading of a drawn question at the quality file's setting
nearest not above its budget and generates that setting's thinking tokens plus the
trace's GeneratedTokens (kind output: at most the budget).

Columns: tokens/req (generated tokens per request), EM (share graded A),
EM>=target and below floor (share of --eval-window windows whose requests' EM
met emTarget / fell below emFloor), p95 latency (end to end), SLO met (share of
requests with end-to-end latency <= --latency-slo; default the target of the
policy's latency signal, else 60 s), changes/h (budget changes per simulated
hour), cost (generated tokens x cost.pricePerMillionTokens / 1e6), restarts/h
(rolling updates started per simulated hour: patches of an arg or env sink),
replica-s lost (replica-seconds with fewer than --replicas replicas taking requests
because of restarts).

Restarts: with an arg or env sink (the policy's, or --sink) a patch changes the pod
template and the Deployment rolls its pods as Kubernetes does (--max-surge,
--max-unavailable; a pod takes --restart-seconds to start; a replaced pod takes no
new request and stops when its requests finish; a patch during a rollout rolls toward
the newest template); each replica serves the budget of its template, every strategy
alike (the oracle too: its plan assumes budgets apply at once, and it is charged the
same restarts). With a sink read live (configMap, aiGateway, annotation) requests
arriving --propagation-seconds after the patch get the new budget, with no restart.
"""


class PolicyFileError(Exception):
    """The policy file cannot be used; ``problems`` holds one line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    if text.strip() in ("0", "0.0"):
        return 0.0
    return _positive_float(text)


#: --sink's choices (stopbudget.sim.engine.SINKS, without importing the simulator).
SINK_CHOICES = ("arg", "env", "configMap", "aiGateway", "annotation")


def _rollout_count(flag: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        from stopbudget.sim.rollout import parse_count

        try:
            parse_count(text, flag)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text.strip()

    return parse


def _duration(text: str) -> float:
    from stopbudget.api import parse_duration

    try:
        return parse_duration(text).total_seconds()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _audit_duration(text: str) -> float | None:
    """A duration, or None for ``model`` (modelled from the audit's work)."""
    if text.strip() == "model":
        return None
    try:
        return _duration(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc}; or 'model' (from the audit's work)") from None


def _positive_duration(text: str) -> float:
    seconds = _duration(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be longer than 0s, got {text}")
    return seconds


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``simulate`` to the ``stopbudget`` subcommands (``argparse`` subparsers)."""
    from stopbudget.sim.fleet import FleetConfig

    d = FleetConfig()
    p: argparse.ArgumentParser = subparsers.add_parser(
        "simulate",
        help="replay a trace through a simulated fleet under each budget strategy",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--trace", required=True, metavar="FILE", help="request trace CSV")
    p.add_argument("--quality", required=True, metavar="FILE", help="per-question quality CSV")
    p.add_argument("--policy", required=True, metavar="FILE", help="StopPolicy YAML")
    p.add_argument("--out", metavar="DIR", help="write results.csv and plots into DIR")
    fleet = p.add_argument_group("fleet")
    fleet.add_argument(
        "--replicas", type=_positive_int, default=d.replicas, help=f"default {d.replicas}"
    )
    fleet.add_argument(
        "--max-batch",
        type=_positive_int,
        default=d.max_batch,
        help=f"sequences decoded together per replica (default {d.max_batch})",
    )
    fleet.add_argument(
        "--step-ms",
        type=_positive_float,
        default=d.step_base_s * 1000,
        help=f"decode step with a batch of one, ms (default {d.step_base_s * 1000:g})",
    )
    fleet.add_argument(
        "--step-per-seq-ms",
        type=_non_negative_float,
        default=d.step_per_seq_s * 1000,
        help=f"added to a step per sequence, ms (default {d.step_per_seq_s * 1000:g})",
    )
    fleet.add_argument(
        "--kv-tokens",
        type=_positive_int,
        default=d.kv_tokens,
        help=f"KV-cache capacity of a replica, tokens (default {d.kv_tokens})",
    )
    fleet.add_argument(
        "--prefill-weight",
        type=_non_negative_float,
        default=d.prefill_weight,
        help=f"decode steps per prompt token (default {d.prefill_weight:g})",
    )
    sink = p.add_argument_group("sink and restarts")
    sink.add_argument(
        "--sink",
        choices=SINK_CHOICES,
        help="where the budget is written (default: the policy's budget.sink.type); arg and "
        "env change the pod template, so every patch rolls the pods",
    )
    sink.add_argument(
        "--restart-seconds",
        type=_non_negative_float,
        default=120.0,
        metavar="SECONDS",
        help="arg/env sink: from a new pod's creation to it taking requests (default 120)",
    )
    sink.add_argument(
        "--max-surge",
        type=_rollout_count("--max-surge"),
        default="25%",
        metavar="N|P%",
        help="arg/env sink: the rolling update's maxSurge (default 25%%, rounded up)",
    )
    sink.add_argument(
        "--max-unavailable",
        type=_rollout_count("--max-unavailable"),
        default="25%",
        metavar="N|P%",
        help="arg/env sink: the rolling update's maxUnavailable (default 25%%, rounded down)",
    )
    sink.add_argument(
        "--propagation-seconds",
        type=_non_negative_float,
        default=2.0,
        metavar="SECONDS",
        help="configMap/aiGateway/annotation sink: from the patch to the requests arriving "
        "being served at the new budget (default 2)",
    )
    run = p.add_argument_group("run")
    run.add_argument(
        "--time-scale",
        type=_positive_float,
        default=1.0,
        metavar="X",
        help="divide the trace's arrival times by X (2: twice the request rate; default 1)",
    )
    run.add_argument("--seed", type=int, default=0, help="seed of questions and audits")
    run.add_argument(
        "--latency-slo",
        type=_positive_float,
        metavar="SECONDS",
        help="end-to-end latency SLO (default: the policy's latency signal target, else 60)",
    )
    run.add_argument(
        "--audit-every",
        type=_positive_duration,
        metavar="DURATION",
        help="audit period, e.g. 10m, in place of the policy's audit.schedule (default: "
        "audit.schedule on the simulated clock, which starts at the trace's first timestamp)",
    )
    run.add_argument(
        "--audit-duration",
        type=_audit_duration,
        default=300.0,
        metavar="DURATION",
        help="from an audit's start to its curve being used (default 5m); 'model': from the "
        "audit's work (sampleSize x thinking tokens per question over concurrency sequences "
        "at the decode rate of a full batch)",
    )
    run.add_argument(
        "--cold-start",
        action="store_true",
        help="drop quality.prior and create the policy at the trace's busiest minute (most "
        "arriving requests), for an hour from there; prints the time to first evidence",
    )
    run.add_argument(
        "--eval-window",
        type=_duration,
        default=300.0,
        metavar="DURATION",
        help="window of EM>=target and below-floor (default 5m)",
    )
    run.add_argument(
        "--law",
        choices=("reactive", "queueing"),
        help="load step of stopbudget's law, in place of the policy's spec.control.model "
        "(default: the policy's)",
    )
    run.add_argument("--head", type=_positive_int, metavar="N", help="only the first N requests")
    run.add_argument("--no-plots", action="store_true", help="with --out, skip the PNGs")
    run.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run_command)
    return p


def load_policy(path: Path) -> StopPolicy:
    """The one StopPolicy of a YAML file, validated; :class:`PolicyFileError` otherwise."""
    import yaml
    from pydantic import ValidationError

    from stopbudget import api

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyFileError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise PolicyFileError([f"{path}: not YAML: {exc}"]) from None
    policies = [d for d in docs if isinstance(d, dict) and d.get("kind") == api.KIND]
    if len(policies) != 1:
        found = f"{len(policies)} StopPolicy documents" if policies else "no StopPolicy document"
        raise PolicyFileError([f"{path}: {found}: give a file with exactly one"])
    try:
        return api.StopPolicy.model_validate(policies[0])
    except ValidationError as exc:
        raise PolicyFileError(
            [f"{path}: {field}: {message}" for field, message in api.problems_of(exc)]
        ) from None


def progress_bar(*, disabled: bool) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A tqdm bar on stderr (shown on a terminal only) and its ``progress(done, total)``."""
    from tqdm import tqdm

    bar = tqdm(desc="simulating", unit="tick", file=sys.stderr, disable=True if disabled else None)

    def advance(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    return advance, bar.close


def simulate_from_args(
    args: argparse.Namespace, progress: Callable[[int, int], None] | None = None
) -> Comparison:
    """Load the inputs named by ``args`` and simulate (errors propagate)."""
    from stopbudget.api import LoadModel
    from stopbudget.sim.engine import simulate
    from stopbudget.sim.fleet import FleetConfig
    from stopbudget.sim.inputs import load_quality, load_trace

    policy = load_policy(Path(args.policy))
    spec = policy.spec
    if getattr(args, "law", None) is not None:
        control = spec.control.model_copy(update={"model": LoadModel(args.law)})
        spec = spec.model_copy(update={"control": control})
    trace = load_trace(args.trace)
    if args.head is not None:
        trace = trace.head(args.head)
    quality = load_quality(args.quality)
    fleet = FleetConfig(
        replicas=args.replicas,
        max_batch=args.max_batch,
        step_base_s=args.step_ms / 1000,
        step_per_seq_s=args.step_per_seq_ms / 1000,
        kv_tokens=args.kv_tokens,
        prefill_weight=args.prefill_weight,
    )
    options = _options(
        fleet=fleet,
        time_scale=args.time_scale,
        seed=args.seed,
        latency_slo_s=args.latency_slo,
        audit_every_s=args.audit_every,
        audit_duration_s=args.audit_duration,
        eval_window_s=args.eval_window,
        sink=args.sink,
        restart_s=args.restart_seconds,
        max_surge=args.max_surge,
        max_unavailable=args.max_unavailable,
        propagation_s=args.propagation_seconds,
        cold_start=args.cold_start,
    )
    return simulate(trace, quality, spec, options, progress)


class OptionsError(ValueError):
    """The flags cannot be simulated together (the message names them and the fix)."""


def _options(**fields: Any) -> Any:
    from stopbudget.sim.engine import Options

    try:
        return Options(**fields)
    except ValueError as exc:
        raise OptionsError(str(exc)) from None


def run_command(args: argparse.Namespace) -> int:
    """Run ``stopbudget simulate``; 0 on success, 1 on a problem with an input file."""
    from stopbudget.sim import report
    from stopbudget.sim.engine import PolicyError
    from stopbudget.sim.inputs import InputError

    advance, close = progress_bar(disabled=args.no_progress)
    try:
        comparison = simulate_from_args(args, advance)
    except PolicyFileError as exc:
        sys.stderr.write("".join(f"{line}\n" for line in exc.problems))
        return 1
    except PolicyError as exc:
        sys.stderr.write(f"{args.policy}: {exc}\n")
        return 1
    except (InputError, OptionsError) as exc:
        sys.stderr.write(f"stopbudget simulate: {exc}\n")
        return 1
    finally:
        close()
    sys.stdout.write(f"{report.header(comparison)}\n\n{report.table(comparison)}\n")
    if args.out:
        out = Path(args.out)
        written = [report.write_results(comparison, out)]
        if not args.no_plots:
            from stopbudget.sim.plots import PlotsUnavailableError, write_plots

            try:
                written += write_plots(comparison, out)
            except PlotsUnavailableError as exc:
                sys.stderr.write(f"stopbudget simulate: {exc}\n")
                return 1
        sys.stdout.write("\nwrote " + ", ".join(str(p) for p in written) + "\n")
    return 0
