"""kill -9: the operator killed at random points of a run never loses the original value.

`stopbudget run` runs as a process on the real kube-apiserver, authenticated as the
chart's ServiceAccount, and is killed with SIGKILL over and over:

* once between the ``status.originalValue`` write and the sink patch (the first
  run's identity may read but not patch Deployments, so it records the original
  and then fails the patch: that is where it dies);
* then at least 20 times at points chosen by a seeded generator: during start-up,
  once ready, right after the Deployment changed (between the patch and the
  status write), after a few status writes, or after a random time — while the
  load moves the budget up and down.

After every kill the status fields the operator owns are still there and the
original value is the true one; once the load is steady, restarts patch nothing;
and deleting the policy puts the true original back.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stopbudget.devkit import servers
from stopbudget.devkit.exporter import EngineExporter
from tests.support.builders import container, deployment, stop_policy
from tests.support.clusters import RELEASE_NAMESPACE, ApiServerCluster, RealServer, chart_objects
from tests.support.procs import Process
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.servers, pytest.mark.apiserver]

SP = ("stopbudget.io/v1alpha1", "StopPolicy")
DEPLOY = ("apps/v1", "Deployment")
ORIGINAL = {"present": True, "value": "2048"}
#: Status fields the operator owns: once written, a kill must never make them disappear.
OWNED = ("originalValue", "lastPatchTime", "history", "failures", "budget", "conditions")
KILLS = 24
SEED = 20261202


def _deployment(ns: str) -> dict[str, Any]:
    return deployment("vllm", ns, [container(env=[{"name": "MAX_TOKENS", "value": "2048"}])])


def _policy(ns: str, model: str) -> dict[str, Any]:
    return stop_policy(
        "chat",
        ns,
        budget={"min": 64, "max": 1024, "sink": {"type": "env", "name": "MAX_TOKENS"}},
        quality={
            "emTarget": 0.8,
            "emFloor": 0.7,
            "prior": [
                {"budget": 128, "em": 0.40, "samples": 10000},
                {"budget": 256, "em": 0.72, "samples": 10000},
                {"budget": 512, "em": 0.84, "samples": 10000},
                {"budget": 1024, "em": 0.86, "samples": 10000},
            ],
        },
        load={
            "preset": "vllm",
            "selector": {"model_name": model},
            "signals": [{"name": "queue", "target": 10}],
        },
        control={
            "interval": "1s",
            "cooldown": "0s",
            "downscaleStabilization": "0s",
            "tolerance": 0.05,
        },
    )


def _status(obj: dict[str, Any] | None) -> dict[str, Any]:
    return dict((obj or {}).get("status") or {})


def _env_value(dep: dict[str, Any] | None) -> str | None:
    assert dep is not None
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    values = {e["name"]: e.get("value") for e in container.get("env", [])}
    return values.get("MAX_TOKENS")


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class Operator:
    """`stopbudget run -n NS` as a process that the test starts and kills."""

    def __init__(self, ns: str, kubeconfig: Path, prometheus: str, log: Path) -> None:
        self.ns = ns
        self.kubeconfig = kubeconfig
        self.prometheus = prometheus
        self.log = log
        self.port = 0
        self.process: Process | None = None
        self.kills = 0

    def start(self, kubeconfig: Path | None = None) -> None:
        assert self.process is None
        self.port = servers.free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("STOPBUDGET_")}
        env |= {
            "STOPBUDGET_PROMETHEUS_URL": self.prometheus,
            "STOPBUDGET_QUERY_WINDOW": "10s",
            "STOPBUDGET_METRICS_PORT": str(self.port),
            "STOPBUDGET_BIND_ADDRESS": "127.0.0.1",
        }
        self.process = Process(
            [sys.executable, "-m", "stopbudget", "run", "-n", self.ns, "--kubeconfig",
             str(kubeconfig or self.kubeconfig)],
            self.log, env=env,
        )  # fmt: skip

    def wait_ready(self) -> None:
        wait_for(lambda: self.alive() and _ready(self.port), timeout=30, what="ready")

    def alive(self) -> bool:
        assert self.process is not None
        if not self.process.alive():
            raise AssertionError(f"the operator exited by itself:\n{self.tail()}")
        return True

    def kill(self) -> None:
        assert self.process is not None
        self.alive()
        self.process.kill()
        self.process = None
        self.kills += 1

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
        self.process = None

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])


@pytest.fixture
def world(
    real_server: RealServer,
    make_exporter: Callable[..., EngineExporter],
    prometheus_server: servers.DevPrometheus,
    tmp_path: Path,
) -> Iterator[tuple[ApiServerCluster, EngineExporter, Operator]]:
    ns = real_server.fresh_namespace("kill9")
    cluster = ApiServerCluster(real_server, ns)
    operator = Operator(ns, real_server.operator_kubeconfig, prometheus_server.url,
                        tmp_path / "operator.log")  # fmt: skip
    try:
        yield cluster, make_exporter(), operator
    finally:
        operator.stop()
        real_server.remove_policies(ns)


def _read_only_identity(real: RealServer, directory: Path) -> Path:
    """The chart's rules without ``patch`` on Deployments, as another ServiceAccount."""
    rules = next(o for o in chart_objects() if o["kind"] == "ClusterRole")["rules"]
    for rule in rules:
        if "deployments" in rule.get("resources", []):
            rule["verbs"] = [v for v in rule["verbs"] if v != "patch"]
    name = "kill9-no-deployment-patch"
    objects = [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": name, "namespace": RELEASE_NAMESPACE}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": name}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": RELEASE_NAMESPACE}]},
    ]  # fmt: skip
    real.server.kubectl(
        "apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    )
    return real.server.token_kubeconfig(name, RELEASE_NAMESPACE, directory / "read-only.kubeconfig")


class Ledger:
    """What has been seen of the status the operator owns, across kills."""

    def __init__(self) -> None:
        self.owned: set[str] = set()

    def check(self, obj: dict[str, Any] | None, when: str) -> None:
        status = _status(obj)
        lost = sorted(k for k in self.owned if k not in status)
        assert not lost, f"{when}: status lost {lost}: {json.dumps(status)[:1500]}"
        self.owned |= {k for k in OWNED if k in status}
        if "originalValue" in status:
            assert status["originalValue"] == ORIGINAL, f"{when}: {status['originalValue']}"


def evaluated_since(stamp: str, count: int, operator: Operator) -> Callable[[Any], bool]:
    """The policy has been evaluated ``count`` times after ``stamp`` (the operator alive)."""
    seen: set[str] = set()

    def check(obj: dict[str, Any] | None) -> bool:
        operator.alive()
        evaluated = _status(obj).get("lastEvaluationTime", "")
        if evaluated > stamp:
            seen.add(evaluated)
        return len(seen) >= count

    return check


def reach_kill_point(
    cluster: ApiServerCluster,
    exporter: EngineExporter,
    operator: Operator,
    rng: random.Random,
    ledger: Ledger,
) -> str:
    """Start the operator, run it to a point chosen by ``rng``, kill it there; the point."""
    ns = cluster.ns
    point = rng.choice(["start-up", "ready", "after-patch", "after-writes", "random"])
    if point == "after-patch":  # a load that moves the budget, so that a patch is due
        current = _status(cluster.get(*SP, ns, "chat")).get("budget")
        exporter.set_load(waiting=0 if current == 256 else 40)
    elif rng.random() < 0.3:
        exporter.set_load(waiting=rng.choice([0, 5, 40, 80]))
    before = cluster.get(*DEPLOY, ns, "vllm")
    assert before is not None
    stamp = _status(cluster.get(*SP, ns, "chat")).get("lastEvaluationTime", "")
    operator.start()
    if point in {"ready", "after-patch"}:
        operator.wait_ready()
    if point == "after-patch":
        version = before["metadata"]["resourceVersion"]
        try:
            cluster.wait_for(
                *DEPLOY, ns, "vllm",
                lambda d: operator.alive() and (d or {})["metadata"]["resourceVersion"] != version,
                within=10,
            )  # fmt: skip
        except TimeoutError:
            point = "after-patch (none was due)"
    elif point == "after-writes":
        writes = rng.randint(1, 3)
        cluster.wait_for(*SP, ns, "chat", evaluated_since(stamp, writes, operator), within=30)
    elif point == "random":  # a random moment; the operator must still be running then
        process = operator.process
        assert process is not None
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=rng.uniform(0.0, 3.0))
    operator.kill()
    ledger.check(cluster.get(*SP, ns, "chat"), f"kill {operator.kills} ({point})")
    return point


