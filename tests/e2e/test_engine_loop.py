"""The whole loop on a real engine: llama-server overloaded, the operator lowers its budget.

llama.cpp's llama-server (SmolLM2-135M) serves behind the gate; the session's real
Prometheus scrapes llama-server's own ``/metrics``; the operator runs in-process under
kopf on kmock's emulator with a StopPolicy on the ``llamacpp`` preset and the
``configMap`` sink; a thread standing for kubelet mirrors the ConfigMap into the gate's
budget directory (:class:`~stopbudget.devkit.kubelet.ConfigMapMirror`); a bounded
open-loop load (:mod:`stopbudget.devkit.loadgen`) sends ``/v1/completions`` without
``max_tokens``, so each request generates the budget the gate gives it.

The story: the budget starts at a static 64 and the load is 2.5 times what the engine
serves at 64 (its speed is measured first: the machine is shared); once the engine
has finished a few requests at 64, the StopPolicy is created.  The operator must lower
the budget, the gate apply it, and the engine's OWN counters show fewer tokens per
request afterwards and its ``llamacpp:requests_deferred`` drain to 0 while the load
goes on.  Every wait polls with a timeout; run with ``-s`` to see the numbers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kopf.testing import KopfRunner

from stopbudget.devkit import engine, loadgen, servers
from stopbudget.devkit.demo_engine import (
    CONCURRENCY,
    CONFIGMAP,
    DEPLOYMENT,
    HIGH,
    KEY,
    OVERLOAD,
    policy_document,
)
from stopbudget.devkit.emulator import emulated_cluster_in_thread
from stopbudget.devkit.kubelet import ConfigMapMirror, ConfigMapVolume
from tests.conftest import ENGINES_JOB
from tests.e2e.test_engine import gate_on
from tests.e2e.test_operator_e2e import OPERATOR, SP, deployment
from tests.support.clusters import EmulatedCluster
from tests.support.requires import require_engine
from tests.support.waiting import eventually

pytestmark = pytest.mark.engine

NS, TARGET = "serving", DEPLOYMENT
# The budgets (static HIGH 64, FLOOR 8), the load (OVERLOAD times what the engine serves
# at HIGH, CONCURRENCY in flight at most) and the policy are the demo's: why each value
# is what it is, see stopbudget/devkit/demo_engine.py.
SELECTOR = {"engine": "llama-server-loop"}


def policy(tokens_per_second_target: float) -> dict[str, Any]:
    """The demo's StopPolicy: its values, and why they move the loop within seconds, are
    in :func:`stopbudget.devkit.demo_engine.policy_document`'s docstring."""
    return policy_document(tokens_per_second_target, SELECTOR, NS)


@dataclass
class Sampler:
    """llama-server's counters every 100 ms, in a task; the peak of ``requests_deferred``."""

    server: engine.DevLlamaServer
    samples: list[loadgen.EngineCounts] = field(default_factory=list)

    async def now(self) -> loadgen.EngineCounts:
        counts = loadgen.EngineCounts.of(await asyncio.to_thread(self.server.metrics))
        self.samples.append(counts)
        return counts

    async def run(self) -> None:
        while True:
            await self.now()
            await asyncio.sleep(0.1)

    def peak_deferred(self, start: float, end: float) -> float:
        return max((s.deferred for s in self.samples if start <= s.at <= end), default=0.0)


@pytest.fixture(scope="module")
def engine_1t(tmp_path_factory: pytest.TempPathFactory) -> Iterator[engine.DevLlamaServer]:
    """llama-server with one thread: on two shared, busy cores its two threads wait for each
    other at every step (measured at load average 8: 5-7 tokens/s with -t 2, 27-31 with
    -t 1); one thread degrades with the machine's load, not far beyond it."""
    require_engine()
    workdir = tmp_path_factory.mktemp("llama-server-1t")
    with engine.DevLlamaServer(threads=1, workdir=workdir) as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as client:
        yield client


