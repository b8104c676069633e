"""The gate's HTTP side: an aiohttp reverse proxy that caps token limits. I/O.

Every request goes to the upstream unchanged, except ``POST`` requests on the
capped routes (:mod:`stopbudget.gate.caps`), whose JSON body is checked and
rewritten first.  Responses are relayed chunk by chunk as they arrive (SSE
streams included): each chunk is written and drained before the next is read,
so a slow client slows the upstream read (backpressure) instead of filling
memory.  The app runs with aiohttp's handler cancellation: a client that goes
away cancels its handler, which closes the upstream connection, and the engine
stops generating.

Errors are OpenAI-style JSON (``{"error": {"message", "type", "param",
"code"}}``): 400 for a body that is not a JSON object or a token field that is
not a non-negative integer (``param`` names it), 413 for a body over
``max_body`` bytes, 502 naming the upstream when it cannot be reached or breaks
before answering.  An upstream that breaks mid-stream cannot be turned into a
502 any more: the client connection is closed without the end of the chunked
body, so the client sees a truncated response, not a complete one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from stopbudget.gate import caps, usage
from stopbudget.gate.budgets import Table
from stopbudget.gate.metrics import GateMetrics

__all__ = ["DEFAULT_CLASS_HEADER", "DEFAULT_MAX_BODY", "Gate", "GateConfig"]

log = logging.getLogger(__name__)

DEFAULT_CLASS_HEADER = "x-stopbudget-class"
#: Largest request body on a capped route (images sent inline as base64 need room).
DEFAULT_MAX_BODY = 16 * 1024 * 1024
#: Seconds an idle upstream connection is kept for reuse (engines close theirs at 5 s).
UPSTREAM_KEEPALIVE = 2.0
#: Seconds between two log lines about the same kind of upstream failure.
LOG_EVERY = 10.0
#: Largest JSON response kept to read its usage (the response streams through anyway).
MAX_SCANNED_RESPONSE = 8 * 1024 * 1024

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# aiohttp has already decoded a compressed request body; the client session sets
# Host and Content-Length for what it sends.
_NOT_FORWARDED = _HOP_BY_HOP | {"host", "content-length", "content-encoding", "expect"}
_NOT_RETURNED = _HOP_BY_HOP | {"content-length"}


@dataclass(frozen=True)
class GateConfig:
    """What one gate serves."""

    #: Base URL of the engine, e.g. ``http://127.0.0.1:8080`` (a path prefix is kept).
    upstream: str
    engine: caps.Engine = caps.Engine.VLLM
    class_header: str = DEFAULT_CLASS_HEADER
    max_body: int = DEFAULT_MAX_BODY
    #: Seconds to connect to the upstream; a generation itself has no time limit.
    connect_timeout: float = 10.0

    def __post_init__(self) -> None:
        url = URL(self.upstream)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"upstream {self.upstream!r} is not an http(s) URL")
        if self.max_body < 1:
            raise ValueError("max_body must be at least 1 byte")


def error_response(
    status: int, message: str, *, param: str | None = None, kind: str = "invalid_request_error"
) -> web.Response:
    """An OpenAI-style error."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return web.json_response(body, status=status)


def _forwarded_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The client's headers less hop-by-hop ones, those ``Connection`` names included."""
    dropped = _NOT_FORWARDED
    if "Connection" in headers:
        named = {t.strip().lower() for v in headers.getall("Connection") for t in v.split(",")}
        dropped = dropped | named
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in dropped)


class _Warnings:
    """Upstream failures logged at most once per :data:`LOG_EVERY` seconds per kind,
    with the count of those left out (an engine that is down fails every request)."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._left_out: dict[str, int] = {}

    def __call__(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -LOG_EVERY) < LOG_EVERY:
            self._left_out[kind] = self._left_out.get(kind, 0) + 1
            return
        self._last[kind] = now
        more = self._left_out.pop(kind, 0)
        suffix = f" ({more} more like it in the last {LOG_EVERY:g}s)" if more else ""
        log.warning(message + suffix, *args)


@dataclass
class _Exchange:
    """One request's labels and outcome, for the metrics."""

    cls: str
    route: str
    code: int = 499  # until a response is chosen: the client went away


