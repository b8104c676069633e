"""``stopbudget audit``: the operator's audit, from the command line, against any server.

    stopbudget audit --endpoint http://localhost:8000 --model M \\
        --dataset data/golden/gsm8k_test.jsonl --budgets 128,256,512 \\
        --method truncate --sample 100 --plot curve.png

Prints the EM-vs-budget curve as a table (with the Wilson lower bound the
control law uses) and exits 0 when the audit succeeded, 1 when it failed (the
operator would not use its curve: too few answers, timed out, unreachable
endpoint) and 2 on bad input (unreadable or invalid dataset, bad budgets or
pattern, matplotlib missing for ``--plot``).  The progress bar goes to stderr.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from stopbudget.clients.audit_runner import AuditOutcome

# Only the standard library at import time: building the parser for
# `stopbudget --help` must not load aiohttp or pydantic.  The values below are
# those of stopbudget.api.AuditMethod and AuditApi (a test checks they agree).
__all__ = ["APIS", "METHODS", "add_parser", "parse_budgets", "render_table", "run"]

METHODS = ("direct", "truncate")
APIS = ("completions", "chat")

#: Exit codes.
OK, FAILED, BAD_INPUT, INTERRUPTED = 0, 1, 2, 130


def parse_budgets(text: str) -> tuple[int, ...]:
    """``"128,256,512"`` -> ``(128, 256, 512)``; argparse-friendly errors."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("give budgets as a comma-separated list, e.g. 128,256")
    budgets = []
    for part in parts:
        if not part.isdigit() or int(part) < 1:
            raise argparse.ArgumentTypeError(
                f"{part!r} is not a budget: give positive token counts, e.g. 128,256,512"
            )
        budgets.append(int(part))
    duplicates = sorted({b for b in budgets if budgets.count(b) > 1})
    if duplicates:
        raise argparse.ArgumentTypeError(f"budget {duplicates[0]} is listed twice")
    return tuple(sorted(budgets))


def _seconds(text: str) -> float:
    from stopbudget.api import parse_duration

    try:
        return parse_duration(text).total_seconds()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _non_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return int(text)


