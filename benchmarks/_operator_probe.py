"""``stopbudget run`` with timing probes, for ``bench_operator.py --diagnose`` only.

Usage: ``python benchmarks/_operator_probe.py OUT.json run -A --kubeconfig ...``

It runs the unchanged operator (``stopbudget.cli.main.main``) after wrapping, in
this process only:

* the thread pools of ``kube.py`` (Kubernetes calls) and ``prometheus.py``
  (PromQL queries): per call, the time it waited for a worker thread, the time
  it ran, and the CPU time of the worker while it ran;
* ``PrometheusReader.run``: the whole query as a tick awaits it (its
  ``max_concurrency`` semaphore, the pool, the HTTP call);
* ``Kube.patch_policy_status`` as the daemon awaits it after each tick;
* optionally, the size of those pools (``BENCH_PROBE_KUBE_WORKERS``,
  ``BENCH_PROBE_PROMQL_CONCURRENCY``), to test whether a pool is the limit;
* optionally (``BENCH_PROBE_STATUS_EVERY=N``, a what-if), status written only
  when what it says changes, or every N-th tick;
* kopf's ``_detect_causes`` (sync: what kopf does with every watch event of a
  policy, e.g. the MODIFIED event each status write echoes back): its CPU time;
* the event loop: how late a 100 ms sleep wakes up (a blocked or saturated
  loop wakes late), and the slowest ``/metrics`` rendering.

Every second the cumulative sums are written to OUT.json, so the benchmark
takes the difference over its window.  No operator module is modified.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, ParamSpec, TypeVar
from unittest import mock

import kopf
from kopf._core.reactor import processing

from stopbudget.cli import main as cli
from stopbudget.clients import endpoints, kube, prometheus

P = ParamSpec("P")
T = TypeVar("T")

_lock = threading.Lock()
#: name -> [count, sum of seconds, max seconds]
STATS: dict[str, list[float]] = {}


def record(name: str, value: float) -> None:
    with _lock:
        entry = STATS.setdefault(name, [0.0, 0.0, 0.0])
        entry[0] += 1
        entry[1] += value
        entry[2] = max(entry[2], value)


class TimedExecutor(ThreadPoolExecutor):
    """A ThreadPoolExecutor recording queue wait, run time and worker CPU per call."""

    def __init__(self, max_workers: int | None = None, thread_name_prefix: str = "") -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self.label = thread_name_prefix or "pool"
        record(f"{self.label}.workers", float(max_workers or 0))

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        submitted = time.monotonic()
        label = self.label

        def timed() -> T:
            start, cpu = time.monotonic(), time.thread_time()
            record(f"{label}.queue_wait", start - submitted)
            try:
                return fn(*args, **kwargs)
            finally:
                record(f"{label}.run", time.monotonic() - start)
                record(f"{label}.worker_cpu", time.thread_time() - cpu)

        return super().submit(timed)


def timed_async(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.monotonic()
        try:
            return await method(*args, **kwargs)
        finally:
            record(name, time.monotonic() - start)

    return wrapper


def install() -> None:
    """Patch the names the operator looks up when it builds its services (this process only)."""
    render: Callable[..., bytes] = endpoints.generate_latest  # type: ignore[attr-defined]

    def timed_render(*args: Any, **kwargs: Any) -> bytes:
        start, cpu = time.monotonic(), time.thread_time()
        try:
            return render(*args, **kwargs)
        finally:
            record("metrics.render", time.monotonic() - start)
            record("metrics.render_cpu", time.thread_time() - cpu)

    detect: Callable[..., Any] = processing._detect_causes

    def timed_detect(*args: Any, **kwargs: Any) -> Any:
        cpu = time.thread_time()
        try:
            return detect(*args, **kwargs)
        finally:
            record("kopf.detect_causes_cpu", time.thread_time() - cpu)

    patches: list[Any] = [
        mock.patch.object(kube, "ThreadPoolExecutor", TimedExecutor),
        mock.patch.object(prometheus, "ThreadPoolExecutor", TimedExecutor),
        mock.patch.object(endpoints, "generate_latest", timed_render),
        mock.patch.object(processing, "_detect_causes", timed_detect),
        mock.patch.object(
            prometheus.PrometheusReader,
            "run",
            timed_async("promql.query_total", prometheus.PrometheusReader.run),
        ),
        mock.patch.object(
            kube.Kube,
            "patch_policy_status",
            timed_async("kube.status_patch_total", kube.Kube.patch_policy_status),
        ),
        mock.patch.object(
            kube.Kube,
            "get_deployment",
            timed_async("kube.get_deployment_total", kube.Kube.get_deployment),
        ),
    ]
    workers = os.environ.get("BENCH_PROBE_KUBE_WORKERS")
    if workers:
        connect = kube.Kube.connect

        def sized_connect(*args: Any, **kwargs: Any) -> kube.Kube:
            return connect(*args, **{**kwargs, "workers": int(workers)})

        patches.append(mock.patch.object(kube.Kube, "connect", sized_connect))
    concurrency = os.environ.get("BENCH_PROBE_PROMQL_CONCURRENCY")
    if concurrency:
        init = prometheus.PrometheusReader.__init__

        def sized_init(self: prometheus.PrometheusReader, *args: Any, **kwargs: Any) -> None:
            init(self, *args, **{**kwargs, "max_concurrency": int(concurrency)})

        patches.append(mock.patch.object(prometheus.PrometheusReader, "__init__", sized_init))
    for patch in patches:
        patch.start()  # for the life of the process
    every = os.environ.get("BENCH_PROBE_STATUS_EVERY")
    if every:  # around the timed patch_policy_status, so that only writes are timed
        sparse = sparse_status(kube.Kube.patch_policy_status, int(every))
        mock.patch.object(kube.Kube, "patch_policy_status", sparse).start()


def _essence(status: dict[str, Any]) -> str:
    """What a reader of status acts on: budgets, recommendation, conditions (not messages)."""
    conditions = [
        (c.get("type"), c.get("status"), c.get("reason")) for c in status.get("conditions") or []
    ]
    recommendation = status.get("recommendation") or {}
    keys = ("budget", "originalValue", "lastAudit", "lastPatchTime", "failures", "curveSource")
    return json.dumps(
        [conditions, recommendation.get("budget"), [status.get(k) for k in keys]], default=str
    )


def sparse_status(method: Callable[..., Any], every: int) -> Callable[..., Any]:
    """WHAT-IF, not the operator's behaviour: write a tick's status only when its essence
    changed, or on every ``every``-th tick of the policy (a heartbeat of lastEvaluationTime).
    The policy's mailbox keeps the status it would have written, as if stored."""
    seen: dict[tuple[str, str], tuple[str, int]] = {}

    async def wrapper(
        self: kube.Kube, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        if "lastEvaluationTime" not in status:  # e.g. originalValue alone: always written
            result: dict[str, Any] = await method(self, namespace, name, status)
            return result
        key, essence = (namespace, name), _essence(status)
        last, skipped = seen.get(key, ("", every))
        if essence == last and skipped + 1 < every:
            seen[key] = (essence, skipped + 1)
            record("kube.status_patch_skipped", 0.0)
            return {"status": {k: v for k, v in status.items() if v is not None}}
        seen[key] = (essence, 0)
        written: dict[str, Any] = await method(self, namespace, name, status)
        return written

    return wrapper


async def _loop_lag(out: Path) -> None:
    last_dump = time.monotonic()
    while True:
        start = time.monotonic()
        await asyncio.sleep(0.1)
        record("loop.lag", time.monotonic() - start - 0.1)
        if time.monotonic() - last_dump >= 1.0:
            last_dump = time.monotonic()
            with _lock:
                text = json.dumps(STATS)
            tmp = out.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(out)


def main() -> int:
    out = Path(sys.argv[1])
    install()

    @kopf.on.startup()
    async def probe(**_: Any) -> None:
        asyncio.get_running_loop().create_task(_loop_lag(out), name="probe")

    return cli.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
