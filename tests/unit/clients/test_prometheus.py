"""prometheus.py against bad servers, and the engine exporter the real-Prometheus tests scrape.

Failure modes that a healthy Prometheus cannot produce (hanging, garbage, wrong status)
come from tiny aiohttp servers; the good path on a real Prometheus, and a real one that
goes away, are in tests/e2e/test_prometheus.py.
"""

from __future__ import annotations

import asyncio
import copy
import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from stopbudget import api
from stopbudget.clients.metrics import OperatorMetrics
from stopbudget.clients.prometheus import ErrorKind, PrometheusReader, interpret
from stopbudget.clients.settings import Settings
from stopbudget.core import promql
from stopbudget.core.law import Observation
from stopbudget.devkit import servers
from stopbudget.devkit.exporter import EngineExporter
from tests.support.builders import MINIMAL

NS, NAME = "serving", "policy"


def spec_with(**sections: Any) -> api.StopPolicySpec:
    doc = copy.deepcopy(MINIMAL["spec"])
    doc.update(sections)
    return api.StopPolicySpec.model_validate(doc)


def signals_spec(*queries: str, quality: str | None = None) -> api.StopPolicySpec:
    """A policy whose signals are these raw queries (named s0, s1, ...; target 1)."""
    q: dict[str, Any] = {"emTarget": 0.8, "emFloor": 0.7}
    if quality is not None:
        q["query"] = quality
    return spec_with(
        quality=q,
        load={
            "signals": [{"name": f"s{i}", "query": e, "target": 1} for i, e in enumerate(queries)]
        },
    )


def errors(metrics: OperatorMetrics, kind: str) -> float:
    value = metrics.registry.get_sample_value(
        "stopbudget_prometheus_query_errors_total",
        {"namespace": NS, "stoppolicy": NAME, "kind": kind},
    )
    return value or 0.0


def sent(metrics: OperatorMetrics) -> float:
    value = metrics.registry.get_sample_value(
        "stopbudget_prometheus_queries_total", {"namespace": NS, "stoppolicy": NAME}
    )
    return value or 0.0


@asynccontextmanager
async def reader_for(url: str, **settings: Any) -> AsyncIterator[PrometheusReader]:
    window = settings.pop("window", "5s")
    max_concurrency = settings.pop("max_concurrency", 8)
    reader = PrometheusReader(
        Settings(prometheus_url=url, **settings),
        OperatorMetrics(),
        window=window,
        max_concurrency=max_concurrency,
    )
    try:
        yield reader
    finally:
        reader.close()


