"""prometheus.py against a real Prometheus scraping a real exporter (the session's
`prometheus_server`, which scrapes the engine exporters every second), a real one stopped,
one over TLS and a real Alertmanager; the failure modes a healthy Prometheus cannot produce
are in tests/unit/clients/test_prometheus.py.
"""

from __future__ import annotations

import asyncio
import math
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from stopbudget import api
from stopbudget.core import promql
from stopbudget.core.law import Observation
from stopbudget.devkit import servers
from stopbudget.devkit.exporter import ENGINES, EngineExporter
from tests.support.waiting import eventually, wait_for
from tests.unit.clients.test_prometheus import (
    NAME,
    NS,
    _self_signed,
    errors,
    reader_for,
    sent,
    serve,
    signals_spec,
    spec_with,
    value_of,
)


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

    The llama.cpp preset is read from a real llama-server (tests/e2e/test_engine.py).
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