def test_sigkill_at_random_points_never_loses_the_original(
    world: tuple[ApiServerCluster, EngineExporter, Operator], tmp_path: Path
) -> None:
    cluster, exporter, operator = world
    ns = cluster.ns
    rng = random.Random(SEED)
    ledger = Ledger()
    exporter.set_load(waiting=40)
    cluster.create(_deployment(ns))
    cluster.create(_policy(ns, exporter.model_name))

    def policy() -> dict[str, Any] | None:
        return cluster.get(*SP, ns, "chat")

    # 1. Between the originalValue write and the sink patch.
    operator.start(_read_only_identity(cluster.real, tmp_path))
    cluster.wait_for(
        *SP, ns, "chat",
        lambda o: "originalValue" in _status(o) and any(
            c["type"] == "Ready" and c["reason"] == "PatchFailed"
            for c in _status(o).get("conditions", [])
        ),
        within=30,
    )  # fmt: skip
    operator.kill()
    ledger.check(policy(), "after the kill between originalValue and the patch")
    assert _env_value(cluster.get(*DEPLOY, ns, "vllm")) == "2048"

    # 2. Random points, while the load moves the budget.
    points = [reach_kill_point(cluster, exporter, operator, rng, ledger) for _ in range(KILLS - 1)]

    # 3. Steady load: after it settles, restarts patch nothing.
    exporter.set_load(waiting=40)
    operator.start()
    settled = cluster.wait_for(*SP, ns, "chat", lambda o: _status(o).get("budget") == 256, 30)
    assert settled is not None
    version = cluster.get(*DEPLOY, ns, "vllm")["metadata"]["resourceVersion"]  # type: ignore[index]
    for _ in range(3):
        operator.kill()
        operator.start()
        stamp = _status(policy())["lastEvaluationTime"]
        cluster.wait_for(*SP, ns, "chat", evaluated_since(stamp, 3, operator), within=30)
        dep = cluster.get(*DEPLOY, ns, "vllm")
        assert dep is not None
        assert dep["metadata"]["resourceVersion"] == version, "a restart patched the Deployment"
        ledger.check(policy(), "steady restart")

    # 4. Delete: the true original comes back.
    cluster.delete(*SP, ns, "chat")
    cluster.wait_for(*SP, ns, "chat", lambda o: o is None, within=30)
    assert _env_value(cluster.get(*DEPLOY, ns, "vllm")) == "2048"
    assert operator.kills >= 20, operator.kills
    print(f"\n{operator.kills} SIGKILLs; kill points: {sorted(points)}")
