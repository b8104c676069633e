"""Benchmark: what the operator itself costs with 10, 100 and 1,000 StopPolicies
(``make bench-operator``).

The REAL operator (``stopbudget run -A``) runs as a subprocess, so that its CPU
time and memory are its own, against:

* the Kubernetes emulator (``stopbudget.devkit.emulator``, kmock) in a thread of this
  process, holding N Deployments (a vLLM container and a sidecar) and N
  StopPolicies spread over 10 namespaces: env or arg sink, a prior curve, the
  vLLM preset with one or two signals (queue; queue + kvCache; queue +
  latencyP95), two thirds in Auto mode and one third in Recommend mode;
* ONE real Prometheus (the Debian package) scraping four engine exporters
  (``stopbudget.devkit.exporter``, one model each, steady load); every policy selects
  one model's series with ``load.selector``.

For each size: create the objects, start the operator, wait until every policy
has ticked once (the cold start), warm up two intervals, then measure a window
of a few intervals.  The numbers come from the operator's own ``/metrics``
(``stopbudget_reconcile_duration_seconds``, ``stopbudget_prometheus_queries_total``,
``stopbudget_decisions_total``), from ``/proc/<pid>`` (CPU time, RSS, per-thread
CPU) and from the emulator (requests by kind, and every ``status.lastEvaluationTime``
the operator writes, polled from the emulator's memory, which says whether each
policy kept its interval).  Nothing here asserts a wall-clock number.

    python benchmarks/bench_operator.py [--sizes 10,100,1000] [--interval 5]
        [--window N] [--diagnose auto|yes|no] [--kube-workers N]
        [--promql-concurrency N] [--status-every N] [--profile DIR]

The window is 4 tick periods (interval + tick + status write, measured), 3 for
1,000 policies (to keep the whole run to a few minutes on 2 cores); it starts and
ends in a pause between bursts of ticks (kopf starts every daemon at once, so the
ticks come in bursts), so that every policy is counted the same number of times.

When a size falls behind its interval (``--diagnose auto``), the largest size
runs once more with timing probes in the operator process
(``benchmarks/_operator_probe.py``: thread-pool waits, event-loop lag, kopf's
cost per watch event; no operator module is changed) and the benchmark prints
where a tick's time goes and which limit it ran into.  With the probes,
``--kube-workers`` and ``--promql-concurrency`` try other pool sizes and
``--status-every N`` tries, as a what-if, writing status only when it changes
or every N ticks.  ``--profile DIR`` runs the largest size under cProfile (the
operator's main thread) and prints the costliest functions.
``benchmarks/_client_costs.py`` measures, alone, the CPU of each call a tick makes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import platform
import pstats
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp.web

from stopbudget.devkit.emulator import Emulator, ThreadedCluster, emulated_cluster_in_thread
from stopbudget.devkit.exporter import EngineExporter
from stopbudget.devkit.servers import DevPrometheus, free_port, missing_binaries

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support

from tests.support import builders, procs

SIZES = (10, 100, 1000)
INTERVAL = 5.0
NAMESPACES = 10
#: Measuring window, in control intervals (fewer for the largest size to keep the run short).
WINDOW_INTERVALS = 4
WINDOW_INTERVALS_LARGE = 3
LARGE = 1000
WARMUP_INTERVALS = 2
#: A policy "kept its interval" when no gap between two of its ticks exceeds the interval by
#: more than this share of it (the daemon's period is the interval plus the tick itself).
LAG_TOLERANCE = 0.2
POLL = 0.25
HISTOGRAM = "stopbudget_reconcile_duration_seconds"

#: Four models, one exporter each: (model_name, queue, running, kvCache, latency in s).
MODELS = (
    ("bench/llama-8b", 0.0, 4.0, 0.20, 3.0),
    ("bench/llama-70b", 6.0, 24.0, 0.55, 9.0),
    ("bench/qwen-32b", 14.0, 48.0, 0.80, 16.0),
    ("bench/mistral-7b", 40.0, 96.0, 0.97, 35.0),
)
PRIOR = [
    {"budget": 128, "em": 0.41, "samples": 200},
    {"budget": 256, "em": 0.72, "samples": 200},
    {"budget": 512, "em": 0.84, "samples": 200},
    {"budget": 1024, "em": 0.86, "samples": 200},
]
ARG_FLAG = "--override-generation-config"


# =========================================================================== objects


def deployment(namespace: str, name: str, *, arg_sink: bool, model: str) -> dict[str, Any]:
    args = ["--model", model]
    if arg_sink:
        args += [ARG_FLAG, '{"max_new_tokens": 1024}']
    vllm = builders.container(args=args, env=[{"name": "HF_HOME", "value": "/cache"}])
    sidecar = builders.container("metrics-proxy", "nginx:1.27", args=["--port=9000"])
    return builders.deployment(name, namespace, [vllm, sidecar], replicas=2)


@dataclass(frozen=True)
class PolicyShape:
    """What policy ``i`` looks like; the mix is fixed so that every size has the same one."""

    index: int

    @property
    def namespace(self) -> str:
        return f"bench-{self.index % NAMESPACES}"

    @property
    def name(self) -> str:
        return f"policy-{self.index:04d}"

    @property
    def target(self) -> str:
        return f"vllm-{self.index:04d}"

    @property
    def model(self) -> str:
        return MODELS[self.index % len(MODELS)][0]

    @property
    def arg_sink(self) -> bool:
        return self.index % 2 == 1

    @property
    def mode(self) -> str:
        return "Recommend" if self.index % 3 == 2 else "Auto"

    @property
    def signals(self) -> list[dict[str, Any]]:
        queue = {"name": "queue", "target": 16}
        match self.index % 4:
            case 1:
                return [queue, {"name": "kvCache", "target": 0.9}]
            case 3:
                return [queue, {"name": "latencyP95", "target": 20}]
            case _:
                return [queue]

    @property
    def queries(self) -> int:
        """Prometheus queries per tick: the signals and the vLLM preset's truncation ratio."""
        return len(self.signals) + 1

    def deployment(self) -> dict[str, Any]:
        return deployment(self.namespace, self.target, arg_sink=self.arg_sink, model=self.model)

    def policy(self, interval: float) -> dict[str, Any]:
        sink: dict[str, Any] = (
            {"type": "arg", "name": ARG_FLAG, "format": '{"max_new_tokens": {budget}}'}
            if self.arg_sink
            else {"type": "env", "name": "MAX_TOKENS"}
        )
        return {
            "apiVersion": "stopbudget.io/v1alpha1",
            "kind": "StopPolicy",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "targetRef": {"name": self.target, "container": "vllm"},
                "budget": {"min": 128, "max": 1024, "initial": 1024, "step": 32, "sink": sink},
                "quality": {"emTarget": 0.8, "emFloor": 0.7, "confidence": 0.95, "prior": PRIOR},
                "load": {
                    "preset": "vllm",
                    "selector": {"model_name": self.model},
                    "signals": self.signals,
                },
                "control": {
                    "mode": self.mode,
                    "interval": f"{interval:g}s",
                    # 10 history entries in status, as the defaults (5m / 30s) give.
                    "downscaleStabilization": f"{10 * interval:g}s",
                    "tolerance": 0.1,
                },
            },
        }