def _confidence(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.5 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a confidence in [0.5, 1), e.g. 0.95")
    return value


def add_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register ``audit`` on ``subparsers``; the parser's ``func`` default is :func:`run`."""
    p = subparsers.add_parser(
        "audit",
        help="measure EM against the budget on a golden set at an OpenAI-compatible endpoint",
        description="Send a golden QA set (JSONL: question or prompt, answers or answer) to an "
        "OpenAI-compatible endpoint at each budget and print the EM-vs-budget curve. "
        "Exit code 0: audit succeeded; 1: audit failed (the operator would not use the "
        "curve); 2: bad input.",
    )
    p.add_argument("--endpoint", required=True, help="base URL, e.g. http://localhost:8000")
    p.add_argument("--model", required=True, help="model name sent in requests")
    p.add_argument(
        "--dataset", required=True, metavar="FILE", help="golden set, JSONL (- for stdin)"
    )
    p.add_argument(
        "--budgets",
        required=True,
        type=parse_budgets,
        metavar="B1,B2,...",
        help="the ladder, e.g. 128,256,512",
    )
    p.add_argument(
        "--method",
        choices=METHODS,
        default="direct",
        help="direct: a request per question and budget; truncate: one per question at the "
        "largest budget, scored on each prefix (needs logprobs; falls back to direct)",
    )
    p.add_argument(
        "--api",
        choices=APIS,
        default="completions",
        help="/v1/completions or /v1/chat/completions (default: completions)",
    )
    p.add_argument(
        "--sample", type=_positive, default=100, metavar="N", help="questions drawn (100)"
    )
    p.add_argument("--seed", type=_non_negative, default=0, help="seed of the sample (0)")
    p.add_argument(
        "--concurrency", type=_positive, default=4, metavar="C", help="requests in flight (4)"
    )
    p.add_argument(
        "--answer-pattern",
        metavar="RE",
        help="regular expression whose first group is the answer (default: the last line)",
    )
    p.add_argument(
        "--min-samples",
        type=_positive,
        default=30,
        metavar="N",
        help="fewest answers per budget for the audit to count, as quality.minSamples (30)",
    )
    p.add_argument(
        "--confidence",
        type=_confidence,
        default=0.95,
        help="confidence of the Wilson lower bound column (0.95)",
    )
    p.add_argument("--timeout", type=_seconds, default=900.0, help="whole audit, e.g. 15m")
    p.add_argument("--request-timeout", type=_seconds, default=120.0, help="one request (2m)")
    p.add_argument(
        "--retries", type=_non_negative, default=3, help="retries of a failed request (3)"
    )
    p.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="environment variable holding an API key, sent as a bearer token",
    )
    p.add_argument("--plot", metavar="PNG", help="also plot the curve to this PNG file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def _say(text: str, stream: TextIO | None = None) -> None:
    (stream or sys.stdout).write(text + "\n")


def _error(message: str) -> int:
    _say(f"stopbudget audit: {message}", sys.stderr)
    return BAD_INPUT


def render_table(outcome: AuditOutcome, confidence: float) -> str:
    """The curve as a table: budget, EM, Wilson lower bound, samples, errors, truncated, tokens."""
    from stopbudget.core.curve import wilson_lower

    head = (
        f"{'budget':>8}  {'EM':>6}  {'lower':>6}  {'samples':>7}  {'errors':>6}  "
        f"{'truncated':>9}  {'mean tokens':>11}"
    )
    rows = [head]
    for s in outcome.scores:
        lower = wilson_lower(s.hits, s.samples, confidence)
        tokens = "-" if s.mean_tokens is None else f"{s.mean_tokens:.1f}"
        em = f"{s.em:.3f}" if s.samples else "-"
        rows.append(
            f"{s.budget:>8}  {em:>6}  {lower:>6.3f}  {s.samples:>7}  {s.errors:>6}  "
            f"{s.truncated:>9}  {tokens:>11}"
        )
    return "\n".join(rows) + "\n"


def _plot(outcome: AuditOutcome, confidence: float, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from stopbudget.core.curve import wilson_lower

    budgets = [s.budget for s in outcome.scores]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(budgets, [s.em for s in outcome.scores], marker="o", label="EM")
    ax.plot(
        budgets,
        [wilson_lower(s.hits, s.samples, confidence) for s in outcome.scores],
        marker=".",
        linestyle="--",
        label=f"Wilson lower bound ({confidence:g})",
    )
    ax.set_xscale("log", base=2)
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.set_ylim(0, 1)
    ax.set_xlabel("token budget")
    ax.set_ylabel("exact match")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class _Progress:
    """A tqdm bar fed by the runner's ``progress(done, total)`` callback."""

    def __init__(self, enabled: bool, stream: TextIO) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=0, unit="req", desc="audit", file=stream, disable=None if enabled else True
        )

    def __call__(self, done: int, total: int) -> None:
        if total != self.bar.total:
            self.bar.reset(total=total)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def run(args: argparse.Namespace) -> int:
    """Run ``stopbudget audit`` with parsed arguments; returns the exit code."""
    import asyncio

    from stopbudget.api import AuditApi, AuditMethod
    from stopbudget.clients.audit_runner import AuditPlan, run_audit
    from stopbudget.core.audits import dataset

    if args.answer_pattern is not None:
        try:
            groups = re.compile(args.answer_pattern).groups
        except re.error as exc:
            return _error(f"--answer-pattern {args.answer_pattern!r} is not a regex: {exc}")
        if groups < 1:
            return _error(
                f"--answer-pattern {args.answer_pattern!r} has no capture group: put the "
                "answer in parentheses, e.g. 'answer is (\\S+)'"
            )
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        return _error("--plot needs matplotlib: install stopbudget[plot]")
    if args.plot and not Path(args.plot).resolve().parent.is_dir():
        return _error(f"--plot: the directory of {args.plot} does not exist")
    try:
        text = sys.stdin.read() if args.dataset == "-" else Path(args.dataset).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        return _error(f"cannot read the dataset {args.dataset}: {reason}")
    try:
        items = dataset.parse_golden(text)
    except dataset.DatasetError as exc:
        for problem in exc.problems:
            _say(f"{args.dataset}: {problem}", sys.stderr)
        if exc.more:
            _say(f"{args.dataset}: and {exc.more} more problems", sys.stderr)
        return BAD_INPUT
    questions = dataset.sample(items, args.sample, args.seed)
    headers = {}
    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            return _error(f"--api-key-env: the environment variable {args.api_key_env} is empty")
        headers["Authorization"] = f"Bearer {key}"
    try:
        plan = AuditPlan(
            endpoint=args.endpoint,
            model=args.model,
            budgets=args.budgets,
            questions=tuple(questions),
            api=AuditApi(args.api),
            method=AuditMethod(args.method),
            concurrency=args.concurrency,
            request_timeout=args.request_timeout,
            timeout=args.timeout,
            answer_pattern=args.answer_pattern,
            min_samples=args.min_samples,
            max_attempts=args.retries + 1,
            headers=headers,
        )
    except ValueError as exc:
        return _error(str(exc))
    progress = _Progress(not args.no_progress, sys.stderr)
    try:
        outcome = asyncio.run(run_audit(plan, progress=progress))
    except KeyboardInterrupt:
        _say("stopbudget audit: interrupted", sys.stderr)
        return INTERRUPTED
    finally:
        progress.close()
    return _report(outcome, args, len(questions), len(items))


def _report(outcome: AuditOutcome, args: argparse.Namespace, asked: int, total: int) -> int:
    if outcome.generations == 0:
        _say(f"stopbudget audit: the audit failed: {outcome.message}", sys.stderr)
        return FAILED
    sys.stdout.write(render_table(outcome, args.confidence))
    _say(
        f"{asked} of {total} questions, method {outcome.method.value}, "
        f"{outcome.requests} requests, {outcome.tokens} tokens generated, "
        f"{outcome.duration:.1f}s"
    )
    if args.plot:
        title = f"{args.model}: EM vs budget ({asked} questions, {outcome.method.value})"
        try:
            _plot(outcome, args.confidence, args.plot, title)
        except OSError as exc:
            return _error(f"cannot write the plot {args.plot}: {exc.strerror or exc}")
        _say(f"plot written to {args.plot}")
    if not outcome.ok:
        _say(f"stopbudget audit: the audit failed: {outcome.message}", sys.stderr)
        return FAILED
    for note in outcome.messages[1:]:
        _say(f"note: {note}", sys.stderr)
    return OK


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m stopbudget.cli.audit ...``, until ``stopbudget audit`` is wired."""
    top = argparse.ArgumentParser(prog="stopbudget")
    add_parser(top.add_subparsers(dest="command", required=True))
    args = top.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