class _Relayed(web.StreamResponse):
    """A relayed response whose headers leave with its first bytes of body.

    aiohttp's own ``web.Response`` does this; a ``StreamResponse`` sends its headers
    at ``prepare``.  Over loopback each send costs more CPU than the rest of the
    relay, and a response that arrived whole then goes out in one write.
    """

    _send_headers_immediately = False


async def _continue(request: web.BaseRequest) -> None:
    """Answer ``Expect: 100-continue`` (as aiohttp's router would) before reading a body.

    The header is not forwarded: the gate reads the body, the upstream never waits.
    """
    if request.version >= (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")


class Gate:
    """The proxy: :meth:`handle` serves every method and path (aiohttp's low-level
    server runs it: no router is needed in front of a catch-all); :meth:`upstream`
    holds the client session while the gate runs."""

    def __init__(
        self, config: GateConfig, table: Callable[[], Table], metrics: GateMetrics
    ) -> None:
        self.config = config
        self.table = table
        self.metrics = metrics
        self.thinking = caps.thinking_field(config.engine)
        self._base = config.upstream.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._warn = _Warnings()

    @asynccontextmanager
    async def upstream(self) -> AsyncIterator[None]:
        """Hold the connection pool to the upstream while the block runs."""
        # An idle connection is dropped before the engine drops it: llama-server and
        # uvicorn (vLLM, SGLang) close idle ones after 5 s, and a request sent on a
        # connection the server is closing fails (seen on llama-server: a 502).
        connector = aiohttp.TCPConnector(
            limit=0, keepalive_timeout=UPSTREAM_KEEPALIVE, enable_cleanup_closed=False
        )
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.config.connect_timeout)
        async with aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,  # bodies go through as the upstream encoded them
            # only the client's own headers go upstream
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
            # never keep one client's cookies to send with another's requests
            cookie_jar=aiohttp.DummyCookieJar(),
        ) as session:
            self._session = session
            yield
        self._session = None

    # ------------------------------------------------------------------ handling

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Serve one request; counts it whatever happens."""
        route = caps.route_for(self.config.engine, request.method, request.path)
        label, limits = self.table().resolve(request.headers.get(self.config.class_header))
        exchange = _Exchange(label, route.name if route is not None else "other")
        self.metrics.in_flight.inc()
        try:
            if route is None:
                response = await self._forward(request, None, exchange, scan=False)
            else:
                response = await self._capped(request, route, limits, exchange)
            if exchange.code == 499:  # not set on the way: the response's own status
                exchange.code = response.status
            return response
        finally:
            self.metrics.in_flight.dec()
            self.metrics.answered(exchange.cls, exchange.route, exchange.code)

    async def _capped(
        self, request: web.BaseRequest, route: caps.Route, limits: caps.Caps, exchange: _Exchange
    ) -> web.StreamResponse:
        raw = await self._read(request)
        if raw is None:
            return error_response(
                413,
                f"the request body is larger than the gate's limit of {self.config.max_body} "
                "bytes (STOPBUDGET_GATE_MAX_BODY_BYTES)",
            )
        try:
            rewritten = caps.rewrite(raw, route, limits, self.thinking)
        except caps.BadRequestError as exc:
            return error_response(400, exc.message, param=exc.param)
        for kind in rewritten.capped:
            self.metrics.capped.labels(exchange.cls, route.name, kind.value).inc()
        body = rewritten.body if rewritten.body is not None else raw
        return await self._forward(request, body, exchange, scan=True)

    async def _read(self, request: web.BaseRequest) -> bytes | None:
        """The whole body; None when it is over the limit (the rest is left unread)."""
        limit = self.config.max_body
        if request.content_length is not None and request.content_length > limit:
            return None  # without a 100 Continue: the client need not send it
        await _continue(request)
        chunks, size = [], 0
        while chunk := await request.content.readany():
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def _forward(
        self, request: web.BaseRequest, body: bytes | None, exchange: _Exchange, *, scan: bool
    ) -> web.StreamResponse:
        assert self._session is not None, "the gate's app is not running"
        data: bytes | aiohttp.StreamReader | None = body
        if body is None and request.body_exists:
            await _continue(request)
            data = request.content
        headers = _forwarded_headers(request.headers)
        started = asyncio.get_running_loop().time()
        url = URL(self._base + request.raw_path, encoded=True)
        try:
            upstream = await self._session.request(
                request.method, url, headers=headers, data=data, allow_redirects=False
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return self._bad_gateway(exc)
        try:
            response = await self._relay(request, upstream, exchange, scan=scan)
        except BaseException:
            upstream.close()  # the client went away (or we failed): stop the generation
            raise
        upstream.release()
        self.metrics.latency.labels(exchange.route).observe(
            asyncio.get_running_loop().time() - started
        )
        return response

    def _bad_gateway(self, exc: BaseException) -> web.Response:
        if isinstance(exc, TimeoutError):
            limit = self.config.connect_timeout
            reason, what = "timeout", f"did not accept a connection within {limit:g}s"
        elif isinstance(exc, aiohttp.ClientConnectorError):
            reason, what = "unreachable", f"is unreachable: {exc.os_error.strerror or exc}"
        else:
            reason, what = "broken", f"failed before answering: {exc or type(exc).__name__}"
        self.metrics.upstream_errors.labels(reason).inc()
        self._warn(reason, "upstream %s %s", self.config.upstream, what)
        return error_response(
            502, f"the upstream {self.config.upstream} {what}", kind="upstream_error"
        )

    async def _relay(
        self,
        request: web.BaseRequest,
        upstream: aiohttp.ClientResponse,
        exchange: _Exchange,
        *,
        scan: bool,
    ) -> web.StreamResponse:
        response = _Relayed(status=upstream.status, reason=upstream.reason)
        for name, value in upstream.headers.items():
            if name.lower() not in _NOT_RETURNED:
                response.headers.add(name, value)
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        await response.prepare(request)
        reader = _OutcomeReader.for_response(upstream) if scan and upstream.status == 200 else None
        while True:
            try:
                chunk = await upstream.content.readany()
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self._broken_midway(request, exc)
                exchange.code = 502
                return response
            if not chunk:
                break
            if reader is not None:
                reader.feed(chunk)
            if upstream.content.is_eof():  # the last bytes: out with the end of the body
                await response.write_eof(chunk)
                break
            await response.write(chunk)
        await response.write_eof()
        if reader is not None:
            self._count_outcome(exchange.cls, reader.outcome())
        return response

    def _broken_midway(self, request: web.BaseRequest, exc: BaseException) -> None:
        self.metrics.upstream_errors.labels("broken").inc()
        self._warn("broken", "upstream %s broke mid-response: %s", self.config.upstream, exc)
        if request.transport is not None:
            request.transport.close()  # no end of the chunked body: the client sees the cut

    def _count_outcome(self, cls: str, outcome: usage.Outcome) -> None:
        if outcome.tokens is not None:
            self.metrics.tokens.labels(cls).inc(outcome.tokens)
        for reason in outcome.reasons.values():
            self.metrics.finish.labels(cls, reason).inc()


class _OutcomeReader:
    """Reads usage and finish reasons off a response as it streams through."""

    def __init__(self, stream: bool) -> None:
        self._scanner = usage.StreamScanner() if stream else None
        self._chunks: list[bytes] = []
        self._size = 0

    @staticmethod
    def for_response(upstream: aiohttp.ClientResponse) -> _OutcomeReader | None:
        if upstream.headers.get("Content-Encoding", "identity") != "identity":
            return None
        kind = upstream.content_type
        if kind == "text/event-stream":
            return _OutcomeReader(stream=True)
        return _OutcomeReader(stream=False) if kind == "application/json" else None

    def feed(self, chunk: bytes) -> None:
        if self._scanner is not None:
            self._scanner.feed(chunk)
        elif self._size <= MAX_SCANNED_RESPONSE:
            self._chunks.append(chunk)
            self._size += len(chunk)

    def outcome(self) -> usage.Outcome:
        if self._scanner is not None:
            return self._scanner.outcome
        if self._size > MAX_SCANNED_RESPONSE:
            return usage.Outcome()
        return usage.from_json(b"".join(self._chunks))