# =========================================================================== the emulator


_PATH = re.compile(
    r"^/(?:api|apis/[^/]+)/[^/]+(?:/namespaces/(?P<ns>[^/]+))?"
    r"(?:/(?P<plural>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?)?/?$"
)


def request_kind(method: str, path: str, query: Mapping[str, str]) -> str:
    """``GET deployments``, ``PATCH stoppolicies/status``, ``WATCH stoppolicies``, ..."""
    match = _PATH.match(path)
    if match is None:
        return f"{method} {path}"
    plural = match.group("plural") or ("namespaces" if match.group("ns") else "(discovery)")
    sub = f"/{match.group('sub')}" if match.group("sub") else ""
    if method == "GET" and query.get("watch") in {"true", "1"}:
        method = "WATCH"
    elif method == "GET" and match.group("name") is None:
        method = "LIST"
    return f"{method} {plural}{sub}"


class CountingEmulator(Emulator):
    """The project's emulator, counting the requests it serves by kind (in its own loop),
    and the seconds it takes to answer them (watches excepted: they stream)."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.counts: Counter[str] = Counter()
        self.seconds: dict[str, float] = {}

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        kind = request_kind(raw_request.method, raw_request.path, raw_request.query)
        self.counts[kind] += 1
        started = time.perf_counter()
        try:
            return await super().__call__(raw_request)
        finally:
            if not kind.startswith("WATCH"):
                self.seconds[kind] = self.seconds.get(kind, 0.0) + time.perf_counter() - started


@contextlib.contextmanager
def counting_cluster(directory: Path) -> Iterator[ThreadedCluster]:
    """``emulated_cluster_in_thread(record=False)`` with a :class:`CountingEmulator`."""
    with emulated_cluster_in_thread(directory, record=False, factory=CountingEmulator) as cluster:
        yield cluster


def emulator_of(cluster: ThreadedCluster) -> CountingEmulator:
    emu = cluster.cluster.emulator
    assert isinstance(emu, CountingEmulator)
    return emu


def create_objects(
    cluster: ThreadedCluster, shapes: Sequence[PolicyShape], interval: float
) -> None:
    """Create every Deployment, then every StopPolicy, through the emulator's HTTP API."""

    async def create_all(objects: list[dict[str, Any]]) -> None:
        slots = asyncio.Semaphore(32)

        async def one(obj: dict[str, Any]) -> None:
            async with slots:
                await cluster.cluster.create(obj)

        await asyncio.gather(*(one(o) for o in objects))

    for objects in ([s.deployment() for s in shapes], [s.policy(interval) for s in shapes]):
        future = asyncio.run_coroutine_threadsafe(create_all(objects), cluster.loop)
        future.result(timeout=600)


class LoopLag:
    """How late a 50 ms sleep wakes up in the emulator's loop: a busy emulator answers late."""

    def __init__(self) -> None:
        self.count, self.total, self.max = 0, 0.0, 0.0

    async def run(self) -> None:
        while True:
            start = time.monotonic()
            await asyncio.sleep(0.05)
            late = time.monotonic() - start - 0.05
            self.count, self.total = self.count + 1, self.total + late
            self.max = max(self.max, late)

    def reset_max(self) -> tuple[int, float, float]:
        self.max = 0.0
        return self.read()

    def read(self) -> tuple[int, float, float]:
        return self.count, self.total, self.max


