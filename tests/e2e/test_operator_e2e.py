"""The whole control loop, for real: kopf runs the operator, real Prometheus scrapes an
engine exporter, and the Deployment is patched — on both Kubernetes backends (the
`cluster` fixture): kmock's emulator, and the real kube-apiserver with the operator
authenticated as the Helm chart's ServiceAccount (tests/support/clusters.py).

Every wait polls a condition with a timeout.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from kopf.testing import KopfRunner

from stopbudget.devkit import servers
from stopbudget.devkit.exporter import EngineExporter
from tests.support import builders
from tests.support.builders import container, stop_policy
from tests.support.clusters import Cluster
from tests.unit.core.test_sink_aigateway import assert_valid_upstream, load_upstream_crd

pytestmark = pytest.mark.servers

SP = ("stopbudget.io/v1alpha1", "StopPolicy")
DEPLOY = ("apps/v1", "Deployment")
OPERATOR = ["run", "-A", "--standalone", "-m", "stopbudget.controller.handlers"]

SIDECAR = {
    "name": "metrics-proxy",
    "image": "nginx:1.27",
    "env": [{"name": "MAX_TOKENS", "value": "sidecar-own-value"}],
    "args": ["--port=9000"],
}


def deployment(ns: str, name: str, env: list[dict[str, str]] | None = None) -> dict[str, Any]:
    vllm = container(
        args=["--model", "meta-llama/Llama-3.1-8B-Instruct"],
        env=env if env is not None else [{"name": "HF_HOME", "value": "/cache"}],
    )
    return builders.deployment(name, ns, [vllm, SIDECAR], replicas=2)


def stoppolicy(ns: str, name: str, target: str, model: str, **control: Any) -> dict[str, Any]:
    return stop_policy(
        name,
        ns,
        target=target,
        container="vllm",
        budget={
            "min": 64,
            "max": 1024,
            "initial": 1024,
            "sink": {"type": "env", "name": "MAX_TOKENS"},
        },
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
            "downscaleStabilization": "2s",
            "tolerance": 0.05,
            "fallback": {"failureThreshold": 2, "behavior": "max"},
        }
        | control,
    )


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


def sidecar_of(dep: dict[str, Any] | None) -> dict[str, Any]:
    """The sidecar container as stored (the real API server fills in defaults)."""
    assert dep is not None
    found: dict[str, Any] = dep["spec"]["template"]["spec"]["containers"][1]
    assert found["name"] == SIDECAR["name"]
    return found


def wait_for_another_tick(cluster: Cluster, seen: dict[str, Any] | None) -> None:
    """Wait until the operator has evaluated the policy again since ``seen``."""
    assert seen is not None
    first = seen["status"]["lastEvaluationTime"]
    cluster.wait_for(
        *SP,
        cluster.ns,
        "chat",
        lambda o: ((o or {}).get("status") or {}).get("lastEvaluationTime") != first,
        within=20,
    )


@pytest.fixture
def operator_env(
    cluster: Cluster,
    prometheus_server: servers.DevPrometheus,
    monkeypatch: pytest.MonkeyPatch,
) -> Cluster:
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
    operator_env: Cluster, make_exporter: Callable[..., EngineExporter]
) -> None:
    cluster = operator_env
    exporter = make_exporter()
    exporter.set_load(waiting=0, running=4, kv_cache=0.3)
    sidecar = sidecar_of(cluster.create(deployment(cluster.ns, "vllm")))
    with run_operator() as runner:
        cluster.create(stoppolicy(cluster.ns, "chat", "vllm", exporter.model_name))

        # No load: the EM-target budget, 512 (cheapest with a lower bound >= 0.8).
        obj = cluster.wait_for(*SP, cluster.ns, "chat", has_status(budget=512), within=20)
        assert condition(obj, "Ready") is not None
        dep = cluster.get(*DEPLOY, cluster.ns, "vllm")
        assert env_of(dep)["MAX_TOKENS"] == "512"
        assert env_of(dep)["HF_HOME"] == "/cache"
        assert dep is not None
        assert sidecar_of(dep) == sidecar

        # Queue at 4x its target: down to the floor, 256; the sidecar untouched.
        exporter.set_load(waiting=40, running=96, kv_cache=0.97)
        obj = cluster.wait_for(*SP, cluster.ns, "chat", has_status(budget=256), within=20)
        assert obj is not None
        assert "pressure 4" in obj["status"]["recommendation"]["reason"]
        dep = cluster.get(*DEPLOY, cluster.ns, "vllm")
        assert env_of(dep)["MAX_TOKENS"] == "256"
        assert env_of(dep, "metrics-proxy")["MAX_TOKENS"] == "sidecar-own-value"
        assert dep is not None
        assert sidecar_of(dep) == sidecar
        assert condition(obj, "MetricsAvailable")["status"] == "True"  # type: ignore[index]

        # Load gone: back to 512.
        exporter.set_load(waiting=0, running=2, kv_cache=0.1)
        obj = cluster.wait_for(*SP, cluster.ns, "chat", has_status(budget=512), within=20)
        assert obj is not None
        assert obj["status"]["originalValue"] == {"present": False}

        # Deleted: what the operator added is removed.
        cluster.delete(*SP, cluster.ns, "chat")
        cluster.wait_for(*SP, cluster.ns, "chat", lambda o: o is None, within=20)
        dep = cluster.get(*DEPLOY, cluster.ns, "vllm")
        assert "MAX_TOKENS" not in env_of(dep)
        assert dep is not None
        assert sidecar_of(dep) == sidecar
    _finished(runner)
    assert "BudgetChanged" in runner.output


def test_delete_restores_the_original_value(
    operator_env: Cluster, make_exporter: Callable[..., EngineExporter]
) -> None:
    cluster = operator_env
    exporter = make_exporter()
    exporter.set_load(waiting=0)
    cluster.create(deployment(cluster.ns, "vllm", env=[{"name": "MAX_TOKENS", "value": "2048"}]))
    with run_operator() as runner:
        cluster.create(stoppolicy(cluster.ns, "chat", "vllm", exporter.model_name))
        obj = cluster.wait_for(*SP, cluster.ns, "chat", has_status(budget=512), within=20)
        assert obj is not None
        assert obj["status"]["originalValue"] == {"present": True, "value": "2048"}
        cluster.delete(*SP, cluster.ns, "chat")
        cluster.wait_for(*SP, cluster.ns, "chat", lambda o: o is None, within=20)
        assert env_of(cluster.get(*DEPLOY, cluster.ns, "vllm"))["MAX_TOKENS"] == "2048"
    _finished(runner)


@pytest.mark.parametrize("how", ["Recommend", "Paused", "annotation"])
def test_recommend_and_paused_never_patch(
    operator_env: Cluster, make_exporter: Callable[..., EngineExporter], how: str
) -> None:
    cluster = operator_env
    exporter = make_exporter()
    exporter.set_load(waiting=40)
    cluster.create(deployment(cluster.ns, "vllm", env=[{"name": "MAX_TOKENS", "value": "1024"}]))
    before = cluster.get(*DEPLOY, cluster.ns, "vllm")
    policy = stoppolicy(
        cluster.ns, "chat", "vllm", exporter.model_name, mode="Auto" if how == "annotation" else how
    )
    if how == "annotation":
        policy["metadata"]["annotations"] = {"stopbudget.io/paused": "true"}
    with run_operator() as runner:
        cluster.create(policy)
        if how == "Recommend":
            obj = cluster.wait_for(
                *SP,
                cluster.ns,
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
                cluster.ns,
                "chat",
                lambda o: (condition(o, "Paused") or {}).get("status") == "True",
                within=20,
            )
            wait_for_another_tick(cluster, obj)
        after = cluster.get(*DEPLOY, cluster.ns, "vllm")
        assert after == before
        if how == "annotation":  # un-pausing resumes control
            cluster.patch(
                *SP,
                cluster.ns,
                "chat",
                {"metadata": {"annotations": {"stopbudget.io/paused": None}}},
            )
            cluster.wait_for(*SP, cluster.ns, "chat", has_status(budget=256), within=20)
            assert env_of(cluster.get(*DEPLOY, cluster.ns, "vllm"))["MAX_TOKENS"] == "256"
    _finished(runner)


@pytest.mark.parametrize(
    ("target", "container", "reason", "fragment"),
    [
        ("missing", "vllm", "TargetNotFound", "Deployment {ns}/missing was not found"),
        ("vllm", "tgi", "SinkError", "tgi"),
    ],
)
def test_missing_target_is_a_condition_not_a_crash(
    operator_env: Cluster,
    make_exporter: Callable[..., EngineExporter],
    target: str,
    container: str,
    reason: str,
    fragment: str,
) -> None:
    cluster = operator_env
    exporter = make_exporter()
    cluster.create(deployment(cluster.ns, "vllm"))
    before = cluster.get(*DEPLOY, cluster.ns, "vllm")
    policy = stoppolicy(cluster.ns, "chat", target, exporter.model_name)
    policy["spec"]["targetRef"]["container"] = container
    with run_operator() as runner:
        cluster.create(policy)
        obj = cluster.wait_for(
            *SP,
            cluster.ns,
            "chat",
            lambda o: (condition(o, "Ready") or {}).get("reason") == reason,
            within=20,
        )
        ready = condition(obj, "Ready")
        assert ready is not None
        assert ready["status"] == "False"
        assert fragment.format(ns=cluster.ns) in ready["message"]
        assert cluster.get(*DEPLOY, cluster.ns, "vllm") == before
    _finished(runner)


def test_restart_resumes_without_a_spurious_patch(
    operator_env: Cluster, make_exporter: Callable[..., EngineExporter]
) -> None:
    cluster = operator_env
    exporter = make_exporter()
    exporter.set_load(waiting=40)
    cluster.create(deployment(cluster.ns, "vllm"))
    with run_operator() as runner:
        cluster.create(stoppolicy(cluster.ns, "chat", "vllm", exporter.model_name))
        cluster.wait_for(*SP, cluster.ns, "chat", has_status(budget=256), within=20)
    _finished(runner)
    dep = cluster.get(*DEPLOY, cluster.ns, "vllm")
    assert dep is not None
    version = dep["metadata"]["resourceVersion"]
    obj = cluster.get(*SP, cluster.ns, "chat")
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

        cluster.wait_for(*SP, cluster.ns, "chat", ticked, within=20)
        dep = cluster.get(*DEPLOY, cluster.ns, "vllm")
        assert dep is not None
        assert dep["metadata"]["resourceVersion"] == version
        assert env_of(dep)["MAX_TOKENS"] == "256"
    _finished(runner)


def test_prometheus_outage_is_fallback_after_exactly_the_threshold_and_loses_nothing(
    cluster: Cluster,
    start_prometheus: Callable[..., servers.DevPrometheus],
    make_exporter: Callable[..., EngineExporter],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Prometheus stops: Fallback after exactly failureThreshold failed ticks, with the
    status the operator owns intact throughout; it recovers; delete restores the true
    original (an outage once made the operator forget it and restore a mid-run value)."""
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
    original = {"present": True, "value": "2048"}
    cluster.create(deployment(cluster.ns, "vllm", env=[{"name": "MAX_TOKENS", "value": "2048"}]))
    policy = stoppolicy(
        cluster.ns,
        "chat",
        "vllm",
        exporter.model_name,
        fallback={"failureThreshold": 3, "behavior": "max"},
    )
    with run_operator() as runner:
        cluster.create(policy)
        before = cluster.wait_for(*SP, cluster.ns, "chat", has_status(budget=256), within=30)
        assert before is not None
        assert before["status"]["originalValue"] == original
        patched_at = before["status"]["lastPatchTime"]
        stopped_at = before["status"]["lastEvaluationTime"]

        prom.stop()
        ticks: dict[str, dict[str, Any]] = {}  # each tick of the outage, by its time

        def fallback_on(o: dict[str, Any] | None) -> bool:
            status = (o or {}).get("status") or {}
            stamp = status.get("lastEvaluationTime", "")
            if stamp > stopped_at:
                ticks.setdefault(stamp, status)
            return (condition(o, "Fallback") or {}).get("status") == "True"

        obj = cluster.wait_for(*SP, cluster.ns, "chat", fallback_on, within=30)
        assert obj is not None
        assert condition(obj, "MetricsAvailable")["status"] == "False"  # type: ignore[index]
        failures = [ticks[t]["failures"] for t in sorted(ticks)]
        assert failures == list(range(failures[0], 4)), failures  # one more per tick, no reset
        assert obj["status"]["failures"] == 3  # Fallback on the third failed tick, not later
        for status in ticks.values():
            assert status["originalValue"] == original
            assert status["lastPatchTime"] >= patched_at
            assert status["history"]
        obj = cluster.wait_for(*SP, cluster.ns, "chat", has_status(budget=1024), within=20)
        assert obj is not None
        assert obj["status"]["originalValue"] == original
        assert env_of(cluster.get(*DEPLOY, cluster.ns, "vllm"))["MAX_TOKENS"] == "1024"

        prom.start()
        obj = cluster.wait_for(
            *SP,
            cluster.ns,
            "chat",
            lambda o: (condition(o, "Fallback") or {}).get("status") == "False",
            within=40,
        )
        obj = cluster.wait_for(*SP, cluster.ns, "chat", has_status(budget=256), within=30)
        assert obj is not None
        assert obj["status"]["originalValue"] == original

        cluster.delete(*SP, cluster.ns, "chat")
        cluster.wait_for(*SP, cluster.ns, "chat", lambda o: o is None, within=20)
        assert env_of(cluster.get(*DEPLOY, cluster.ns, "vllm"))["MAX_TOKENS"] == "2048"
    _finished(runner)
    assert os.environ["STOPBUDGET_PROMETHEUS_URL"] == prom.url


