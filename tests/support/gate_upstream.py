"""An upstream for the gate's tests: records what reaches it and misbehaves on request.

``POST`` on any path "generates" as many tokens as the body's limit asks
(``max_tokens``, ``max_completion_tokens``, ``max_output_tokens``, else 50),
answering OpenAI-style JSON with ``usage.completion_tokens``, or an SSE stream
of one chunk per token when ``"stream": true``.  ``GET /v1/models`` and
``GET /health`` answer as engines do; any other request is echoed.

The request header ``x-test-mode`` picks a behaviour:

* ``hold``: stream one chunk, then wait until the connection goes away
  (counted in :attr:`cancelled`);
* ``step``: stream one chunk per :meth:`step` call (``steps`` chunks in all);
* ``flood``: stream ``flood_bytes`` as fast as the connection takes them,
  counting what was written in :attr:`sent`;
* ``break``: stream one chunk, then drop the connection mid-body;
* ``close``: drop the connection before answering;
* ``silent``: never answer (counted in :attr:`cancelled` when the gate gives up);
* ``cookie``: answer with a ``Set-Cookie`` header.

It runs with aiohttp's handler cancellation, as the gate does, so a cancelled
upstream request is seen as a :class:`asyncio.CancelledError` in its handler.
"""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass
from typing import Any

from aiohttp import web


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _limit(body: dict[str, Any]) -> int:
    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        if isinstance(body.get(name), int):
            return int(body[name])
    return 50


def _chunk(i: int) -> bytes:
    event = {"choices": [{"index": 0, "delta": {"content": f" t{i}"}, "finish_reason": None}]}
    return f"data: {json.dumps(event)}\n\n".encode()


def _last(tokens: int) -> bytes:
    done = {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
    usage = {"choices": [], "usage": {"completion_tokens": tokens}}
    return f"data: {json.dumps(done)}\n\ndata: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode()


class Upstream:
    """See the module docstring; ``async with Upstream() as up: up.url``."""

    def __init__(self, *, steps: int = 3, flood_bytes: int = 64 << 20) -> None:
        self.seen: list[Seen] = []
        self.cancelled = 0
        self.finished = 0
        self.sent = 0
        self.steps = steps
        self.flood_bytes = flood_bytes
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._step = asyncio.Semaphore(0)

    def step(self) -> None:
        """Let a ``step`` stream send its next chunk."""
        self._step.release()

    async def __aenter__(self) -> Upstream:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_route("*", "/{path:.*}", self._any)
        self._runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5
        )
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock).start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _record(self, request: web.Request) -> Seen:
        seen = Seen(request.method, request.raw_path, dict(request.headers), await request.read())
        self.seen.append(seen)
        return seen

    async def _models(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({"object": "list", "data": [{"id": "test-model"}]})

    async def _health(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({"status": "ok"})

    async def _any(self, request: web.Request) -> web.StreamResponse:
        seen = await self._record(request)
        mode = request.headers.get("x-test-mode", "")
        if mode == "close":
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if mode == "silent":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        if mode == "cookie":
            response = web.json_response({"echo": seen.path})
            response.set_cookie("session", "alice-secret")
            return response
        if request.method != "POST" or not seen.body.startswith(b"{"):
            return web.json_response({"echo": seen.path, "method": seen.method})
        body = seen.json()
        if mode or body.get("stream") is True:
            return await self._stream(request, mode, _limit(body))
        choice = {"index": 0, "text": "x", "finish_reason": "length"}
        tokens = _limit(body)
        self.finished += 1
        return web.json_response(
            {
                "object": "text_completion",
                "choices": [choice],
                "usage": {"completion_tokens": tokens},
            }
        )

    async def _stream(self, request: web.Request, mode: str, tokens: int) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if mode == "break":
            await response.write(_chunk(0))
            assert request.transport is not None
            request.transport.abort()  # mid-body: no end of the chunked stream
            return response
        try:
            if mode == "flood":
                await self._flood(response)
            elif mode in ("hold", "step"):
                await response.write(_chunk(0))
                await self._slow(response, mode)
            else:
                for i in range(tokens):
                    await response.write(_chunk(i))
                await response.write(_last(tokens))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        await response.write_eof()
        self.finished += 1
        return response

    async def _slow(self, response: web.StreamResponse, mode: str) -> None:
        if mode == "hold":
            await asyncio.Event().wait()  # until cancelled
        for i in range(1, self.steps):
            await self._step.acquire()
            await response.write(_chunk(i))
        await response.write(_last(self.steps))

    async def _flood(self, response: web.StreamResponse) -> None:
        block = b": " + b"x" * (64 * 1024 - 3) + b"\n"
        while self.sent < self.flood_bytes:
            await response.write(block)
            self.sent += len(block)
