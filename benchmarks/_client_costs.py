"""CPU per call of what one tick does, measured alone (for ``bench_operator.py``'s analysis).

    python benchmarks/_client_costs.py [--calls 500]

Each figure is the CPU time of the calling thread (``time.thread_time``) per
call, averaged over sequential calls, with the servers elsewhere (Prometheus in
its own process, the Kubernetes emulator in another thread), so it is the
client's own cost, without GIL contention:

* one PromQL query through the operator's reader (prometheus-api-client and
  requests, as its worker threads run it) vs the same query with aiohttp;
* one Deployment GET and one status PATCH through the operator's ``Kube``
  (the official client, as its worker threads run it) vs the same request with
  aiohttp;
* one thread-pool round trip from the event loop (``run_in_executor`` of a no-op);
* parsing a StopPolicy spec and status with the pydantic models, and dumping
  the status, as every tick does.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_operator import MODELS, PolicyShape, counting_cluster
from stopbudget import api
from stopbudget.clients.kube import MERGE_PATCH, Kube
from stopbudget.clients.metrics import OperatorMetrics
from stopbudget.clients.prometheus import PrometheusReader
from stopbudget.clients.settings import Settings
from stopbudget.controller import tick
from stopbudget.controller.operator import Operator
from stopbudget.core import promql
from stopbudget.core.status import patch_body, read_status
from stopbudget.devkit.exporter import EngineExporter
from stopbudget.devkit.servers import DevPrometheus


def per_call(calls: int, fn: Callable[[], object]) -> float:
    fn()  # warm: connections, caches
    start = time.thread_time()
    for _ in range(calls):
        fn()
    return (time.thread_time() - start) / calls


async def per_call_async(calls: int, fn: Callable[[], Awaitable[object]]) -> float:
    await fn()
    start = time.thread_time()
    for _ in range(calls):
        await fn()
    return (time.thread_time() - start) / calls


def row(what: str, seconds: float, note: str = "") -> None:
    print(f"| {what} | {1000 * seconds:.3f} | {note} |")


async def async_part(
    calls: int, prom_url: str, expr: str, kube_url: str, dep_path: str, status_path: str
) -> dict[str, float]:
    out: dict[str, float] = {}
    async with aiohttp.ClientSession() as session:

        async def query() -> object:
            async with session.get(f"{prom_url}/api/v1/query", params={"query": expr}) as r:
                return (await r.json())["data"]["result"]

        async def get() -> object:
            async with session.get(kube_url + dep_path) as r:
                return await r.json()

        async def patch() -> object:
            body = json.dumps({"status": {"failures": 0}})
            headers = {"Content-Type": MERGE_PATCH}
            async with session.patch(kube_url + status_path, data=body, headers=headers) as r:
                return await r.json()

        out["aiohttp query"] = await per_call_async(calls, query)
        out["aiohttp get"] = await per_call_async(calls, get)
        out["aiohttp patch"] = await per_call_async(calls, patch)
    pool = ThreadPoolExecutor(max_workers=1)
    loop = asyncio.get_running_loop()

    async def hop() -> object:
        return await loop.run_in_executor(pool, int)

    out["hop"] = await per_call_async(calls * 4, hop)
    pool.shutdown()
    return out


async def tick_part(
    calls: int, prom_url: str, kubeconfig: Path, shape: PolicyShape
) -> tuple[float, dict[str, Any]]:
    """Main-thread CPU of one whole tick (its I/O runs in the pools' threads)."""
    settings = Settings(prometheus_url=prom_url, query_window="10s")
    metrics = OperatorMetrics()
    operator = Operator(
        settings=settings,
        kube=Kube.connect(kubeconfig),
        reader=PrometheusReader(settings, metrics, window="10s"),
        metrics=metrics,
    )
    # Ticks 5 s apart on the policy's clock, so that status.history holds 10 entries
    # (downscaleStabilization is 10 intervals), as in the benchmark.
    start, ticks = datetime.now(UTC), itertools.count()
    operator.clock = lambda: start + timedelta(seconds=5 * next(ticks))
    mailbox = operator.mailbox(shape.namespace, shape.name)
    meta = {"generation": 1, "annotations": {}}
    raw_spec = shape.policy(5.0)["spec"]

    async def one() -> object:
        return await tick.tick(operator, mailbox, meta, raw_spec, None)  # it writes status

    for _ in range(12):  # past the first patch, with a full history
        await one()
    cpu = await per_call_async(calls, one)
    operator.reader.close()
    await operator.kube.close()
    assert mailbox.status is not None
    return cpu, mailbox.status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=500)
    calls = parser.parse_args().calls
    shape = PolicyShape(3)  # queue + latencyP95: the most expensive preset query
    spec = api.StopPolicySpec.model_validate(shape.policy(5.0)["spec"])
    expr = promql.plan(spec, window="10s")[1].expr
    with tempfile.TemporaryDirectory() as tmp, counting_cluster(Path(tmp)) as cluster:
        exporter = EngineExporter(model_name=MODELS[3][0], engines=("vllm",)).start()
        try:
            exporter.set_load(waiting=10, running=10, kv_cache=0.5)
            exporter.finish_request(3.0, count=5)
            with DevPrometheus(jobs=("engines",)) as prom:
                prom.add_targets("engines", "one", [exporter.target])
                prom.wait_for_targets("engines", [exporter.target], timeout=60)
                cluster.create(shape.deployment())
                cluster.create(shape.policy(5.0))
                reader = PrometheusReader(
                    Settings(prometheus_url=prom.url), OperatorMetrics(), window="10s"
                )
                kube = Kube.connect(cluster.kubeconfig)
                ns, name, dep = shape.namespace, shape.name, shape.target

                def kube_call(method: Callable[..., Any], *args: Any, **kw: Any) -> Any:
                    # What Kube._call's worker runs, in this thread.
                    response = method(*args, _preload_content=False, **kw)
                    try:
                        return json.loads(response.data)
                    finally:
                        response.release_conn()

                status = {"failures": 0}
                results = {
                    "reader query": per_call(calls, lambda: reader._query(expr)),
                    "kube get": per_call(
                        calls, lambda: kube_call(kube._apps.read_namespaced_deployment, dep, ns)
                    ),
                    "kube patch": per_call(
                        calls,
                        lambda: kube_call(
                            kube._custom.patch_namespaced_custom_object_status,
                            api.GROUP,
                            api.VERSION,
                            ns,
                            api.PLURAL,
                            name,
                            {"status": status},
                            _content_type=MERGE_PATCH,
                        ),
                    ),
                }
                c = cluster.cluster
                results |= asyncio.run(
                    async_part(
                        calls,
                        prom.url,
                        expr,
                        c.url,
                        c.path("apps/v1", "Deployment", ns, dep),
                        c.path(*reconcile_paths(), ns, name, "status"),
                    )
                )
                reader.close()
                asyncio.run(kube.close())
                tick_cpu, raw_status = asyncio.run(
                    tick_part(calls, prom.url, cluster.kubeconfig, shape)
                )
        finally:
            exporter.stop()
    # The status the ticks above wrote, parsed and dumped as every tick does.
    raw_spec = shape.policy(5.0)["spec"]
    old = api.StopPolicyStatus.model_validate(raw_status)
    results["spec parse"] = per_call(calls, lambda: api.StopPolicySpec.model_validate(raw_spec))
    stored = read_status(raw_status)
    results["status parse"] = per_call(calls, lambda: read_status(raw_status))
    results["status dump"] = per_call(calls, lambda: patch_body(old, stored))

    print("| call | CPU ms per call | note |")
    print("|---|---:|---|")
    row("PromQL query, operator's reader (requests)", results["reader query"], expr[:60] + "...")
    row("PromQL query, aiohttp", results["aiohttp query"])
    row("GET Deployment, operator's Kube (kubernetes client)", results["kube get"])
    row("GET Deployment, aiohttp", results["aiohttp get"])
    row("PATCH status, operator's Kube (kubernetes client)", results["kube patch"])
    row("PATCH status, aiohttp", results["aiohttp patch"])
    row("event loop -> thread pool -> event loop (no-op)", results["hop"])
    row(
        "tick, event-loop thread only",
        tick_cpu,
        "one policy, sequential ticks; its I/O is in the rows above",
    )
    row("StopPolicySpec.model_validate", results["spec parse"])
    row(
        "status parse (core.status.read_status)",
        results["status parse"],
        f"a status of {len(json.dumps(raw_status))} bytes",
    )
    row("status dump (core.status.patch_body)", results["status dump"])
    return 0


def reconcile_paths() -> tuple[str, str]:
    return (f"{api.GROUP}/{api.VERSION}", api.KIND)


if __name__ == "__main__":
    sys.exit(main())
