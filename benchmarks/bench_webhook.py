"""Benchmark: does the operator's event loop stay responsive while the Alertmanager
webhook takes in and processes payloads at the body limit?

The webhook (``webhook.create_app``) and the health/metrics server
(``endpoints.app``) run in a CHILD process, served by ``endpoints.serve`` on one
event loop exactly as ``handlers.startup`` serves them, with ``--policies``
StopPolicies to match against (half select by ``stoppolicy`` + ``namespace``,
half by ``matchLabels``) and the operator's INFO logging (to /dev/null, so its
cost is counted).  This process sends ``--payloads`` payloads of ``--alerts``
alerts each (close to the 1 MiB body limit: a third select a policy by name, a
third by matchLabels, a third no policy) from ``--senders`` concurrent senders,
while a prober asks ``GET /healthz`` and POSTs a one-alert payload every 20 ms.
It prints the latency of each kind of request (median, p99, max) and how long
the child took to process every alert (polled from its ``/metrics``).

    python benchmarks/bench_webhook.py [--policies 1000] [--alerts 7000]
        [--payloads 8] [--senders 2]

Nothing here asserts a number: it prints them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp

TOKEN = "bench-token"
PATH = "/alertmanager"


# --------------------------------------------------------------------------- the child


def _serve(conn: Connection, policies: int, token_file: str) -> None:
    """The operator's side: both servers on one loop; sends the two ports, runs until killed."""
    from stopbudget.clients import endpoints, webhook
    from stopbudget.clients.metrics import OperatorMetrics
    from stopbudget.core.audits import alerts

    logging.basicConfig(level=logging.INFO, filename=os.devnull)
    targets = [
        alerts.PolicyTarget(f"ns{i % 10}", f"policy{i}")
        if i % 2 == 0
        else alerts.PolicyTarget(
            f"ns{i % 10}", f"policy{i}", match_labels={"team": f"team{i}", "model": "m"}
        )
        for i in range(policies)
    ]

    async def on_alerts(update: alerts.PolicyAlerts) -> None:
        return None

    async def main() -> None:
        metrics = OperatorMetrics()
        readiness = endpoints.Readiness(ready=True)
        health, health_port = await endpoints.serve(
            endpoints.app(metrics, readiness), "127.0.0.1", 0
        )
        webhook_app = webhook.create_app(
            token_file=token_file,
            on_alerts=on_alerts,
            policies=lambda: targets,
            metrics=metrics,
        )
        hook, hook_port = await endpoints.serve(webhook_app, "127.0.0.1", 0, auto_decompress=False)
        conn.send((health_port, hook_port))
        try:
            await asyncio.Event().wait()
        finally:
            await hook.cleanup()
            await health.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


# --------------------------------------------------------------------------- payloads


def alert(i: int, policies: int, salt: str) -> dict[str, Any]:
    """A compact alert, as Alertmanager writes it (no annotations, no generatorURL)."""
    p = i % max(policies, 1)
    kind = i % 3
    if kind == 0:  # by name: policies with an even index select by stoppolicy + namespace
        p -= p % 2
        labels = {"alertname": "EMLow", "namespace": f"ns{p % 10}", "stoppolicy": f"policy{p}"}
    elif kind == 1:  # by matchLabels: odd indexes
        p |= 1
        labels = {"alertname": "Slow", "team": f"team{p}", "model": "m"}
    else:
        labels = {"alertname": "Other", "instance": f"host{i}"}
    return {
        "status": "firing",
        "labels": labels,
        "startsAt": "2024-05-01T12:00:00Z",
        "fingerprint": f"{salt}{i:010x}",
    }


