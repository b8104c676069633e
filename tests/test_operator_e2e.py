"""The whole control loop, for real: kopf runs the operator against the Kubernetes emulator,
real Prometheus scrapes an engine exporter, and the Deployment is patched.

Every wait polls a condition with a timeout (``cluster.wait_for`` wakes on writes).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kopf.testing import KopfRunner

from stopbudget import devservers
from stopbudget.emulator import ThreadedCluster, emulated_cluster_in_thread
from stopbudget.exporter import EngineExporter

pytestmark = pytest.mark.servers

NS = "serving"
SP = ("stopbudget.io/v1alpha1", "StopPolicy")
DEPLOY = ("apps/v1", "Deployment")
OPERATOR = ["run", "-A", "--standalone", "-m", "stopbudget.handlers"]

SIDECAR = {
    "name": "metrics-proxy",
    "image": "nginx:1.27",
    "env": [{"name": "MAX_TOKENS", "value": "sidecar-own-value"}],
    "args": ["--port=9000"],
}


def deployment(name: str, env: list[dict[str, str]] | None = None) -> dict[str, Any]:
    vllm = {
        "name": "vllm",
        "image": "vllm/vllm-openai:v0.11.0",
        "args": ["--model", "meta-llama/Llama-3.1-8B-Instruct"],
        "env": env if env is not None else [{"name": "HF_HOME", "value": "/cache"}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [vllm, copy.deepcopy(SIDECAR)]},
            },
        },
    }


def stoppolicy(name: str, target: str, model: str, **control: Any) -> dict[str, Any]:
    return {
        "apiVersion": "stopbudget.io/v1alpha1",
        "kind": "StopPolicy",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "targetRef": {"name": target, "container": "vllm"},
            "budget": {
                "min": 64,
                "max": 1024,
                "initial": 1024,
                "sink": {"type": "env", "name": "MAX_TOKENS"},
            },
            "quality": {
                "emTarget": 0.8,
                "emFloor": 0.7,
                "prior": [
                    {"budget": 128, "em": 0.40, "n": 10000},
                    {"budget": 256, "em": 0.72, "n": 10000},
                    {"budget": 512, "em": 0.84, "n": 10000},
                    {"budget": 1024, "em": 0.86, "n": 10000},
                ],
            },
            "load": {
                "preset": "vllm",
                "selector": {"model_name": model},
                "signals": [{"name": "queue", "target": 10}],
            },
            "control": {
                "interval": "1s",
                "cooldown": "0s",
                "downscaleStabilization": "2s",
                "tolerance": 0.05,
                "fallback": {"failureThreshold": 2, "behavior": "max"},
            }
            | control,
        },
    }


def env_of(dep: dict[str, Any] | None, container: str = "vllm") -> dict[str, Any]:
    assert dep is not None
    for c in dep["spec"]["template"]["spec"]["containers"]:
        if c["name"] == container:
            return {e["name"]: e.get("value") for e in c.get("env", [])}
    raise AssertionError(f"no container {container}")


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions", []):
        if c["type"] == type_:
            return dict(c)
    return None


def has_status(**wanted: Any) -> Callable[[dict[str, Any] | None], bool]:
    def check(obj: dict[str, Any] | None) -> bool:
        status = (obj or {}).get("status") or {}
        return all(status.get(k) == v for k, v in wanted.items())

    return check


def wait_for_another_tick(cluster: ThreadedCluster, seen: dict[str, Any] | None) -> None:
    """Wait until the operator has evaluated the policy again since ``seen``."""
    assert seen is not None
    first = seen["status"]["lastEvaluationTime"]
    cluster.wait_for(
        *SP,
        NS,
        "chat",
        lambda o: ((o or {}).get("status") or {}).get("lastEvaluationTime") != first,
        within=20,
    )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ThreadedCluster]:
    with emulated_cluster_in_thread(tmp_path) as c:
        yield c


@pytest.fixture
def operator_env(
    cluster: ThreadedCluster,
    prometheus_server: devservers.DevPrometheus,
    monkeypatch: pytest.MonkeyPatch,
) -> ThreadedCluster:
    """Environment of an operator run against ``cluster`` and the session Prometheus."""
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    monkeypatch.setenv("STOPBUDGET_PROMETHEUS_URL", prometheus_server.url)
    monkeypatch.setenv("STOPBUDGET_QUERY_WINDOW", "10s")
    monkeypatch.setenv("STOPBUDGET_BIND_ADDRESS", "127.0.0.1")
    monkeypatch.setenv("STOPBUDGET_METRICS_PORT", "0")
    monkeypatch.delenv("STOPBUDGET_WEBHOOK_TOKEN_FILE", raising=False)
    monkeypatch.delenv("STOPBUDGET_NAMESPACES", raising=False)
    return cluster


def run_operator() -> KopfRunner:
    return KopfRunner(OPERATOR, timeout=60)


def _finished(runner: KopfRunner) -> None:
    assert runner.exception is None, runner.output
    assert runner.exit_code == 0, runner.output
    assert "Traceback" not in runner.output, runner.output


def test_load_moves_the_budget_and_back(
    operator_env: ThreadedCluster, make_exporter: Callable[..., EngineExporter]
) -> None:
    cluster = operator_env
    exporter = make_exporter()
    exporter.set_load(waiting=0, running=4, kv_cache=0.3)
    cluster.create(deployment("vllm"))
    with run_operator() as runner:
        cluster.create(stoppolicy("chat", "vllm", exporter.model_name))

        # No load: the EM-target budget, 512 (cheapest with a lower bound >= 0.8).
        obj = cluster.wait_for(*SP, NS, "chat", has_status(budget=512), within=20)
        assert condition(obj, "Ready") is not None
        dep = cluster.get(*DEPLOY, NS, "vllm")
        assert env_of(dep)["MAX_TOKENS"] == "512"
        assert env_of(dep)["HF_HOME"] == "/cache"
        assert dep is not None
        assert dep["spec"]["template"]["spec"]["containers"][1] == SIDECAR

        # Queue at 4x its target: down to the floor, 256; the sidecar untouched.
        exporter.set_load(waiting=40, running=96, kv_cache=0.97)
        obj = cluster.wait_for(*SP, NS, "chat", has_status(budget=256), within=20)
        assert obj is not None
        assert "pressure 4" in obj["status"]["recommendation"]["reason"]
        dep = cluster.get(*DEPLOY, NS, "vllm")
        assert env_of(dep)["MAX_TOKENS"] == "256"
        assert env_of(dep, "metrics-proxy")["MAX_TOKENS"] == "sidecar-own-value"
        assert dep is not None
        assert dep["spec"]["template"]["spec"]["containers"][1] == SIDECAR
        assert condition(obj, "MetricsAvailable")["status"] == "True"  # type: ignore[index]

        # Load gone: back to 512.
        exporter.set_load(waiting=0, running=2, kv_cache=0.1)
        obj = cluster.wait_for(*SP, NS, "chat", has_status(budget=512), within=20)
        assert obj is not None
        assert obj["status"]["originalValue"] == {"present": False}

        # Deleted: what the operator added is removed.
        cluster.delete(*SP, NS, "chat")
        cluster.wait_for(*SP, NS, "chat", lambda o: o is None, within=20)
        dep = cluster.get(*DEPLOY, NS, "vllm")
        assert "MAX_TOKENS" not in env_of(dep)
        assert dep is not None
        assert dep["spec"]["template"]["spec"]["containers"][1] == SIDECAR
    _finished(runner)
    assert "BudgetChanged" in runner.output


def test_delete_restores_the_original_value(
    operator_env: ThreadedCluster, make_exporter: Callable[..., EngineExporter]
) -> None:
    cluster = operator_env
    exporter = make_exporter()
    exporter.set_load(waiting=0)
    cluster.create(deployment("vllm", env=[{"name": "MAX_TOKENS", "value": "2048"}]))
    with run_operator() as runner:
        cluster.create(stoppolicy("chat", "vllm", exporter.model_name))
        obj = cluster.wait_for(*SP, NS, "chat", has_status(budget=512), within=20)
        assert obj is not None
        assert obj["status"]["originalValue"] == {"present": True, "value": "2048"}
        cluster.delete(*SP, NS, "chat")
        cluster.wait_for(*SP, NS, "chat", lambda o: o is None, within=20)
        assert env_of(cluster.get(*DEPLOY, NS, "vllm"))["MAX_TOKENS"] == "2048"
    _finished(runner)


@pytest.mark.parametrize("how", ["Recommend", "Paused", "annotation"])
def test_recommend_and_paused_never_patch(
    operator_env: ThreadedCluster, make_exporter: Callable[..., EngineExporter], how: str
) -> None:
    cluster = operator_env
    exporter = make_exporter()
    exporter.set_load(waiting=40)
    cluster.create(deployment("vllm", env=[{"name": "MAX_TOKENS", "value": "1024"}]))
    before = cluster.get(*DEPLOY, NS, "vllm")
    policy = stoppolicy(
        "chat", "vllm", exporter.model_name, mode="Auto" if how == "annotation" else how
    )
    if how == "annotation":
        policy["metadata"]["annotations"] = {"stopbudget.io/paused": "true"}
    with run_operator() as runner:
        cluster.create(policy)
        if how == "Recommend":
            obj = cluster.wait_for(
                *SP,
                NS,
                "chat",
                lambda o: (
                    ((o or {}).get("status") or {}).get("recommendation", {}) is not None
                    and ((o or {}).get("status") or {}).get("recommendation", {}).get("budget")
                    == 256
                ),
                within=20,
            )
            assert obj is not None
            assert obj["status"]["budget"] == 1024  # applied: unchanged
        else:
            obj = cluster.wait_for(
                *SP,
                NS,
                "chat",
                lambda o: (condition(o, "Paused") or {}).get("status") == "True",
                within=20,
            )
            wait_for_another_tick(cluster, obj)
        after = cluster.get(*DEPLOY, NS, "vllm")
        assert after == before
        if how == "annotation":  # un-pausing resumes control
            cluster.patch(
                *SP, NS, "chat", {"metadata": {"annotations": {"stopbudget.io/paused": None}}}
            )
            cluster.wait_for(*SP, NS, "chat", has_status(budget=256), within=20)
            assert env_of(cluster.get(*DEPLOY, NS, "vllm"))["MAX_TOKENS"] == "256"
    _finished(runner)


@pytest.mark.parametrize(
    ("target", "container", "reason", "fragment"),
    [
        ("missing", "vllm", "TargetNotFound", "Deployment serving/missing"),
        ("vllm", "tgi", "SinkError", "tgi"),
    ],
)
def test_missing_target_is_a_condition_not_a_crash(
    operator_env: ThreadedCluster,
    make_exporter: Callable[..., EngineExporter],
    target: str,
    container: str,
    reason: str,
    fragment: str,
) -> None:
    cluster = operator_env
    exporter = make_exporter()
    cluster.create(deployment("vllm"))
    before = cluster.get(*DEPLOY, NS, "vllm")
    policy = stoppolicy("chat", target, exporter.model_name)
    policy["spec"]["targetRef"]["container"] = container
    with run_operator() as runner:
        cluster.create(policy)
        obj = cluster.wait_for(
            *SP,
            NS,
            "chat",
            lambda o: (condition(o, "Ready") or {}).get("reason") == reason,
            within=20,
        )
        ready = condition(obj, "Ready")
        assert ready is not None
        assert ready["status"] == "False"
        assert fragment in ready["message"]
        assert cluster.get(*DEPLOY, NS, "vllm") == before
    _finished(runner)


def test_restart_resumes_without_a_spurious_patch(
    operator_env: ThreadedCluster, make_exporter: Callable[..., EngineExporter]
) -> None:
    cluster = operator_env
    exporter = make_exporter()
    exporter.set_load(waiting=40)
    cluster.create(deployment("vllm"))
    with run_operator() as runner:
        cluster.create(stoppolicy("chat", "vllm", exporter.model_name))
        cluster.wait_for(*SP, NS, "chat", has_status(budget=256), within=20)
    _finished(runner)
    dep = cluster.get(*DEPLOY, NS, "vllm")
    assert dep is not None
    version = dep["metadata"]["resourceVersion"]
    obj = cluster.get(*SP, NS, "chat")
    assert obj is not None
    stopped_at = obj["status"]["lastEvaluationTime"]

    with run_operator() as runner:
        # Three ticks of the new process (1 s interval), then the Deployment is unchanged.
        seen: list[str] = []

        def ticked(o: dict[str, Any] | None) -> bool:
            stamp = ((o or {}).get("status") or {}).get("lastEvaluationTime")
            if stamp and stamp > stopped_at and stamp not in seen:
                seen.append(stamp)
            return len(seen) >= 3

        cluster.wait_for(*SP, NS, "chat", ticked, within=20)
        dep = cluster.get(*DEPLOY, NS, "vllm")
        assert dep is not None
        assert dep["metadata"]["resourceVersion"] == version
        assert env_of(dep)["MAX_TOKENS"] == "256"
    _finished(runner)


def test_prometheus_down_is_fallback_and_recovers(
    cluster: ThreadedCluster,
    start_prometheus: Callable[..., devservers.DevPrometheus],
    make_exporter: Callable[..., EngineExporter],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exporter = make_exporter()
    exporter.set_load(waiting=40)
    prom = start_prometheus(jobs=("engines",))
    prom.add_targets("engines", "one", [exporter.target])
    prom.wait_for_targets("engines", [exporter.target], timeout=30)
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    monkeypatch.setenv("STOPBUDGET_PROMETHEUS_URL", prom.url)
    monkeypatch.setenv("STOPBUDGET_QUERY_WINDOW", "10s")
    monkeypatch.setenv("STOPBUDGET_BIND_ADDRESS", "127.0.0.1")
    monkeypatch.setenv("STOPBUDGET_METRICS_PORT", "0")
    monkeypatch.setenv("STOPBUDGET_PROMETHEUS_TIMEOUT_SECONDS", "1")
    cluster.create(deployment("vllm"))
    with run_operator() as runner:
        cluster.create(stoppolicy("chat", "vllm", exporter.model_name))
        cluster.wait_for(*SP, NS, "chat", has_status(budget=256), within=30)

        prom.stop()
        obj = cluster.wait_for(
            *SP,
            NS,
            "chat",
            lambda o: (condition(o, "Fallback") or {}).get("status") == "True",
            within=20,
        )
        assert condition(obj, "MetricsAvailable")["status"] == "False"  # type: ignore[index]
        obj = cluster.wait_for(*SP, NS, "chat", has_status(budget=1024), within=20)
        assert env_of(cluster.get(*DEPLOY, NS, "vllm"))["MAX_TOKENS"] == "1024"

        prom.start()
        obj = cluster.wait_for(
            *SP,
            NS,
            "chat",
            lambda o: (condition(o, "Fallback") or {}).get("status") == "False",
            within=40,
        )
        cluster.wait_for(*SP, NS, "chat", has_status(budget=256), within=30)
    _finished(runner)
    assert os.environ["STOPBUDGET_PROMETHEUS_URL"] == prom.url


@pytest.mark.parametrize(
    ("audit", "field"),
    [
        ({"schedule": "61 * * * *"}, "spec.audit.schedule"),
        ({"answerPattern": "(unclosed"}, "spec.audit.answerPattern"),
    ],
)
def test_what_cel_cannot_check_is_an_invalid_spec_condition(
    operator_env: ThreadedCluster,
    make_exporter: Callable[..., EngineExporter],
    audit: dict[str, str],
    field: str,
) -> None:
    cluster = operator_env
    exporter = make_exporter()
    cluster.create(deployment("vllm"))
    before = cluster.get(*DEPLOY, NS, "vllm")
    policy = stoppolicy("chat", "vllm", exporter.model_name)
    policy["spec"]["audit"] = {
        "endpoint": "http://vllm:8000",
        "model": "m",
        "dataset": {"configMapRef": {"name": "golden"}},
        "budgets": [128, 512],
    } | audit
    with run_operator() as runner:
        cluster.create(policy)
        obj = cluster.wait_for(
            *SP,
            NS,
            "chat",
            lambda o: (condition(o, "Ready") or {}).get("reason") == "InvalidSpec",
            within=20,
        )
        ready = condition(obj, "Ready")
        assert ready is not None
        assert ready["status"] == "False"
        assert field in ready["message"]
        wait_for_another_tick(cluster, obj)
        assert cluster.get(*DEPLOY, NS, "vllm") == before
    _finished(runner)
    assert runner.output.count("InvalidSpec:") == 1  # one Event, not one per tick