def test_configmap_sink_writes_the_key_and_restores_it(
    operator_env: Cluster, make_exporter: Callable[..., EngineExporter]
) -> None:
    """The sink the gate reads: a ConfigMap key, written under load, put back on delete;
    the Deployment (which must exist) is never touched."""
    cluster = operator_env
    exporter = make_exporter()
    exporter.set_load(waiting=0)
    dep = cluster.create(deployment(cluster.ns, "vllm"))
    cluster.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "gate-budgets", "namespace": cluster.ns},
            "data": {"default.output": "2048", "unrelated": "kept"},
        }
    )
    policy = stoppolicy(cluster.ns, "chat", "vllm", exporter.model_name)
    policy["spec"]["budget"]["sink"] = {
        "type": "configMap",
        "configMapName": "gate-budgets",
        "name": "default.output",
    }

    def key(value: str) -> Callable[[dict[str, Any] | None], bool]:
        return lambda o: ((o or {}).get("data") or {}).get("default.output") == value

    with run_operator() as runner:
        cluster.create(policy)
        cluster.wait_for("v1", "ConfigMap", cluster.ns, "gate-budgets", key("512"), within=20)
        exporter.set_load(waiting=40)
        cm = cluster.wait_for("v1", "ConfigMap", cluster.ns, "gate-budgets", key("256"), 20)
        assert cm is not None
        assert cm["data"]["unrelated"] == "kept"
        obj = cluster.get(*SP, cluster.ns, "chat")
        assert obj is not None
        assert obj["status"]["originalValue"] == {"present": True, "value": "2048"}
        cluster.delete(*SP, cluster.ns, "chat")
        cluster.wait_for(*SP, cluster.ns, "chat", lambda o: o is None, within=20)
        cm = cluster.get("v1", "ConfigMap", cluster.ns, "gate-budgets")
        assert cm is not None
        assert cm["data"] == {"default.output": "2048", "unrelated": "kept"}
        assert cluster.get(*DEPLOY, cluster.ns, "vllm") == dep
    _finished(runner)


