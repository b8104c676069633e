"""kube.py against the Kubernetes emulator, through a kubeconfig, as against a cluster.

The first part drives :class:`stopbudget.clients.kube.Kube` (the official client in a
thread pool) with the patches of :mod:`stopbudget.core.sinks`: only the intended
value changes, a stale ``test`` is a :class:`~stopbudget.clients.kube.PatchConflict`, a
missing object is a :class:`~stopbudget.clients.kube.TargetNotFound`, the policy's
status and annotations are patched where they belong, and every call is covered
by ``kube.PERMISSIONS``.  The second part checks that each gap
:mod:`stopbudget.devkit.emulator` fills is there, for the reason it states.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import socket
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kmock
import kopf
import pytest
import yaml
from kubernetes import client, config

from stopbudget import api
from stopbudget.clients import kube
from stopbudget.core import sinks
from stopbudget.devkit import emulator
from tests.support.builders import container, deployment

NS = "serving"
DEPLOYMENT = ("apps/v1", "Deployment")
CONFIG_MAP = ("v1", "ConfigMap")
POLICY = (api.API_VERSION, api.KIND)
VLLM_FORMAT = '{"max_new_tokens": {budget}}'
TARGET = api.TargetRef(name="vllm-llama", container="vllm")


def vllm_deployment(args: list[str] | None = None) -> dict[str, Any]:
    """A vLLM Deployment with a metrics sidecar that has the same env var and flag names."""
    serving = container(
        image="vllm/vllm-openai:v0.8.5",
        args=args
        if args is not None
        else ["--model", "meta-llama/Llama-3.1-8B-Instruct", "--max-model-len=8192"],
        env=[{"name": "HF_HOME", "value": "/cache"}, {"name": "MAX_TOKENS", "value": "512"}],
        ports=[{"containerPort": 8000}],
    )
    sidecar = container(
        "metrics",
        "example/exporter:1",
        args=["--override-generation-config", "untouched", "--port=9400"],
        env=[{"name": "MAX_TOKENS", "value": "untouched"}],
    )
    return deployment(
        "vllm-llama", NS, [serving, sidecar], replicas=2, app="vllm", labels={"app": "vllm"}
    )


def budget_spec(sink: dict[str, Any]) -> api.Budget:
    return api.Budget.model_validate({"min": 64, "max": 4096, "sink": sink})


def versionless(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` without the fields every write changes."""
    out = copy.deepcopy(obj)
    out["metadata"].pop("resourceVersion", None)
    out["metadata"].pop("generation", None)
    return out


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[emulator.Cluster]:
    async with emulator.emulated_cluster(tmp_path) as running:
        yield running


@pytest.fixture
async def k8s(cluster: emulator.Cluster) -> AsyncIterator[kube.Kube]:
    connection = kube.Kube.connect(cluster.kubeconfig, workers=4)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
def stoppolicy(policy: dict[str, Any]) -> dict[str, Any]:
    policy["metadata"]["namespace"] = NS
    policy["spec"]["targetRef"] = {"name": "vllm-llama", "container": "vllm"}
    return policy


# --------------------------------------------------------------------------- sinks through kube


async def test_env_patch_changes_only_the_value(cluster: emulator.Cluster, k8s: kube.Kube) -> None:
    await cluster.create(vllm_deployment())
    before = await k8s.get_deployment(NS, "vllm-llama")
    assert before == cluster.get(*DEPLOYMENT, NS, "vllm-llama")
    spec = budget_spec({"type": "env", "name": "MAX_TOKENS"})
    assert sinks.read(spec, TARGET, before).budget == 512

    patch = sinks.set_patch(spec, TARGET, 256, before)
    assert patch is not None
    patched = await k8s.apply(NS, patch)
    after = await k8s.get_deployment(NS, "vllm-llama")

    assert after == patched
    expected = versionless(before)
    expected["spec"]["template"]["spec"]["containers"][0]["env"][1]["value"] = "256"
    assert versionless(after) == expected
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    assert after["metadata"]["resourceVersion"] != before["metadata"]["resourceVersion"]
    assert sinks.set_patch(spec, TARGET, 256, after) is None


