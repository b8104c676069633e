"""The Alertmanager webhook receiver: the HTTP server in front of ``core.audits.alerts``.

Alertmanager's ``webhook_config`` POSTs a JSON payload (version ``"4"``) per alert
group.  This module authenticates the request, reads and decodes its body, and queues
the payload; a background worker has :mod:`stopbudget.core.audits.alerts` (pure:
validation, matching, dedupe, planning) say what it means, one
:class:`~stopbudget.core.audits.alerts.PolicyAlerts` per matched StopPolicy, handed to
the operator's callback.  The HTTP answer (202) never waits for it.

Pure helpers kept here because they are about the request, not the alerts:
:func:`content_codings` / :func:`decode_body` undo ``Content-Encoding``, bounded;
:class:`LogBudget` and :func:`payload_line` keep the log readable.

:func:`create_app`, an aiohttp application with ``POST /alertmanager``: bearer token
from a file (re-read when the file changes, as a rotated Secret volume does), compared
in constant time; 401 with ``WWW-Authenticate: Bearer``; 413 over the body limit
(Content-Length, the bytes actually read, and the body decoded); 415 for a
``Content-Encoding`` other than gzip, deflate or identity (the receiver decodes the
body itself: see :func:`create_app`); 400 with a JSON reason for any other error
caused by the request (never a 5xx, which Alertmanager would retry); 405 on other
methods; 503 when the token file is unreadable or the queue is full, in payloads or in
alerts (Alertmanager retries 5xx); 202 at once otherwise.  A single background worker
processes payloads in order (so two copies of one alert can never race past the
dedupe); exceptions in the callback are logged and counted, never fatal.  The event
loop never does the heavy part: bodies over :data:`INLINE_BYTES` are decoded and
parsed in a thread, and matching and dedupe (linear in the payload) of all but small
payloads (:data:`INLINE_ALERTS`) run in another, so ``/healthz``, ``/metrics`` and the
next notification are answered while a payload at the body limit is processed
(``benchmarks/bench_webhook.py`` measures it).

The log stays readable under a flood: one line per payload with its counts
(:func:`payload_line`; a warning when alerts were invalid, left out by
``max_alerts`` or failed to apply), the counter ``stopbudget_alertmanager_alerts_total``
by status and outcome, alerts no policy selects one by one only at DEBUG, and an
example of one, like tracebacks, a few times a minute at most (:class:`LogBudget`).
Untrusted text is logged as repr, bounded, so a payload cannot forge log lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import os
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import hdrs, web
from aiohttp.typedefs import LooseHeaders

from stopbudget.api import AlertRecord
from stopbudget.clients.metrics import OperatorMetrics
from stopbudget.core.audits.alerts import (
    DEFAULT_DEDUPE,
    MAX_PROBLEMS,
    DedupeConfig,
    Outcome,
    PayloadError,
    Plan,
    PolicyAlerts,
    PolicyTarget,
    WebhookPayload,
    parse_payload,
    plan_payload,
)

log = logging.getLogger(__name__)

DEFAULT_PATH = "/alertmanager"
DEFAULT_MAX_BODY_BYTES = 1 << 20
#: Bodies up to this size are parsed on the event loop (well under a millisecond);
#: bigger or compressed ones in a worker thread, so the loop keeps answering.
INLINE_BYTES = 16 * 1024
#: Payloads of up to this many alerts, against up to this many policies, are planned on
#: the event loop (a millisecond or two): handing them to a thread would cost more, up to
#: the interpreter's 5 ms switch interval while other threads are busy.
INLINE_ALERTS = 64
INLINE_POLICIES = 256
#: The worker holds the event loop this long at most before it lets requests in.
WORKER_SLICE = 0.005
#: Payloads, and alerts, waiting in the queue at most (a 1 MiB body holds up to ~10,000
#: alerts; the alerts bound the memory): beyond, 503 and Retry-After.
DEFAULT_QUEUE_SIZE = 1024
DEFAULT_MAX_QUEUED_ALERTS = 50_000


# --------------------------------------------------------------------------- the body


#: Content codings the receiver decodes, by name (``x-gzip`` is gzip: RFC 9110 8.4.1.3).
CODINGS = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}
ACCEPT_ENCODING = "gzip, deflate, identity"
#: Codings stacked on one body at most: each layer costs up to the body limit to decode.
MAX_CODINGS = 2


def content_codings(headers: Iterable[str]) -> list[str]:
    """The codings of ``Content-Encoding`` header values, in the order they were applied.

    ``identity`` and empty items are dropped; :class:`PayloadError` (415) for a coding the
    receiver does not decode, or more than :data:`MAX_CODINGS`.
    """
    codings = []
    for header in headers:
        for item in header.split(","):
            name = item.strip().lower()
            if not name or name == "identity":
                continue
            if name not in CODINGS:
                raise PayloadError(
                    f"unsupported Content-Encoding {item.strip()[:40]!r}: "
                    f"send the body as {ACCEPT_ENCODING}",
                    status=415,
                )
            codings.append(CODINGS[name])
    if len(codings) > MAX_CODINGS:
        raise PayloadError(
            f"{len(codings)} content codings: at most {MAX_CODINGS} are decoded", status=415
        )
    return codings


def _inflate(data: bytes, coding: str, limit: int) -> bytes:
    """One layer of gzip (one or more members) or deflate (zlib or raw), at most ``limit`` bytes."""
    if coding == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    else:  # RFC 9110 says zlib format; some clients send raw deflate (as aiohttp, sniff)
        wbits = zlib.MAX_WBITS if data[:1] and data[0] & 0x0F == 8 else -zlib.MAX_WBITS
    out = bytearray()
    rest = data
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            out += inflater.decompress(rest, limit + 1 - len(out))
        except zlib.error as exc:
            raise PayloadError(f"the body is not valid {coding} data: {exc}") from None
        if len(out) > limit:
            raise PayloadError(f"the decoded body exceeds {limit} bytes", status=413)
        if not inflater.eof:
            raise PayloadError(f"the {coding} body is truncated")
        rest = inflater.unused_data
        if not rest:
            return bytes(out)
        if coding != "gzip":  # gzip allows members one after another; deflate is one stream
            raise PayloadError(f"the body is not valid {coding} data: data after the end")


def decode_body(body: bytes, codings: Sequence[str], limit: int) -> bytes:
    """Undo ``codings`` (as from :func:`content_codings`), last applied first; the decoded
    body of every layer is bounded by ``limit`` (413), so a small bomb cannot blow up."""
    for coding in reversed(codings):
        body = _inflate(body, coding, limit)
    return body


def read_payload(body: bytes, codings: Sequence[str], limit: int) -> WebhookPayload:
    """What a request body means: :func:`decode_body`, then :func:`parse_payload`."""
    return parse_payload(decode_body(body, codings, limit))


# --------------------------------------------------------------------------- the log


class LogBudget:
    """At most ``lines`` log lines of one kind per ``per`` seconds; counts what it holds back.

    Pure (the caller passes a monotonic ``now``), so a flood of bad input costs a few
    lines a minute, each saying how many were left out since the one before.
    """

    def __init__(self, per: float = 60.0, lines: int = 1) -> None:
        self.per = per
        self.lines = lines
        self._window: float | None = None
        self._used = 0
        self._held = 0

    def take(self, now: float, count: int = 1) -> int | None:
        """Whether a line showing one of ``count`` events may be written at ``now``: None
        when not (the events are counted), else how many were held back since the last line.
        """
        if self._window is None or now >= self._window + self.per:
            self._window, self._used = now, 0
        if self._used >= self.lines:
            self._held += count
            return None
        self._used += 1
        held, self._held = self._held, count - 1
        return held


#: Tracebacks (a failing callback, a failed request) logged per minute at most.
FAILURES_PER_MINUTE = 3
#: Characters of a label set or a problem shown in a log line at most.
SHOWN_CHARS = 300


def _shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``value`` for a log line: repr (quotes, escapes: no forged lines), at most ``limit``."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _printable(text: str, limit: int = SHOWN_CHARS) -> str:
    return text[:limit] if text[:limit].isprintable() else _shown(text, limit)


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def payload_line(payload: WebhookPayload, plan: Plan, failed: int = 0) -> str:
    """The one log line of a processed payload: what came in and what became of it."""
    counts: Counter[str] = Counter()
    for (_, outcome), n in plan.counts.items():
        counts[outcome] += n
    received = len(payload.alerts) + len(payload.rejected)
    matched = len(payload.alerts) - len(plan.unmatched)
    audits = sum(update.trigger_audit for update in plan.policies)
    text = (
        f"Alertmanager notification (receiver {_shown(payload.receiver[:100])}, group "
        f"{_shown(payload.group_key[:200])}): {received} alert(s): {matched} matched "
        f"{_plural(len(plan.policies), 'policy', 'policies')}, {len(plan.unmatched)} unmatched, "
        f"{len(payload.rejected)} invalid, {counts[Outcome.DUPLICATE.value]} duplicate(s), "
        f"{audits} audit(s) requested"
    )
    if payload.truncated_alerts:
        text += f", {payload.truncated_alerts} more left out by Alertmanager (max_alerts)"
    if failed:
        text += f", {failed} failed to apply (the next repeat retries them)"
    if payload.rejected:
        text += f"; invalid: {_printable(payload.rejected[0].problems[0])}"
    return text


# --------------------------------------------------------------------------- the token


class TokenFile:
    """A bearer token in a file (a mounted Secret), re-read whenever the file changes.

    The file is stat()ed on every request (following symlinks, as a Secret
    volume swaps its ``..data`` link on rotation) and read again when its
    inode, size, mtime or ctime differ.  Surrounding whitespace is ignored.
    An unreadable or empty file yields None: every request is then refused.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, ...] | None = None
        self._token: bytes | None = None
        self._failing = False

    def read(self) -> bytes | None:
        try:
            st = os.stat(self.path)
            stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if stamp != self._stamp:
                self._token = self.path.read_bytes().strip() or None
                self._stamp = stamp
                if self._token is None:
                    log.warning("webhook token file %s is empty", self.path)
        except OSError as exc:
            if not self._failing:  # once per outage, not once per request
                log.warning("webhook token file %s is unreadable: %s", self.path, exc)
            self._stamp, self._token, self._failing = None, None, True
            return None
        self._failing = False
        return self._token