class Stamps:
    """Every ``status.lastEvaluationTime`` of every policy, read from the emulator's memory."""

    def __init__(self, cluster: ThreadedCluster, shapes: Sequence[PolicyShape]) -> None:
        self.cluster = cluster
        resource = cluster.cluster.resource("stopbudget.io/v1alpha1", "StopPolicy")
        self.keys = [(resource, s.namespace, s.name) for s in shapes]
        self.seen: dict[int, list[float]] = {i: [] for i in range(len(shapes))}
        self._last: dict[int, str] = {}

    def _read(self) -> list[str | None]:
        objects = self.cluster.cluster.emulator.objects
        out: list[str | None] = []
        for key in self.keys:
            try:  # kmock's ObjectsArray is not a Mapping: no .get()
                obj = objects[key]
            except KeyError:
                obj = None
            status = (obj.raw.get("status") or {}) if obj is not None and not obj.deleted else {}
            stamp = status.get("lastEvaluationTime")
            out.append(stamp if isinstance(stamp, str) else None)
        return out

    def period(self, since: float) -> float:
        """The median gap between two ticks of a policy, over ticks after ``since``."""
        gaps = sorted(
            b - a
            for seen in self.seen.values()
            for a, b in itertools.pairwise(s for s in seen if s > since)
        )
        return gaps[len(gaps) // 2] if gaps else math.nan

    def quiet_in(self, period: float, now: float) -> float:
        """Seconds from ``now`` to the middle of the longest pause between ticks.

        The policies' ticks repeat every ``period``; a window that starts and ends in a
        pause cuts no burst of ticks in two, so each policy is counted the same number
        of times.
        """
        phases = sorted(seen[-1] % period for seen in self.seen.values() if seen)
        if not phases:
            return 0.0
        gaps = [(b - a, a) for a, b in itertools.pairwise(phases)]
        gaps.append((phases[0] + period - phases[-1], phases[-1]))
        width, start = max(gaps)
        return (start + width / 2 - now) % period

    def poll(self) -> int:
        """Record new stamps; the number of policies that have ticked at least once."""
        stamps: list[str | None] = self.cluster.run(self._read)
        for i, stamp in enumerate(stamps):
            if stamp is not None and stamp != self._last.get(i):
                self._last[i] = stamp
                when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
                self.seen[i].append(when.timestamp())
        return len(self._last)


# =========================================================================== the operator


CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_cpu(path: Path) -> float:
    """utime + stime of a /proc stat file, in seconds."""
    fields = path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


@dataclass(frozen=True)
class CpuSample:
    total: float
    main_thread: float
    threads: int


class Process:
    """A subprocess measured through /proc and stopped by its PID."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        log_path.write_bytes(b"")
        # A session of its own: Ctrl-C reaches this script, which stops it in order.
        self.proc = procs.Process(self.argv, log_path, env=env, new_session=True)
        self.popen = self.proc.popen
        self.pid = self.proc.pid

    def cpu(self) -> CpuSample:
        main = _stat_cpu(Path(f"/proc/{self.pid}/task/{self.pid}/stat"))
        return CpuSample(
            total=_stat_cpu(Path(f"/proc/{self.pid}/stat")),
            main_thread=main,
            threads=len(list(Path(f"/proc/{self.pid}/task").iterdir())),
        )

    def rss_mib(self) -> float:
        return _status_kib(self.pid, "VmRSS") / 1024

    def peak_rss_mib(self) -> float:
        return _status_kib(self.pid, "VmHWM") / 1024

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 30.0) -> tuple[int | None, float]:
        """SIGTERM, wait, SIGKILL: the exit code (None if killed) and the seconds it took."""
        started = time.monotonic()
        code: int | None = None
        if self.proc.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill(timeout=timeout)
        else:
            code = self.popen.returncode
        return code, time.monotonic() - started


PROBE = Path(__file__).resolve().parent / "_operator_probe.py"


@dataclass(frozen=True)
class Instrument:
    """How the operator runs: plain, under cProfile, or with the timing probes."""

    profile: Path | None = None
    probe: Path | None = None
    #: With the probes: thread-pool sizes to try instead of the operator's (experiments).
    kube_workers: int | None = None
    promql_concurrency: int | None = None
    status_every: int | None = None

    def env(self) -> dict[str, str]:
        out = {}
        if self.status_every is not None:
            out["BENCH_PROBE_STATUS_EVERY"] = str(self.status_every)
        if self.kube_workers is not None:
            out["BENCH_PROBE_KUBE_WORKERS"] = str(self.kube_workers)
        if self.promql_concurrency is not None:
            out["BENCH_PROBE_PROMQL_CONCURRENCY"] = str(self.promql_concurrency)
        return out

    @property
    def label(self) -> str:
        return "-profile" if self.profile else "-probe" if self.probe else ""


PLAIN = Instrument()


def operator_command(kubeconfig: Path, instrument: Instrument = PLAIN) -> list[str]:
    """``stopbudget run -A --kubeconfig ...`` (under cProfile or the probes if asked)."""
    run = ["run", "-A", "--kubeconfig", str(kubeconfig)]
    if instrument.profile is not None:
        cprofile = [sys.executable, "-m", "cProfile", "-o", str(instrument.profile)]
        return [*cprofile, "-m", "stopbudget", *run]
    if instrument.probe is not None:
        return [sys.executable, str(PROBE), str(instrument.probe), *run]
    script = Path(sys.executable).parent / "stopbudget"
    prefix = [str(script)] if script.exists() else [sys.executable, "-m", "stopbudget"]
    return [*prefix, *run]


def read_probe(path: Path | None) -> dict[str, list[float]]:
    if path is None or not path.exists():
        return {}
    data: dict[str, list[float]] = json.loads(path.read_text())
    return data


def operator_env(prometheus_url: str, metrics_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOPBUDGET_")}
    env.pop("KUBECONFIG", None)
    return env | {
        "STOPBUDGET_PROMETHEUS_URL": prometheus_url,
        "STOPBUDGET_QUERY_WINDOW": "10s",
        "STOPBUDGET_BIND_ADDRESS": "127.0.0.1",
        "STOPBUDGET_METRICS_PORT": str(metrics_port),
    }


@dataclass
class Scrape:
    """The operator's /metrics, reduced to what the benchmark reads."""

    sums: dict[str, float] = field(default_factory=dict)
    buckets: dict[float, float] = field(default_factory=dict)
    size: int = 0
    series: int = 0
    seconds: float = 0.0
    #: Samples per metric family (histogram parts counted under the family's name).
    families: Counter[str] = field(default_factory=Counter)


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)")
_LE = re.compile(r'le="([^"]+)"')


