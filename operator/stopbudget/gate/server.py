"""Runs a gate: the proxy, its metrics endpoint and the budget watcher, until told to stop. I/O."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stopbudget.gate.budgets import Changed, Event, Invalid
from stopbudget.gate.metrics import GateMetrics
from stopbudget.gate.proxy import Gate, GateConfig
from stopbudget.gate.watcher import POLL_INTERVAL, BudgetWatcher

__all__ = ["Address", "ListenError", "RunningGate", "ServeOptions", "running_gate", "serve"]

log = logging.getLogger(__name__)

#: Seconds requests in flight get to finish after SIGTERM (Kubernetes kills after 30 s).
SHUTDOWN_GRACE = 25.0


class ListenError(OSError):
    """An address the gate cannot listen on; the message names the flag."""


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ServeOptions:
    """Everything ``stopbudget gate`` takes."""

    config: GateConfig
    budgets: Path
    listen: Address
    metrics_listen: Address
    poll_interval: float = POLL_INTERVAL
    shutdown_grace: float = SHUTDOWN_GRACE


@dataclass
class RunningGate:
    """A started gate: where it listens (ports chosen by the OS when 0 was asked)."""

    url: str
    metrics_url: str
    watcher: BudgetWatcher
    metrics: GateMetrics


def _metrics_app(metrics: GateMetrics) -> web.Application:
    async def render(request: web.Request) -> web.Response:
        body = await asyncio.to_thread(generate_latest, metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthy(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/metrics", render)
    app.router.add_get("/healthz", healthy)
    return app


def _event_metrics(metrics: GateMetrics) -> Callable[[Event], None]:
    def record(event: Event) -> None:
        if isinstance(event, Invalid):
            metrics.budget_errors.labels(event.key.cls, event.key.kind.value).inc()
        elif isinstance(event, Changed):
            metrics.set_budget(event.key.cls, event.key.kind, event.new)

    return record


async def _site(runner: web.BaseRunner, address: Address, flag: str) -> str:
    site = web.TCPSite(runner, address.host, address.port)
    try:
        await site.start()
    except OSError as exc:
        raise ListenError(f"{flag} {address}: cannot listen: {exc.strerror or exc}") from None
    host, port = runner.addresses[-1][:2]
    return f"http://{Address(host, port)}"


@asynccontextmanager
async def running_gate(options: ServeOptions) -> AsyncIterator[RunningGate]:
    """Serve while the block runs; in-flight requests get the grace period on exit.

    Raises :class:`ListenError` naming the flag when an address cannot be listened on.
    """
    metrics = GateMetrics()
    watcher = BudgetWatcher(
        options.budgets, interval=options.poll_interval, on_event=_event_metrics(metrics)
    )
    watcher.load()
    gate = Gate(options.config, lambda: watcher.table, metrics)
    proxy = web.ServerRunner(
        # keep-alive as web.run_app has it (the low-level default is an hour)
        web.Server(gate.handle, handler_cancellation=True, access_log=None, keepalive_timeout=75),
        shutdown_timeout=options.shutdown_grace,
    )
    monitor = web.AppRunner(_metrics_app(metrics), access_log=None, shutdown_timeout=1.0)
    async with gate.upstream():  # open before the first request, closed after the last
        await proxy.setup()
        await monitor.setup()
        try:
            url = await _site(proxy, options.listen, "--listen")
            metrics_url = await _site(monitor, options.metrics_listen, "--metrics-listen")
            log.info(
                "gate on %s -> %s (engine %s, class header %s), budgets in %s: %s; metrics on %s",
                url,
                options.config.upstream,
                options.config.engine.value,
                options.config.class_header,
                options.budgets,
                watcher.table,
                metrics_url,
            )
            async with watcher.running():
                yield RunningGate(url, metrics_url, watcher, metrics)
        finally:  # stop listening, then let requests in flight finish (the grace period)
            await monitor.cleanup()
            await proxy.cleanup()


async def serve(options: ServeOptions, stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set."""
    async with running_gate(options):
        await stop.wait()
    log.info("gate stopped")
