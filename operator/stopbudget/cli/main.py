"""The ``stopbudget`` command line.

Each subcommand is a small function here that parses its arguments and calls
the module that does the work, so ``stopbudget --help`` lists everything and
no module imports more than its command needs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _cmd_crd(args: argparse.Namespace) -> int:
    from stopbudget.schema import crdgen

    sys.stdout.write(crdgen.render())
    return 0


def _cmd_docs(args: argparse.Namespace) -> int:
    from stopbudget.schema import apidocs

    text = apidocs.render()
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text, encoding="utf-8")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from stopbudget.schema import validate

    problems = []
    for name in args.files:
        path = Path(name)
        try:
            text = sys.stdin.read() if name == "-" else path.read_text(encoding="utf-8")
        except OSError as exc:
            print(f"{name}: (file): cannot read: {exc.strerror}", file=sys.stderr)
            problems.append(name)
            continue
        found = validate.check_text(text, name)
        for problem in found:
            print(problem)
        problems += found
        if not found and not args.quiet:
            print(f"{name}: valid")
    return 1 if problems else 0


def _cmd_run(args: argparse.Namespace) -> int:
    import os

    from stopbudget.clients import settings

    overrides = {
        "STOPBUDGET_NAMESPACES": ",".join(args.namespace) if args.namespace else None,
        "STOPBUDGET_PROMETHEUS_URL": args.prometheus_url,
        "STOPBUDGET_LOG_FORMAT": args.log_format,
        "STOPBUDGET_LOG_LEVEL": args.log_level,
    }
    env = dict(os.environ) | {k: v for k, v in overrides.items() if v is not None}
    if args.all_namespaces:
        env.pop("STOPBUDGET_NAMESPACES", None)
    try:
        config = settings.from_env(env)  # built once, handed to the operator as it is
    except ValueError as exc:
        print(f"stopbudget run: {exc}", file=sys.stderr)
        return 2
    if args.kubeconfig:  # kopf's login and the Kubernetes client read it from there
        os.environ["KUBECONFIG"] = args.kubeconfig

    from stopbudget.controller import handlers

    handlers.run(config)
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="stopbudget",
        description="Keep LLM serving at the best point between token cost and answer quality.",
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "run",
        help="run the operator against the current kubeconfig or in-cluster config",
        description="Run the operator. Settings come from STOPBUDGET_* environment variables "
        "(see operator/stopbudget/clients/settings.py); these flags override the common ones.",
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        help="watch this namespace (repeatable); default: STOPBUDGET_NAMESPACES, else cluster-wide",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch all namespaces")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, $KUBECONFIG)")
    p.add_argument("--prometheus-url", help="Prometheus base URL")
    p.add_argument("--log-format", choices=["text", "json"], help="log format")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("crd", help="print the StopPolicy CustomResourceDefinition (YAML)")
    p.set_defaults(func=_cmd_crd)

    p = sub.add_parser("docs", help="write the API reference (Markdown)")
    p.add_argument("-o", "--output", default="docs/api.md", help="file, or - for stdout")
    p.set_defaults(func=_cmd_docs)

    p = sub.add_parser(
        "validate",
        help="check StopPolicy YAML files offline",
        description="Check StopPolicy YAML (multi-document files too) against the CRD schema "
        "and the operator's rules. Prints 'file: path.to.field: message' per problem; "
        "exit code 1 on any problem.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="YAML file, or - for stdin")
    p.add_argument("-q", "--quiet", action="store_true", help="print only problems")
    p.set_defaults(func=_cmd_validate)

    from stopbudget.cli import audit as audit_command

    audit_command.add_parser(sub)

    from stopbudget.cli import gate as gate_command

    gate_command.add_parser(sub)

    from stopbudget.cli import simulate as simulate_command

    simulate_command.add_parser(sub)

    from stopbudget.cli import demo

    demo.add_parser(sub)

    return top


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        code: int = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
