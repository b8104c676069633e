"""prometheus.py against a real Prometheus scraping a real exporter, and against bad servers.

The good path runs on the session's real Prometheus (`prometheus_server`), which
scrapes the engine exporters every second.  Failure modes that a healthy
Prometheus cannot produce (hanging, garbage, wrong status) come from tiny
aiohttp servers; a Prometheus that goes away is a real one, stopped.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import os
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
from stopbudget.devkit.exporter import ENGINES, EngineExporter
from tests.conftest import MINIMAL, eventually, wait_for

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


@pytest.mark.servers
def test_colon_names_arrive_intact(
    prometheus_server: servers.DevPrometheus, make_exporter: Callable[..., EngineExporter]
) -> None:
    engine = make_exporter()
    engine.set_load(waiting=7)
    # Whatever Prometheus asks for (OpenMetrics first), the exporter answers text 0.0.4.
    request = urllib.request.Request(
        engine.url, headers={"Accept": "application/openmetrics-text;version=1.0.0"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        body = response.read().decode()
    assert "vllm:num_requests_waiting{" in body
    assert "_created" not in body

    expr = f"vllm:num_requests_waiting{{model_name={promql.quote(engine.model_name)}}}"

    def arrived() -> dict[str, Any] | None:
        result = prometheus_server.query(expr)["result"]
        return result[0] if result and result[0]["value"][1] == "7" else None

    sample = wait_for(arrived, what="vllm:num_requests_waiting = 7 in Prometheus")
    assert sample["metric"]["__name__"] == "vllm:num_requests_waiting"
    assert sample["metric"]["job"] == "engines"


@pytest.mark.servers
async def test_preset_signals_arrive_for_every_engine(
    prometheus_server: servers.DevPrometheus, make_exporter: Callable[..., EngineExporter]
) -> None:
    """One replica publishing vLLM, SGLang and TGI series, read through each preset.

    The llama.cpp preset is read from a real llama-server (tests/test_engine.py).
    """
    engine = make_exporter()
    # TGI's series have no model label: select every engine by a label of the replica.
    selector = {"deployment": engine.model_name}
    engine.reset(engine.model_name, labels=selector)
    specs = {
        preset: spec_with(
            load={
                "preset": preset.value,
                "selector": selector,
                "signals": [{"name": n, "target": 10} for n in names],
            }
        )
        for preset, names in api.PRESET_SIGNALS.items()
        if names and preset.value in ENGINES
    }
    async with reader_for(prometheus_server.url) as reader:

        async def observe() -> dict[api.Preset, Observation]:
            found = await asyncio.gather(*(reader.observe(NS, NAME, s) for s in specs.values()))
            return dict(zip(specs, found, strict=True))

        # Up but idle: the presets say 0 for latency (no request waited), not "no data".
        engine.set_load(waiting=0, running=0, kv_cache=0.0)
        idle = await eventually(
            observe, lambda seen: all(o.ok for o in seen.values()), what="idle engine reads"
        )
        for preset, observation in idle.items():
            assert value_of(observation, "latencyP95") == 0.0, preset
            assert observation.truncation == (0.0 if preset is api.Preset.VLLM else None)

        engine.set_load(waiting=7, running=3, kv_cache=0.5)
        engine.finish_request(4.2, finished_reason="length", generation_tokens=256, count=3)
        engine.finish_request(4.2, finished_reason="stop", generation_tokens=100)

        def busy(seen: dict[api.Preset, Observation]) -> bool:
            return all(
                o.ok and value_of(o, "queue") == 7 and (value_of(o, "latencyP95") or 0) > 0
                for o in seen.values()
            ) and seen[api.Preset.VLLM].truncation == pytest.approx(0.75)

        seen = await eventually(observe, busy, what="busy engine reads")
    for preset, observation in seen.items():
        if "kvCache" in api.PRESET_SIGNALS[preset]:
            assert value_of(observation, "kvCache") == 0.5
        latency = value_of(observation, "latencyP95")
        assert latency is not None
        if preset is api.Preset.TGI:  # 4.2 s falls in TGI's bucket (3.79, 5.68]
            assert 3.79 < latency <= 5.69
        else:  # and in vLLM's and SGLang's (2.5, 5]
            assert 2.5 < latency <= 5.0
        assert observation.pressure == pytest.approx(0.7)  # queue 7 / 10 is the largest


@pytest.mark.servers
async def test_empty_result_is_no_data_never_zero(
    prometheus_server: servers.DevPrometheus, make_exporter: Callable[..., EngineExporter]
) -> None:
    make_exporter().set_load(waiting=5)
    spec = spec_with(
        load={
            "preset": "vllm",
            "selector": {"model_name": "no-such-model"},
            "signals": [{"name": "queue", "target": 10}, {"name": "latencyP95", "target": 5}],
        }
    )
    async with reader_for(prometheus_server.url) as reader:
        observation = await reader.observe(NS, NAME, spec)
        assert [s.value for s in observation.signals] == [None, None]
        assert observation.truncation is None
        assert not observation.ok
        for reading in observation.signals:
            assert reading.error is not None
            assert "no data" in reading.error
            assert reading.pressure is None
        assert errors(reader.metrics, "no_data") == 3  # queue, latency, truncation
        assert sent(reader.metrics) == 3


@pytest.mark.servers
async def test_nan_gauge_is_no_data(
    prometheus_server: servers.DevPrometheus, make_exporter: Callable[..., EngineExporter]
) -> None:
    engine = make_exporter()
    engine.set_load(kv_cache=math.nan)
    spec = spec_with(
        load={
            "preset": "vllm",
            "selector": {"model_name": engine.model_name},
            "signals": [{"name": "kvCache", "target": 0.9}],
        }
    )
    expr = f"vllm:kv_cache_usage_perc{{model_name={promql.quote(engine.model_name)}}}"
    wait_for(lambda: prometheus_server.query(expr)["result"], what="NaN gauge scraped")
    async with reader_for(prometheus_server.url) as reader:
        observation = await reader.observe(NS, NAME, spec)
        (reading,) = observation.signals
        assert reading.value is None
        assert reading.error is not None
        assert "NaN" in reading.error
        assert errors(reader.metrics, "no_data") >= 1


@pytest.mark.servers
@pytest.mark.parametrize(
    ("expr", "value", "kind"),
    [
        ("vector(NaN)", None, "no_data"),
        ("vector(+Inf)", None, "no_data"),
        ("vector(-Inf)", None, "no_data"),
        ("scalar(vector(3))", 3.0, None),
        ("4.5", 4.5, None),
        ("vector(1) > 2", None, "no_data"),
        ("absent(vector(1))", None, "no_data"),
        ('"a string"', None, "bad_response"),
        ("vector(1)[5s:1s]", None, "bad_response"),
        ("sum(", None, "http"),
        ("rate(vector(1))", None, "http"),
    ],
)
async def test_results_of_real_queries(
    prometheus_server: servers.DevPrometheus, expr: str, value: float | None, kind: str | None
) -> None:
    async with reader_for(prometheus_server.url) as reader:
        (reading,) = (await reader.observe(NS, NAME, signals_spec(expr))).signals
        assert reading.value == value
        if kind is None:
            assert reading.error is None
        else:
            assert reading.error
            assert errors(reader.metrics, kind) == 1
        if kind == "http":
            assert "HTTP 400" in str(reading.error)
            assert "bad_data" in str(reading.error)


@pytest.mark.servers
async def test_two_series_where_one_is_expected(
    prometheus_server: servers.DevPrometheus, make_exporter: Callable[..., EngineExporter]
) -> None:
    """Two replicas of one model: an unaggregated query is an error naming both, never a pick."""
    first = make_exporter()
    second = make_exporter(first.model_name)
    first.set_load(waiting=1)
    second.set_load(waiting=2)
    expr = f"vllm:num_requests_waiting{{model_name={promql.quote(first.model_name)}}}"
    wait_for(lambda: len(prometheus_server.query(expr)["result"]) == 2, what="two series")
    async with reader_for(prometheus_server.url) as reader:
        spec = signals_spec(expr, f"sum({expr})")
        ambiguous, summed = (await reader.observe(NS, NAME, spec)).signals
        assert ambiguous.value is None
        assert ambiguous.error is not None
        assert expr in ambiguous.error
        assert first.target in ambiguous.error
        assert second.target in ambiguous.error
        assert summed.value == 3
        assert errors(reader.metrics, "ambiguous") == 1


@pytest.mark.servers
async def test_quality_query_and_its_range(prometheus_server: servers.DevPrometheus) -> None:
    async with reader_for(prometheus_server.url) as reader:
        good = await reader.observe(NS, NAME, signals_spec(quality="vector(0.83)"))
        assert (good.em, good.em_error) == (0.83, None)
        bad = await reader.observe(NS, NAME, signals_spec(quality="vector(1.5)"))
        assert bad.em is None
        assert "outside [0, 1]" in str(bad.em_error)
        empty = await reader.observe(NS, NAME, signals_spec(quality="absent(vector(1))"))
        assert empty.em is None
        assert "no data" in str(empty.em_error)
        assert not empty.ok


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


@pytest.mark.servers
async def test_prometheus_stopped_is_a_counted_connection_error(
    start_prometheus: Callable[..., servers.DevPrometheus],
) -> None:
    prom = start_prometheus(jobs=())
    spec = signals_spec("vector(2)")
    async with reader_for(prom.url, prometheus_timeout_seconds=2) as reader:
        assert value_of(await reader.observe(NS, NAME, spec), "s0") == 2
        prom.stop()
        (reading,) = (await reader.observe(NS, NAME, spec)).signals
        assert reading.value is None
        assert "cannot reach Prometheus" in str(reading.error)
        assert errors(reader.metrics, "connection") == 1
        prom.start()  # same port: the reader recovers on its own
        assert value_of(await reader.observe(NS, NAME, spec), "s0") == 2
        assert sent(reader.metrics) == 3


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


@pytest.mark.servers
async def test_tls_prometheus_with_ca_file_and_skip_verify(
    start_prometheus: Callable[..., servers.DevPrometheus], tmp_path: Path
) -> None:
    if servers.find_binary("openssl") is None:
        pytest.skip("openssl not installed")
    cert, key = _self_signed(tmp_path)
    prom = start_prometheus(
        jobs=(), web_config={"tls_server_config": {"cert_file": str(cert), "key_file": str(key)}}
    )
    assert prom.url.startswith("https://")
    spec = signals_spec("vector(5)")
    async with reader_for(prom.url, prometheus_ca_file=cert) as reader:
        assert value_of(await reader.observe(NS, NAME, spec), "s0") == 5
    async with reader_for(prom.url, prometheus_insecure_skip_verify=True) as reader:
        assert value_of(await reader.observe(NS, NAME, spec), "s0") == 5
    async with reader_for(prom.url) as reader:  # the system CAs do not know this one
        (reading,) = (await reader.observe(NS, NAME, spec)).signals
        assert reading.value is None
        assert "TLS" in str(reading.error)
        assert errors(reader.metrics, "connection") == 1


@pytest.mark.servers
async def test_alert_rule_reaches_a_webhook_through_real_alertmanager(
    start_prometheus: Callable[..., servers.DevPrometheus],
    start_alertmanager: Callable[..., servers.DevAlertmanager],
) -> None:
    """The devservers wiring: rule -> Prometheus -> Alertmanager -> webhook with bearer token."""
    received: list[tuple[str | None, dict[str, Any]]] = []

    async def webhook(request: web.Request) -> web.Response:
        received.append((request.headers.get("Authorization"), await request.json()))
        return web.Response(status=200)

    rules = """
