"""The gate over HTTP, in-process: caps per class, pass-through, streaming, disconnects,
backpressure, bad input, upstream failures, live budget changes and its metrics."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from stopbudget.gate.caps import ANSWER_ROOM, Engine
from stopbudget.gate.proxy import GateConfig
from stopbudget.gate.server import Address, ListenError, RunningGate, ServeOptions, running_gate
from tests.support.gate_upstream import Upstream
from tests.support.kubelet import ConfigMapVolume
from tests.support.openai_server import MODEL, OpenAIServer, reply
from tests.support.waiting import eventually

HOST = "127.0.0.1"
CHAT = "/v1/chat/completions"


@asynccontextmanager
async def gate(upstream: str, budgets: Path, **config: Any) -> AsyncIterator[RunningGate]:
    options = ServeOptions(
        GateConfig(upstream, **config),
        budgets,
        Address(HOST, 0),
        Address(HOST, 0),
        poll_interval=0.02,
        shutdown_grace=2.0,
    )
    async with running_gate(options) as running:
        yield running


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with Upstream() as up:
        yield up


@pytest.fixture
def volume(tmp_path: Path) -> ConfigMapVolume:
    return ConfigMapVolume(tmp_path / "budgets")


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


def sample(g: RunningGate, name: str, **labels: str) -> float:
    value = g.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def post(
    client: aiohttp.ClientSession,
    g: RunningGate,
    body: Any,
    *,
    path: str = CHAT,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with client.post(g.url + path, data=data, headers=headers) as response:
        return response.status, await response.json(content_type=None)


async def until(probe: Callable[[], Any], what: str, within: float = 10.0) -> None:
    async def check() -> Any:
        return probe()

    await eventually(check, bool, within, what)


@contextmanager
def dead_port() -> Iterator[int]:
    """A port nothing listens on, held bound so that no socket takes it meanwhile (a
    freed ephemeral port can become the gate's own local port: a TCP self-connect)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        yield port


# --------------------------------------------------------------------------- caps


async def test_caps_per_class(
    upstream: Upstream, volume: ConfigMapVolume, client: aiohttp.ClientSession
) -> None:
    volume.write({"default.output": "64", "premium.output": "512"})
    async with gate(upstream.url, volume.dir) as g:
        cases = [
            ({}, {"max_tokens": 5000}, 64),
            ({"x-stopbudget-class": "premium"}, {"max_tokens": 5000}, 512),
            ({"X-StopBudget-Class": "premium"}, {"max_tokens": 5000}, 512),
            ({"x-stopbudget-class": "nobody"}, {"max_tokens": 5000}, 64),  # default's
            ({"x-stopbudget-class": "premium"}, {"max_tokens": 10}, 10),  # never raised
            ({}, {}, 64),  # set when absent
        ]
        for headers, limits, sent in cases:
            status, answer = await post(client, g, {"messages": [], **limits}, headers=headers)
            assert status == 200, answer
            assert upstream.seen[-1].json()["max_tokens"] == sent
            assert upstream.seen[-1].body.count(b'"max_tokens"') == 1
        labels = {"class": "premium", "route": "chat"}
        assert sample(g, "stopbudget_gate_requests_total", **labels, code="200") == 3
        assert sample(g, "stopbudget_gate_requests_capped_total", **labels, kind="output") == 2
        assert sample(g, "stopbudget_gate_requests_capped_total", **labels, kind="thinking") == 0
        assert sample(g, "stopbudget_gate_completion_tokens_total", **{"class": "premium"}) == 1034
        assert sample(g, "stopbudget_gate_completion_tokens_total", **{"class": "default"}) == 192
        finish = {"class": "premium", "reason": "length"}
        assert sample(g, "stopbudget_gate_finish_reasons_total", **finish) == 3
        budget = {"class": "premium", "kind": "output"}
        assert sample(g, "stopbudget_gate_budget_tokens", **budget) == 512
        assert sample(g, "stopbudget_gate_upstream_latency_seconds_count", route="chat") == 6


async def test_no_budget_files_no_change(
    upstream: Upstream, volume: ConfigMapVolume, client: aiohttp.ClientSession
) -> None:
    volume.write({})
    raw = b'{"messages": [],  "max_tokens": 9000, "x": "\\u00e9"}'
    async with gate(upstream.url, volume.dir) as g:
        status, _ = await post(client, g, raw)
    assert status == 200
    assert upstream.seen[-1].body == raw  # byte for byte


async def test_class_header_is_configurable(
    upstream: Upstream, volume: ConfigMapVolume, client: aiohttp.ClientSession
) -> None:
    volume.write({"default.output": "64", "batch.output": "8"})
    async with gate(upstream.url, volume.dir, class_header="x-tier") as g:
        await post(
            client, g, {"max_tokens": 100}, path="/v1/completions", headers={"x-tier": "batch"}
        )
        assert upstream.seen[-1].json()["max_tokens"] == 8
        headers = {"x-stopbudget-class": "batch"}
        await post(client, g, {"max_tokens": 100}, path="/v1/completions", headers=headers)
        assert upstream.seen[-1].json()["max_tokens"] == 64


@pytest.mark.slow
async def test_every_capped_route(
    upstream: Upstream, volume: ConfigMapVolume, client: aiohttp.ClientSession
) -> None:
    volume.write({"default.output": "32"})
    async with gate(upstream.url, volume.dir) as g:
        for path, field in [
            ("/v1/completions", "max_tokens"),
            (CHAT, "max_completion_tokens"),
            ("/v1/responses", "max_output_tokens"),
            ("/v1/messages", "max_tokens"),
        ]:
            status, _ = await post(client, g, {field: 4096}, path=path)
            assert status == 200
            assert upstream.seen[-1].json() == {field: 32}, path


async def test_duplicate_max_tokens_cannot_slip_past(
    upstream: Upstream, volume: ConfigMapVolume, client: aiohttp.ClientSession
) -> None:
    volume.write({"default.output": "64"})
    async with gate(upstream.url, volume.dir) as g:
        await post(client, g, b'{"max_tokens": 10, "max_tokens": 5000}')
        assert upstream.seen[-1].body == b'{"max_tokens":64}'
        await post(client, g, b'{"max_tokens": 5000, "max_tokens": 10}')
        assert upstream.seen[-1].body == b'{"max_tokens":10}'


@pytest.mark.parametrize(
    ("engine", "field"),
    [
        (Engine.VLLM, {"thinking_token_budget": 300}),
        (Engine.SGLANG, {"custom_params": {"thinking_budget": 300}}),
        (Engine.LLAMACPP, {"thinking_budget_tokens": 300}),
    ],
)
async def test_thinking_fields_reach_the_test_server(
    engine: Engine, field: dict[str, Any], volume: ConfigMapVolume, client: aiohttp.ClientSession
) -> None:
    volume.write({"default.thinking": "300", "default.output": "64"})
    question = "What is 2 + 2?"
    async with (
        OpenAIServer({question: reply("4", 3)}) as server,
        gate(server.url, volume.dir, engine=engine) as g,
    ):
        body = {"model": MODEL, "messages": [{"role": "user", "content": question}]}
        status, answer = await post(client, g, {**body, "max_tokens": 5000})
        assert status == 200, answer
        assert answer["choices"][0]["message"]["content"] == "step1 step2\n4"
        # the output cap kept room for the answer above the thinking budget
        assert server.requests[-1] == {**body, **field, "max_tokens": 300 + ANSWER_ROOM}
        assert (
            sample(
                g,
                "stopbudget_gate_requests_capped_total",
                kind="thinking",
                route="chat",
                **{"class": "default"},
            )
            == 1
        )


async def test_openai_engine_sets_max_completion_tokens(
    volume: ConfigMapVolume, client: aiohttp.ClientSession
) -> None:
    volume.write({"default.output": "2", "default.thinking": "300"})
    question = "Count"
    async with (
        OpenAIServer({question: reply("3", 3)}) as server,
        gate(server.url, volume.dir, engine=Engine.OPENAI) as g,
    ):
        body = {"model": MODEL, "messages": [{"role": "user", "content": question}]}
        status, answer = await post(client, g, body)
        assert status == 200, answer
        assert answer["choices"][0]["finish_reason"] == "length"  # cut at 2 of 3 tokens
        assert server.requests[-1] == {**body, "max_completion_tokens": 2}  # no thinking field


# --------------------------------------------------------------------------- pass-through


async def test_other_paths_and_methods_pass_through_unchanged(
    upstream: Upstream, volume: ConfigMapVolume, client: aiohttp.ClientSession
) -> None:
    volume.write({"default.output": "8"})
    async with gate(upstream.url, volume.dir) as g:
        async with client.get(g.url + "/v1/models") as response:
            assert response.status == 200
            assert (await response.json())["data"][0]["id"] == "test-model"
        async with client.get(g.url + "/health") as response:
            assert await response.json() == {"status": "ok"}
        odd = b' {"max_tokens": 9000, "input": "x"}'  # the upstream echoes it
        for method, path in [
            ("POST", "/v1/embeddings?x=1&y=%2F"),
            ("PUT", "/v1/completions"),
            ("GET", "/v1/completions?max_tokens=9"),
            ("DELETE", "/anything/at/all"),
        ]:
            data = odd if method != "GET" else None
            headers = {"Authorization": "Bearer k", "x-custom": "1"}
            headers |= {"Connection": "keep-alive, x-hop", "x-hop": "for the gate only"}
            url = URL(g.url + path, encoded=True)  # sent as written
            async with client.request(method, url, data=data, headers=headers) as response:
                assert response.status == 200
                assert await response.json() == {"echo": path, "method": method}
            seen = upstream.seen[-1]
            assert (seen.method, seen.path, seen.body) == (method, path, data or b"")
            assert seen.headers["Authorization"] == "Bearer k"
            assert seen.headers["x-custom"] == "1"
            assert "x-hop" not in seen.headers  # named by Connection: hop-by-hop
        assert (
            sample(
                g,
                "stopbudget_gate_requests_capped_total",
                **{"class": "default"},
                route="other",
                kind="output",
            )
            == 0
        )


async def test_cookies_of_one_client_never_reach_another(
    upstream: Upstream, volume: ConfigMapVolume
) -> None:
    volume.write({})
    by_name = upstream.url.replace(HOST, "localhost")  # a cookie jar keeps no cookie of an IP
    async with gate(by_name, volume.dir) as g, aiohttp.ClientSession() as alice:
        async with alice.get(g.url + "/login", headers={"x-test-mode": "cookie"}) as r:
            assert r.cookies["session"].value == "alice-secret"  # relayed to its client
        async with aiohttp.ClientSession() as bob, bob.get(g.url + "/v1/models") as r:
            assert r.status == 200
        assert "Cookie" not in upstream.seen[-1].headers  # the gate kept nothing


async def test_expect_100_continue_is_answered(
    upstream: Upstream, volume: ConfigMapVolume, client: aiohttp.ClientSession
) -> None:
    """curl sends ``Expect: 100-continue`` with bodies over 1 KiB and waits for the 100."""
    volume.write({"default.output": "8"})
    body = json.dumps({"max_tokens": 100, "text": "y" * 2000}).encode()
    async with gate(upstream.url, volume.dir, max_body=4000) as g:
        for path in (CHAT, "/v1/embeddings"):
            async with asyncio.timeout(5):
                async with client.post(g.url + path, data=body, expect100=True) as response:
                    assert response.status == 200, path
            assert upstream.seen[-1].headers.get("Expect") is None
        assert upstream.seen[0].json()["max_tokens"] == 8
        big = body + b" " * 5000  # over the limit: refused before the client sends it
        async with client.post(g.url + CHAT, data=big, expect100=True) as response:
            assert response.status == 413


# --------------------------------------------------------------------------- streaming


async def read_event(response: aiohttp.ClientResponse) -> bytes:
    """The next SSE event (up to its blank line)."""
    event = await response.content.readuntil(b"\n\n")
    assert event.endswith(b"\n\n"), event
    return event


async def test_streams_pass_chunk_by_chunk(
    volume: ConfigMapVolume, client: aiohttp.ClientSession
) -> None:
    volume.write({"default.output": "16"})
    async with Upstream(steps=3) as upstream, gate(upstream.url, volume.dir) as g:
        body = json.dumps({"messages": [], "stream": True, "max_tokens": 100})
        headers = {"x-test-mode": "step"}
        async with client.post(g.url + CHAT, data=body, headers=headers) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "text/event-stream"
            # each event arrives while the upstream holds the next one back: no buffering
            assert b" t0" in await read_event(response)
            upstream.step()
            assert b" t1" in await read_event(response)
            upstream.step()
            assert b" t2" in await read_event(response)
            rest = await response.read()
        assert rest.endswith(b"data: [DONE]\n\n")
        assert upstream.seen[-1].json()["max_tokens"] == 16
        labels = {"class": "default"}
        assert sample(g, "stopbudget_gate_completion_tokens_total", **labels) == 3
        assert sample(g, "stopbudget_gate_finish_reasons_total", **labels, reason="length") == 1


async def test_a_full_stream_is_relayed_intact(
    upstream: Upstream, volume: ConfigMapVolume, client: aiohttp.ClientSession
) -> None:
    volume.write({"default.output": "200"})
    async with gate(upstream.url, volume.dir) as g:
        body = {"messages": [], "stream": True}
        async with client.post(g.url + CHAT, json=body) as via_gate:
            relayed = await via_gate.read()
        async with client.post(upstream.url + CHAT, json={**body, "max_tokens": 200}) as direct:
            assert relayed == await direct.read()
        assert relayed.count(b"data: ") == 200 + 3


@pytest.mark.parametrize("mode", ["hold", "silent"])
async def test_a_client_that_goes_away_cancels_the_upstream_request(
    mode: str, upstream: Upstream, volume: ConfigMapVolume, client: aiohttp.ClientSession
) -> None:
    volume.write({"default.output": "16"})
    async with gate(upstream.url, volume.dir) as g:
        body = {"messages": [], "stream": True}
        request = client.post(g.url + CHAT, json=body, headers={"x-test-mode": mode})
        if mode == "hold":  # mid-stream
            response = await request
            await read_event(response)
            response.close()
        else:  # before the upstream answered anything
            task = asyncio.create_task(request.__aenter__())
            await until(lambda: len(upstream.seen) == 1, "the request reached the upstream")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        await until(lambda: upstream.cancelled == 1, "the upstream saw its request cancelled")
        await until(
            lambda: sample(g, "stopbudget_gate_requests_in_flight") == 0, "no request in flight"
        )
        labels = {"class": "default", "route": "chat"}
        assert sample(g, "stopbudget_gate_requests_total", **labels, code="499") == 1
        status, _ = await post(client, g, {"messages": []})  # and the gate still serves
        assert status == 200


async def no_progress(counter: Callable[[], int], quiet: float = 0.3, within: float = 20.0) -> int:
    """Poll ``counter`` until it has not moved for ``quiet`` seconds; its value."""
    deadline = time.monotonic() + within
    last, since = counter(), time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        now = counter()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    raise TimeoutError(f"still moving after {within}s: {last}")


@pytest.mark.slow
async def test_backpressure_holds_a_fast_upstream_to_a_slow_client(
    volume: ConfigMapVolume, client: aiohttp.ClientSession
) -> None:
    volume.write({})
    total = 256 << 20
    async with Upstream(flood_bytes=total) as upstream, gate(upstream.url, volume.dir) as g:
        body = {"messages": [], "stream": True}
        async with client.post(g.url + CHAT, json=body, headers={"x-test-mode": "flood"}) as r:
            assert r.status == 200
            stalled = await no_progress(lambda: upstream.sent)  # the client reads nothing
            assert stalled < total // 4, f"{stalled} bytes went out ahead of the client"
            received = 0
            async for chunk in r.content.iter_any():
                received += len(chunk)
        assert received == total
        assert upstream.sent == total


# --------------------------------------------------------------------------- bad input

BAD = [
    (b"not json", None, "not valid JSON"),
    (b"[1, 2]", None, "must be a JSON object, got an array"),
    (b'{"max_tokens": "many"}', "max_tokens", "max_tokens must be an integer"),
    (b'{"max_tokens": 2.5}', "max_tokens", "max_tokens must be an integer"),
    (b'{"max_tokens": -3}', "max_tokens", "max_tokens must not be negative"),
    (b'{"max_completion_tokens": -1}', "max_completion_tokens", "must not be negative"),
    (b'{"thinking_token_budget": true}', "thinking_token_budget", "must be an integer"),
    (b"\xff\xfe\x00", None, "not valid JSON"),
]


async def test_bad_bodies_get_400_naming_the_field(
    upstream: Upstream, volume: ConfigMapVolume, client: aiohttp.ClientSession
) -> None:
    volume.write({"default.output": "64"})
    async with gate(upstream.url, volume.dir) as g:
        for raw, param, message in BAD:
            status, answer = await post(client, g, raw)
            assert status == 400, raw
            error = answer["error"]
            assert message in error["message"]
            assert (error["param"], error["type"], error["code"]) == (
                param,
                "invalid_request_error",
                400,
            )
        assert upstream.seen == []
        status, _ = await post(client, g, {"messages": []})
        assert status == 200
        labels = {"class": "default", "route": "chat"}
        assert sample(g, "stopbudget_gate_requests_total", **labels, code="400") == len(BAD)
        assert sample(g, "stopbudget_gate_requests_in_flight") == 0


async def test_a_body_over_the_limit_gets_413(
    upstream: Upstream, volume: ConfigMapVolume, client: aiohttp.ClientSession
) -> None:
    volume.write({"default.output": "64"})
    async with gate(upstream.url, volume.dir, max_body=1000) as g:
        big = {"messages": [{"role": "user", "content": "x" * 2000}]}
        status, answer = await post(client, g, big)
        assert status == 413
        assert "larger than the gate's limit of 1000 bytes" in answer["error"]["message"]
        assert "STOPBUDGET_GATE_MAX_BODY_BYTES" in answer["error"]["message"]

        # chunked, without a Content-Length: the same
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(4):
                yield b" " * 400

        async with client.post(g.url + CHAT, data=chunks()) as response:
            assert response.status == 413
        assert upstream.seen == []
        status, _ = await post(client, g, {"messages": []})
        assert status == 200


async def test_unreachable_upstream_is_a_502_naming_it(
    volume: ConfigMapVolume, client: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    volume.write({"default.output": "64"})
    with dead_port() as port:
        dead = f"http://{HOST}:{port}"
        async with gate(dead, volume.dir) as g:
            for path in (CHAT, "/v1/models", CHAT, CHAT):
                async with client.post(g.url + path, json={}) as response:
                    assert response.status == 502
                    error = (await response.json())["error"]
                assert error["message"].startswith(f"the upstream {dead} is unreachable: ")
                assert error["type"] == "upstream_error"
            assert sample(g, "stopbudget_gate_upstream_errors_total", reason="unreachable") == 4
            assert sample(g, "stopbudget_gate_requests_in_flight") == 0
    logged = [r for r in caplog.records if r.name == "stopbudget.gate.proxy"]
    assert len(logged) == 1  # a dead engine fails every request: said once per 10 s
    assert logged[0].getMessage().startswith(f"upstream {dead} is unreachable: ")


async def test_upstream_that_drops_the_connection(
    upstream: Upstream, volume: ConfigMapVolume, client: aiohttp.ClientSession
) -> None:
    volume.write({"default.output": "64"})
    async with gate(upstream.url, volume.dir) as g:
        status, answer = await post(client, g, {"messages": []}, headers={"x-test-mode": "close"})
        assert status == 502
        assert answer["error"]["message"].startswith(
            f"the upstream {upstream.url} failed before answering"
        )
        # mid-stream: the client sees a cut response, never a complete one
        headers = {"x-test-mode": "break"}
        async with client.post(g.url + CHAT, json={"stream": True}, headers=headers) as response:
            assert response.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
        assert sample(g, "stopbudget_gate_upstream_errors_total", reason="broken") == 2
        labels = {"class": "default", "route": "chat", "code": "502"}
        assert sample(g, "stopbudget_gate_requests_total", **labels) == 2
        status, _ = await post(client, g, {"messages": []})
        assert status == 200
        assert sample(g, "stopbudget_gate_requests_in_flight") == 0


# --------------------------------------------------------------------------- live budgets


async def test_a_budget_change_applies_to_the_next_request_without_a_restart(
    volume: ConfigMapVolume, client: aiohttp.ClientSession
) -> None:
    volume.write({"default.output": "256"})
    async with Upstream(steps=2) as upstream, gate(upstream.url, volume.dir) as g:
        body = {"messages": [], "stream": True, "max_tokens": 1000}
        headers = {"x-test-mode": "step"}
        async with client.post(g.url + CHAT, json=body, headers=headers) as in_flight:
            await read_event(in_flight)
            assert upstream.seen[-1].json()["max_tokens"] == 256
            volume.write({"default.output": "128"})  # kubelet's atomic swap

            async def sent() -> int:
                await post(client, g, {"max_tokens": 1000}, path="/v1/completions")
                return int(upstream.seen[-1].json()["max_tokens"])

            await eventually(sent, lambda cap: cap == 128, 5, "the new budget applied")
            upstream.step()  # the request in flight finishes, untouched
            rest = await in_flight.read()
        assert in_flight.status == 200
        assert rest.endswith(b"data: [DONE]\n\n")
        assert (
            sample(g, "stopbudget_gate_budget_tokens", **{"class": "default"}, kind="output") == 128
        )


async def test_a_bad_budget_file_keeps_the_last_good_value(
    upstream: Upstream, volume: ConfigMapVolume, client: aiohttp.ClientSession
) -> None:
    volume.write({"default.output": "256"})
    async with gate(upstream.url, volume.dir) as g:
        volume.write({"default.output": "lots"})
        labels = {"class": "default", "kind": "output"}
        await until(
            lambda: sample(g, "stopbudget_gate_budget_file_errors_total", **labels) == 1,
            "the bad file counted",
        )
        await post(client, g, {"max_tokens": 1000})
        assert upstream.seen[-1].json()["max_tokens"] == 256
        assert sample(g, "stopbudget_gate_budget_tokens", **labels) == 256


# --------------------------------------------------------------------------- the server


async def test_metrics_endpoint(
    upstream: Upstream, volume: ConfigMapVolume, client: aiohttp.ClientSession
) -> None:
    volume.write({"default.output": "64"})
    async with gate(upstream.url, volume.dir) as g:
        await post(client, g, {"messages": []})
        async with client.get(g.metrics_url + "/metrics") as response:
            assert response.status == 200
            text = await response.text()
        async with client.get(g.metrics_url + "/healthz") as response:
            assert await response.text() == "ok\n"
    for line in [
        'stopbudget_gate_requests_total{class="default",code="200",route="chat"} 1.0',
        'stopbudget_gate_requests_capped_total{class="default",kind="output",route="chat"} 1.0',
        'stopbudget_gate_completion_tokens_total{class="default"} 64.0',
        'stopbudget_gate_finish_reasons_total{class="default",reason="length"} 1.0',
        'stopbudget_gate_budget_tokens{class="default",kind="output"} 64.0',
        'stopbudget_gate_upstream_latency_seconds_count{route="chat"} 1.0',
        "stopbudget_gate_requests_in_flight 0.0",
    ]:
        assert line in text.splitlines()
    assert "_created" not in text


async def test_an_address_in_use_names_its_flag(
    upstream: Upstream, volume: ConfigMapVolume
) -> None:
    volume.write({})
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        options = ServeOptions(
            GateConfig(upstream.url), volume.dir, Address(HOST, 0), Address(HOST, port)
        )
        with pytest.raises(ListenError, match=f"--metrics-listen {HOST}:{port}: cannot listen"):
            async with running_gate(options):
                pass


async def test_shutdown_lets_requests_in_flight_finish(
    volume: ConfigMapVolume, client: aiohttp.ClientSession
) -> None:
    volume.write({})
    async with Upstream(steps=2) as upstream:
        stopped = asyncio.Event()

        async def serve() -> None:
            async with gate(upstream.url, volume.dir) as g:
                started.set_result(g)
                await stopped.wait()

        started: asyncio.Future[RunningGate] = asyncio.get_running_loop().create_future()
        server = asyncio.create_task(serve())
        g = await started
        headers = {"x-test-mode": "step"}
        async with client.post(g.url + CHAT, json={"stream": True}, headers=headers) as response:
            await read_event(response)
            stopped.set()  # SIGTERM: stop listening, let this one finish
            await until(lambda: not _accepts(g.url), "the gate stopped listening")
            upstream.step()
            rest = await response.read()
        assert rest.endswith(b"data: [DONE]\n\n")
        await server


def _accepts(url: str) -> bool:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False