def scrape(port: int) -> Scrape:
    started = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as response:
        text = response.read().decode()
    out = Scrape(size=len(text), seconds=time.monotonic() - started)
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        out.series += 1
        name, labels, value = match.groups()
        out.families[re.sub(r"_(bucket|sum|count)$", "", name)] += 1
        if name == HISTOGRAM + "_bucket" and labels is not None:
            le = _LE.search(labels)
            if le is not None:
                out.buckets[float(le.group(1))] = float(value)
            continue
        out.sums[name] = out.sums.get(name, 0.0) + float(value)
    return out


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float:
    """Prometheus' histogram_quantile on cumulative bucket counts (linear within a bucket)."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return math.nan
    rank = q * total
    lower, below = 0.0, 0.0
    for upper in bounds:
        count = buckets[upper]
        if count >= rank:
            if math.isinf(upper):
                return lower  # as Prometheus: the highest finite bound
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = upper, count
    return lower


# =========================================================================== load


class Load:
    """Four engine exporters with a steady load, and a thread finishing requests on them."""

    def __init__(self) -> None:
        self.exporters = [EngineExporter(model_name=m[0], engines=("vllm",)) for m in MODELS]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-load", daemon=True)

    def start(self) -> None:
        for exporter, (_, waiting, running, kv, _latency) in zip(
            self.exporters, MODELS, strict=True
        ):
            exporter.start()
            exporter.set_load(waiting=waiting, running=running, kv_cache=kv)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for exporter, model in zip(self.exporters, MODELS, strict=True):
                latency = model[4]
                exporter.finish_request(latency, finished_reason="stop", generation_tokens=300)
                exporter.finish_request(latency * 1.2, finished_reason="length", count=1)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for exporter in self.exporters:
            exporter.stop()

    @property
    def targets(self) -> list[str]:
        return [e.target for e in self.exporters]


# =========================================================================== one size


@dataclass
class Result:
    policies: int
    interval: float
    window: float
    cold_start: float
    ticked: int
    ticks: float
    cpu: float
    main_cpu: float
    threads: int
    p50: float
    p99: float
    mean: float
    queries: float
    query_errors: float
    decisions: float
    patches: float
    api_requests: Counter[str]
    rss: float
    peak_rss: float
    max_lag: float
    p99_lag: float
    late_policies: int
    emulator_cpu: float
    prometheus_cpu: float
    bench_cpu: float
    metrics_bytes: int
    metrics_series: int
    metrics_seconds: float
    exit_code: int | None
    stop_seconds: float
    expected_queries: float
    log_lines: int
    api_seconds: dict[str, float] = field(default_factory=dict)
    emulator_lag: float = math.nan
    emulator_lag_max: float = math.nan
    cold_cpu: float = math.nan
    cold_requests: Counter[str] = field(default_factory=Counter)
    families: Counter[str] = field(default_factory=Counter)
    #: Ticks started in the busiest second of the window (lastEvaluationTime stamps).
    busiest_second: int = 0
    #: Ticks seen as new status.lastEvaluationTime stamps in the window (a cross-check).
    stamped: int = 0
    probe: dict[str, list[float]] = field(default_factory=dict)

    @property
    def tick_rate(self) -> float:
        return self.ticks / self.window

    @property
    def needed_rate(self) -> float:
        return self.policies / self.interval

    @property
    def ticks_per_cpu_second(self) -> float:
        return self.ticks / self.cpu if self.cpu > 0 else math.nan

    @property
    def cpu_per_tick_ms(self) -> float:
        return 1000 * self.cpu / self.ticks if self.ticks else math.nan

    @property
    def requests_per_tick(self) -> float:
        return sum(self.api_requests.values()) / self.ticks if self.ticks else math.nan

    @property
    def kept_interval(self) -> bool:
        return self.late_policies == 0 and self.ticked == self.policies


def _lags(
    seen: Mapping[int, list[float]], start: float, end: float, interval: float
) -> list[float]:
    """Per gap between two ticks of a policy inside [start, end], the gap minus the interval.

    The gap still open at ``end`` counts too, so that a policy that stopped ticking shows.
    """
    lags: list[float] = []
    for stamps in seen.values():
        before = [s for s in stamps if s <= start]
        inside = [s for s in stamps if start < s <= end]
        points = ([before[-1]] if before else []) + inside
        lags += [b - a - interval for a, b in itertools.pairwise(points)]
        if points:
            lags.append(max(0.0, end - points[-1] - interval))
    return lags


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def run_size(
    n: int,
    *,
    interval: float,
    window_intervals: int,
    prom: DevPrometheus,
    workdir: Path,
    instrument: Instrument = PLAIN,
    say: Callable[[str], None] = print,
) -> Result:
    shapes = [PolicyShape(i) for i in range(n)]
    directory = workdir / f"size-{n}{instrument.label}"
    directory.mkdir(parents=True, exist_ok=True)
    with counting_cluster(directory) as cluster:
        emu = emulator_of(cluster)
        lag = LoopLag()
        task = cluster.run(lambda: asyncio.get_running_loop().create_task(lag.run()))
        t = time.monotonic()
        create_objects(cluster, shapes, interval)
        say(f"  created {n} Deployments and {n} StopPolicies in {time.monotonic() - t:.1f} s")
        port = free_port()
        argv = operator_command(cluster.kubeconfig, instrument)
        env = operator_env(prom.url, port) | instrument.env()
        operator = Process(argv, env, directory / "operator.log")
        exit_code: int | None = None
        stop_seconds = 0.0
        try:
            stamps = Stamps(cluster, shapes)
            started = time.monotonic()
            cold0: Counter[str] = cluster.run(lambda: Counter(emu.counts))
            deadline = started + 60 + 0.2 * n
            ticked = 0
            while time.monotonic() < deadline and operator.alive():
                ticked = stamps.poll()
                if ticked == n:
                    break
                time.sleep(POLL)
            if not operator.alive():
                raise RuntimeError(f"the operator exited; see {operator.log_path}")
            cold_start = time.monotonic() - started
            cold_cpu = operator.cpu().total
            cold_requests = cluster.run(lambda: Counter(emu.counts)) - cold0
            say(f"  {ticked}/{n} policies ticked once after {cold_start:.1f} s (cold start)")

            warm_from = time.time()
            warm_until = time.monotonic() + WARMUP_INTERVALS * interval
            while time.monotonic() < warm_until:
                stamps.poll()
                time.sleep(POLL)
            # A whole number of the policies' actual period (interval + tick + status write),
            # so that every policy ticks the same number of times in the window whatever its
            # phase: after a start, kopf starts every daemon at once and the ticks come in
            # bursts.  When the operator is behind, its work is continuous: whole intervals.
            period = stamps.period(warm_from)
            if not period <= (1 + LAG_TOLERANCE) * interval:  # behind (or nan)
                period = interval
            period = max(period, interval)
            time.sleep(stamps.quiet_in(period, time.time()))

            first = scrape(port)
            cpu0, emu0 = operator.cpu(), cluster.run(time.thread_time)
            lag0 = cluster.run(lag.reset_max)
            prom0, bench0 = _stat_cpu(Path(f"/proc/{prom.pid}/stat")), time.process_time()
            req0: Counter[str] = cluster.run(lambda: Counter(emu.counts))
            sec0: dict[str, float] = cluster.run(lambda: dict(emu.seconds))
            probe0 = read_probe(instrument.probe)
            t0 = time.time()
            window = window_intervals * period
            say(f"  measuring {window:.2f} s ({window_intervals} periods of {period:.3f} s)")
            while time.time() < t0 + window:
                stamps.poll()
                time.sleep(POLL)
            stamps.poll()
            t1 = time.time()
            cpu1, emu1 = operator.cpu(), cluster.run(time.thread_time)
            lag1 = cluster.run(lag.read)
            prom1, bench1 = _stat_cpu(Path(f"/proc/{prom.pid}/stat")), time.process_time()
            req1: Counter[str] = cluster.run(lambda: Counter(emu.counts))
            sec1: dict[str, float] = cluster.run(lambda: dict(emu.seconds))
            probe1 = read_probe(instrument.probe)
            rss, peak = operator.rss_mib(), operator.peak_rss_mib()
            last = scrape(port)
        finally:
            exit_code, stop_seconds = operator.stop()
            cluster.run(task.cancel)
    lags = _lags(stamps.seen, t0, t1, interval)
    late = sum(
        1
        for i in stamps.seen
        if any(
            lag > LAG_TOLERANCE * interval for lag in _lags({i: stamps.seen[i]}, t0, t1, interval)
        )
    )
    per_second = Counter(int(s - t0) for seen in stamps.seen.values() for s in seen if t0 < s <= t1)

    def delta(name: str) -> float:
        return last.sums.get(name, 0.0) - first.sums.get(name, 0.0)

    buckets = {le: last.buckets[le] - first.buckets.get(le, 0.0) for le in last.buckets}
    ticks = delta(HISTOGRAM + "_count")
    log_lines = len(operator.log_path.read_text(errors="replace").splitlines())
    return Result(
        policies=n,
        interval=interval,
        window=t1 - t0,
        cold_start=cold_start,
        ticked=ticked,
        ticks=ticks,
        cpu=cpu1.total - cpu0.total,
        main_cpu=cpu1.main_thread - cpu0.main_thread,
        threads=cpu1.threads,
        p50=histogram_quantile(0.5, buckets),
        p99=histogram_quantile(0.99, buckets),
        mean=delta(HISTOGRAM + "_sum") / ticks if ticks else math.nan,
        queries=delta("stopbudget_prometheus_queries_total"),
        query_errors=delta("stopbudget_prometheus_query_errors_total"),
        decisions=delta("stopbudget_decisions_total"),
        patches=delta("stopbudget_patches_total"),
        api_requests=req1 - req0,
        rss=rss,
        peak_rss=peak,
        max_lag=max(lags) if lags else math.nan,
        p99_lag=percentile(lags, 0.99),
        late_policies=late,
        emulator_cpu=emu1 - emu0,
        prometheus_cpu=prom1 - prom0,
        bench_cpu=bench1 - bench0,
        metrics_bytes=last.size,
        metrics_series=last.series,
        metrics_seconds=last.seconds,
        exit_code=exit_code,
        stop_seconds=stop_seconds,
        expected_queries=sum(s.queries for s in shapes) / n,
        log_lines=log_lines,
        api_seconds={k: v - sec0.get(k, 0.0) for k, v in sec1.items()},
        cold_cpu=cold_cpu,
        cold_requests=cold_requests,
        families=last.families,
        busiest_second=max(per_second.values(), default=0),
        stamped=sum(per_second.values()),
        probe={
            k: v
            if k.endswith(".workers")
            else [v[0] - probe0.get(k, [0, 0, 0])[0], v[1] - probe0.get(k, [0, 0, 0])[1], v[2]]
            for k, v in probe1.items()
        },
        emulator_lag=(lag1[1] - lag0[1]) / max(lag1[0] - lag0[0], 1),
        emulator_lag_max=lag1[2],
    )


# =========================================================================== report


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{1000 * seconds:.1f}"


def table(results: Sequence[Result]) -> list[str]:
    head = (
        "| policies | ticks/s (needed) | ticks per CPU-s | operator CPU (cores) "
        "| p50 / p99 reconcile (ms) | mean (ms) | Prom queries/tick | API requests/tick "
        "| RSS MiB (peak) | max lag (s) | kept interval |"
    )
    lines = [head, "|" + "|".join("---:" for _ in range(head.count("|") - 1)) + "|"]
    lines += [
        f"| {r.policies} | {r.tick_rate:.1f} ({r.needed_rate:.1f}) "
        f"| {r.ticks_per_cpu_second:.0f} | {r.cpu / r.window:.2f} "
        f"| {ms(r.p50)} / {ms(r.p99)} | {ms(r.mean)} "
        f"| {r.queries / r.ticks:.2f} | {r.requests_per_tick:.2f} "
        f"| {r.rss:.0f} ({r.peak_rss:.0f}) | {r.max_lag:.2f} "
        f"| {'yes' if r.kept_interval else f'NO ({r.late_policies} late)'} |"
        for r in results
    ]
    return lines


def machine_table(results: Sequence[Result]) -> list[str]:
    lines = [
        "| policies | operator | main thread (event loop) | emulator thread | Prometheus "
        "| benchmark process (emulator, exporters, polling) | sum / 2 cores |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    cores = os.cpu_count() or 1
    for r in results:
        w = r.window
        total = (r.cpu + r.prometheus_cpu + r.bench_cpu) / w
        lines.append(
            f"| {r.policies} | {r.cpu / w:.2f} | {r.main_cpu / w:.2f} | {r.emulator_cpu / w:.2f} "
            f"| {r.prometheus_cpu / w:.2f} | {r.bench_cpu / w:.2f} | {total:.2f} / {cores} |"
        )
    return lines


def requests_table(results: Sequence[Result]) -> list[str]:
    kinds = sorted({k for r in results for k in r.api_requests})
    lines = [
        "| request | " + " | ".join(f"{r.policies} policies" for r in results) + " |",
        "|---|" + "---:|" * len(results),
    ]
    for kind in kinds:
        cells = [f"{r.api_requests[kind] / r.ticks:.3f}" if r.ticks else "-" for r in results]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return lines


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b and not math.isnan(a) and not math.isnan(b) else "n/a"


def report(results: Sequence[Result], command: str, started: float) -> None:
    p = print
    p("\n## Operator overhead\n")
    p("Rates are over the measuring window: 4 tick periods (3 for 1,000 policies, to keep the")
    p("run short; a period is the interval plus the tick and its status write, measured), from")
    p("a pause between bursts of ticks, after every policy ticked once and a warm-up of")
    p(f"{WARMUP_INTERVALS} intervals. Latency is the operator's own histogram")
    p(f"({HISTOGRAM}, interpolated as histogram_quantile does); ticks are its _count.")
    p("'needed' is policies / interval (the daemon sleeps a full interval after each tick and")
    p("its status write, so a policy ticks a little less often than that even when on time);")
    p("'max lag' is the longest gap between two ticks of a")
    p(
        f"policy minus its interval; a policy is late when that exceeds {LAG_TOLERANCE:.0%} "
        "of the interval. When ticks take seconds (the operator behind), ticks in flight at"
        " the window's edges skew the per-tick ratios.\n"
    )
    for line in table(results):
        p(line)
    p("\n### Who uses the 2 cores (CPU seconds per second of the window)\n")
    p("The machine is shared: the emulator runs in this benchmark's process (one thread,")
    p("with the exporters and the status poller), Prometheus in its own. Python runs one")
    p("thread at a time per process, so the operator can use about 1 core at most.\n")
    for line in machine_table(results):
        p(line)
    p("\n### Kubernetes API requests per tick, counted at the emulator\n")
    for line in requests_table(results):
        p(line)
    p("\n### Details\n")
    for r in results:
        p(
            f"* {r.policies} policies: window {r.window:.1f} s, {r.ticks:.0f} ticks "
            f"({r.stamped} started in it with their status written by its end), "
            f"{r.decisions:.0f} decisions, {r.patches:.0f} patches, "
            f"{r.query_errors:.0f} query errors; cold start (every policy ticked once) "
            f"{r.cold_start:.1f} s ({r.ticked}/{r.policies}); p99 lag {r.p99_lag:.2f} s; "
            f"ticks started in the busiest second {r.busiest_second} "
            f"(mean {r.tick_rate:.1f}/s); "
            f"{r.threads} threads; /metrics {r.metrics_bytes / 1024:.0f} KiB, "
            f"{r.metrics_series} samples, scraped in {1000 * r.metrics_seconds:.0f} ms; "
            f"operator log {r.log_lines} lines; stopped in {r.stop_seconds:.1f} s "
            f"(exit code {r.exit_code})."
        )
        cold = ", ".join(
            f"{kind} {count / r.policies:.2f}" for kind, count in r.cold_requests.most_common()
        )
        p(
            f"  Cold start: {r.cold_cpu:.1f} s of operator CPU; requests per policy: {cold}. "
            f"/metrics: {r.metrics_series / r.policies:.1f} samples per policy, the most from "
            + ", ".join(f"{name} ({count})" for name, count in r.families.most_common(4))
            + "."
        )
    if len(results) >= 2:
        a, b = results[0], results[-1]
        p(f"\n### {b.policies} vs {a.policies} policies\n")
        p(
            f"* policies {ratio(b.policies, a.policies)}, ticks/s {ratio(b.tick_rate, a.tick_rate)}"
            f", operator CPU {ratio(b.cpu / b.window, a.cpu / a.window)}"
        )
        p(
            f"* CPU per tick {ratio(b.cpu_per_tick_ms, a.cpu_per_tick_ms)}, "
            f"p50 latency {ratio(b.p50, a.p50)}, p99 latency {ratio(b.p99, a.p99)}"
        )
        p(
            f"* RSS {ratio(b.rss, a.rss)} ({b.rss - a.rss:+.0f} MiB, "
            f"{1024 * (b.rss - a.rss) / (b.policies - a.policies):.0f} KiB per extra policy)"
        )
    p("\n### In words\n")
    for r in results:
        verdict = (
            "every policy kept its interval"
            if r.kept_interval
            else f"{r.late_policies} of {r.policies} policies fell behind their interval "
            f"(ticks at {r.tick_rate:.0f}/s of the {r.needed_rate:.0f}/s needed)"
        )
        p(
            f"* {r.policies} policies: one tick costs {r.cpu_per_tick_ms:.1f} ms of operator "
            f"CPU ({r.ticks_per_cpu_second:.0f} ticks per CPU-second), "
            f"{r.queries / r.ticks:.2f} Prometheus queries (the policies' mix asks "
            f"{r.expected_queries:.2f}) and {r.requests_per_tick:.2f} Kubernetes API requests; "
            f"{verdict}."
        )
    best = min((r for r in results if r.ticks), key=lambda r: r.cpu_per_tick_ms, default=None)
    if best is not None:
        capacity = 1000 / best.cpu_per_tick_ms
        p(
            f"* At {best.cpu_per_tick_ms:.1f} ms of CPU per tick, one core carries about "
            f"{capacity:.0f} ticks/s: e.g. {capacity * 30:.0f} policies at the default 30 s "
            f"interval, {capacity * INTERVAL:.0f} at {INTERVAL:g} s (an upper bound: the "
            "operator also shares the core with its threads and the GIL)."
        )
    p(f"\nCommand: {command}")
    p(f"Total wall time: {time.monotonic() - started:.0f} s")


def diagnosis(r: Result) -> list[str]:
    """Where a tick's time goes, from the probes and the emulator's own timing."""
    probe, w = r.probe, r.window

    def mean(name: str) -> float:
        count, total, _ = probe.get(name, [0.0, 0.0, 0.0])
        return total / count if count else math.nan

    def peak(name: str) -> float:
        return probe.get(name, [0.0, 0.0, math.nan])[2]

    def busy(pool: str) -> str:
        workers = probe.get(f"{pool}.workers", [0.0, 0.0, 0.0])[1]
        run = probe.get(f"{pool}.run", [0.0, 0.0, 0.0])[1]
        return f"{run / (workers * w):.0%} of {workers:.0f}" if workers else "n/a"

    events = probe.get("kopf.detect_causes_cpu", [0.0, 0.0, 0.0])[0]

    def served(kind: str) -> float:
        count = r.api_requests.get(kind, 0)
        return r.api_seconds.get(kind, 0.0) / count if count else math.nan

    return [
        "| where | mean (ms) | max (ms) | note |",
        "|---|---:|---:|---|",
        f"| tick (reconcile histogram) | {ms(r.mean)} | | p50 {ms(r.p50)}, p99 {ms(r.p99)} |",
        f"| - get Deployment, awaited | {ms(mean('kube.get_deployment_total'))} "
        f"| {ms(peak('kube.get_deployment_total'))} | inside the tick |",
        f"| - Prometheus query, awaited | {ms(mean('promql.query_total'))} "
        f"| {ms(peak('promql.query_total'))} | semaphore + pool + HTTP, "
        f"{r.queries / r.ticks:.2f} per tick, run at once |",
        f"| status patch, awaited | {ms(mean('kube.status_patch_total'))} "
        f"| {ms(peak('kube.status_patch_total'))} | after the tick, before the sleep |",
        f"| kube pool: wait for a worker | {ms(mean('kube.queue_wait'))} "
        f"| {ms(peak('kube.queue_wait'))} | busy {busy('kube')} workers |",
        f"| kube pool: call running | {ms(mean('kube.run'))} | {ms(peak('kube.run'))} "
        f"| worker CPU {ms(mean('kube.worker_cpu'))} ms per call |",
        f"| emulator: answer GET deployment | {ms(served('GET deployments'))} | | "
        "server side, in the emulator's loop |",
        f"| emulator: answer PATCH status | {ms(served('PATCH stoppolicies/status'))} | | "
        "server side, in the emulator's loop |",
        f"| emulator loop: a 50 ms sleep wakes late by | {ms(r.emulator_lag)} "
        f"| {ms(r.emulator_lag_max)} | requests wait this long before being read |",
        f"| promql pool: wait for a worker | {ms(mean('promql.queue_wait'))} "
        f"| {ms(peak('promql.queue_wait'))} | busy {busy('promql')} workers |",
        f"| promql pool: query running | {ms(mean('promql.run'))} | {ms(peak('promql.run'))} "
        f"| worker CPU {ms(mean('promql.worker_cpu'))} ms per query |",
        f"| event loop: a 100 ms sleep wakes late by | {ms(mean('loop.lag'))} "
        f"| {ms(peak('loop.lag'))} | the loop is busy (or waits for the GIL) |",
        f"| kopf: a watch event's causes (CPU, main thread) "
        f"| {ms(mean('kopf.detect_causes_cpu'))} | {ms(peak('kopf.detect_causes_cpu'))} "
        f"| {events / r.ticks:.2f} events per tick |",
        *(
            [
                f"| WHAT-IF: status writes skipped | | | "
                f"{probe['kube.status_patch_skipped'][0] / r.ticks:.2f} per tick |"
            ]
            if "kube.status_patch_skipped" in probe
            else []
        ),
        f"| slowest /metrics render (wall, in the loop) | {ms(peak('metrics.render'))} "
        f"| | CPU {ms(peak('metrics.render_cpu'))} ms; blocks every tick meanwhile |",
    ]


def findings(r: Result) -> list[str]:
    """The probes' numbers, read out: which limit the ticks ran into."""
    probe, w = r.probe, r.window

    def stat(name: str) -> tuple[float, float, float]:
        count, total, peak = probe.get(name, [0.0, 0.0, 0.0])
        return count, total, peak

    def mean(name: str) -> float:
        count, total, _ = stat(name)
        return total / count if count else 0.0

    out = []
    kube_workers = stat("kube.workers")[1]
    kube_busy = stat("kube.run")[1] / (kube_workers * w) if kube_workers else 0.0
    if kube_busy > 0.8:
        out.append(
            f"* The Kubernetes thread pool is saturated: {kube_workers:.0f} workers busy "
            f"{kube_busy:.0%} of the time; a call waits {ms(mean('kube.queue_wait'))} ms for a "
            f"worker, then holds it {ms(mean('kube.run'))} ms while using "
            f"{ms(mean('kube.worker_cpu'))} ms of CPU, so the pool carries at most "
            f"{kube_workers / max(mean('kube.run'), 1e-9):.0f} calls/s "
            f"(needed: {r.needed_rate * r.requests_per_tick:.0f})."
        )
    query_wait = mean("promql.query_total") - mean("promql.queue_wait") - mean("promql.run")
    if query_wait > 0.1 * r.interval:
        out.append(
            f"* Prometheus queries wait {ms(query_wait)} ms for one of the reader's "
            "max_concurrency slots (PrometheusReader, 8), which a query holds from "
            "submission until the event loop takes its answer."
        )
    if r.emulator_lag > 0.02:
        out.append(
            f"* The emulator is saturated too: its loop wakes {ms(r.emulator_lag)} ms late on "
            f"average, so requests wait that long before it reads them (emulator thread "
            f"{r.emulator_cpu / w:.2f} cores; one Python thread, sharing its process with the "
            "exporters)."
        )
    cores = (r.cpu + r.prometheus_cpu + r.bench_cpu) / w
    if cores > 0.8 * (os.cpu_count() or 1):
        out.append(
            f"* The machine is nearly full: {cores:.2f} of {os.cpu_count()} cores in use "
            f"(operator {r.cpu / w:.2f}, of which its event loop {r.main_cpu / w:.2f})."
        )
    out.append(
        f"* Whatever the pools and the emulator allow, one tick costs {r.cpu_per_tick_ms:.1f} ms "
        f"of operator CPU here, so one Python process (about one core) tops out near "
        f"{1000 / r.cpu_per_tick_ms:.0f} ticks/s: {r.policies} policies at "
        f"{r.interval:g} s need {r.needed_rate:.0f}."
    )
    return out