@pytest.mark.parametrize(
    ("audit", "field"),
    [
        ({"schedule": "61 * * * *"}, "spec.audit.schedule"),
        ({"answerPattern": "(unclosed"}, "spec.audit.answerPattern"),
    ],
)
def test_what_cel_cannot_check_is_an_invalid_spec_condition(
    operator_env: Cluster,
    make_exporter: Callable[..., EngineExporter],
    audit: dict[str, str],
    field: str,
) -> None:
    cluster = operator_env
    exporter = make_exporter()
    cluster.create(deployment(cluster.ns, "vllm"))
    before = cluster.get(*DEPLOY, cluster.ns, "vllm")
    policy = stoppolicy(cluster.ns, "chat", "vllm", exporter.model_name)
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
            cluster.ns,
            "chat",
            lambda o: (condition(o, "Ready") or {}).get("reason") == "InvalidSpec",
            within=20,
        )
        ready = condition(obj, "Ready")
        assert ready is not None
        assert ready["status"] == "False"
        assert field in ready["message"]
        wait_for_another_tick(cluster, obj)
        assert cluster.get(*DEPLOY, cluster.ns, "vllm") == before
    _finished(runner)
    assert runner.output.count("InvalidSpec:") == 1  # one Event, not one per tick


# --------------------------------------------------------------- aiGateway sink, refreshPods

