"""``stopbudget gate``: the budget-enforcing OpenAI-compatible proxy, from the command line.

    stopbudget gate --upstream http://127.0.0.1:8080 --budgets /etc/stopbudget/budgets \\
        --listen 0.0.0.0:8000 --engine llamacpp

Exit codes: 0 after SIGTERM or SIGINT (requests in flight get 25 s to finish),
2 on bad input (a flag, the budget directory, ``STOPBUDGET_GATE_MAX_BODY_BYTES``,
an address that cannot be listened on).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stopbudget.gate.server import Address

# Only the standard library at import time: `stopbudget --help` must not load aiohttp.
__all__ = ["ENGINES", "MAX_BODY_ENV", "add_parser", "parse_address", "parse_upstream", "run"]

#: The values of stopbudget.gate.caps.Engine (a test checks they agree).
ENGINES = ("vllm", "sglang", "llamacpp", "openai")
DEFAULT_LISTEN = "127.0.0.1:8000"
DEFAULT_METRICS_LISTEN = "127.0.0.1:9090"
DEFAULT_CLASS_HEADER = "x-stopbudget-class"
#: Environment variable: largest request body on a capped route, in bytes.
MAX_BODY_ENV = "STOPBUDGET_GATE_MAX_BODY_BYTES"

OK, BAD_INPUT = 0, 2

#: An HTTP header name (RFC 9110 token).
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_ADDRESS = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+)):(?P<port>[0-9]{1,5})$")


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::]:8000`` for IPv6) -> ``(host, port)``; argparse-friendly errors."""
    match = _ADDRESS.match(text.strip())
    port = int(match["port"]) if match else -1
    if match is None or not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not HOST:PORT: write e.g. 127.0.0.1:8000, 0.0.0.0:8000 or [::]:8000"
        )
    host = match["v6"] or match["host"]
    if match["v6"] is not None:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: {host!r} in brackets is not an IPv6 address"
            ) from None
    return host, port


def parse_upstream(text: str) -> str:
    """The engine's base URL: http(s), a host, no query or fragment."""
    match = re.match(r"^(https?)://([^/?#\s]+)([^?#\s]*)$", text.strip())
    if match is None or match[2].startswith(":"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not the engine's base URL: write e.g. http://127.0.0.1:8080 "
            "(http or https, a host, no query)"
        )
    return text.strip().rstrip("/")


def parse_header(text: str) -> str:
    """An HTTP header name."""
    if not _TOKEN.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an HTTP header name: use letters, digits and '-', "
            f"e.g. {DEFAULT_CLASS_HEADER}"
        )
    return text.lower()


def add_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register ``gate`` on ``subparsers``; the parser's ``func`` default is :func:`run`."""
    p = subparsers.add_parser(
        "gate",
        help="OpenAI-compatible proxy that caps token budgets per request, live from files",
        description="Proxy to an OpenAI-compatible engine that lowers max_tokens / "
        "max_completion_tokens / max_output_tokens and the engine's thinking budget to the "
        "budgets in DIR (<class>.output and <class>.thinking files, e.g. a mounted ConfigMap "
        "written by the configMap sink). A file change applies within a second, no restart. "
        f"Environment: {MAX_BODY_ENV} (largest request body, default 16 MiB).",
    )
    p.add_argument(
        "--upstream",
        required=True,
        type=parse_upstream,
        metavar="URL",
        help="the engine's base URL, e.g. http://127.0.0.1:8080",
    )
    p.add_argument(
        "--budgets",
        required=True,
        metavar="DIR",
        help="directory of <class>.output / <class>.thinking files, each a positive integer",
    )
    p.add_argument(
        "--listen",
        type=parse_address,
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"where clients connect ({DEFAULT_LISTEN}; a sidecar passes 0.0.0.0:8000)",
    )
    p.add_argument(
        "--metrics-listen",
        type=parse_address,
        default=DEFAULT_METRICS_LISTEN,
        metavar="HOST:PORT",
        help=f"where /metrics and /healthz are served ({DEFAULT_METRICS_LISTEN})",
    )
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default="vllm",
        help="the engine behind the gate: it names the thinking-budget field (vllm)",
    )
    p.add_argument(
        "--class-header",
        type=parse_header,
        default=DEFAULT_CLASS_HEADER,
        metavar="NAME",
        help=f"request header naming the class; absent: default ({DEFAULT_CLASS_HEADER})",
    )
    p.set_defaults(func=run)
    return p


def _error(message: str) -> int:
    sys.stderr.write(f"stopbudget gate: {message}\n")
    return BAD_INPUT


def max_body(env: Mapping[str, str]) -> int:
    """The body limit from the environment; ValueError naming the variable."""
    from stopbudget.gate.proxy import DEFAULT_MAX_BODY

    text = env.get(MAX_BODY_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_BODY
    if not text.isdigit() or int(text) < 1:
        raise ValueError(
            f"{MAX_BODY_ENV}={text!r} is not a size in bytes: write a positive integer, "
            "e.g. 16777216"
        )
    return int(text)


def _address(pair: tuple[str, int]) -> Address:
    from stopbudget.gate.server import Address

    return Address(*pair)


def run(args: argparse.Namespace) -> int:
    """Run ``stopbudget gate`` with parsed arguments until a signal; the exit code."""
    import asyncio
    import logging
    import signal

    from stopbudget.gate.caps import Engine
    from stopbudget.gate.proxy import GateConfig
    from stopbudget.gate.server import ListenError, ServeOptions, serve

    budgets = Path(args.budgets)
    if not budgets.is_dir():
        what = "is not a directory" if budgets.exists() else "does not exist"
        return _error(
            f"--budgets {budgets} {what}: give the directory where the budget ConfigMap "
            "is mounted (files <class>.output, <class>.thinking)"
        )
    try:
        config = GateConfig(
            upstream=args.upstream,
            engine=Engine(args.engine),
            class_header=args.class_header,
            max_body=max_body(os.environ),
        )
    except ValueError as exc:
        return _error(str(exc))
    options = ServeOptions(config, budgets, _address(args.listen), _address(args.metrics_listen))
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(options, stop)

    try:
        asyncio.run(main())
    except ListenError as exc:  # it names its flag
        return _error(str(exc))
    return OK


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m stopbudget.cli.gate ...``."""
    top = argparse.ArgumentParser(prog="stopbudget")
    add_parser(top.add_subparsers(dest="command", required=True))
    args = top.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