groups:
  - name: test
    rules:
      - alert: StopBudgetTest
        expr: vector(1)
        labels: {namespace: serving, stoppolicy: llama}
"""
    async with serve(webhook) as url:
        am = start_alertmanager(webhook_url=f"{url}/alerts", webhook_token="s3cret")
        start_prometheus(jobs=(), rules={"test": rules}, alertmanagers=[am.url])

        async def payloads() -> list[tuple[str | None, dict[str, Any]]]:
            return received

        await eventually(payloads, bool, within=30, what="webhook called by Alertmanager")
    auth, payload = received[0]
    assert auth == "Bearer s3cret"
    assert payload["version"] == "4"
    assert payload["status"] == "firing"
    (alert,) = payload["alerts"]
    assert alert["labels"]["alertname"] == "StopBudgetTest"
    assert alert["labels"]["stoppolicy"] == "llama"


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


@pytest.mark.servers
def test_dev_servers_stop_by_pid_and_clean_up(
    start_alertmanager: Callable[..., servers.DevAlertmanager],
) -> None:
    with servers.DevPrometheus(jobs=()) as prom:
        pid, directory = prom.pid, prom.dir
        assert pid is not None
        assert prom.query("vector(1)")["result"][0]["value"][1] == "1"
        prom.stop()
        assert not prom.running
        prom.start()  # again, on the same port
        assert prom.query("vector(2)")["result"][0]["value"][1] == "2"
        second = prom.pid
    assert not directory.exists()
    for gone in (pid, second):
        assert gone is not None
        with pytest.raises(ProcessLookupError):
            os.kill(gone, 0)

    am = start_alertmanager()
    am.post_alerts([{"labels": {"alertname": "Direct", "stoppolicy": "p"}}])
    alerts = wait_for(am.alerts, what="alert held by Alertmanager")
    assert alerts[0]["labels"]["alertname"] == "Direct"