@pytest.mark.parametrize(
    "args",
    [
        ["--model", "m", '--override-generation-config={"max_new_tokens": 512}', "--seed=1"],
        ["--model", "m", "--override-generation-config", '{"max_new_tokens": 512}', "--seed=1"],
        ["--model", "m", "--seed=1"],
    ],
    ids=["one item", "two items", "absent"],
)
async def test_vllm_arg_patch(cluster: emulator.Cluster, k8s: kube.Kube, args: list[str]) -> None:
    await cluster.create(vllm_deployment(args))
    before = await k8s.get_deployment(NS, "vllm-llama")
    spec = budget_spec(
        {"type": "arg", "name": "--override-generation-config", "format": VLLM_FORMAT}
    )
    original = sinks.read(spec, TARGET, before)

    patch = sinks.set_patch(spec, TARGET, 300, before)
    assert patch is not None
    assert patch.restarts
    after = await k8s.apply(NS, patch)

    value = sinks.read(spec, TARGET, after)
    assert (value.raw, value.budget) == ('{"max_new_tokens": 300}', 300)
    new_args = after["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in new_args if "300" not in a] == [a for a in args if "512" not in a]
    assert (
        after["spec"]["template"]["spec"]["containers"][1]
        == before["spec"]["template"]["spec"]["containers"][1]
    )

    restore = sinks.restore_patch(spec, TARGET, original.original(), after)
    assert restore is not None
    restored = await k8s.apply(NS, restore)
    assert restored["spec"] == before["spec"]


async def test_annotation_patch_is_not_a_spec_change(
    cluster: emulator.Cluster, k8s: kube.Kube
) -> None:
    await cluster.create(vllm_deployment())
    before = await k8s.get_deployment(NS, "vllm-llama")
    spec = budget_spec({"type": "annotation", "name": "stopbudget.io/max-tokens"})
    patch = sinks.set_patch(spec, TARGET, 128, before)
    assert patch is not None
    assert not patch.restarts
    after = await k8s.apply(NS, patch)
    assert after["metadata"]["annotations"] == {"stopbudget.io/max-tokens": "128"}
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["spec"] == before["spec"]


@pytest.mark.parametrize(
    "edit",
    [
        # Someone reorders the containers: the container-name test fails.
        lambda d: {"spec": {"template": {"spec": {"containers": list(reversed(_containers(d)))}}}},
        # Someone changes the value: the value test fails.
        lambda d: {
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {**_containers(d)[0], "env": [{"name": "MAX_TOKENS", "value": "9"}]},
                            _containers(d)[1],
                        ]
                    }
                }
            }
        },
    ],
    ids=["containers reordered", "value changed"],
)
async def test_stale_patch_is_a_conflict(
    cluster: emulator.Cluster, k8s: kube.Kube, edit: Any
) -> None:
    await cluster.create(vllm_deployment())
    read = await k8s.get_deployment(NS, "vllm-llama")
    spec = budget_spec({"type": "env", "name": "MAX_TOKENS"})
    patch = sinks.set_patch(spec, TARGET, 256, read)
    assert patch is not None

    edited = await cluster.patch(*DEPLOYMENT, NS, "vllm-llama", edit(read))
    with pytest.raises(kube.PatchConflict) as caught:
        await k8s.apply(NS, patch)
    assert (caught.value.kind, caught.value.namespace, caught.value.name) == (
        "Deployment",
        NS,
        "vllm-llama",
    )
    assert "read again on the next tick" in str(caught.value)
    assert cluster.get(*DEPLOYMENT, NS, "vllm-llama") == edited  # nothing was written

    fresh = await k8s.get_deployment(NS, "vllm-llama")
    retry = sinks.set_patch(spec, TARGET, 256, fresh)
    assert retry is not None
    assert sinks.read(spec, TARGET, await k8s.apply(NS, retry)).budget == 256


def _containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    return containers


