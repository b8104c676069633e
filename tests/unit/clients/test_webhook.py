"""clients/webhook.py: the Alertmanager webhook server — auth, body limits and
decoding, the queue and its worker, threads, metrics, the log budget, fuzz, and the real
Alertmanager posting to it with a bearer token from a file (what a payload means is
core/audits/alerts.py: tests/unit/core/audits/test_alerts.py)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.client
import json
import logging
import os
import re
import threading
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stopbudget.api import AlertRecord, AlertStatus
from stopbudget.clients import endpoints
from stopbudget.clients import webhook as webhook_module
from stopbudget.clients.metrics import OperatorMetrics
from stopbudget.clients.webhook import (
    DEFAULT_PATH,
    RECEIVER,
    AlertReceiver,
    LogBudget,
    content_codings,
    create_app,
    decode_body,
)
from stopbudget.core.audits.alerts import (
    PayloadError,
    PolicyAlerts,
    PolicyTarget,
    WebhookPayload,
)
from tests.support.waiting import eventually
from tests.unit.core.audits.test_alerts import (
    BAD_PARAMS,
    OUT_OF_UTC,
    TARGETS,
    alert_doc,
    encode,
    json_values,
    payload_doc,
)

TOKEN = "s3cret-webhook-token"


# --------------------------------------------------------------------------- HTTP


class Recorder:
    """The operator's callback: records each update; can block on a gate or fail."""

    def __init__(self, *, gate: asyncio.Event | None = None, failures: int = 0) -> None:
        self.updates: list[PolicyAlerts] = []
        self.calls = 0
        self.gate = gate
        self.failures = failures
        self._changed = asyncio.Condition()

    async def __call__(self, update: PolicyAlerts) -> None:
        self.calls += 1
        async with self._changed:
            self._changed.notify_all()
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            self.failures -= 1
            raise RuntimeError("the Kubernetes API is down")
        self.updates.append(update)
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[], bool], within: float = 10.0) -> None:
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(predicate)

    @property
    def triggers(self) -> int:
        return sum(u.trigger_audit for u in self.updates)


@dataclass
class Client:
    """Requests to a server on 127.0.0.1 by path (what the tests used of aiohttp's TestClient)."""

    session: aiohttp.ClientSession
    port: int

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.session.request(method, f"http://127.0.0.1:{self.port}{path}", **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)


@dataclass
class Hook:
    client: Client
    recorder: Recorder
    metrics: OperatorMetrics
    receiver: AlertReceiver
    token_file: Path

    async def post(
        self, body: Any, *, token: str | None = TOKEN, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, Any]:
        data = body if isinstance(body, bytes) else encode(body)
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        async with self.client.post(DEFAULT_PATH, data=data, headers=all_headers) as resp:
            return resp.status, await resp.json(content_type=None), resp.headers

    def requests(self, code: int) -> float:
        value = self.metrics.registry.get_sample_value(
            "stopbudget_webhook_requests_total", {"code": str(code)}
        )
        return value or 0.0

    def alerts(self, status: str, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "stopbudget_alertmanager_alerts_total", {"status": status, "outcome": outcome}
        )
        return value or 0.0


@contextlib.asynccontextmanager
async def serve(
    tmp_path: Path,
    *,
    recorder: Recorder | None = None,
    targets: Sequence[PolicyTarget] = TARGETS,
    auto_decompress: bool = False,
    **options: Any,
) -> AsyncIterator[Hook]:
    """The webhook on 127.0.0.1, served as ``handlers.startup`` serves it (``endpoints.serve``;
    aiohttp does not decode the body: ``auto_decompress=False``), or with aiohttp's default."""
    token_file = tmp_path / "token"
    if not token_file.exists():
        token_file.write_text(TOKEN + "\n")
    metrics = OperatorMetrics()
    recorder = recorder or Recorder()
    app = create_app(
        token_file=token_file,
        on_alerts=recorder,
        policies=lambda: targets,
        metrics=metrics,
        **options,
    )
    runner, port = await endpoints.serve(app, "127.0.0.1", 0, auto_decompress=auto_decompress)
    try:
        async with aiohttp.ClientSession() as session:
            yield Hook(Client(session, port), recorder, metrics, app[RECEIVER], token_file)
    finally:
        await runner.cleanup()


async def test_valid_payload_is_accepted_and_processed(tmp_path: Path) -> None:
    async with serve(tmp_path) as hook:
        status, body, _ = await hook.post(payload_doc())
        assert (status, body) == (202, {"status": "accepted", "alerts": 1})
        await hook.recorder.wait_for(lambda: len(hook.recorder.updates) == 1)
        (update,) = hook.recorder.updates
        assert (update.namespace, update.name) == ("serving", "llama")
        assert update.trigger_audit
        assert update.raise_budget
        assert hook.requests(202) == 1
        assert hook.alerts("firing", "triggered") == 1