def print_profile(path: Path, limit: int = 30) -> None:
    print(f"\n### cProfile of the operator's main thread ({path})\n")
    stats = pstats.Stats(str(path))
    stats.sort_stats(pstats.SortKey.TIME)
    stats.print_stats(limit)
    stats.sort_stats(pstats.SortKey.CUMULATIVE)
    stats.print_stats(limit)


# =========================================================================== main


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes",
        default=",".join(map(str, SIZES)),
        help="comma-separated numbers of StopPolicies (default: %(default)s)",
    )
    parser.add_argument("--interval", type=float, default=INTERVAL, help="spec.control.interval, s")
    parser.add_argument("--window", type=int, default=None, help="measuring window, in intervals")
    parser.add_argument(
        "--diagnose",
        choices=("auto", "yes", "no"),
        default="auto",
        help="run the largest size again with timing probes in the operator "
        "(benchmarks/_operator_probe.py) and print where a tick's time goes; "
        "auto: when some size fell behind its interval (default)",
    )
    parser.add_argument(
        "--kube-workers",
        type=int,
        default=None,
        help="with --diagnose: size of the Kubernetes thread pool to try (kube.py: 16)",
    )
    parser.add_argument(
        "--promql-concurrency",
        type=int,
        default=None,
        help="with --diagnose: PrometheusReader max_concurrency to try (default 8)",
    )
    parser.add_argument(
        "--status-every",
        type=int,
        default=None,
        metavar="N",
        help="with --diagnose, a what-if: write status only when it changes or every N ticks",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="run the largest size again under cProfile; write the .prof file in DIR",
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    command = shlex.join(["python", "benchmarks/bench_operator.py", *sys.argv[1:]])
    missing = missing_binaries("prometheus")
    if missing:
        print(f"{', '.join(missing)} is not installed: run `make bench-operator` (it installs it)")
        return 1
    # Stop cleanly on Ctrl-C and on SIGTERM, even when started with SIGINT ignored (`cmd &`).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    cores = os.cpu_count()
    print("# stopbudget operator benchmark")
    print(
        f"\n{platform.platform()}, Python {platform.python_version()}, {cores} cores; "
        f"interval {args.interval:g} s; sizes {sizes}"
    )
    print(
        "The operator is a subprocess; the Kubernetes emulator and 4 engine exporters run in "
        f"this process; one real Prometheus (scrape 1 s). All share the {cores} cores.\n"
    )
    results: list[Result] = []
    load = Load()
    with tempfile.TemporaryDirectory(prefix="stopbudget-bench-") as tmp:
        workdir = Path(tmp)
        try:
            load.start()
            with DevPrometheus(jobs=("engines",), scrape_interval="1s") as prom:
                prom.add_targets("engines", "bench", load.targets)
                prom.wait_for_targets("engines", load.targets, timeout=60)
                print(f"Prometheus {prom.url} scrapes {len(load.targets)} exporters\n")
                for n in sizes:
                    window = args.window or (
                        WINDOW_INTERVALS_LARGE if n >= LARGE else WINDOW_INTERVALS
                    )
                    print(f"{n} policies:")
                    results.append(
                        run_size(
                            n,
                            interval=args.interval,
                            window_intervals=window,
                            prom=prom,
                            workdir=workdir,
                        )
                    )
                report(results, command, started)
                lagging = any(not r.kept_interval for r in results)
                if args.diagnose == "yes" or (args.diagnose == "auto" and lagging):
                    n = max(sizes)
                    print(f"\n{n} policies again, the operator with timing probes:")
                    probed = run_size(
                        n,
                        interval=args.interval,
                        window_intervals=args.window or WINDOW_INTERVALS_LARGE,
                        prom=prom,
                        workdir=workdir,
                        instrument=Instrument(
                            probe=workdir / "probe.json",
                            kube_workers=args.kube_workers,
                            promql_concurrency=args.promql_concurrency,
                            status_every=args.status_every,
                        ),
                    )
                    print(f"\n### Where the time of a tick goes ({n} policies, probes on)\n")
                    for line in table([probed]):
                        print(line)
                    print()
                    for line in diagnosis(probed):
                        print(line)
                    print()
                    for line in findings(probed):
                        print(line)
                    print(f"\nTotal wall time: {time.monotonic() - started:.0f} s")
                if args.profile is not None:
                    args.profile.mkdir(parents=True, exist_ok=True)
                    n = max(sizes)
                    path = args.profile.resolve() / f"operator-{n}.prof"
                    print(f"\n{n} policies again, the operator under cProfile:")
                    profiled = run_size(
                        n,
                        interval=args.interval,
                        window_intervals=args.window or WINDOW_INTERVALS_LARGE,
                        prom=prom,
                        workdir=workdir,
                        instrument=Instrument(profile=path),
                    )
                    for line in table([profiled]):
                        print(line)
                    if path.exists():
                        print_profile(path)
                    else:
                        print(f"no profile written at {path}: the operator did not exit cleanly")
        except KeyboardInterrupt:
            print("\ninterrupted: every process stopped", file=sys.stderr)
            return 130
        finally:
            load.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
