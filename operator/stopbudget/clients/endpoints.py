"""The operator's HTTP endpoints: ``/metrics``, ``/healthz`` and ``/readyz``.

One small aiohttp server on ``settings.metrics_port``. ``/healthz`` answers as
long as the event loop runs; ``/readyz`` once the operator has started (kopf's
startup handlers done) and while it is not stopping.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stopbudget.clients.metrics import OperatorMetrics


@dataclass
class Readiness:
    """Flipped by the operator's startup and cleanup handlers."""

    ready: bool = False
    reasons: list[str] = field(default_factory=list)


def app(metrics: OperatorMetrics, readiness: Readiness) -> web.Application:
    async def get_metrics(_: web.Request) -> web.Response:
        # Off the event loop: at 1,000 policies rendering takes most of a second.
        body = await asyncio.to_thread(generate_latest, metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if readiness.ready:
            return web.Response(text="ready\n")
        why = "; ".join(readiness.reasons) or "starting"
        return web.Response(status=503, text=f"not ready: {why}\n")

    application = web.Application()
    application.router.add_get("/metrics", get_metrics)
    application.router.add_get("/healthz", healthz)
    application.router.add_get("/readyz", readyz)
    return application


async def serve(
    application: web.Application, host: str, port: int, *, auto_decompress: bool = True
) -> tuple[web.AppRunner, int]:
    """Start ``application`` on host:port (0: a free port); returns the runner and the port.

    ``auto_decompress=False``: aiohttp hands request bodies over as sent (the webhook
    decodes ``Content-Encoding`` itself, with its own limits and 4xx answers).
    """
    runner = web.AppRunner(application, access_log=None, auto_decompress=auto_decompress)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server  # aiohttp exposes the bound port only here
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, int(bound)