async def test_503_until_the_operator_knows_every_policy(tmp_path: Path) -> None:
    """An alert accepted before the operator has met the policies could match none and be
    lost after the 202: until then the answer is 503 with Retry-After (Alertmanager retries)."""
    ready = False
    async with serve(tmp_path, ready=lambda: ready) as hook:
        status, body, headers = await hook.post(payload_doc())
        assert status == 503
        assert "does not know every StopPolicy yet" in body["error"]
        assert headers["Retry-After"] == "2"
        assert hook.recorder.calls == 0
        assert (await hook.post(payload_doc(), token="wrong"))[0] == 401  # auth comes first
        ready = True
        assert (await hook.post(payload_doc()))[0] == 202
        await hook.recorder.wait_for(lambda: len(hook.recorder.updates) == 1)


async def test_no_token(tmp_path: Path) -> None:
    async with serve(tmp_path) as hook:
        status, body, headers = await hook.post(payload_doc(), token=None)
        assert status == 401
        assert body == {"error": "missing bearer token"}
        assert headers["WWW-Authenticate"].startswith("Bearer ")
        assert hook.requests(401) == 1
        assert hook.recorder.calls == 0


@pytest.mark.parametrize(
    "authorization",
    [f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer ", f"Basic {TOKEN}", TOKEN, "Bearer ü"],
)
async def test_wrong_token(tmp_path: Path, authorization: str) -> None:
    async with serve(tmp_path) as hook:
        status, body, headers = await hook.post(
            payload_doc(), token=None, headers={"Authorization": authorization}
        )
        assert status == 401, body
        assert headers["WWW-Authenticate"].startswith("Bearer ")
        assert hook.recorder.calls == 0


async def test_token_scheme_is_case_insensitive(tmp_path: Path) -> None:
    async with serve(tmp_path) as hook:
        status, _, _ = await hook.post(
            payload_doc(), token=None, headers={"Authorization": f"bearer {TOKEN}"}
        )
        assert status == 202


async def test_token_file_rotation(tmp_path: Path) -> None:
    async with serve(tmp_path) as hook:
        assert (await hook.post(payload_doc()))[0] == 202
        # As a Secret volume does: a new file swapped in by a rename.
        staged = tmp_path / "token.new"
        staged.write_text("rotated-token-1\n")
        os.replace(staged, hook.token_file)
        assert (await hook.post(payload_doc()))[0] == 401
        assert (await hook.post(payload_doc(), token="rotated-token-1"))[0] == 202
        # Rewritten in place, with another length.
        hook.token_file.write_text("rotated-token-two")
        assert (await hook.post(payload_doc(), token="rotated-token-1"))[0] == 401
        assert (await hook.post(payload_doc(), token="rotated-token-two"))[0] == 202


async def test_missing_or_empty_token_file_refuses_everything(tmp_path: Path) -> None:
    async with serve(tmp_path) as hook:
        hook.token_file.unlink()
        status, body, _ = await hook.post(payload_doc())
        assert status == 503
        assert "token" in body["error"]
        hook.token_file.write_text("  \n")
        assert (await hook.post(payload_doc()))[0] == 503
        hook.token_file.write_text(TOKEN)
        assert (await hook.post(payload_doc()))[0] == 202


async def test_body_too_large_by_content_length(tmp_path: Path) -> None:
    async with serve(tmp_path, max_body_bytes=1000) as hook:
        doc = payload_doc()
        doc["commonAnnotations"] = {"pad": "x" * 2000}
        status, body, _ = await hook.post(doc)
        assert status == 413
        assert "exceeds 1000 bytes" in body["error"]
        assert hook.requests(413) == 1


async def test_body_too_large_when_read(tmp_path: Path) -> None:
    """A chunked body has no Content-Length: the limit applies to the bytes read."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 500

    async with serve(tmp_path, max_body_bytes=1000) as hook:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with hook.client.post(DEFAULT_PATH, data=chunks(), headers=headers) as resp:
            assert resp.status == 413
            body = await resp.json()
        assert "Maximum request body size 1000 exceeded" in body["error"]


@pytest.mark.parametrize(("body", "reason"), BAD_PARAMS)
async def test_bad_bodies_get_400_with_the_reason(tmp_path: Path, body: bytes, reason: str) -> None:
    async with serve(tmp_path, max_body_bytes=1 << 20) as hook:
        status, answer, _ = await hook.post(body)
        assert status == 400
        assert reason in answer["error"]
        assert hook.recorder.calls == 0


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def _raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


PLAIN = encode(payload_doc())
#: (Content-Encoding, body, status, words of the reason); one request per case.
ENCODED: list[tuple[str, str, bytes, int, str]] = [
    ("gzip", "gzip", _gzip(PLAIN), 202, ""),
    ("x-gzip", "x-gzip", _gzip(PLAIN), 202, ""),
    ("GZIP, upper case", "GZIP", _gzip(PLAIN), 202, ""),
    ("deflate, zlib format", "deflate", zlib.compress(PLAIN), 202, ""),
    ("deflate, raw", "deflate", _raw_deflate(PLAIN), 202, ""),
    ("gzip twice", "gzip, gzip", _gzip(_gzip(PLAIN)), 202, ""),
    ("deflate then gzip", "deflate, gzip", _gzip(zlib.compress(PLAIN)), 202, ""),
    ("identity", "identity", PLAIN, 202, ""),
    ("gzip of two members", "gzip", _gzip(PLAIN[:100]) + _gzip(PLAIN[100:]), 202, ""),
    ("gzip, not compressed", "gzip", PLAIN, 400, "not valid gzip"),
    ("deflate, not compressed", "deflate", PLAIN, 400, "not valid deflate"),
    ("gzip, truncated", "gzip", _gzip(PLAIN)[:-12], 400, "truncated"),
    ("deflate, truncated", "deflate", zlib.compress(PLAIN)[:-9], 400, "truncated"),
    ("gzip, garbage after", "gzip", _gzip(PLAIN) + b"garbage!", 400, "not valid gzip"),
    ("gzip, empty", "gzip", b"", 400, "truncated"),
    ("gzip declared once, sent twice", "gzip", _gzip(_gzip(PLAIN)), 400, "malformed JSON"),
    ("br", "br", PLAIN, 415, "unsupported Content-Encoding 'br'"),
    ("zstd", "zstd", PLAIN, 415, "unsupported Content-Encoding 'zstd'"),
    ("compress", "compress", PLAIN, 415, "unsupported Content-Encoding 'compress'"),
    ("unknown", "rot13", PLAIN, 415, "unsupported Content-Encoding 'rot13'"),
    ("three codings", "gzip, gzip, gzip", _gzip(_gzip(_gzip(PLAIN))), 415, "at most 2"),
    ("a bomb", "gzip", _gzip(b" " * (8 << 20)), 413, "decoded body exceeds"),
    ("a bomb in two layers", "gzip, gzip", _gzip(_gzip(b" " * (64 << 20))), 413, "exceeds"),
]


@pytest.mark.parametrize(
    ("coding", "body", "status", "reason"),
    [pytest.param(c, b, s, r, id=i) for i, c, b, s, r in ENCODED],
)
async def test_content_encodings_get_a_4xx_with_a_reason_never_a_5xx(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    coding: str,
    body: bytes,
    status: int,
    reason: str,
) -> None:
    """Issue 15, defect 1: a body the client encoded wrongly got 500 and a traceback (and
    Alertmanager retries 5xx forever).  Served as the operator serves it, the webhook
    decodes the body itself, bounded by the body limit."""
    caplog.set_level("INFO")
    async with serve(tmp_path) as hook:
        answer_status, answer, headers = await hook.post(body, headers={"Content-Encoding": coding})
        assert answer_status == status, answer
        if status == 202:
            assert answer == {"status": "accepted", "alerts": 1}
            await hook.recorder.wait_for(lambda: hook.recorder.triggers == 1)
        else:
            assert reason in answer["error"]
            assert hook.recorder.calls == 0
        if status == 415:
            assert headers["Accept-Encoding"] == "gzip, deflate, identity"
        assert hook.requests(status) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_corrupt_body_with_aiohttps_own_decoding_is_a_400(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, coding: str
) -> None:
    """Served with aiohttp's defaults (the server decodes gzip and deflate itself), a corrupt
    body is still a 400 with a reason, and a good one is decoded once, not twice."""
    async with serve(tmp_path, auto_decompress=True) as hook:
        status, answer, _ = await hook.post(
            PLAIN, headers={"Content-Encoding": coding, "Connection": "close"}
        )
        assert status == 400
        assert f"Can not decode content-encoding: {coding}" in answer["error"]
        good = _gzip(PLAIN) if coding == "gzip" else zlib.compress(PLAIN)
        status, answer, _ = await hook.post(good, headers={"Content-Encoding": coding})
        assert status == 202, answer
    assert hook.requests(500) == 0
    assert "webhook request failed" not in caplog.text


async def test_a_client_gone_mid_body_is_no_server_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A body shorter than its Content-Length, then the connection closed: counted as a
    client error (400), no traceback in the log."""
    async with serve(tmp_path) as hook:
        _, writer = await asyncio.open_connection("127.0.0.1", hook.client.port)
        head = (
            f"POST {DEFAULT_PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        )
        writer.write(head.encode() + PLAIN[:50])
        await writer.drain()
        writer.close()
        await writer.wait_closed()

        async def refused() -> float:
            return hook.requests(400)

        await eventually(refused, bool, within=10, what="the 400 counted")
        assert hook.requests(500) == 0
        assert hook.recorder.calls == 0
    assert "webhook request failed" not in caplog.text


def test_decode_body_is_bounded_and_names_the_problem() -> None:
    assert decode_body(_gzip(PLAIN), ["gzip"], limit=len(PLAIN)) == PLAIN
    assert decode_body(PLAIN, [], limit=len(PLAIN)) == PLAIN
    with pytest.raises(PayloadError) as caught:
        decode_body(_gzip(PLAIN), ["gzip"], limit=len(PLAIN) - 1)
    assert caught.value.status == 413
    assert f"exceeds {len(PLAIN) - 1} bytes" in caught.value.reason
    with pytest.raises(PayloadError) as caught:
        decode_body(b"\x1f\x8b" + b"\x00" * 20, ["gzip"], limit=1000)
    assert caught.value.status == 400
    assert "not valid gzip" in caught.value.reason


@pytest.mark.parametrize(
    ("headers", "codings"),
    [
        ([], []),
        (["identity"], []),
        (["gzip"], ["gzip"]),
        (["x-gzip"], ["gzip"]),
        (["Gzip , deflate"], ["gzip", "deflate"]),
        (["gzip", "deflate"], ["gzip", "deflate"]),  # two headers: one list
        ([" , gzip,, identity "], ["gzip"]),
    ],
)
def test_content_codings(headers: list[str], codings: list[str]) -> None:
    assert content_codings(headers) == codings


async def test_missing_and_mistyped_fields_are_listed(tmp_path: Path) -> None:
    doc = payload_doc()
    del doc["alerts"][0]["fingerprint"]
    doc["alerts"][0]["labels"] = {"severity": 3}
    doc["status"] = "pending"
    async with serve(tmp_path) as hook:
        status, answer, _ = await hook.post(doc)
    assert status == 400
    assert answer["error"] == "invalid payload: 3 problem(s)"
    assert sorted(p.split(":")[0] for p in answer["problems"]) == [
        "alerts[0].fingerprint",
        "alerts[0].labels.severity",
        "status",
    ]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_other_methods_get_405(tmp_path: Path, method: str) -> None:
    async with serve(tmp_path) as hook:
        async with hook.client.request(method, DEFAULT_PATH) as resp:
            assert resp.status == 405
            assert "POST" in resp.headers["Allow"]
            assert "error" in await resp.json()
        assert hook.requests(405) == 1


async def test_answers_at_once_while_the_callback_blocks(tmp_path: Path) -> None:
    gate = asyncio.Event()
    recorder = Recorder(gate=gate)
    async with serve(tmp_path, recorder=recorder) as hook:
        for i in range(3):
            doc = payload_doc(alert_doc(f"fp{i}"))
            assert (await hook.post(doc))[0] == 202
        await recorder.wait_for(lambda: recorder.calls == 1)
        assert recorder.updates == []  # the first callback is still blocked
        gate.set()
        await asyncio.wait_for(hook.receiver.join(), timeout=10)
        assert recorder.triggers == 3


class Gate:
    """Blocks a worker thread until released; says whether it was ever reached, and
    whether it gave up (the thread was the event loop's, so the test could not go on)."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.release = threading.Event()
        self.gave_up = False

    def wait(self) -> None:
        self.reached.set()
        if not self.release.wait(timeout=5):
            self.gave_up = True

    async def reached_within(self, seconds: float = 10) -> None:
        assert await asyncio.to_thread(self.reached.wait, seconds)


class BlockingLabels(dict[str, str]):
    """matchLabels that block the thread that indexes them, at the gate."""

    def __init__(self, gate: Gate, labels: dict[str, str]) -> None:
        super().__init__(labels)
        self.gate = gate

    def items(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            self.gate.wait()
        return super().items()


async def test_the_loop_answers_while_a_payload_is_planned(tmp_path: Path) -> None:
    """Issue 15, defect 3: matching and dedupe ran on the event loop (8,750 alerts took
    ~1.7 s, during which /healthz and every other request waited).  Here planning is held
    in its thread: the next notification must still get its 202 meanwhile."""
    gate = Gate()
    blocking = PolicyTarget("serving", "slow", match_labels=BlockingLabels(gate, {"x": "y"}))
    big = [alert_doc(f"a{i}") for i in range(webhook_module.INLINE_ALERTS + 1)]
    async with serve(tmp_path, targets=[*TARGETS, blocking]) as hook:
        assert (await hook.post(payload_doc(*big)))[0] == 202
        await gate.reached_within()
        assert (await hook.post(payload_doc(alert_doc("b"))))[0] == 202
        assert hook.recorder.calls == 0  # the big one is still being planned
        gate.release.set()
        await asyncio.wait_for(hook.receiver.join(), timeout=10)
        assert hook.recorder.triggers == 2
    assert not gate.gave_up


async def test_the_loop_answers_while_a_big_body_is_parsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body over INLINE_BYTES is decoded and parsed in a thread: held there, the loop
    still answers a small notification."""
    gate = Gate()
    parse = webhook_module.parse_payload

    def held(body: bytes) -> WebhookPayload:
        if len(body) > webhook_module.INLINE_BYTES:
            gate.wait()
        return parse(body)

    monkeypatch.setattr(webhook_module, "parse_payload", held)
    big = payload_doc(*[alert_doc(f"big{i}") for i in range(200)])
    assert len(encode(big)) > webhook_module.INLINE_BYTES
    async with serve(tmp_path) as hook:
        first = asyncio.create_task(hook.post(big))
        await gate.reached_within()
        assert (await hook.post(payload_doc(alert_doc("small"))))[0] == 202
        gate.release.set()
        status, body, _ = await first
        assert (status, body["alerts"]) == (202, 200)
    assert not gate.gave_up


async def test_queued_alerts_are_bounded(tmp_path: Path) -> None:
    """Parsed payloads wait in memory: beyond max_queued_alerts, 503 and Retry-After (the
    first payload is always taken, whatever its size)."""
    gate = asyncio.Event()
    recorder = Recorder(gate=gate)
    async with serve(tmp_path, recorder=recorder, max_queued_alerts=5) as hook:
        six = payload_doc(*[alert_doc(f"six{i}") for i in range(6)])
        assert (await hook.post(six))[0] == 202  # the queue was empty
        await recorder.wait_for(lambda: recorder.calls == 1)  # the worker holds it
        status, body, headers = await hook.post(payload_doc(alert_doc("one more")))
        assert status == 503
        assert body["error"] == "6 alerts queued, the limit is 5: retry later"
        assert headers["Retry-After"] == "5"
        gate.set()
        await asyncio.wait_for(hook.receiver.join(), timeout=10)
        assert (await hook.post(payload_doc(alert_doc("one more"))))[0] == 202


async def test_full_queue_answers_503_and_alertmanager_retries(tmp_path: Path) -> None:
    gate = asyncio.Event()
    recorder = Recorder(gate=gate)
    async with serve(tmp_path, recorder=recorder, queue_size=1) as hook:
        assert (await hook.post(payload_doc(alert_doc("a"))))[0] == 202
        await recorder.wait_for(lambda: recorder.calls == 1)  # the worker holds "a"
        assert (await hook.post(payload_doc(alert_doc("b"))))[0] == 202  # queued
        status, body, headers = await hook.post(payload_doc(alert_doc("c")))
        assert status == 503
        assert headers["Retry-After"] == "5"
        assert "retry later" in body["error"]
        gate.set()
        await asyncio.wait_for(hook.receiver.join(), timeout=10)
        assert (await hook.post(payload_doc(alert_doc("c"))))[0] == 202
        await asyncio.wait_for(hook.receiver.join(), timeout=10)
        assert recorder.triggers == 3


async def test_callback_errors_are_logged_counted_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder(failures=1)
    async with serve(tmp_path, recorder=recorder) as hook:
        assert (await hook.post(payload_doc()))[0] == 202
        await asyncio.wait_for(hook.receiver.join(), timeout=10)
        assert hook.alerts("firing", "error") == 1
        assert "applying alerts to StopPolicy serving/llama failed" in caplog.text
        assert recorder.updates == []
        # Nothing was recorded, so Alertmanager's repeat triggers the audit after all.
        assert (await hook.post(payload_doc()))[0] == 202
        await asyncio.wait_for(hook.receiver.join(), timeout=10)
        assert recorder.triggers == 1
        assert hook.alerts("firing", "triggered") == 1


async def test_a_failing_policy_list_never_stops_the_worker(tmp_path: Path) -> None:
    calls = 0

    def policies() -> Sequence[PolicyTarget]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("index not ready")
        return TARGETS

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    recorder, metrics = Recorder(), OperatorMetrics()
    app = create_app(token_file=token_file, on_alerts=recorder, policies=policies, metrics=metrics)
    server = TestServer(app, host="127.0.0.1")
    async with server, TestClient(server) as client:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for _ in range(2):
            async with client.post(DEFAULT_PATH, data=encode(payload_doc()), headers=auth) as r:
                assert r.status == 202
        await asyncio.wait_for(app[RECEIVER].join(), timeout=10)
        assert recorder.triggers == 1
        assert (
            metrics.registry.get_sample_value(
                "stopbudget_alertmanager_alerts_total", {"status": "firing", "outcome": "error"}
            )
            == 1
        )


async def test_dedupe_over_http(tmp_path: Path) -> None:
    async with serve(tmp_path) as hook:
        r = hook.recorder
        for _ in range(2):  # a repeat, or the twin from the other Alertmanager
            assert (await hook.post(payload_doc()))[0] == 202
        await asyncio.wait_for(hook.receiver.join(), timeout=10)
        assert [u.trigger_audit for u in r.updates] == [True, False]
        assert hook.alerts("firing", "duplicate") == 1
        # The same alert firing again later has a new startsAt: a new audit.
        later = alert_doc(starts_at="2024-05-01T14:00:00Z")
        assert (await hook.post(payload_doc(later)))[0] == 202
        # Resolved: no trigger, the condition clears.
        resolved = alert_doc(starts_at="2024-05-01T14:00:00Z", status="resolved")
        assert (await hook.post(payload_doc(resolved, status="resolved")))[0] == 202
        await asyncio.wait_for(hook.receiver.join(), timeout=10)
        assert [u.trigger_audit for u in r.updates] == [True, False, True, False]
        assert [u.alert_firing for u in r.updates] == [True, True, True, False]
        assert hook.alerts("resolved", "resolved") == 1
        assert r.updates[-1].alerts[-1].status is AlertStatus.RESOLVED


async def test_dedupe_survives_a_restart(tmp_path: Path) -> None:
    async with serve(tmp_path) as hook:
        assert (await hook.post(payload_doc()))[0] == 202
        await asyncio.wait_for(hook.receiver.join(), timeout=10)
        written = hook.recorder.updates[0].alerts  # what the operator writes to status
    status = json.loads(json.dumps([r.model_dump(mode="json", by_alias=True) for r in written]))
    restored = tuple(AlertRecord.model_validate(r) for r in status)
    after_restart = PolicyTarget("serving", "llama", alerts=restored)
    async with serve(tmp_path, targets=[after_restart]) as hook:
        assert (await hook.post(payload_doc()))[0] == 202
        await asyncio.wait_for(hook.receiver.join(), timeout=10)
        assert hook.recorder.triggers == 0
        assert hook.alerts("firing", "duplicate") == 1


@pytest.mark.parametrize("field", ["startsAt", "endsAt"])
@pytest.mark.parametrize("value", OUT_OF_UTC)
async def test_after_a_202_no_alert_is_lost_to_a_bad_neighbour(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, field: str, value: str
) -> None:
    """Issue 15, defect 2, over HTTP: the bad alert is dropped and counted before the 202
    (which says so); the others of its group reach the policy."""
    mistral = {"alertname": "Slow", "model": "mistral", "team": "ml"}
    bad = alert_doc("b")
    bad[field] = value
    doc = payload_doc(alert_doc("a"), bad, alert_doc("c", labels=mistral))
    async with serve(tmp_path) as hook:
        status, body, _ = await hook.post(doc)
        assert status == 202
        assert body == {
            "status": "accepted",
            "alerts": 2,
            "rejected": 1,
            "problems": [f"alerts[1].{field}: Value error, {value} is outside years 1-9999 in UTC"],
        }
        await asyncio.wait_for(hook.receiver.join(), timeout=10)
        assert sorted(u.name for u in hook.recorder.updates) == ["llama", "mistral"]
        assert hook.recorder.triggers == 2
        assert hook.alerts("firing", "invalid") == 1
        assert hook.alerts("firing", "error") == 0
    assert "failed" not in caplog.text


async def test_a_group_of_bad_alerts_only_is_a_400(tmp_path: Path) -> None:
    async with serve(tmp_path) as hook:
        doc = payload_doc(alert_doc("a", starts_at=OUT_OF_UTC[1]))
        status, body, _ = await hook.post(doc)
        assert status == 400
        assert body["problems"] == [
            f"alerts[0].startsAt: Value error, {OUT_OF_UTC[1]} is outside years 1-9999 in UTC"
        ]
        assert hook.recorder.calls == 0


async def test_unmatched_alerts_are_counted(tmp_path: Path) -> None:
    async with serve(tmp_path) as hook:
        doc = payload_doc(alert_doc(labels={"alertname": "Other"}))
        assert (await hook.post(doc))[0] == 202
        await asyncio.wait_for(hook.receiver.join(), timeout=10)
        assert hook.alerts("firing", "unmatched") == 1
        assert hook.recorder.calls == 0


def webhook_lines(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == webhook_module.__name__ and r.levelno >= level
    ]


class Ticks:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def mixed_payload(unmatched: int, tag: str = "") -> dict[str, Any]:
    """``unmatched`` alerts no policy selects, two for llama (a twin), one for mistral,
    one invalid."""
    mistral = {"alertname": "Slow", "model": "mistral", "team": "ml"}
    others = [
        alert_doc(f"{tag}u{i}", labels={"alertname": "Other", "instance": f"host{i}"})
        for i in range(unmatched)
    ]
    bad = alert_doc(f"{tag}bad", starts_at=OUT_OF_UTC[0])
    return payload_doc(
        alert_doc(f"{tag}l"),
        alert_doc(f"{tag}l"),
        alert_doc(f"{tag}m", labels=mistral),
        bad,
        *others,
    )


async def test_one_log_line_per_payload_whatever_its_size(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 15, defect 4: every alert that matched no policy logged its own INFO line
    (533,677 lines, 82 MB, in 3 minutes of fuzzing).  Now one line per payload with the
    counts, the alerts counter by outcome, and per-alert lines only at DEBUG."""
    caplog.set_level(logging.INFO)
    async with serve(tmp_path) as hook:
        for n in range(3):
            status, body, _ = await hook.post(mixed_payload(500, tag=f"p{n}-"))
            assert (status, body["alerts"], body["rejected"]) == (202, 503, 1)
        await asyncio.wait_for(hook.receiver.join(), timeout=30)
        lines = webhook_lines(caplog)
        assert len(lines) == 3, lines
        assert lines[0].startswith(
            "Alertmanager notification (receiver 'stopbudget', group "
            "'{}:{alertname=\"StopBudgetEMLow\"}'): 504 alert(s): 3 matched 2 policies, "
            "500 unmatched, 1 invalid, 1 duplicate(s), 2 audit(s) requested; "
            "invalid: alerts[3].startsAt: Value error, 0001-01-01T00:30:00+01:00 is outside "
            "years 1-9999 in UTC"
        ), lines[0]
        assert hook.alerts("firing", "unmatched") == 1500
        assert hook.alerts("firing", "invalid") == 3
        assert hook.alerts("firing", "triggered") == 6
        assert hook.alerts("firing", "duplicate") == 3
        assert all(len(line) < 1500 for line in lines)


async def test_an_example_of_an_unmatched_alert_at_most_once_a_minute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    ticks = Ticks()
    async with serve(tmp_path, monotonic=ticks) as hook:
        for n, at in enumerate([0, 10, 59, 61]):
            ticks.now = 1000.0 + at
            assert (await hook.post(mixed_payload(2, tag=f"p{n}-")))[0] == 202
            await asyncio.wait_for(hook.receiver.join(), timeout=10)
    lines = webhook_lines(caplog)
    assert len(lines) == 4
    example = "; no StopPolicy selects e.g. alert 'Other' (fingerprint 'p{}-u0', labels "
    assert example.format(0) in lines[0]
    assert "more unmatched since" not in lines[0]
    assert all("no StopPolicy selects" not in line for line in lines[1:3])
    assert example.format(3) in lines[3]
    assert lines[3].endswith("(5 more unmatched since)")


async def test_a_payload_cannot_forge_log_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=webhook_module.__name__)
    forged = "\n2024-05-01 12:00:00 ERROR forged"
    doc = payload_doc(
        alert_doc("a" + forged, labels={"alertname": "x" + forged}),
        alert_doc("b", labels={"k" + forged: 3}),  # type: ignore[dict-item]
    )
    doc["receiver"] += forged
    doc["groupKey"] += forged
    async with serve(tmp_path) as hook:
        assert (await hook.post(doc))[0] == 202
        await asyncio.wait_for(hook.receiver.join(), timeout=10)
    lines = webhook_lines(caplog, logging.DEBUG)
    assert len(lines) == 2
    assert all("\n" not in line for line in lines)
    assert all(forged.encode("unicode_escape").decode() in line for line in lines)


async def test_per_alert_lines_at_debug_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=webhook_module.__name__)
    async with serve(tmp_path) as hook:
        assert (await hook.post(mixed_payload(20)))[0] == 202
        await asyncio.wait_for(hook.receiver.join(), timeout=10)
    debug = [line for line in webhook_lines(caplog, logging.DEBUG) if "selects no" in line]
    assert len(debug) == 20
    assert len(webhook_lines(caplog)) == 1


async def test_truncated_alerts_are_in_the_payloads_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with serve(tmp_path) as hook:
        assert (await hook.post({**payload_doc(), "truncatedAlerts": 7}))[0] == 202
        await asyncio.wait_for(hook.receiver.join(), timeout=10)
    (line,) = webhook_lines(caplog)
    assert "1 alert(s): 1 matched 1 policy," in line
    assert "7 more left out by Alertmanager (max_alerts)" in line
    assert [r.levelno for r in caplog.records if r.getMessage() == line] == [logging.WARNING]


async def test_failures_are_logged_a_few_times_a_minute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A callback failing for many policies logs a few tracebacks a minute, then counts."""
    ticks = Ticks()
    targets = [PolicyTarget("serving", f"p{i}") for i in range(20)]
    docs = [
        alert_doc(f"f{i}", labels={"stoppolicy": f"p{i}", "namespace": "serving"})
        for i in range(20)
    ]
    recorder = Recorder(failures=40)
    async with serve(tmp_path, recorder=recorder, targets=targets, monotonic=ticks) as hook:
        assert (await hook.post(payload_doc(*docs)))[0] == 202
        await asyncio.wait_for(hook.receiver.join(), timeout=10)
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == webhook_module.FAILURES_PER_MINUTE
        assert all(r.exc_info for r in errors)
        assert hook.alerts("firing", "error") == 20
        (line,) = [m for m in webhook_lines(caplog) if m.startswith("Alertmanager notification")]
        assert "20 failed to apply (the next repeat retries them)" in line
        ticks.now += 61
        caplog.clear()
        docs = [{**d, "fingerprint": d["fingerprint"] + "x"} for d in docs]
        assert (await hook.post(payload_doc(*docs)))[0] == 202
        await asyncio.wait_for(hook.receiver.join(), timeout=10)
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == webhook_module.FAILURES_PER_MINUTE
        skipped = 20 - webhook_module.FAILURES_PER_MINUTE
        assert f"({skipped} more failures since, not logged)" in errors[0].getMessage()


async def test_an_internal_error_is_a_500_logged_a_few_times_a_minute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a bug answers 500 (the fuzz test finds none); if one does, it cannot flood."""

    def broken(body: bytes, codings: Sequence[str], limit: int) -> WebhookPayload:
        raise RuntimeError("a bug")

    monkeypatch.setattr(webhook_module, "read_payload", broken)
    async with serve(tmp_path) as hook:
        for _ in range(10):
            status, body, _ = await hook.post(payload_doc())
            assert (status, body) == (500, {"error": "internal error (logged by the operator)"})
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == webhook_module.FAILURES_PER_MINUTE


@pytest.mark.parametrize(
    ("events", "allowed"),
    [
        ([0, 1, 2, 3], [0]),
        ([0, 59.9, 60, 61, 120], [0, 60, 120]),
    ],
)
def test_log_budget(events: list[float], allowed: list[float]) -> None:
    budget = LogBudget(per=60.0, lines=1)
    assert [at for at in events if budget.take(at) is not None] == allowed


def test_log_budget_counts_what_it_held_back() -> None:
    budget = LogBudget(per=60.0, lines=2)
    assert [budget.take(t) for t in (0, 1, 2, 3, 61, 62, 63)] == [0, 0, None, None, 2, 0, None]


def test_the_readme_states_the_webhooks_answers() -> None:
    """The status-code contract lives in the README's webhook part: every code the
    receiver answers, with the limits it applies."""
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text(encoding="utf-8")
    part = readme[readme.index("The webhook answers at once") : readme.index("## Observability")]
    codes = {int(m) for m in re.findall(r"^\| (\d{3}) \|", part, flags=re.MULTILINE)}
    assert codes == {202, 400, 401, 405, 413, 415, 503}
    assert webhook_module.DEFAULT_MAX_BODY_BYTES == 1 << 20
    assert "over 1 MiB" in part
    assert f"{webhook_module.DEFAULT_QUEUE_SIZE:,} notifications" in part
    assert f"{webhook_module.DEFAULT_MAX_QUEUED_ALERTS:,} alerts wait" in part
    assert "gzip, deflate or identity" in part
    assert webhook_module.ACCEPT_ENCODING == "gzip, deflate, identity"


# --------------------------------------------------------------------------- fuzz


@dataclass
class Served:
    """An application served from a thread's own event loop."""

    address: tuple[str, int]
    loop: asyncio.AbstractEventLoop

    async def run(self, coro: Any) -> Any:
        """Await ``coro`` on the server's loop, from another loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))


@contextlib.contextmanager
def threaded_server(app: web.Application) -> Iterator[Served]:
    """Serve ``app`` on 127.0.0.1 as ``handlers.startup`` serves the webhook
    (``endpoints.serve``, ``auto_decompress=False``), from a thread with its own loop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def call(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=30)

    runner, port = call(endpoints.serve(app, "127.0.0.1", 0, auto_decompress=False))
    try:
        yield Served(("127.0.0.1", port), loop)
    finally:
        call(runner.cleanup())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    token_file = tmp_path_factory.mktemp("fuzz") / "token"
    token_file.write_text(TOKEN)

    async def on_alerts(update: PolicyAlerts) -> None:
        return None

    app = create_app(
        token_file=token_file,
        on_alerts=on_alerts,
        policies=lambda: TARGETS,
        metrics=OperatorMetrics(),
        max_body_bytes=64 * 1024,
        queue_size=100_000,
    )
    with threaded_server(app) as served:
        yield served.address


def send(address: tuple[str, int], body: bytes, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        conn.request("POST", DEFAULT_PATH, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            found += _paths(v, (*prefix, i))
    return found


@st.composite
def near_valid_payloads(draw: st.DrawFn) -> dict[str, Any]:
    doc = payload_doc(*[alert_doc(f"fp{i}") for i in range(draw(st.integers(0, 3)))])
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        node: Any = doc
        for part in path[:-1]:
            node = node[part]
        if draw(st.booleans()):
            del node[path[-1]]
        else:
            node[path[-1]] = draw(json_values)
    return doc


FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(doc=json_values)
def test_fuzz_random_json_never_5xx(fuzz_server: tuple[str, int], doc: Any) -> None:
    assert send(fuzz_server, encode(doc), AUTH) in {202, 400}


@pytest.mark.slow
@FUZZ
@given(doc=near_valid_payloads())
def test_fuzz_near_valid_payloads_never_5xx(fuzz_server: tuple[str, int], doc: Any) -> None:
    assert send(fuzz_server, encode(doc), AUTH) in {202, 400}


@FUZZ
@given(body=st.binary(max_size=2048))
def test_fuzz_random_bytes_never_5xx(fuzz_server: tuple[str, int], body: bytes) -> None:
    assert send(fuzz_server, body, AUTH) in {202, 400}


@FUZZ
@given(
    authorization=st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60),
    body=st.binary(max_size=256),
)
def test_fuzz_random_authorization_never_5xx(
    fuzz_server: tuple[str, int], authorization: str, body: bytes
) -> None:
    code = send(fuzz_server, body, {"Authorization": authorization})
    assert code in {401, 400, 202}


# --------------------------------------------------------------------------- the real thing