async def test_missing_objects_are_target_not_found(k8s: kube.Kube) -> None:
    with pytest.raises(kube.TargetNotFound) as caught:
        await k8s.get_deployment(NS, "nope")
    assert (caught.value.kind, caught.value.namespace, caught.value.name) == (
        "Deployment",
        NS,
        "nope",
    )
    assert str(caught.value) == (
        "Deployment serving/nope was not found: create it, or point the policy at an existing one"
    )
    with pytest.raises(kube.TargetNotFound):
        await k8s.patch_deployment(
            NS, "nope", [{"op": "add", "path": "/metadata/labels", "value": {}}]
        )
    with pytest.raises(kube.TargetNotFound, match="ConfigMap serving/nope"):
        await k8s.get_config_map(NS, "nope")
    with pytest.raises(kube.TargetNotFound, match="StopPolicy serving/nope"):
        await k8s.patch_policy_status(NS, "nope", {"budget": 1})


async def test_config_map_sink(cluster: emulator.Cluster, k8s: kube.Kube) -> None:
    await cluster.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "limits", "namespace": NS},
            "data": {"routes.yaml": "a: b\n"},
        }
    )
    spec = budget_spec({"type": "configMap", "name": "max_tokens", "configMapName": "limits"})
    assert sinks.target_of(spec, TARGET) == ("ConfigMap", "limits")
    before = await k8s.get_config_map(NS, "limits")
    original = sinks.read(spec, TARGET, config_map=before)
    assert not original.present

    patch = sinks.set_patch(spec, TARGET, 700, config_map=before)
    assert patch is not None
    after = await k8s.apply(NS, patch)
    assert after["data"] == {"routes.yaml": "a: b\n", "max_tokens": "700"}
    assert await k8s.get_config_map_key(NS, "limits", "max_tokens") == "700"

    restore = sinks.restore_patch(spec, TARGET, original.original(), config_map=after)
    assert restore is not None
    restored = await k8s.apply(NS, restore)
    assert restored["data"] == before["data"]

    with pytest.raises(kube.TargetNotFound, match=r"has no key 'max_tokens' in data \(its keys"):
        await k8s.get_config_map_key(NS, "limits", "max_tokens")


async def test_status_patch(
    cluster: emulator.Cluster, k8s: kube.Kube, stoppolicy: dict[str, Any]
) -> None:
    created = await cluster.create(stoppolicy)
    status = api.StopPolicyStatus(
        budget=256,
        original_value=api.OriginalValue(present=True, value="512"),
        observed_generation=1,
    ).to_json()

    result = await k8s.patch_policy_status(NS, "p", status)
    stored = cluster.get(*POLICY, NS, "p")
    assert stored is not None
    assert result == stored
    assert api.StopPolicyStatus.model_validate(stored["status"]).budget == 256
    assert stored["status"]["originalValue"] == {"present": True, "value": "512"}
    assert stored["spec"] == created["spec"]
    assert stored["metadata"]["generation"] == created["metadata"]["generation"]

    await k8s.patch_policy_status(NS, "p", {"budget": None, "failures": 2})
    stored = cluster.get(*POLICY, NS, "p")
    assert stored is not None
    assert "budget" not in stored["status"]
    assert stored["status"]["failures"] == 2
    assert stored["status"]["originalValue"] == {"present": True, "value": "512"}

    # The request went to the /status subresource, where the API server accepts status.
    patches = [r for r in cluster.emulator if r.method == kmock.method.PATCH and _from_client(r)]
    assert [r.subresource for r in patches] == ["status", "status"]


async def test_annotation_removal(
    cluster: emulator.Cluster, k8s: kube.Kube, stoppolicy: dict[str, Any]
) -> None:
    stoppolicy["metadata"]["annotations"] = {api.ANNOTATION_AUDIT_REQUESTED: "true", "keep": "me"}
    created = await cluster.create(stoppolicy)
    result = await k8s.remove_policy_annotation(NS, "p")
    assert result["metadata"]["annotations"] == {"keep": "me"}
    assert result["spec"] == created["spec"]
    again = await k8s.remove_policy_annotation(NS, "p")  # already gone: a no-op
    assert again["metadata"]["resourceVersion"] == result["metadata"]["resourceVersion"]
    labelled = await k8s.patch_policy_metadata(NS, "p", {"labels": {"team": "ml"}})
    assert labelled["metadata"]["labels"] == {"team": "ml"}