AISB = ("aigateway.envoyproxy.io/v1alpha1", "AIServiceBackend")


def ai_service_backend(ns: str, name: str, mutation: dict[str, Any]) -> dict[str, Any]:
    """An AIServiceBackend as Envoy AI Gateway's docs write one (an Envoy Gateway Backend)."""
    return {
        "apiVersion": AISB[0],
        "kind": AISB[1],
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "schema": {"name": "OpenAI"},
            "backendRef": {"name": name, "kind": "Backend", "group": "gateway.envoyproxy.io"},
            "bodyMutation": mutation,
        },
    }


def body_set(obj: dict[str, Any] | None) -> list[dict[str, str]] | None:
    return (((obj or {}).get("spec") or {}).get("bodyMutation") or {}).get("set")


def test_aigateway_sink_sets_the_body_field_and_restores_it(
    operator_env: Cluster, make_exporter: Callable[..., EngineExporter]
) -> None:
    """Envoy AI Gateway's AIServiceBackend (its own CRD on the real server, the operator
    with the chart's rbac.aiGateway rules): max_tokens in spec.bodyMutation.set follows the
    load, every object stays valid against the upstream schema, delete puts it back."""
    cluster = operator_env
    cluster.install_crd(load_upstream_crd())
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig_with({"aiGateway": True}))
    exporter = make_exporter()
    exporter.set_load(waiting=0)
    dep = cluster.create(deployment(cluster.ns, "vllm"))
    mutation = {"set": [{"path": "temperature", "value": "0"}], "remove": ["user"]}
    created = cluster.create(ai_service_backend(cluster.ns, "vllm", mutation))
    policy = stoppolicy(cluster.ns, "chat", "vllm", exporter.model_name)
    policy["spec"]["budget"]["sink"] = {
        "type": "aiGateway",
        "aiServiceBackendName": "vllm",
        "name": "max_tokens",
    }

    def holds(value: str) -> Callable[[dict[str, Any] | None], bool]:
        return lambda o: {"path": "max_tokens", "value": value} in (body_set(o) or [])

    with run_operator() as runner:
        cluster.create(policy)
        obj = cluster.wait_for(*AISB, cluster.ns, "vllm", holds("512"), within=20)
        assert obj is not None
        assert_valid_upstream(obj)
        exporter.set_load(waiting=40)
        obj = cluster.wait_for(*AISB, cluster.ns, "vllm", holds("256"), within=20)
        assert obj is not None
        assert_valid_upstream(obj)
        assert body_set(obj) == [
            {"path": "temperature", "value": "0"},
            {"path": "max_tokens", "value": "256"},
        ]
        assert obj["spec"]["bodyMutation"]["remove"] == ["user"]
        sp = cluster.get(*SP, cluster.ns, "chat")
        assert sp is not None
        assert sp["status"]["originalValue"] == {"present": False}
        cluster.wait_for_event(cluster.ns, "chat", "BudgetChanged", count=2)
        cluster.delete(*SP, cluster.ns, "chat")
        cluster.wait_for(*SP, cluster.ns, "chat", lambda o: o is None, within=20)
        restored = cluster.get(*AISB, cluster.ns, "vllm")
        assert restored is not None
        assert restored["spec"] == created["spec"]
        assert cluster.get(*DEPLOY, cluster.ns, "vllm") == dep
    _finished(runner)


