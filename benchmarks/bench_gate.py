"""What the gate costs, and what it does on a real engine.

1. Overhead: the same requests straight to a fast upstream and through the gate,
   at 1, 16 and 128 concurrent streams, with and without streaming: latency
   (p50, p99, and what the gate adds), requests/s, and the gate's CPU per
   request (so requests per CPU-second: its throughput on one core, whatever
   the load generator could offer), and the gate's RSS.  The upstream
   (``benchmarks/_fast_upstream.py``) and the gate (``stopbudget gate``) are
   processes of their own; the load generator is this process.  Every request
   is capped (``max_tokens`` 1000 lowered to 256), so the rewrite is paid each time.
2. On llama-server (shared/engines, SmolLM2-135M): 100 GSM8K questions per cap
   through the gate, the client asking for 512 tokens; tokens per request as
   the engine counts them (``llamacpp:tokens_predicted_total``).
3. How long a budget-file change (kubelet's atomic swap) takes to reach the
   next request, on llama-server.

    python benchmarks/bench_gate.py [--quick] [--no-engine | --engine-only | --propagation-only]

The machine's other load is printed with the tables (load average), since the
numbers move with it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.support.kubelet

from tests.support.kubelet import ConfigMapVolume  # noqa: E402
from tests.support.procs import Process  # noqa: E402
from tests.support.waiting import wait_for  # noqa: E402

from stopbudget.core.audits import dataset  # noqa: E402
from stopbudget.devkit import engine, servers  # noqa: E402

CONCURRENCY = (1, 16, 128)
CAPS = (16, 32, 64)
QUESTIONS = 100
TICK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- processes


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def memory_mib(pid: int) -> tuple[float, float]:
    """(RSS now, peak RSS) in MiB."""
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def _ready(url: str) -> bool:
    try:
        servers.http_json("GET", url, timeout=1.0)
    except servers.ServerError:
        return False
    return True


@contextmanager
def process(args: Sequence[str], ready_url: str, log: Path) -> Iterator[Process]:
    log.write_bytes(b"")
    with Process(args, log) as proc:  # stopped on exit: SIGTERM, then SIGKILL after 30 s
        wait_for(lambda: _ready(ready_url), timeout=60, what=ready_url)
        yield proc


@contextmanager
def gate(upstream: str, budgets: Path, engine: str, work: Path) -> Iterator[tuple[str, str, int]]:
    """``stopbudget gate`` as a process: (url, metrics url, pid)."""
    port, metrics = servers.free_port(), servers.free_port()
    args = [
        sys.executable, "-m", "stopbudget", "gate",
        "--upstream", upstream, "--budgets", str(budgets), "--engine", engine,
        "--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{metrics}",
    ]  # fmt: skip
    metrics_url = f"http://127.0.0.1:{metrics}"
    with process(args, metrics_url + "/healthz", work / f"gate-{engine}.log") as proc:
        yield f"http://127.0.0.1:{port}", metrics_url, proc.pid


# --------------------------------------------------------------------------- load


@dataclass
class Run:
    latencies: list[float]
    wall: float

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.wall


async def load(url: str, concurrency: int, requests: int, stream: bool) -> Run:
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": "Say something."}],
        "max_tokens": 1000,
        "stream": stream,
    }
    payload = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    left = iter(range(requests))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for _ in left:
                started = time.perf_counter()
                async with session.post(url, data=payload, headers=headers) as response:
                    await response.read()
                    assert response.status == 200, response.status
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return Run(latencies, time.perf_counter() - started)


def count(concurrency: int, quick: bool) -> int:
    n = {1: 2000, 16: 6000, 128: 8000}[concurrency]
    return n // 4 if quick else n


async def overhead(work: Path, quick: bool) -> None:
    up_port = servers.free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    volume = ConfigMapVolume(work / "budgets")
    volume.write({"default.output": "256"})
    up_args = [sys.executable, str(ROOT / "benchmarks" / "_fast_upstream.py"), str(up_port)]
    with (
        process(up_args, upstream + "/health", work / "upstream.log"),
        gate(upstream, volume.dir, "vllm", work) as (gate_url, _, pid),
    ):
        print(f"load average before: {_load()}")
        print(
            "\n| stream | streams | direct p50 / p99 ms | gate p50 / p99 ms | added p50 / p99 ms "
            "| direct req/s | gate req/s | gate CPU µs/req | req per gate CPU-s |"
        )
        print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
        for stream in (False, True):
            for c in CONCURRENCY:
                await _row(upstream, gate_url, pid, c, stream, count(c, quick))
        rss, peak = memory_mib(pid)
        print(f"\ngate RSS after the runs: {rss:.0f} MiB (peak {peak:.0f} MiB)")
        print(f"load average after: {_load()}")


async def _row(upstream: str, gate_url: str, pid: int, c: int, stream: bool, n: int) -> None:
    path = "/v1/chat/completions"
    warm = max(50, n // 10)
    await load(upstream + path, c, warm, stream)
    await load(gate_url + path, c, warm, stream)
    direct = await load(upstream + path, c, n, stream)
    cpu = cpu_seconds(pid)
    via = await load(gate_url + path, c, n, stream)
    cpu = cpu_seconds(pid) - cpu
    ms = 1000.0
    added = (
        (via.quantile(0.5) - direct.quantile(0.5)) * ms,
        (via.quantile(0.99) - direct.quantile(0.99)) * ms,
    )
    print(
        f"| {'yes' if stream else 'no'} | {c} "
        f"| {direct.quantile(0.5) * ms:.2f} / {direct.quantile(0.99) * ms:.2f} "
        f"| {via.quantile(0.5) * ms:.2f} / {via.quantile(0.99) * ms:.2f} "
        f"| {added[0]:+.2f} / {added[1]:+.2f} "
        f"| {direct.rate:,.0f} | {via.rate:,.0f} "
        f"| {cpu / n * 1e6:,.0f} | {n / cpu if cpu else float('inf'):,.0f} |"
    )


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --------------------------------------------------------------------------- llama-server


async def _chat(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> tuple[int, str | None]:
    async with session.post(url + "/v1/chat/completions", json=body) as response:
        answer = await response.json()
        assert response.status == 200, answer
    return int(answer["usage"]["completion_tokens"]), answer["choices"][0]["finish_reason"]


async def _budget_in_force(metrics_url: str, cap: int) -> None:
    line = f'stopbudget_gate_budget_tokens{{class="default",kind="output"}} {float(cap)}'

    def applied() -> bool:
        text = servers.http_json("GET", metrics_url + "/metrics")
        return isinstance(text, str) and line in text.splitlines()

    await asyncio.to_thread(servers.wait_until, applied, timeout=10, what=f"cap {cap}")


def _engine_count(server: engine.DevLlamaServer, before: int, reported: int) -> int:
    """Tokens the engine counted since ``before``, once it has counted what was reported."""

    def counted() -> int | None:
        delta = server.tokens_predicted() - before
        return delta if delta >= reported else None

    return wait_for(counted, timeout=10, what="the engine's count")


async def caps_on_engine(
    server: engine.DevLlamaServer, url: str, metrics_url: str, volume: ConfigMapVolume
) -> None:
    text = (ROOT / "data" / "golden" / "gsm8k_test.jsonl").read_text(encoding="utf-8")
    questions = [item.question for item in dataset.parse_golden(text)[:QUESTIONS]]
    print(
        f"\nllama-server, SmolLM2-135M, {QUESTIONS} GSM8K questions per cap, the client asking "
        "for max_tokens 512, 4 at a time (4 slots)"
    )
    print(f"load average before: {_load()}")
    print(
        "\n| cap | requests | tokens/request (engine) | most in one request | cut by the cap "
        "| wall s | req/s |"
    )
    print("|--:|--:|--:|--:|--:|--:|--:|")
    connector = aiohttp.TCPConnector(limit=4)  # the engine's 4 slots; the rest wait here
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for cap in CAPS:
            volume.write({"default.output": str(cap)})
            await _budget_in_force(metrics_url, cap)
            before = server.tokens_predicted()
            started = time.perf_counter()
            bodies = [
                {"messages": [{"role": "user", "content": q}], "max_tokens": 512} for q in questions
            ]
            results = await asyncio.gather(*(_chat(session, url, b) for b in bodies))
            wall = time.perf_counter() - started
            reported = sum(tokens for tokens, _ in results)
            engine = await asyncio.to_thread(_engine_count, server, before, reported)
            cut = sum(reason == "length" for _, reason in results) / len(results)
            most = max(tokens for tokens, _ in results)
            print(
                f"| {cap} | {len(results)} | {engine / len(results):.1f} | {most} | {cut:.0%} "
                f"| {wall:.1f} | {len(results) / wall:.2f} |"
            )


PROBE_EVERY = 0.02


async def _trial(
    session: aiohttp.ClientSession, url: str, volume: ConfigMapVolume, new: int
) -> tuple[float, float]:
    """One budget change; (latest probe sent that saw the old cap, first that saw the new).

    Probes leave every 20 ms without waiting for each other (a slow request must not
    hide when the change arrived); each generates exactly the cap it was given.
    """
    body = {
        "messages": [{"role": "user", "content": "Count to ten."}],
        "max_tokens": 100,
        "ignore_eos": True,
    }
    results: list[tuple[float, int]] = []

    async def probe(sent: float) -> None:
        tokens, _ = await _chat(session, url, body)
        results.append((sent, tokens))

    volume.write({"default.output": str(new)})
    swapped = time.perf_counter()
    probes = []
    while not any(tokens == new for _, tokens in results):
        probes.append(asyncio.create_task(probe(time.perf_counter() - swapped)))
        await asyncio.sleep(PROBE_EVERY)
    await asyncio.gather(*probes)
    first_new = min(sent for sent, tokens in results if tokens == new)
    last_old = max((sent for sent, tokens in results if tokens != new), default=0.0)
    return last_old, first_new


async def propagation(url: str, volume: ConfigMapVolume, trials: int) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        bounds = [
            await _trial(session, url, volume, 3 if trial % 2 == 0 else 2)
            for trial in range(trials)
        ]
    ms = 1000.0
    firsts = [first for _, first in bounds]
    print(
        f"\nbudget-file change (kubelet's atomic swap of ..data) to the first request that "
        f"saw it, on llama-server, {trials} changes, probes every {PROBE_EVERY * ms:.0f} ms: "
        f"p50 {statistics.median(firsts) * ms:.0f} ms, max {max(firsts) * ms:.0f} ms "
        f"(the last probe with the old cap left at p50 "
        f"{statistics.median(last for last, _ in bounds) * ms:.0f} ms; "
        "the gate reads the directory every 200 ms)"
    )


async def engine_part(work: Path, quick: bool, *, caps: bool = True) -> None:
    lacking = engine.missing()
    if lacking:
        print(f"\nllama-server part skipped: missing {', '.join(lacking)}")
        return
    volume = ConfigMapVolume(work / "engine-budgets")
    volume.write({"default.output": str(CAPS[0])})
    with (
        engine.DevLlamaServer(workdir=work / "llama-server") as server,
        gate(server.url, volume.dir, "llamacpp", work) as (url, metrics_url, _),
    ):
        if caps:
            await caps_on_engine(server, url, metrics_url, volume)
        await propagation(url, volume, 10 if quick else 20)


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the requests")
    parser.add_argument("--no-engine", action="store_true", help="skip llama-server")
    parser.add_argument("--engine-only", action="store_true", help="only llama-server")
    parser.add_argument(
        "--propagation-only", action="store_true", help="only the budget-change timing"
    )
    args = parser.parse_args(argv)
    print(f"{os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="bench-gate-") as tmp:
        if not (args.engine_only or args.propagation_only):
            await overhead(Path(tmp), args.quick)
        if not args.no_engine:
            await engine_part(Path(tmp), args.quick, caps=not args.propagation_only)


if __name__ == "__main__":
    asyncio.run(main())