# --------------------------------------------------------------------------- errors and RBAC


def _from_client(request: kmock.Request) -> bool:
    """Whether the request came from the official client (not from the test helpers)."""
    return not request.headers.get("User-Agent", "").startswith("kmock/")


def _rbac(request: kmock.Request) -> tuple[str, str, str]:
    assert request.resource is not None
    assert request.action is not None
    resource = str(request.resource.plural)
    if request.subresource:
        resource += f"/{request.subresource}"
    verb = {
        kmock.action.FETCH: "get",
        kmock.action.LIST: "list",
        kmock.action.WATCH: "watch",
        kmock.action.CREATE: "create",
        kmock.action.UPDATE: "patch" if request.method == kmock.method.PATCH else "update",
        kmock.action.DELETE: "delete",
    }[request.action]
    return str(request.resource.group), resource, verb


async def test_permissions_cover_every_call(
    cluster: emulator.Cluster, k8s: kube.Kube, stoppolicy: dict[str, Any]
) -> None:
    await cluster.create(vllm_deployment())
    await cluster.create(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "g", "namespace": NS}}
    )
    stoppolicy["metadata"]["annotations"] = {api.ANNOTATION_AUDIT_REQUESTED: "true"}
    await cluster.create(stoppolicy)
    deployment = await k8s.get_deployment(NS, "vllm-llama")
    await k8s.patch_deployment(
        NS, "vllm-llama", [{"op": "test", "path": "/kind", "value": deployment["kind"]}]
    )
    await k8s.get_config_map(NS, "g")
    await k8s.patch_config_map(NS, "g", [{"op": "add", "path": "/data", "value": {"k": "v"}}])
    await k8s.get_config_map_key(NS, "g", "k")
    await k8s.patch_policy_status(NS, "p", {"budget": 64})
    await k8s.remove_policy_annotation(NS, "p")
    await k8s.patch_policy_metadata(NS, "p", {"labels": {"a": "b"}})

    allowed = {(g, r, v) for g, r, verbs in kube.PERMISSIONS for v in verbs}
    used = {_rbac(r) for r in cluster.emulator if r.resource is not None and _from_client(r)}
    assert used == {
        ("apps", "deployments", "get"),
        ("apps", "deployments", "patch"),
        ("", "configmaps", "get"),
        ("", "configmaps", "patch"),
        (api.GROUP, "stoppolicies/status", "patch"),
        (api.GROUP, "stoppolicies", "patch"),
    }
    assert used <= allowed