def pod(ns: str, name: str, labels: dict[str, str]) -> dict[str, Any]:
    """A pod as a ReplicaSet would create it (no controller-manager runs in the tests)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai:v0.11.0"}]},
    }


def create_pods(cluster: Cluster, *pods: dict[str, Any]) -> list[dict[str, Any]]:
    """Create pods, and first the namespace's ServiceAccount ``default`` that the real API
    server's admission wants (kube-controller-manager, which makes it, does not run)."""
    if cluster.get("v1", "ServiceAccount", cluster.ns, "default") is None:
        account = {"apiVersion": "v1", "kind": "ServiceAccount"}
        cluster.create({**account, "metadata": {"name": "default", "namespace": cluster.ns}})
    return [cluster.create(p) for p in pods]


def gate_budgets(ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "gate-budgets", "namespace": ns},
        "data": {"default.output": "2048"},
    }


def refreshing_policy(ns: str, model: str) -> dict[str, Any]:
    policy = stoppolicy(ns, "chat", "vllm", model)
    policy["spec"]["budget"]["sink"] = {
        "type": "configMap",
        "configMapName": "gate-budgets",
        "name": "default.output",
        "refreshPods": True,
    }
    return policy


def revision_of(obj: dict[str, Any] | None) -> str | None:
    annotations = ((obj or {}).get("metadata") or {}).get("annotations") or {}
    return annotations.get("stopbudget.io/budget-revision")