# --------------------------------------------------------------------------- the HTTP part

OnAlerts = Callable[[PolicyAlerts], Awaitable[None]]
Targets = Callable[[], Iterable[PolicyTarget]]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _error(
    status: int, reason: str, problems: Sequence[str] = (), headers: LooseHeaders | None = None
) -> web.Response:
    body: dict[str, Any] = {"error": reason}
    if problems:
        body["problems"] = list(problems)
    return web.json_response(body, status=status, headers=headers)


_KEPT_HEADERS = (hdrs.ALLOW, hdrs.WWW_AUTHENTICATE, hdrs.RETRY_AFTER)


class AlertReceiver:
    """The webhook endpoint and its background worker (one per operator process)."""

    def __init__(
        self,
        *,
        token_file: Path | str,
        on_alerts: OnAlerts,
        policies: Targets,
        metrics: OperatorMetrics,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        max_queued_alerts: int = DEFAULT_MAX_QUEUED_ALERTS,
        callback_timeout: float = 60.0,
        dedupe: DedupeConfig = DEFAULT_DEDUPE,
        clock: Callable[[], datetime] = _utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.token = TokenFile(token_file)
        #: False while the operator does not know every StopPolicy yet (just started): an
        #: alert accepted then could match no policy and be lost, so the answer is 503.
        self.ready = ready
        self.monotonic = monotonic
        #: An example of an alert no policy selects, once a minute (the counts are per payload).
        self._unmatched_log = LogBudget(per=60.0, lines=1)
        self._failure_log = LogBudget(per=60.0, lines=FAILURES_PER_MINUTE)
        self.max_queued_alerts = max_queued_alerts
        self._queued_alerts = 0
        #: Threads for the heavy parts (started and stopped with the application; the
        #: loop's default executor without it): parsing big bodies, and planning.
        self._parsers: ThreadPoolExecutor | None = None
        self._planner: ThreadPoolExecutor | None = None
        self.on_alerts = on_alerts
        self.policies = policies
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.callback_timeout = callback_timeout
        self.dedupe = dedupe
        self.clock = clock
        self._queue: asyncio.Queue[WebhookPayload] = asyncio.Queue(maxsize=queue_size)
        #: Records written by this process: newer than the operator's snapshot of status.
        self._known: dict[tuple[str, str], tuple[AlertRecord, ...]] = {}

    # -- the request

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Count every answer by code and turn aiohttp's own errors into JSON reasons."""
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            headers = {h: exc.headers[h] for h in _KEPT_HEADERS if h in exc.headers}
            response = _error(exc.status, exc.text or exc.reason, headers=headers)
        except Exception:  # noqa: BLE001 - logged with its traceback by _log_failure
            self._log_failure("webhook request failed")
            response = _error(500, "internal error (logged by the operator)")
        self.metrics.webhook_requests.labels(code=str(response.status)).inc()
        return response

    def _log_failure(self, message: str, *args: object) -> None:
        """Log the exception being handled, with its traceback, a few times a minute."""
        held = self._failure_log.take(self.monotonic())
        if held is not None:
            since = f" ({held} more failures since, not logged)" if held else ""
            log.error(message + since, *args, exc_info=True)

    def _unauthorized(self, reason: str, *, invalid: bool) -> web.Response:
        challenge = 'Bearer realm="stopbudget"' + (', error="invalid_token"' if invalid else "")
        return _error(401, reason, headers={hdrs.WWW_AUTHENTICATE: challenge})

    async def handle(self, request: web.Request) -> web.Response:
        """``POST /alertmanager``: check, parse, queue, answer 202."""
        token = self.token.read()
        if token is None:
            return _error(503, "the webhook token is not available: check the mounted Secret")
        header = request.headers.get(hdrs.AUTHORIZATION)
        if header is None:
            return self._unauthorized("missing bearer token", invalid=False)
        scheme, _, credentials = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return self._unauthorized("authorization must be 'Bearer <token>'", invalid=False)
        given = credentials.strip().encode("utf-8", "surrogatepass")
        if not hmac.compare_digest(given, token):
            return self._unauthorized("invalid bearer token", invalid=True)
        if not self.ready():
            return _error(
                503,
                "the operator is starting and does not know every StopPolicy yet: retry",
                headers={hdrs.RETRY_AFTER: "2"},
            )

        length = request.content_length
        if length is not None and length > self.max_body_bytes:
            return _error(413, f"body of {length} bytes exceeds {self.max_body_bytes} bytes")
        try:
            codings = content_codings(request.headers.getall(hdrs.CONTENT_ENCODING, ()))
            body = await request.read()  # client_max_size enforces the limit on what is read
            if getattr(request.content, "total_compressed_bytes", None) is not None:
                codings = []  # served with aiohttp's auto_decompress: decoded already
            if codings or len(body) > INLINE_BYTES:
                payload = await asyncio.get_running_loop().run_in_executor(
                    self._parsers, read_payload, body, codings, self.max_body_bytes
                )
            else:
                payload = read_payload(body, codings, self.max_body_bytes)
        except PayloadError as exc:
            headers = {hdrs.ACCEPT_ENCODING: ACCEPT_ENCODING} if exc.status == 415 else None
            return _error(exc.status, exc.reason, exc.problems, headers=headers)
        except (web.RequestPayloadError, ConnectionError) as exc:
            # A body aiohttp could not decode, or a client gone before sending all of it.
            cause = exc.__cause__ or exc
            detail = getattr(cause, "message", "") or str(cause) or type(cause).__name__
            return _error(400, f"the request body could not be read: {detail}")
        queued = self._queued_alerts
        if queued and queued + len(payload.alerts) > self.max_queued_alerts:
            return _error(
                503,
                f"{queued} alerts queued, the limit is {self.max_queued_alerts}: retry later",
                headers={hdrs.RETRY_AFTER: "5"},
            )
        try:
            self._queue.put_nowait(payload)
        except asyncio.QueueFull:
            return _error(
                503, "too many notifications queued: retry later", headers={hdrs.RETRY_AFTER: "5"}
            )
        self._queued_alerts += len(payload.alerts)
        answer: dict[str, Any] = {"status": "accepted", "alerts": len(payload.alerts)}
        if payload.rejected:
            answer["rejected"] = len(payload.rejected)
            answer["problems"] = [p for r in payload.rejected for p in r.problems][:MAX_PROBLEMS]
        return web.json_response(answer, status=202)

    # -- the background

    async def join(self) -> None:
        """Wait until every queued payload has been processed."""
        await self._queue.join()

    def forget(self, namespace: str, name: str) -> None:
        """Drop the in-memory records of a deleted policy."""
        self._known.pop((namespace, name), None)

    async def worker(self) -> None:
        """Process queued payloads one at a time, forever; errors never stop it."""
        loop = asyncio.get_running_loop()
        held_since = loop.time()
        while True:
            if loop.time() - held_since > WORKER_SLICE:
                # A long queue of small payloads is processed without ever suspending:
                # let requests in every few milliseconds, and no more often.
                await asyncio.sleep(0)
                held_since = loop.time()
            if self._queue.empty():
                payload = await self._queue.get()
                held_since = loop.time()
            else:
                payload = self._queue.get_nowait()
            try:
                await self.process(payload)
            except Exception:  # noqa: BLE001 - logged with its traceback by _log_failure
                self._log_failure("processing an Alertmanager notification failed")
                count = self.metrics.alerts_received
                for status in {alert.status.value for alert in payload.alerts}:
                    n = sum(alert.status.value == status for alert in payload.alerts)
                    count.labels(status=status, outcome=Outcome.ERROR.value).inc(n)
            finally:
                self._queued_alerts -= len(payload.alerts)
                self._queue.task_done()

    async def process(self, payload: WebhookPayload) -> None:
        """Match and dedupe ``payload``, call back once per selected policy, then count its
        alerts and write its one log line."""
        targets = list(self.policies())
        planning = functools.partial(
            plan_payload, payload, targets, self.clock(), known=self._known, config=self.dedupe
        )
        if len(payload.alerts) <= INLINE_ALERTS and len(targets) <= INLINE_POLICIES:
            plan = planning()
        else:
            # Linear in the payload, but a good part of a second for thousands of alerts:
            # in a thread, on snapshots, while the loop keeps answering.
            planning.keywords["known"] = dict(self._known)
            plan = await asyncio.get_running_loop().run_in_executor(self._planner, planning)
        counts = Counter(plan.counts)
        failed = 0
        for update in plan.policies:
            try:
                async with asyncio.timeout(self.callback_timeout):
                    await self.on_alerts(update)
            except Exception:  # noqa: BLE001 - logged with its traceback by _log_failure
                self._log_failure(
                    "applying alerts to StopPolicy %s/%s failed", update.namespace, update.name
                )
                for alert, outcome in update.outcomes:
                    counts[alert.status.value, outcome.value] -= 1
                    counts[alert.status.value, Outcome.ERROR.value] += 1
                failed += len(update.outcomes)
                continue
            self._known[update.key] = update.alerts
        for (status, result), n in counts.items():
            if n:
                self.metrics.alerts_received.labels(status=status, outcome=result).inc(n)
        self._log_payload(payload, plan, failed)

    def _log_payload(self, payload: WebhookPayload, plan: Plan, failed: int) -> None:
        """One line per payload (a warning when something was wrong with it); alerts no
        policy selects one by one only at DEBUG, and an example of one once a minute."""
        if log.isEnabledFor(logging.DEBUG):
            for alert in plan.unmatched:
                log.debug(
                    "alert %s (%s) selects no StopPolicy: labels %s",
                    _shown(alert.alertname, 100),
                    _shown(alert.fingerprint),
                    _shown(dict(alert.labels)),
                )
        line = payload_line(payload, plan, failed)
        if plan.unmatched:
            held = self._unmatched_log.take(self.monotonic(), len(plan.unmatched))
            if held is not None:
                example = plan.unmatched[0]
                line += (
                    f"; no StopPolicy selects e.g. alert {_shown(example.alertname, 100)} "
                    f"(fingerprint {_shown(example.fingerprint)}, labels "
                    f"{_shown(dict(example.labels))})"
                )
                if held:
                    line += f" ({held} more unmatched since)"
        wrong = payload.rejected or payload.truncated_alerts or failed
        log.log(logging.WARNING if wrong else logging.INFO, "%s", line)

    async def lifespan(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup context: the worker and its threads run while the application does."""
        self._parsers = ThreadPoolExecutor(2, thread_name_prefix="stopbudget-webhook-parse")
        self._planner = ThreadPoolExecutor(1, thread_name_prefix="stopbudget-webhook-plan")
        task = asyncio.create_task(self.worker(), name="stopbudget-alert-worker")
        yield
        if left := self._queue.qsize():
            log.warning("stopping with %d Alertmanager notification(s) unprocessed", left)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for pool in (self._parsers, self._planner):
            pool.shutdown(wait=False, cancel_futures=True)
        self._parsers = self._planner = None


#: The receiver behind an application made by :func:`create_app`.
RECEIVER = web.AppKey("stopbudget_alert_receiver", AlertReceiver)


def create_app(
    *,
    token_file: Path | str,
    on_alerts: OnAlerts,
    policies: Targets,
    metrics: OperatorMetrics,
    path: str = DEFAULT_PATH,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    max_queued_alerts: int = DEFAULT_MAX_QUEUED_ALERTS,
    callback_timeout: float = 60.0,
    dedupe: DedupeConfig = DEFAULT_DEDUPE,
    clock: Callable[[], datetime] = _utcnow,
    monotonic: Callable[[], float] = time.monotonic,
    ready: Callable[[], bool] = lambda: True,
) -> web.Application:
    """The webhook application: ``POST {path}``; ``app[RECEIVER]`` is its :class:`AlertReceiver`.

    Serve it with aiohttp's ``auto_decompress=False`` (``endpoints.serve(...,
    auto_decompress=False)``): the receiver then decodes ``Content-Encoding`` itself,
    bounded by ``max_body_bytes``, and answers every coding error with a 4xx and a reason.
    (With aiohttp's default, aiohttp decodes gzip and deflate, answers an unsupported
    coding with a plain-text 400 and logs a traceback for a corrupt body.)

    ``on_alerts`` is awaited in the background once per payload and selected
    policy; ``policies`` returns the operator's current snapshot of policies; while
    ``ready()`` is false (the operator has not met every StopPolicy yet) the answer is 503.
    """
    receiver = AlertReceiver(
        token_file=token_file,
        on_alerts=on_alerts,
        policies=policies,
        metrics=metrics,
        max_body_bytes=max_body_bytes,
        queue_size=queue_size,
        max_queued_alerts=max_queued_alerts,
        callback_timeout=callback_timeout,
        dedupe=dedupe,
        clock=clock,
        monotonic=monotonic,
        ready=ready,
    )
    app = web.Application(client_max_size=max_body_bytes, middlewares=[receiver.middleware])
    app[RECEIVER] = receiver
    app.router.add_post(path, receiver.handle)
    app.cleanup_ctx.append(receiver.lifespan)
    return app
