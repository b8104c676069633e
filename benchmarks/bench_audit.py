"""What an audit costs: truncate vs direct, and wall time against concurrency.

Setup: 200 real GSM8K test questions (data/golden, MIT) sent to the
OpenAI-compatible test server (tests/support/openai_server.py) over a 5-budget ladder.
Question i's output needs k_i tokens, k_i being the GeneratedTokens of the i-th
request of the real Azure LLM inference trace (data/traces, CC-BY-4.0), so the
lengths are those of a production service (p50 ~130, a long tail to 1000).

1. Generations and tokens per audit, truncate vs direct (both measure the same
   curve, which the benchmark checks).
2. Audit wall time at concurrency 1, 8 and 32, with the server spending a
   fixed time per generated token.  The test server's per-token latency does
   not grow with the number of requests in flight, unlike a real GPU server's
   (which batches them), so the speedup from concurrency here is an upper bound.

    python benchmarks/bench_audit.py [--token-latency-us 100]

The server and the client share one Python process, so JSON handling puts a
floor under the wall time (the last row: concurrency 32 with no server latency).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.support.openai_server

from tests.support.openai_server import (  # noqa: E402
    MODEL,
    Canned,
    OpenAIServer,
    ThreadedOpenAIServer,
    reply,
)

from stopbudget.api import AuditMethod  # noqa: E402
from stopbudget.clients.audit_runner import AuditOutcome, AuditPlan, run_audit  # noqa: E402
from stopbudget.core.audits import dataset  # noqa: E402

QUESTIONS = 200
LADDER = (64, 128, 256, 512, 1024)
CONCURRENCY = (1, 8, 32)


def setup() -> tuple[list[dataset.GoldenItem], dict[str, Canned]]:
    text = (ROOT / "data" / "golden" / "gsm8k_test.jsonl").read_text(encoding="utf-8")
    items = dataset.parse_golden(text)[:QUESTIONS]
    with (ROOT / "data" / "traces" / "AzureLLMInferenceTrace_conv.csv").open() as f:
        rows = csv.DictReader(f)
        lengths = [max(1, int(next(rows)["GeneratedTokens"])) for _ in range(QUESTIONS)]
    replies = {
        item.question: reply(item.answers[0], k) for item, k in zip(items, lengths, strict=True)
    }
    return items, replies


def audit(
    server: OpenAIServer, items: list[dataset.GoldenItem], method: AuditMethod, concurrency: int
) -> AuditOutcome:
    plan = AuditPlan(
        endpoint=server.url,
        model=MODEL,
        budgets=LADDER,
        questions=tuple(items),
        method=method,
        concurrency=concurrency,
        min_samples=QUESTIONS,
        timeout=3600,
    )
    outcome = asyncio.run(run_audit(plan))
    assert outcome.ok, outcome.messages
    return outcome


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--token-latency-us", type=float, default=100.0, help="server time per token"
    )
    args = parser.parse_args()
    items, replies = setup()

    print(
        f"# Audit cost: {QUESTIONS} GSM8K questions, ladder {list(LADDER)}, "
        "output lengths from the Azure conv trace\n"
    )
    with ThreadedOpenAIServer(replies) as server:
        direct = audit(server, items, AuditMethod.DIRECT, 8)
        truncate = audit(server, items, AuditMethod.TRUNCATE, 8)
    assert direct.scores == truncate.scores, "the two methods disagree"
    print("| method   | generations | tokens generated | EM per budget |")
    print("|----------|------------:|-----------------:|---------------|")
    for name, o in (("direct", direct), ("truncate", truncate)):
        ems = " ".join(f"{s.em:.2f}" for s in o.scores)
        print(f"| {name:<8} | {o.generations:>11} | {o.tokens:>16} | {ems} |")
    print(
        f"| ratio direct/truncate | {direct.generations / truncate.generations:.2f}x "
        f"| {direct.tokens / truncate.tokens:.2f}x | identical curves |\n"
    )

    delay = args.token_latency_us / 1e6
    print(f"# Audit wall time, server latency {args.token_latency_us:g} us per generated token\n")
    print(
        "| concurrency | direct (s) | truncate (s) | direct/truncate "
        "| speedup vs c=1 (direct, truncate) |"
    )
    print(
        "|------------:|-----------:|-------------:|----------------:|-----------------------------------|"
    )
    base: dict[AuditMethod, float] = {}
    runs = [(c, delay) for c in CONCURRENCY] + [(CONCURRENCY[-1], 0.0)]
    for c, latency in runs:
        times = {}
        with ThreadedOpenAIServer(replies, token_delay=latency) as server:
            for method in (AuditMethod.DIRECT, AuditMethod.TRUNCATE):
                times[method] = audit(server, items, method, c).duration
                base.setdefault(method, times[method])
        d, t = times[AuditMethod.DIRECT], times[AuditMethod.TRUNCATE]
        label = f"{c}" if latency else f"{c}, no latency"
        speedup = (
            f"{base[AuditMethod.DIRECT] / d:.1f}x, {base[AuditMethod.TRUNCATE] / t:.1f}x"
            if latency
            else "- (harness floor)"
        )
        print(f"| {label:>11} | {d:>10.2f} | {t:>12.2f} | {d / t:>14.2f}x | {speedup} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