def test_configmap_sink_refresh_pods_annotates_the_targets_pods_after_each_write(
    operator_env: Cluster, make_exporter: Callable[..., EngineExporter]
) -> None:
    """refreshPods: after each write (and the restore) the pods the Deployment's selector
    matches carry the ConfigMap's resourceVersion; a pod of another app is left alone."""
    cluster = operator_env
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig_with({"refreshPods": True}))
    exporter = make_exporter()
    exporter.set_load(waiting=0)
    cluster.create(deployment(cluster.ns, "vllm"))
    cluster.create(gate_budgets(cluster.ns))
    mine = ["vllm-7d9f-a", "vllm-7d9f-b"]
    labels = {"app": "vllm", "pod-template-hash": "7d9f"}
    pods = [pod(cluster.ns, n, labels) for n in mine] + [pod(cluster.ns, "other-1", {"app": "x"})]
    *_, other = create_pods(cluster, *pods)

    def refreshed_to(cm: dict[str, Any] | None) -> None:
        assert cm is not None
        revision = cm["metadata"]["resourceVersion"]
        for name in mine:
            cluster.wait_for("v1", "Pod", cluster.ns, name, lambda o: revision_of(o) == revision)

    def key(value: str) -> Callable[[dict[str, Any] | None], bool]:
        return lambda o: ((o or {}).get("data") or {}).get("default.output") == value

    with run_operator() as runner:
        cluster.create(refreshing_policy(cluster.ns, exporter.model_name))
        refreshed_to(cluster.wait_for("v1", "ConfigMap", cluster.ns, "gate-budgets", key("512")))
        exporter.set_load(waiting=40)
        refreshed_to(
            cluster.wait_for("v1", "ConfigMap", cluster.ns, "gate-budgets", key("256"), 20)
        )
        cluster.delete(*SP, cluster.ns, "chat")
        cluster.wait_for(*SP, cluster.ns, "chat", lambda o: o is None, within=20)
        refreshed_to(cluster.get("v1", "ConfigMap", cluster.ns, "gate-budgets"))
        assert cluster.get("v1", "Pod", cluster.ns, "other-1") == other
    _finished(runner)
    assert "PodRefreshFailed" not in runner.output