@pytest.fixture
def operator_env(prometheus_server: servers.DevPrometheus, monkeypatch: pytest.MonkeyPatch) -> str:
    """The operator's settings (the kubeconfig is set by the test); Prometheus's URL."""
    monkeypatch.setenv("STOPBUDGET_PROMETHEUS_URL", prometheus_server.url)
    monkeypatch.setenv("STOPBUDGET_QUERY_WINDOW", "5s")
    monkeypatch.setenv("STOPBUDGET_BIND_ADDRESS", "127.0.0.1")
    monkeypatch.setenv("STOPBUDGET_METRICS_PORT", "0")
    monkeypatch.delenv("STOPBUDGET_WEBHOOK_TOKEN_FILE", raising=False)
    monkeypatch.delenv("STOPBUDGET_NAMESPACES", raising=False)
    return prometheus_server.url


def configmap_budget(cluster: EmulatedCluster) -> Callable[[], Any]:
    async def read() -> int | None:
        cm = await asyncio.to_thread(cluster.get, "v1", "ConfigMap", NS, CONFIGMAP)
        value = ((cm or {}).get("data") or {}).get(KEY)
        return int(value) if value is not None else None

    return read


async def test_the_operator_lowers_llama_servers_budget_and_its_queue_drains(
    engine_1t: engine.DevLlamaServer,
    prometheus_server: servers.DevPrometheus,
    operator_env: str,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    llama_server, began = engine_1t, time.monotonic()
    calibration = await loadgen.calibrate(session, llama_server.url, llama_server.metrics)
    rate = calibration.rate(OVERLOAD, HIGH)
    target = f"{servers.HOST}:{llama_server.port}"
    prometheus_server.add_targets(ENGINES_JOB, "llama-server-loop", [target], labels=SELECTOR)
    sampler = Sampler(llama_server)
    sampling = asyncio.create_task(sampler.run())
    try:
        with emulated_cluster_in_thread(tmp_path) as threaded:
            cluster = EmulatedCluster(threaded)
            monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
            await asyncio.to_thread(cluster.create, deployment(NS, TARGET))
            configmap = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": CONFIGMAP, "namespace": NS},
                "data": {KEY: str(HIGH)},
            }
            await asyncio.to_thread(cluster.create, configmap)

            def read_data() -> dict[str, str] | None:
                cm = cluster.get("v1", "ConfigMap", NS, CONFIGMAP)
                return None if cm is None else dict(cm.get("data") or {})

            volume = ConfigMapVolume(tmp_path / "budgets")
            with ConfigMapMirror(read_data, volume, interval=0.1) as kubelet:
                assert kubelet.writes == [{KEY: str(HIGH)}]
                async with gate_on(llama_server, volume.dir) as gate:
                    await _the_loop(
                        llama_server, prometheus_server, cluster, kubelet, gate, session,
                        sampler, calibration, rate, target,
                    )  # fmt: skip
    finally:
        sampling.cancel()
        prometheus_server.remove_targets(ENGINES_JOB, "llama-server-loop")
    print(f"  whole test: {time.monotonic() - began:.1f} s")