@asynccontextmanager
async def serve(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """A tiny HTTP server on 127.0.0.1 answering every path with ``handler``; its base URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, servers.HOST, 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def vector(value: str, **labels: str) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {"resultType": "vector", "result": [{"metric": labels, "value": [1.0, value]}]},
    }


# --------------------------------------------------------------------------- interpret (pure)


@pytest.mark.parametrize(
    ("result", "value", "kind"),
    [
        ([{"metric": {}, "value": [1, "7"]}], 7.0, None),
        ([{"metric": {"a": "b"}, "value": [1, "-2.5e3"]}], -2500.0, None),
        ([1, "3"], 3.0, None),  # a scalar
        ([], None, ErrorKind.NO_DATA),
        ([{"metric": {}, "value": [1, "NaN"]}], None, ErrorKind.NO_DATA),
        ([{"metric": {}, "value": [1, "+Inf"]}], None, ErrorKind.NO_DATA),
        ([{"metric": {}, "value": [1, "-Inf"]}], None, ErrorKind.NO_DATA),
        ([1, "NaN"], None, ErrorKind.NO_DATA),
        ([{"metric": {"i": "a"}, "value": [1, "1"]}, {"metric": {"i": "b"}, "value": [1, "2"]}],
         None, ErrorKind.AMBIGUOUS),
        ([{"metric": {}, "values": [[1, "1"], [2, "2"]]}], None, ErrorKind.BAD_RESPONSE),
        ([{"metric": {}, "histogram": [1, {}]}], None, ErrorKind.BAD_RESPONSE),
        ([1, "hello"], None, ErrorKind.BAD_RESPONSE),  # a string result
        ([{"metric": {}, "value": [1]}], None, ErrorKind.BAD_RESPONSE),
        ([{"metric": {}, "value": [1, None]}], None, ErrorKind.BAD_RESPONSE),
        ({"not": "a list"}, None, ErrorKind.BAD_RESPONSE),
        (None, None, ErrorKind.BAD_RESPONSE),
    ],
)  # fmt: skip
def test_interpret(result: Any, value: float | None, kind: ErrorKind | None) -> None:
    got = interpret(result, "q")
    assert (got.value, got.kind) == (value, kind)
    assert (got.error is None) == (kind is None)


def test_ambiguous_names_the_query_and_the_series() -> None:
    result = [{"metric": {"instance": f"10.0.0.{i}:8000"}, "value": [1, "1"]} for i in range(5)]
    got = interpret(result, "vllm:num_requests_waiting")
    assert got.error is not None
    assert "vllm:num_requests_waiting" in got.error
    assert "5 series" in got.error
    assert 'instance="10.0.0.0:8000"' in got.error
    assert "2 more" in got.error
    assert "sum(" in got.error


# --------------------------------------------------------------------------- real Prometheus


def value_of(observation: Observation, signal: str) -> float | None:
    return next(s.value for s in observation.signals if s.name == signal)


async def test_unplannable_spec_reads_nothing_and_says_why() -> None:
    spec = spec_with(
        load={
            "preset": "vllm",
            "selector": {"__name__": "x"},
            "signals": [{"name": "queue", "target": 4}],
        }
    )
    async with reader_for("http://127.0.0.1:9") as reader:
        observation = await reader.observe(NS, NAME, spec)
        (reading,) = observation.signals
        assert reading.value is None
        assert "__name__" in str(reading.error)
        assert sent(reader.metrics) == 0


async def test_hanging_prometheus_is_a_counted_timeout() -> None:
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response(vector("1"))

    async with serve(hang) as url, reader_for(url, prometheus_timeout_seconds=0.3) as reader:
        (reading,) = (await reader.observe(NS, NAME, signals_spec("up"))).signals
        release.set()
        assert reading.value is None
        assert "timeout" in str(reading.error)
        assert errors(reader.metrics, "timeout") == 1
        assert errors(reader.metrics, "connection") == 0


async def test_nobody_listening_is_a_connection_error() -> None:
    port = servers.free_port()
    async with reader_for(f"http://127.0.0.1:{port}") as reader:
        (reading,) = (await reader.observe(NS, NAME, signals_spec("up"))).signals
        assert reading.value is None
        assert errors(reader.metrics, "connection") == 1


@pytest.mark.parametrize(
    ("status", "body", "content_type", "kind", "message"),
    [
        (200, "<html>proxy login</html>", "text/html", "bad_response", "not JSON"),
        (200, '{"status": "success"}', "application/json", "bad_response", "data.result"),
        (200, '{"status": "success", "data": {"resultType": "vector", "result": []}}',
         "application/json", "no_data", "no data"),
        (200, json.dumps(vector("12")), "application/json", None, None),
        (401, "Unauthorized", "text/plain", "http", "HTTP 401: Unauthorized"),
        (503, '{"status":"error","errorType":"unavailable","error":"not ready"}',
         "application/json", "http", "HTTP 503: unavailable: not ready"),
        (422, '{"status":"error","errorType":"execution","error":"query timed out"}',
         "application/json", "http", "execution: query timed out"),
    ],
)  # fmt: skip
async def test_bad_answers_are_counted_by_kind(
    status: int, body: str, content_type: str, kind: str | None, message: str | None
) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=status, text=body, content_type=content_type)

    async with serve(answer) as url, reader_for(url) as reader:
        (reading,) = (await reader.observe(NS, NAME, signals_spec("up"))).signals
        if kind is None:
            assert reading.value == 12
            return
        assert reading.value is None
        assert message is not None
        assert message in str(reading.error)
        assert errors(reader.metrics, kind) == 1


async def test_bearer_token_is_read_on_every_query(tmp_path: Path) -> None:
    seen: list[str | None] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response(vector("1"))

    token = tmp_path / "token"
    token.write_text("first-token\n")
    async with serve(record) as url, reader_for(url, prometheus_token_file=token) as reader:
        spec = signals_spec("up")
        await reader.observe(NS, NAME, spec)
        token.write_text("rotated-token")  # as a projected Secret is updated
        await reader.observe(NS, NAME, spec)
        token.unlink()
        (reading,) = (await reader.observe(NS, NAME, spec)).signals
    assert seen == ["Bearer first-token", "Bearer rotated-token"]
    assert reading.value is None
    assert "cannot read the Prometheus token file" in str(reading.error)
    assert errors(reader.metrics, "connection") == 1


async def test_no_authorization_header_without_a_token_file() -> None:
    seen: list[str | None] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response(vector("1"))

    async with serve(record) as url, reader_for(url) as reader:
        await reader.observe(NS, NAME, signals_spec("up"))
    assert seen == [None]


@pytest.mark.parametrize(("limit", "expected"), [(8, 4), (2, 2)])
async def test_queries_of_a_tick_run_concurrently_and_bounded(limit: int, expected: int) -> None:
    """Each answer waits until `expected` queries are in flight at once (or 5 s pass)."""
    in_flight = 0
    most = 0
    enough = asyncio.Event()

    async def gather(request: web.Request) -> web.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        if in_flight >= expected:
            enough.set()
        try:
            await asyncio.wait_for(enough.wait(), timeout=5)
        finally:
            in_flight -= 1
        return web.json_response(vector("1"))

    spec = signals_spec("a", "b", "c", "d")
    async with serve(gather) as url, reader_for(url, max_concurrency=limit) as reader:
        observation = await reader.observe(NS, NAME, spec)
    assert observation.ok
    assert most == expected
    assert enough.is_set()


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "tls.crt", directory / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


# --------------------------------------------------------------------------- the test servers


def test_exporter_publishes_engine_series_and_starts_over() -> None:
    with EngineExporter("m1", engines=("vllm",)) as engine:
        text = engine.exposition().decode()
        for reason in ("stop", "length", "abort"):  # created at 0, as vLLM does
            assert f'finished_reason="{reason}",model_name="m1"}} 0.0' in text
        engine.set_load(waiting=3, running=2, kv_cache=0.25)
        engine.finish_request(1.2, finished_reason="length", prompt_tokens=10, generation_tokens=5)
        text = engine.exposition().decode()
        assert 'vllm:num_requests_waiting{model_name="m1"} 3.0' in text
        assert 'vllm:kv_cache_usage_perc{model_name="m1"} 0.25' in text
        assert 'vllm:e2e_request_latency_seconds_bucket{le="1.5",model_name="m1"} 1.0' in text
        assert 'vllm:generation_tokens_total{model_name="m1"} 5.0' in text
        assert "sglang:" not in text
        engine.reset("m2", engines=("tgi",), labels={"pod": "tgi-0"})
        text = engine.exposition().decode()
        assert "m1" not in text
        assert 'tgi_queue_size{pod="tgi-0"} 0.0' in text
        engine.clear()
        assert "tgi_" not in engine.exposition().decode()
        port = engine.port
        engine.stop()
        with pytest.raises(urllib.error.URLError), urllib.request.urlopen(engine.url, timeout=2):
            pass
        engine.start()
        assert engine.port == port
        with urllib.request.urlopen(engine.url, timeout=2) as response:
            assert response.status == 200


def test_exporter_rejects_unknown_engines() -> None:
    with pytest.raises(ValueError, match="unknown engines"):
        EngineExporter(engines=("triton",))


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (interpret([{"metric": {}, "value": [0, "2.5"]}], "q"), 2.5),
        (interpret([{"metric": {}, "value": [0, "-0.4"]}], "q"), 0.0),  # delta's edges
        (interpret([], "q"), None),  # no series: no data
        (interpret([{"metric": {}, "value": [0, "NaN"]}], "q"), None),  # 0/0 while idle
        (interpret([{"metric": {"a": "1"}, "value": [0, "1"]}] * 2, "q"), None),  # ambiguous
    ],
)
async def test_the_queueing_models_inputs_are_read_or_left_out(
    result: Any, expected: float | None
) -> None:
    """An input of the queueing model without a number is None, never a failed tick."""
    spec = spec_with(
        load={"preset": "vllm", "signals": [{"name": "queue", "target": 4}]},
        control={"model": "queueing"},
    )
    queries = promql.plan(spec)
    results = [interpret([{"metric": {}, "value": [0, "1"]}], "q")] * len(queries)
    async with reader_for("http://127.0.0.1:9") as reader:
        for role in (promql.Role.ARRIVAL_RATE, promql.Role.THROUGHPUT):
            at = [q.role for q in queries].index(role)
            chosen = [result if i == at else r for i, r in enumerate(results)]
            obs = reader._observation(queries, chosen)
            value = obs.arrival_rate if role is promql.Role.ARRIVAL_RATE else obs.throughput
            assert value == expected
            assert obs.ok
        assert reader._observation(queries, results).served_tokens == 1.0