def test_a_failed_pod_refresh_is_a_warning_event_not_a_failed_tick(
    operator_env: Cluster, make_exporter: Callable[..., EngineExporter]
) -> None:
    """The pods cannot be refreshed — on the real server the operator lacks the chart's
    rbac.refreshPods rules (a 403), on the emulator the Deployment has no selector — and
    the budget is written anyway, Ready stays True, a Warning Event says what to do."""
    cluster = operator_env
    exporter = make_exporter()
    exporter.set_load(waiting=0)
    target = deployment(cluster.ns, "vllm")
    if cluster.backend == "kmock":  # the real server refuses a Deployment without a selector
        del target["spec"]["selector"]
        fix = "give the Deployment a selector"
    else:
        fix = "rbac.refreshPods=true"
    cluster.create(target)
    cluster.create(gate_budgets(cluster.ns))
    create_pods(cluster, pod(cluster.ns, "vllm-1", {"app": "vllm"}))
    with run_operator() as runner:
        cluster.create(refreshing_policy(cluster.ns, exporter.model_name))
        obj = cluster.wait_for(*SP, cluster.ns, "chat", has_status(budget=512), within=20)
        cm = cluster.get("v1", "ConfigMap", cluster.ns, "gate-budgets")
        assert cm is not None
        assert cm["data"]["default.output"] == "512"
        ready = condition(obj, "Ready")
        assert ready is not None
        assert (ready["status"], ready["reason"]) == ("True", "Reconciled")
        cluster.wait_for_event(cluster.ns, "chat", "PodRefreshFailed")
        failed = [e for e in cluster.events(cluster.ns) if e["reason"] == "PodRefreshFailed"]
        assert failed  # one per write
        for event in failed:
            assert event["type"] == "Warning"
            assert fix in event["message"]
            assert "the budget is written" in event["message"]
        assert revision_of(cluster.get("v1", "Pod", cluster.ns, "vllm-1")) is None
    _finished(runner)


@pytest.mark.parametrize(
    ("case", "reason", "fragment"),
    [
        ("missing", "TargetNotFound", "is Envoy AI Gateway installed, with its CRD"),
        ("no-rbac", "KubernetesError", "install the Helm chart with rbac.aiGateway=true"),
    ],
)
def test_aigateway_sink_problems_are_conditions_that_name_the_fix(
    operator_env: Cluster,
    make_exporter: Callable[..., EngineExporter],
    case: str,
    reason: str,
    fragment: str,
) -> None:
    """No AIServiceBackend of that name (or no Envoy AI Gateway): TargetNotFound; the chart
    installed without rbac.aiGateway (a 403, which only the real server's RBAC gives)."""
    cluster = operator_env
    if case == "no-rbac" and cluster.backend == "kmock":
        pytest.skip("the emulator allows every request: RBAC is the real server's")
    cluster.install_crd(load_upstream_crd())
    if case == "missing":
        os.environ["KUBECONFIG"] = str(cluster.kubeconfig_with({"aiGateway": True}))
    else:
        cluster.create(ai_service_backend(cluster.ns, "vllm", {"set": []}))
    exporter = make_exporter()
    cluster.create(deployment(cluster.ns, "vllm"))
    policy = stoppolicy(cluster.ns, "chat", "vllm", exporter.model_name)
    policy["spec"]["budget"]["sink"] = {
        "type": "aiGateway",
        "aiServiceBackendName": "vllm",
        "name": "max_tokens",
    }
    with run_operator() as runner:
        cluster.create(policy)
        obj = cluster.wait_for(
            *SP,
            cluster.ns,
            "chat",
            lambda o: (condition(o, "Ready") or {}).get("reason") == reason,
            within=20,
        )
        ready = condition(obj, "Ready")
        assert ready is not None
        assert ready["status"] == "False"
        assert fragment in ready["message"]
    _finished(runner)