async def test_optional_permissions_cover_the_optional_calls(
    cluster: emulator.Cluster, k8s: kube.Kube
) -> None:
    """The aiGateway sink and refreshPods use exactly the rules of their chart values."""
    from tests.unit.core.test_sink_aigateway import backend, load_upstream_crd

    cluster.install_crd(load_upstream_crd())
    await cluster.create(backend() | {"metadata": {"name": "vllm", "namespace": NS}})
    labels = {"app": "vllm"}
    for name, pod_labels in (("vllm-1", labels), ("other-1", {"app": "other"})):
        await cluster.create({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": pod_labels},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        })  # fmt: skip
    found = await k8s.get_sink_object("AIServiceBackend", NS, "vllm")
    spec = found["spec"]
    await k8s.patch_ai_service_backend(NS, "vllm", [{"op": "test", "path": "/spec", "value": spec}])
    pods = await k8s.list_pods(NS, "app=vllm")
    assert [p["metadata"]["name"] for p in pods] == ["vllm-1"]  # GAP 8: the selector holds
    patched = await k8s.patch_pod_metadata(NS, "vllm-1", sinks.refresh_patch("7"))
    assert patched["metadata"]["annotations"] == {api.ANNOTATION_BUDGET_REVISION: "7"}

    used = {_rbac(r) for r in cluster.emulator if r.resource is not None and _from_client(r)}
    assert used == {
        ("aigateway.envoyproxy.io", "aiservicebackends", "get"),
        ("aigateway.envoyproxy.io", "aiservicebackends", "patch"),
        ("", "pods", "list"),
        ("", "pods", "patch"),
    }
    optional = {
        (g, r, v) for rules in kube.OPTIONAL_PERMISSIONS.values() for g, r, verbs in rules
        for v in verbs
    }  # fmt: skip
    assert used == optional


@pytest.mark.parametrize(
    ("kind", "value"), [("AIServiceBackend", "aiGateway"), ("Pod", "refreshPods")]
)
def test_a_403_on_an_optional_kind_names_its_chart_value(kind: str, value: str) -> None:
    error = kube.Forbidden(kind, NS, "x", "forbidden")
    assert f"install the Helm chart with rbac.{value}=true" in str(error)
    assert error.status == 403


def test_a_missing_ai_service_backend_asks_whether_envoy_ai_gateway_is_installed() -> None:
    error = kube.TargetNotFound("AIServiceBackend", NS, "vllm")
    assert "is Envoy AI Gateway installed, with its CRD aiservicebackends." in str(error)


async def test_permissions_cover_what_kopf_does(
    cluster: emulator.Cluster, stoppolicy: dict[str, Any]
) -> None:
    """kopf as the operator runs it: cluster-wide, standalone, no CRD/namespace scanning."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=cluster.url, token="emulator")

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.scanning.disabled = True
        settings.persistence.finalizer = f"{api.GROUP}/finalizer"

    @kopf.on.create(api.GROUP, api.VERSION, api.PLURAL, registry=registry)
    async def created(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        kopf.info(body, reason="Budget", message="hello")
        patch.status["budget"] = 64

    stop = threading.Event()
    operator = threading.Thread(
        target=lambda: asyncio.run(
            kopf.operator(registry=registry, clusterwide=True, standalone=True, stop_flag=stop)
        )
    )
    operator.start()
    try:
        await cluster.create(stoppolicy)
        await cluster.wait_for(*POLICY, NS, "p", lambda p: bool(p and p.get("status")))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not any(r.plural == "events" for r, _, _ in cluster.emulator.objects):
            assert loop.time() < deadline, "kopf posted no Event"
            await cluster.emulator.wait_changed(deadline - loop.time())
        await cluster.delete(*POLICY, NS, "p")
        await cluster.wait_for(*POLICY, NS, "p", lambda p: p is None)
    finally:
        stop.set()
        await asyncio.to_thread(operator.join, 10)

    def by_kopf(request: kmock.Request) -> bool:
        agent = request.headers.get("User-Agent", "")
        return (
            agent.startswith("kopf/")
            and request.resource is not None
            and bool(request.resource.plural)
        )

    used = {_rbac(r) for r in cluster.emulator if by_kopf(r)}
    assert used == {
        (api.GROUP, "stoppolicies", "list"),
        (api.GROUP, "stoppolicies", "watch"),
        (api.GROUP, "stoppolicies", "patch"),
        (api.GROUP, "stoppolicies/status", "patch"),
        ("", "events", "create"),
    }
    allowed = {(g, r, v) for g, r, verbs in kube.PERMISSIONS for v in verbs}
    assert used <= allowed


def test_permissions_are_exact_and_minimal() -> None:
    rules = kube.PERMISSIONS + kube.PEERING_PERMISSIONS
    for group, resource, verbs in rules:
        assert "*" not in group + resource + "".join(verbs)
        assert verbs
        assert len(set(verbs)) == len(verbs)
        assert set(verbs) <= {"get", "list", "watch", "create", "patch"}
        assert re.fullmatch(r"[a-z]+(/status)?", resource)
    resources = [(g, r) for g, r, _ in kube.PERMISSIONS]
    assert len(resources) == len(set(resources))
    assert ("", "namespaces") not in resources  # cluster-wide: kopf does not list namespaces
    assert (api.GROUP, "stoppolicies", ("list", "watch", "patch")) in kube.PERMISSIONS
    assert ("", "events", ("create",)) in kube.PERMISSIONS


@pytest.mark.parametrize(
    ("status", "body", "error", "message"),
    [
        (403, {"message": 'deployments.apps "vllm-llama" is forbidden', "reason": "Forbidden"},
         kube.KubeApiError, r"forbidden .*grant the operator's ServiceAccount the rules in "
         r"stopbudget.clients.kube.PERMISSIONS"),
        (500, {"message": "etcdserver: request timed out", "reason": "InternalError"},
         kube.KubeApiError, r"failed on Deployment serving/vllm-llama \(500 InternalError\): "
         r"etcdserver: request timed out; retried on the next tick"),
        (422, {"message": 'Deployment.apps "vllm-llama" is invalid: spec...', "reason": "Invalid",
               "details": {"causes": [{"field": "spec.template.spec.containers[0].env"}]}},
         kube.PatchRejected, r"refused the patch of Deployment serving/vllm-llama \(422\): "
         r'Deployment.apps "vllm-llama" is invalid'),
        (409, {"message": "the object has been modified", "reason": "Conflict"},
         kube.PatchConflict, "changed since it was read"),
    ],
    ids=["forbidden", "server error", "invalid", "conflict"],
)  # fmt: skip
async def test_api_errors_are_typed(
    cluster: emulator.Cluster,
    k8s: kube.Kube,
    status: int,
    body: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    await cluster.create(vllm_deployment())
    answer = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": status, **body}
    cluster.emulator["patch", kmock.name("vllm-llama")] << status << answer
    unchanged = [{"op": "test", "path": "/kind", "value": "Deployment"}]
    with pytest.raises(error, match=message) as caught:
        await k8s.patch_deployment(NS, "vllm-llama", unchanged)
    if isinstance(caught.value, kube.KubeApiError):
        assert caught.value.status == status


async def test_unreachable_api(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(emulator.kubeconfig_for(f"http://127.0.0.1:{port}")))
    async with kube.Kube.connect(path, timeout=(1.0, 1.0)) as k:
        with pytest.raises(kube.KubeApiError, match="cannot reach the Kubernetes API at") as caught:
            await k.get_deployment(NS, "vllm-llama")
    assert caught.value.status is None


# --------------------------------------------------------------------------- emulator gaps


async def test_gap1_identity_is_stamped(cluster: emulator.Cluster) -> None:
    # No namespace in the body: the API server takes it from the URL.
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}}
    cm = await cluster.request("POST", cluster.path(*CONFIG_MAP, NS), body)
    meta = cm["metadata"]
    assert meta["namespace"] == NS
    assert uuid.UUID(meta["uid"])
    assert meta["resourceVersion"].isdigit()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meta["creationTimestamp"])
    assert "generation" not in meta  # ConfigMaps have no generation
    deployment = await cluster.create(vllm_deployment())
    assert deployment["metadata"]["generation"] == 1
    assert int(deployment["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])


async def test_gap2_generate_name(cluster: emulator.Cluster) -> None:
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"namespace": NS, "generateName": "kopf-event-"},
        "message": "hello",
    }
    first = await cluster.create(event)
    second = await cluster.create(event)
    names = [first["metadata"]["name"], second["metadata"]["name"]]
    assert names[0] != names[1]
    assert all(re.fullmatch(r"kopf-event-[bcdfghjklmnpqrstvwxz2456789]{5}", n) for n in names)
    assert all(cluster.get("v1", "Event", NS, n) is not None for n in names)


async def test_gap3_failed_test_is_422_like_the_api_server(cluster: emulator.Cluster) -> None:
    await cluster.create(vllm_deployment())
    stale = [
        {"op": "test", "path": "/spec/replicas", "value": 5},
        {"op": "replace", "path": "/spec/replicas", "value": 1},
    ]
    with pytest.raises(emulator.EmulatorRequestError) as caught:
        await cluster.patch(*DEPLOYMENT, NS, "vllm-llama", stale)
    assert caught.value.status == 422
    assert caught.value.body == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "the server rejected our request due to an error in our request",
        "reason": "Invalid",
        "details": {},
        "code": 422,
    }
    with pytest.raises(emulator.EmulatorRequestError) as missing:
        await cluster.patch(*DEPLOYMENT, NS, "vllm-llama", [{"op": "remove", "path": "/spec/nope"}])
    assert missing.value.status == 422
    with pytest.raises(emulator.EmulatorRequestError) as invalid:
        await cluster.patch(*DEPLOYMENT, NS, "vllm-llama", [{"op": "frobnicate", "path": "/spec"}])
    assert invalid.value.status == 400
    stored = cluster.get(*DEPLOYMENT, NS, "vllm-llama")
    assert stored is not None
    assert stored["spec"]["replicas"] == 2


async def test_gap4_status_is_a_subresource(
    cluster: emulator.Cluster, stoppolicy: dict[str, Any]
) -> None:
    path = cluster.path(*POLICY, NS)
    created = await cluster.request("POST", path, {**stoppolicy, "status": {"budget": 1}})
    assert "status" not in created  # dropped on create
    item = f"{path}/p"
    main = await cluster.request(
        "PATCH", item, {"spec": {"budget": {"max": 2048}}, "status": {"budget": 2}}
    )
    assert main["spec"]["budget"]["max"] == 2048
    assert "status" not in main  # a status sent to the object is ignored
    status = await cluster.request(
        "PATCH", f"{item}/status", {"spec": {"budget": {"max": 1}}, "status": {"budget": 3}}
    )
    assert status["status"] == {"budget": 3}
    assert status["spec"]["budget"]["max"] == 2048  # a spec sent to /status is ignored
    # Deployments have a status subresource too; ConfigMaps do not.
    assert cluster.emulator.isolates_status(cluster.resource(*DEPLOYMENT))
    assert not cluster.emulator.isolates_status(cluster.resource(*CONFIG_MAP))


async def test_gap5_generation_bumps_on_spec_changes_only(
    cluster: emulator.Cluster, stoppolicy: dict[str, Any]
) -> None:
    created = await cluster.create({**stoppolicy, "status": {"budget": 1}})

    def versions(obj: dict[str, Any]) -> tuple[int, int]:
        return obj["metadata"]["generation"], int(obj["metadata"]["resourceVersion"])

    gen, rv = versions(created)
    annotated = await cluster.patch(*POLICY, NS, "p", {"metadata": {"annotations": {"a": "b"}}})
    assert versions(annotated) == (gen, rv + 1)
    status = await cluster.patch(*POLICY, NS, "p", {"status": {"budget": 2}}, subresource="status")
    assert versions(status) == (gen, rv + 2)
    spec = await cluster.patch(*POLICY, NS, "p", {"spec": {"budget": {"max": 512}}})
    assert versions(spec) == (gen + 1, rv + 3)
    same = await cluster.patch(*POLICY, NS, "p", {"spec": {"budget": {"max": 512}}})
    assert versions(same) == (gen + 1, rv + 3)  # no change, no write
    await cluster.patch(*POLICY, NS, "p", {"metadata": {"finalizers": ["stopbudget.io/x"]}})
    await cluster.delete(*POLICY, NS, "p")
    deleting = cluster.get(*POLICY, NS, "p")
    assert deleting is not None
    assert deleting["metadata"]["deletionTimestamp"]
    assert versions(deleting) == (gen + 2, rv + 5)


async def _events(response: Any, count: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(5):
        while len(out) < count:
            line = await response.content.readline()
            if line.strip():
                out.append(json.loads(line))
    return out


async def test_gap6_watch_from_a_version_replays_nothing_older(cluster: emulator.Cluster) -> None:
    await cluster.create(vllm_deployment())
    listing = await cluster.request("GET", cluster.path(*DEPLOYMENT, NS))
    version = listing["metadata"]["resourceVersion"]
    stored = cluster.get(*DEPLOYMENT, NS, "vllm-llama")
    assert stored is not None
    assert version == stored["metadata"]["resourceVersion"]

    watch = cluster.path(*DEPLOYMENT, None)
    params = {"watch": "true", "resourceVersion": version}
    async with cluster.server.client.get(watch, params=params) as response:
        # A no-op patch is not a write; the next event is the real change.
        await cluster.patch(*DEPLOYMENT, NS, "vllm-llama", {"spec": {"replicas": 2}})
        await cluster.patch(*DEPLOYMENT, NS, "vllm-llama", {"spec": {"replicas": 3}})
        [event] = await _events(response, 1)
    assert event["type"] == "MODIFIED"
    assert event["object"]["spec"]["replicas"] == 3
    assert int(event["object"]["metadata"]["resourceVersion"]) == int(version) + 1

    async with cluster.server.client.get(watch, params={"watch": "true"}) as response:
        [replayed] = await _events(response, 1)
    assert replayed["type"] == "ADDED"
    assert replayed["object"]["spec"]["replicas"] == 3


async def test_gap7_namespaces(cluster: emulator.Cluster) -> None:
    await cluster.create(vllm_deployment())
    listing = await cluster.request("GET", "/api/v1/namespaces")
    assert listing["kind"] == "NamespaceList"
    assert [n["metadata"]["name"] for n in listing["items"]] == ["default", NS]
    one = await cluster.request("GET", f"/api/v1/namespaces/{NS}")
    assert (one["kind"], one["metadata"]["name"], one["status"]["phase"]) == (
        "Namespace",
        NS,
        "Active",
    )
    with pytest.raises(emulator.EmulatorRequestError) as caught:
        await cluster.request("GET", "/api/v1/namespaces/elsewhere")
    assert caught.value.status == 404

    async with cluster.server.client.get(
        "/api/v1/namespaces",
        params={"watch": "true", "resourceVersion": listing["metadata"]["resourceVersion"]},
    ) as response:
        await cluster.create(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "c", "namespace": "new-ns"},
            }
        )
        [event] = await _events(response, 1)
    assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "new-ns")


def test_threaded_cluster_serves_synchronous_clients(tmp_path: Path) -> None:
    with emulator.emulated_cluster_in_thread(tmp_path) as running:
        created = running.create(vllm_deployment())
        api_client = config.new_client_from_config(str(running.kubeconfig))  # type: ignore[no-untyped-call]
        try:
            apps = client.AppsV1Api(api_client)

            def scale() -> None:
                apps.patch_namespaced_deployment(
                    "vllm-llama", NS, [{"op": "replace", "path": "/spec/replicas", "value": 5}],
                    _content_type="application/json-patch+json", _preload_content=False,
                )  # fmt: skip

            worker = threading.Thread(target=scale)
            worker.start()
            scaled = running.wait_for(
                *DEPLOYMENT, NS, "vllm-llama", lambda d: bool(d and d["spec"]["replicas"] == 5)
            )
            worker.join()
        finally:
            api_client.close()
        assert scaled is not None
        assert scaled["metadata"]["generation"] == created["metadata"]["generation"] + 1
        running.delete(*DEPLOYMENT, NS, "vllm-llama")
        assert running.get(*DEPLOYMENT, NS, "vllm-llama") is None


async def test_record_false_keeps_only_the_latest_state(tmp_path: Path) -> None:
    async with emulator.emulated_cluster(tmp_path, record=False) as running:
        await running.create(vllm_deployment())
        for replicas in range(3, 8):
            await running.patch(*DEPLOYMENT, NS, "vllm-llama", {"spec": {"replicas": replicas}})
        key = (running.resource(*DEPLOYMENT), NS, "vllm-llama")
        assert len(running.emulator.objects[key].history) == 1
        stored = running.get(*DEPLOYMENT, NS, "vllm-llama")
        assert stored is not None
        assert stored["spec"]["replicas"] == 7
        assert stored["metadata"]["generation"] == 6
        assert list(running.emulator) == []  # no request kept
        await running.delete(*DEPLOYMENT, NS, "vllm-llama")
        assert key not in running.emulator.objects