async def _the_loop(
    server: engine.DevLlamaServer,
    prometheus: servers.DevPrometheus,
    cluster: EmulatedCluster,
    kubelet: ConfigMapMirror,
    gate: Any,
    session: aiohttp.ClientSession,
    sampler: Sampler,
    calibration: loadgen.Calibration,
    rate: float,
    target: str,
) -> None:
    prompt = calibration.prompt_tokens
    start, phases = time.monotonic(), []

    def phase(what: str) -> None:  # printed at the end: kopf's runner captures stdout
        phases.append(f"  {time.monotonic() - start:5.1f} s  {what}")

    phase(f"calibrated: {calibration}, load {rate:.2f} req/s")
    await asyncio.to_thread(prometheus.wait_for_targets, ENGINES_JOB, [target], timeout=30)
    url = gate.url + "/v1/completions"
    load = loadgen.OpenLoopLoad(url, rate, concurrency=CONCURRENCY, duration=100)
    s0 = await sampler.now()
    phase("Prometheus scrapes llama-server; load starts")
    sending = asyncio.create_task(load.run(session))
    try:
        # A static budget: the engine finishes some requests at it while the queue builds.
        await eventually(
            sampler.now,
            lambda c: c.finished(prompt) - s0.finished(prompt) >= 4,
            60,
            f"4 requests at {HIGH}",
        )
        phase(f"4 requests finished at {HIGH}; the StopPolicy is created")
        with KopfRunner(OPERATOR, timeout=60) as runner:
            await asyncio.to_thread(cluster.create, policy(calibration.tokens_per_second / 2))
            lowered = await eventually(
                configmap_budget(cluster), lambda b: b is not None and b < HIGH, 40, "a cut"
            )
            phase(f"ConfigMap: {lowered}")

            async def status() -> dict[str, Any]:
                obj = await asyncio.to_thread(cluster.get, *SP, NS, "chat")
                return dict((obj or {}).get("status") or {})

            # The operator writes the sink, then the status: wait for the status of the cut.
            cut = await eventually(status, lambda s: (s.get("budget") or HIGH) < HIGH, 10, "status")
            reason = cut.get("recommendation") or {}

            async def gate_budget() -> float | None:
                labels = {"class": "default", "kind": "output"}
                registry = gate.metrics.registry
                value: float | None = registry.get_sample_value(
                    "stopbudget_gate_budget_tokens", labels
                )
                return value

            applied = await eventually(
                gate_budget, lambda b: b is not None and b < HIGH, 10, "gate"
            )
            s2 = await sampler.now()
            phase(f"gate: {applied}")
            # Every request sent before the gate applied the cut has come back ...
            await eventually(
                lambda: _value(load.outstanding_sent_before(s2.at)), lambda n: n == 0, 60, "old"
            )
            s3 = await sampler.now()
            phase("the requests sent before the cut are back")
            # ... then the engine's queue drains while the load goes on, and serves more.
            drained = await eventually(sampler.now, lambda c: c.deferred == 0, 60, "drained")
            phase("requests_deferred 0")
            s4 = await eventually(
                sampler.now,
                lambda c: c.finished(prompt) - s3.finished(prompt) >= 8,
                60,
                "8 requests after the cut",
            )
            assert not sending.done(), "the load stopped before the queue drained"
            phase(f"{s4.finished(prompt) - s3.finished(prompt):.0f} requests since; load stops")
            history = [int(w[KEY]) for w in kubelet.writes]
            load.stop()
            await sending
        assert runner.exception is None, runner.output
    finally:
        load.stop()
        await asyncio.gather(sending, return_exceptions=True)
    before = loadgen.tokens_per_request(s0, s2, prompt)
    after = loadgen.tokens_per_request(s3, s4, prompt)
    peak = sampler.peak_deferred(s0.at, s2.at)
    print("\n" + "\n".join(phases))
    print(
        f"  engine: {calibration.tokens_per_second:.1f} tokens/s, prompt {prompt} tokens; "
        f"load {rate:.2f} req/s ({OVERLOAD}x what it serves at {HIGH}), "
        f"{len(load.sent)} sent, {load.dropped} dropped, {load.failed} failed\n"
        f"  budget: {HIGH} -> {lowered} in the ConfigMap ({reason.get('reason')}); "
        f"gate applied {applied:g}\n"
        f"  budgets the gate was given, in order, under load: {history}\n"
        f"  tokens/request (llama-server's own counters): before {before:.1f} "
        f"({s2.finished(prompt) - s0.finished(prompt):.0f} requests), "
        f"after {after:.1f} ({s4.finished(prompt) - s3.finished(prompt):.0f} requests)\n"
        f"  requests_deferred: peak {peak:g} before the cut; 0 at "
        f"{drained.at - s2.at:.1f} s after the gate applied it"
    )
    assert lowered is not None
    assert "pressure" in str(reason.get("reason"))
    # The gate applied a budget the kubelet mirror wrote from the ConfigMap, below HIGH.
    assert applied < HIGH
    assert {KEY: str(int(applied))} in kubelet.writes
    assert peak > 0, "the load never overloaded the engine at HIGH"
    assert before is not None
    assert after is not None
    assert before > HIGH * 0.9  # every request before the cut generated its HIGH tokens
    assert after < before * 0.6
    assert drained.at < s4.at


async def _value(n: int) -> int:
    return n