def payload(alerts: list[dict[str, Any]]) -> bytes:
    doc = {
        "version": "4",
        "groupKey": "{}:{}",
        "status": "firing",
        "receiver": "stopbudget",
        "alerts": alerts,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


# --------------------------------------------------------------------------- the client


def summary(name: str, latencies: list[float]) -> str:
    if not latencies:
        return f"{name:<28} (none)"
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (
        f"{name:<28} n={len(ms):<5} median {statistics.median(ms):7.1f} ms"
        f"   p99 {p99:7.1f} ms   max {ms[-1]:7.1f} ms"
    )


async def processed(session: aiohttp.ClientSession, health: str) -> float:
    async with session.get(f"{health}/metrics") as resp:
        text = await resp.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("stopbudget_alertmanager_alerts_total{")
    )


async def run(args: argparse.Namespace, health_port: int, hook_port: int) -> None:
    health = f"http://127.0.0.1:{health_port}"
    hook = f"http://127.0.0.1:{hook_port}{PATH}"
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    bodies = [
        payload([alert(i, args.policies, f"b{n}-") for i in range(args.alerts)])
        for n in range(args.payloads)
    ]
    small = [payload([alert(i, args.policies, f"s{i}-")]) for i in range(100_000)]
    # The alerts counter counts an alert once per selected policy: here each selects one or none.
    expected = args.payloads * args.alerts
    small_sent = 0
    print(
        f"{args.payloads} payloads of {args.alerts} alerts ({len(bodies[0]) / 1024:.0f} KiB each)"
        f" against {args.policies} policies; {args.senders} concurrent senders"
    )
    lat: dict[str, list[float]] = {"healthz": [], "small webhook": [], "big webhook": []}
    codes: dict[int, int] = {}
    done = asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def timed(kind: str, method: str, url: str, data: bytes | None = None) -> None:
            started = time.perf_counter()
            async with session.request(method, url, data=data, headers=auth) as resp:
                await resp.read()
            lat[kind].append(time.perf_counter() - started)
            codes[resp.status] = codes.get(resp.status, 0) + 1

        async def sender(mine: list[bytes]) -> None:
            for body in mine:
                await timed("big webhook", "POST", hook, body)

        async def prober() -> None:
            nonlocal small_sent
            n = 0
            while not done.is_set():
                small_sent += 1
                await asyncio.gather(
                    timed("healthz", "GET", f"{health}/healthz"),
                    timed("small webhook", "POST", hook, small[n % len(small)]),
                )
                n += 1
                await asyncio.sleep(0.02)

        probe = asyncio.create_task(prober())
        await asyncio.sleep(0.5)  # a baseline before the big payloads
        started = time.perf_counter()
        await asyncio.gather(*(sender(bodies[k :: args.senders]) for k in range(args.senders)))
        sent = time.perf_counter() - started
        while await processed(session, health) < expected + small_sent:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # polls another process: no event to wait on
        total = time.perf_counter() - started
        await asyncio.sleep(0.3)
        done.set()
        await probe
    print(f"all big payloads answered after {sent:6.2f} s;", end=" ")
    print(f"every alert processed after {total:6.2f} s")
    print(f"({args.payloads * args.alerts / total:,.0f} alerts/s end to end)")
    for kind, values in lat.items():
        print(summary(kind, values))
    print("status codes:", dict(sorted(codes.items())))


@contextlib.contextmanager
def child(policies: int) -> Iterator[tuple[int, int]]:
    with tempfile.TemporaryDirectory() as tmp:
        token_file = Path(tmp) / "token"
        token_file.write_text(TOKEN)
        ctx = multiprocessing.get_context("spawn")
        ours, theirs = ctx.Pipe()
        process = ctx.Process(target=_serve, args=(theirs, policies, str(token_file)))
        process.start()
        try:
            if not ours.poll(60):
                raise RuntimeError("the webhook process did not start")
            yield ours.recv()
        finally:
            process.terminate()
            process.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", type=int, default=1000)
    parser.add_argument("--alerts", type=int, default=7000, help="alerts per big payload")
    parser.add_argument("--payloads", type=int, default=8)
    parser.add_argument("--senders", type=int, default=2)
    args = parser.parse_args()
    with child(args.policies) as (health_port, hook_port):
        asyncio.run(run(args, health_port, hook_port))


if __name__ == "__main__":
    main()
