"""The Helm chart, rendered by the real Helm engine (helm-python-sdk), offline.

Lint, render with the default values and each ci/*-values.yaml, check every
object against the Kubernetes schemas (kubernetes-validate, strict) or, for
the Prometheus Operator's kinds, against their CRD schemas; then check what
the operator relies on: RBAC equals stopbudget.clients.kube.PERMISSIONS, probes and
ports match stopbudget.clients.settings, the entrypoint exists, the CRD copy and the
generated files are up to date.
"""

from __future__ import annotations

import base64
import copy
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from stopbudget.cli import main
from stopbudget.clients import settings

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "stopbudget"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
KUBE_VERSION = "1.31"
RELEASE, NAMESPACE = "sb", "stopbudget"

Obj = dict[str, Any]

# -------------------------------------------------------------------- helpers


@cache
def _chart() -> helm.Chart:
    return helm.Chart.load(CHART)


@cache
def _render_cached(values_json: str) -> tuple[Obj, ...]:
    manifests = _chart().render(
        json.loads(values_json), name=RELEASE, namespace=NAMESPACE, is_install=True
    )
    objects: list[Obj] = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return tuple(objects)


def render(values: Obj | None = None) -> list[Obj]:
    """The objects the chart renders with `values` (a deep copy: tests may change them)."""
    return copy.deepcopy(list(_render_cached(json.dumps(values or {}, sort_keys=True))))


def notes(values: Obj | None = None) -> str:
    manifests = _chart().render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))


def ci_values(path: Path) -> Obj:
    loaded: Obj = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return loaded


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[Obj], kind: str) -> Obj:
    found = of_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container(objects: list[Obj]) -> Obj:
    containers = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    result: Obj = containers[0]
    return result


def env_of(objects: list[Obj]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container(objects)["env"]}


def load_generator(name: str) -> ModuleType:
    """One of the chart's hack/ scripts, imported from its file."""
    spec = importlib.util.spec_from_file_location(f"chart_{name}", CHART / "hack" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


VALUE_SETS = [pytest.param({}, id="default"), *(pytest.param(p, id=p.stem) for p in CI_VALUES)]


def values_of(case: Obj | Path) -> Obj:
    return ci_values(case) if isinstance(case, Path) else case


# ----------------------------------------------------- chart, lint and render


def test_app_version_is_the_package_version() -> None:
    import stopbudget

    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert chart["appVersion"] == project["version"] == stopbudget.__version__
    assert _chart().metadata["appVersion"] == project["version"]


def test_ci_values_cover_the_four_setups() -> None:
    assert {p.stem for p in CI_VALUES} >= {
        "cluster-wide-values",
        "namespaced-values",
        "monitoring-values",
        "existing-secret-values",
    }


@pytest.mark.parametrize("case", VALUE_SETS)
def test_strict_lint_is_clean(case: Obj | Path) -> None:
    report = helm.lint(
        CHART, values_of(case), strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}.0"
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems


def _strict(schema: Any) -> Any:
    """A CRD's structural schema as JSON Schema that rejects unknown fields."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


@cache
def _crd_schemas() -> dict[str, Obj]:
    loaded = yaml.safe_load((ROOT / "tests/schemas/prometheus-operator.yaml").read_text("utf-8"))
    return {kind: _strict(loaded[kind]) for kind in ("ServiceMonitor", "PrometheusRule")}


def validate_object(obj: Obj) -> None:
    """Check one rendered object against its schema; raises on any problem."""
    if obj["apiVersion"] == "monitoring.coreos.com/v1":
        jsonschema.validate(obj, _crd_schemas()[obj["kind"]])
    else:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("case", VALUE_SETS)
def test_every_rendered_object_is_valid(case: Obj | Path) -> None:
    objects = render(values_of(case))
    assert objects
    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            validate_object(obj)
        except jsonschema.ValidationError as exc:
            pytest.fail(f"{where}: {exc.message} at {'.'.join(map(str, exc.absolute_path))}")
        namespaced = obj["kind"] not in {"ClusterRole", "ClusterRoleBinding"}
        assert ("namespace" in obj["metadata"]) == namespaced, where


def test_crd_schemas_used_for_prometheus_operator_kinds_are_strict() -> None:
    monitor = one(render({"monitoring": {"serviceMonitor": {"enabled": True}}}), "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["scrapeInterval"] = "30s"  # a typo of `interval`
    with pytest.raises(jsonschema.ValidationError, match="scrapeInterval"):
        validate_object(monitor)


def test_monitoring_objects_only_when_enabled() -> None:
    kinds = {o["kind"] for o in render()}
    assert kinds.isdisjoint({"ServiceMonitor", "PrometheusRule", "NetworkPolicy", "ConfigMap"})
    kinds = {o["kind"] for o in render(ci_values(CHART / "ci/monitoring-values.yaml"))}
    assert {"ServiceMonitor", "PrometheusRule", "ConfigMap"} <= kinds


def test_notes_tell_the_next_steps() -> None:
    text = notes()
    assert f"rollout status deployment/{RELEASE}-stopbudget" in text
    assert f"http://{RELEASE}-stopbudget.{NAMESPACE}.svc:8081/alertmanager" in text
    assert "kubectl apply --server-side -f" in text
    assert "prometheus.url is the chart's default" in text
    custom = notes({"prometheus": {"url": "http://prom.example:9090"}})
    assert "prometheus.url is the chart's default" not in custom


# ------------------------------------------------------------- values schema


def test_values_schema_and_readme_table_match_the_generator() -> None:
    gen = load_generator("gen_schema")
    for path, wanted in gen.outputs().items():
        assert path.read_text(encoding="utf-8") == wanted, (
            f"{path.relative_to(ROOT)} is out of date: run "
            "`.venv/bin/python charts/stopbudget/hack/gen_schema.py`"
        )


def test_every_values_key_is_documented_and_typed() -> None:
    schema = _chart().schema
    assert schema is not None

    def walk(node: Obj, path: str) -> Iterator[tuple[str, Obj]]:
        yield path, node
        for key, child in node.get("properties", {}).items():
            yield from walk(child, f"{path}.{key}" if path else key)

    for path, node in walk(schema, ""):
        if "properties" in node:
            assert node["additionalProperties"] is False, path
        else:
            assert node.get("description"), f"{path} has no description"
            assert "type" in node, path


def test_the_generator_refuses_an_undocumented_key() -> None:
    gen = load_generator("gen_schema")
    text = "image:\n  # -- Documented.\n  tag: ''\n  pullPolicy: Always\n"
    with pytest.raises(gen.ValuesDocError, match=r"image\.pullPolicy"):
        gen.render_schema(text)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": 2}, "additional properties 'replicaCount' not allowed"),
        ({"image": {"tga": "v1"}}, "additional properties 'tga' not allowed"),
        ({"operator": {"watchNamespaces": "serving"}}, "got string, want array"),
        ({"operator": {"watchNamespaces": ["Serving"]}}, "does not match pattern"),
        ({"operator": {"logFormat": "xml"}}, "value must be one of 'text', 'json'"),
        ({"metrics": {"port": "8080"}}, "got string, want integer"),
        ({"metrics": {"port": 70000}}, "maximum"),
        ({"prometheus": {"url": "prometheus:9090"}}, "does not match pattern"),
        ({"webhook": {"enabled": "yes"}}, "got string, want boolean"),
        ({"monitoring": {"prometheusRule": {"truncationHigh": {"threshold": 2}}}}, "maximum"),
        ({"monitoring": {"serviceMonitor": {"interval": "30 seconds"}}}, "does not match pattern"),
        ({"podLabels": {"tier": 1}}, "got number, want string"),
    ],
)
def test_schema_rejects_bad_values_with_a_clear_message(values: Obj, message: str) -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        _chart().validate_schema(values)
    assert message in str(caught.value)
    with pytest.raises(helm.HelmValuesError):  # install/template validate too
        _chart().render(values, name=RELEASE, namespace=NAMESPACE)


def test_schema_accepts_every_ci_values_file() -> None:
    for path in CI_VALUES:
        _chart().validate_schema(ci_values(path))


# ---------------------------------------------------------------------- CRDs


def test_chart_crd_is_the_generated_crd_byte_for_byte() -> None:
    source = (ROOT / "crds" / "stoppolicy.yaml").read_bytes()
    assert (CHART / "crds" / "stoppolicy.yaml").read_bytes() == source, (
        "charts/stopbudget/crds/stoppolicy.yaml differs from crds/stoppolicy.yaml: run `make crd`"
    )
    crds = _chart().crds
    assert [c["name"] for c in crds] == ["crds/stoppolicy.yaml"]
    assert crds[0]["data"].encode("utf-8") == source


def test_crds_are_not_templates() -> None:
    assert not any(o["kind"] == "CustomResourceDefinition" for o in render())


# ------------------------------------------------------------------------ RBAC

#: Resources that exist outside namespaces: a Role cannot grant them.
CLUSTER_SCOPED = {
    ("", "namespaces"),
    ("", "nodes"),
    ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("kopf.dev", "clusterkopfpeerings"),
    ("admissionregistration.k8s.io", "validatingwebhookconfigurations"),
    ("admissionregistration.k8s.io", "mutatingwebhookconfigurations"),
}

Grant = tuple[str, str, str]  # api group, resource, verb


def permissions() -> list[tuple[str, str, tuple[str, ...]]]:
    """stopbudget.clients.kube.PERMISSIONS: the rules the operator's code uses."""
    try:
        from stopbudget.clients import kube
    except ModuleNotFoundError as exc:
        if exc.name != "stopbudget.clients.kube":
            raise
        pytest.skip(
            "stopbudget.clients.kube is not written yet: RBAC is checked once PERMISSIONS exists"
        )
    rules = list(kube.PERMISSIONS)
    assert rules, "stopbudget.clients.kube.PERMISSIONS is empty"
    for group, resource, verbs in rules:
        assert isinstance(group, str)
        assert isinstance(resource, str)
        assert verbs
        assert all(isinstance(v, str) for v in verbs)
    return rules


def grants(rules: list[tuple[str, str, tuple[str, ...]]]) -> set[Grant]:
    return {(g, r, v) for g, r, verbs in rules for v in verbs}


def rendered_grants(role: Obj) -> set[Grant]:
    found: set[Grant] = set()
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule  # no resourceNames/URLs
        for part in (rule["apiGroups"], rule["resources"], rule["verbs"]):
            assert "*" not in part, f"wildcard in {rule}"
        found |= {
            (g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
        }
    return found


def _split(wanted: set[Grant]) -> tuple[set[Grant], set[Grant]]:
    cluster = {g for g in wanted if (g[0], g[1].split("/")[0]) in CLUSTER_SCOPED}
    return wanted - cluster, cluster


def _binding_ok(binding: Obj, kind: str, name: str, sa: str) -> None:
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": kind,
        "name": name,
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]


def test_cluster_wide_rbac_is_exactly_the_operators_permissions() -> None:
    wanted = grants(permissions())
    objects = render(ci_values(CHART / "ci/cluster-wide-values.yaml"))
    assert not of_kind(objects, "Role")
    assert not of_kind(objects, "RoleBinding")
    role = one(objects, "ClusterRole")
    assert rendered_grants(role) == wanted
    sa = one(objects, "ServiceAccount")["metadata"]["name"]
    _binding_ok(one(objects, "ClusterRoleBinding"), "ClusterRole", role["metadata"]["name"], sa)
    env = env_of(objects)
    assert env["STOPBUDGET_NAMESPACES"] == ""
    # kopf's peering stays off (one replica, Recreate), so kube.PEERING_PERMISSIONS is not granted.
    assert "STOPBUDGET_KOPF_PEERING" not in env


def test_namespaced_rbac_grants_namespaced_rules_only_in_watched_namespaces() -> None:
    values = ci_values(CHART / "ci/namespaced-values.yaml")
    watched = values["operator"]["watchNamespaces"]
    namespaced, cluster = _split(grants(permissions()))
    objects = render(values)
    sa = one(objects, "ServiceAccount")["metadata"]["name"]
    roles = {r["metadata"]["namespace"]: r for r in of_kind(objects, "Role")}
    bindings = {b["metadata"]["namespace"]: b for b in of_kind(objects, "RoleBinding")}
    assert sorted(roles) == sorted(bindings) == sorted(watched)
    for ns in watched:
        assert rendered_grants(roles[ns]) == namespaced, ns
        _binding_ok(bindings[ns], "Role", roles[ns]["metadata"]["name"], sa)
    cluster_roles = of_kind(objects, "ClusterRole")
    if cluster:
        assert rendered_grants(one(objects, "ClusterRole")) == cluster
        name = cluster_roles[0]["metadata"]["name"]
        _binding_ok(one(objects, "ClusterRoleBinding"), "ClusterRole", name, sa)
    else:
        assert not cluster_roles
        assert not of_kind(objects, "ClusterRoleBinding")
    assert env_of(objects)["STOPBUDGET_NAMESPACES"] == ",".join(watched)


def optional_permissions() -> dict[str, list[tuple[str, str, tuple[str, ...]]]]:
    """stopbudget.clients.kube.OPTIONAL_PERMISSIONS: rules granted by an ``rbac.<value>``."""
    from stopbudget.clients import kube

    return {value: list(rules) for value, rules in kube.OPTIONAL_PERMISSIONS.items()}


def test_every_optional_permission_has_a_documented_rbac_value_off_by_default() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    schema = _chart().schema
    assert schema is not None
    documented = schema["properties"]["rbac"]["properties"]
    for value in optional_permissions():
        assert values["rbac"][value] is False, value
        assert documented[value]["type"] == "boolean", value
        assert f"rbac.{value}" in (CHART / "README.md").read_text(encoding="utf-8"), value
    assert set(values["rbac"]) == {"create", *optional_permissions()}


@pytest.mark.parametrize("value", ["aiGateway", "refreshPods"])
def test_an_rbac_value_adds_exactly_its_rules_in_both_modes(value: str) -> None:
    extra = grants(optional_permissions()[value])
    assert extra, value
    base = grants(permissions())
    assert not extra & base, "an optional rule is already in PERMISSIONS"
    wide = ci_values(CHART / "ci/cluster-wide-values.yaml")
    wide.setdefault("rbac", {})[value] = True
    assert rendered_grants(one(render(wide), "ClusterRole")) == base | extra
    namespaced_values = ci_values(CHART / "ci/namespaced-values.yaml")
    namespaced_values.setdefault("rbac", {})[value] = True
    namespaced, _ = _split(base | extra)
    roles = of_kind(render(namespaced_values), "Role")
    assert roles
    for role in roles:
        assert rendered_grants(role) == namespaced
    # Both on: the union; neither: none of them (the default, checked above as well).
    both = render({"rbac": dict.fromkeys(optional_permissions(), True)})
    everything = grants([r for rules in optional_permissions().values() for r in rules])
    assert rendered_grants(one(both, "ClusterRole")) == base | everything
    assert not rendered_grants(one(render(), "ClusterRole")) & everything


def test_rbac_can_be_left_to_the_cluster_admin() -> None:
    kinds = {o["kind"] for o in render({"rbac": {"create": False}})}
    assert kinds.isdisjoint({"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"})


# ------------------------------------------- Deployment: what the operator needs


def test_one_replica_recreated_never_surged() -> None:
    spec = one(render(), "Deployment")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}


def test_entrypoint_is_stopbudget_run() -> None:
    c = container(render())
    assert c["command"] == ["stopbudget"]
    assert c["args"] == ["run"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["scripts"]["stopbudget"] == "stopbudget.cli.main:main"
    subcommands = next(
        action.choices
        for action in main.parser()._actions
        if isinstance(action.choices, dict) and "crd" in action.choices
    )
    if "run" not in subcommands:
        pytest.skip("`stopbudget run` is not in stopbudget.cli.main yet: the chart calls it")
    subcommands["run"].parse_args([])  # runs with no flags: the chart passes env only


def test_dockerfile_builds_the_entrypoint_the_chart_runs() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"^RUN pip install \.", text, re.M)
    assert re.search(r'^ENTRYPOINT \["stopbudget"\]$', text, re.M)
    assert re.search(r'^CMD \["run"\]$', text, re.M)
    user = re.search(r"^USER (\d+):(\d+)$", text, re.M)
    assert user, "the image must run as a numeric non-root user"
    pod = one(render(), "Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert (int(user.group(1)), int(user.group(2))) == (pod["runAsUser"], pod["runAsGroup"])
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert ignored[ignored.index("*") :][:2] == ["*", "!pyproject.toml"]


@pytest.mark.parametrize("case", VALUE_SETS)
def test_environment_is_valid_operator_settings(case: Obj | Path) -> None:
    env = env_of(render(values_of(case)))
    ours = {k: v for k, v in env.items() if k.startswith(settings.PREFIX)}
    unknown = {
        k
        for k in ours
        if k.removeprefix(settings.PREFIX).lower() not in settings.Settings.model_fields
    }
    assert not unknown, f"not settings of stopbudget.clients.settings: {unknown}"
    parsed = settings.from_env(ours)
    c = container(render(values_of(case)))
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert parsed.metrics_port == ports["metrics"]
    if "webhook" in ports:
        assert parsed.webhook_port == ports["webhook"]
        assert parsed.webhook_token_file is not None
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    for path in (
        parsed.webhook_token_file,
        parsed.prometheus_token_file,
        parsed.prometheus_ca_file,
    ):
        if path is not None:
            assert str(path.parent) in mounts, f"{path} is not on a mounted volume"


def test_default_ports_are_the_operators_defaults() -> None:
    defaults = settings.Settings()
    values = _chart().values
    assert values["metrics"]["port"] == defaults.metrics_port == 8080
    assert values["webhook"]["port"] == defaults.webhook_port == 8081
    service = one(render(), "Service")
    assert {(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        ("metrics", defaults.metrics_port, "metrics"),
        ("webhook", defaults.webhook_port, "webhook"),
    }
    assert {(p["name"], p["containerPort"]) for p in container(render())["ports"]} == {
        ("metrics", defaults.metrics_port),
        ("webhook", defaults.webhook_port),
    }


def test_probes_hit_healthz_and_readyz_on_the_metrics_port() -> None:
    c = container(render({"metrics": {"port": 9100}}))
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["metrics"] == 9100
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert env_of(render({"metrics": {"port": 9100}}))["STOPBUDGET_METRICS_PORT"] == "9100"


@pytest.mark.parametrize("case", VALUE_SETS)
def test_security_context_is_non_root_read_only_and_drops_everything(case: Obj | Path) -> None:
    objects = render(values_of(case))
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    c = container(objects)
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "privileged" not in sc
    volumes = {v["name"]: v for v in pod["volumes"]}
    tmp = next(m for m in c["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in volumes[tmp["name"]]
    assert all(m.get("readOnly") for m in c["volumeMounts"] if m["mountPath"] != "/tmp")
    assert pod["automountServiceAccountToken"] is True
    assert c["resources"]["requests"]
    assert c["resources"]["limits"]["memory"]


def test_image_tag_defaults_to_app_version_and_digest_wins() -> None:
    assert container(render())["image"] == "ghcr.io/stopbudget/stopbudget:0.1.0"
    assert container(render({"image": {"tag": "dev"}}))["image"].endswith(":dev")
    digest = "sha256:" + "a" * 64
    image = container(render({"image": {"repository": "r.example/sb", "digest": digest}}))["image"]
    assert image == f"r.example/sb@{digest}"


def test_scheduling_and_extra_env_pass_through() -> None:
    values = {
        "nodeSelector": {"pool": "system"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {}},
        "operator": {"extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}]},
        "priorityClassName": "system-cluster-critical",
    }
    objects = render(values)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == values["nodeSelector"]
    assert pod["tolerations"] == values["tolerations"]
    assert pod["affinity"] == values["affinity"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert env_of(objects)["HTTPS_PROXY"] == "http://proxy:3128"


def test_existing_service_account_must_be_named() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"serviceAccount\.name"):
        _chart().render({"serviceAccount": {"create": False}}, name=RELEASE, namespace=NAMESPACE)
    objects = render({"serviceAccount": {"create": False, "name": "ops"}})
    assert not of_kind(objects, "ServiceAccount")
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"


# --------------------------------------------------------- secrets and tokens


def _secret_volume(objects: list[Obj], name: str) -> Obj:
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    volume: Obj = next(v for v in pod["volumes"] if v["name"] == name)["secret"]
    return volume


def test_generated_webhook_token_is_random_and_mounted_as_a_file() -> None:
    objects = render()
    secret = one(objects, "Secret")
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{48}", token)
    assert _secret_volume(objects, "webhook-token") == {
        "secretName": secret["metadata"]["name"],
        "defaultMode": 0o440,
        "items": [{"key": "token", "path": "token"}],
    }
    assert env_of(objects)["STOPBUDGET_WEBHOOK_TOKEN_FILE"] == "/etc/stopbudget/webhook/token"
    again = _chart().render({}, name=RELEASE, namespace=NAMESPACE)
    assert token not in json.dumps(again), "a fresh render must draw a fresh token"


def test_secrets_template_keeps_the_token_with_lookup() -> None:
    source = (CHART / "templates" / "secrets.yaml").read_text(encoding="utf-8")
    assert 'lookup "v1" "Secret" .Release.Namespace $name' in source


def test_existing_secrets_are_mounted_and_nothing_is_generated() -> None:
    values = ci_values(CHART / "ci/existing-secret-values.yaml")
    objects = render(values)
    assert not of_kind(objects, "Secret")
    assert _secret_volume(objects, "webhook-token")["secretName"] == "stopbudget-webhook"
    assert _secret_volume(objects, "webhook-token")["items"] == [
        {"key": "alertmanager-token", "path": "token"}
    ]
    assert _secret_volume(objects, "prometheus-token")["secretName"] == "prometheus-reader"
    assert _secret_volume(objects, "prometheus-token")["items"] == [
        {"key": "bearer", "path": "token"}
    ]
    env = env_of(objects)
    assert env["STOPBUDGET_PROMETHEUS_TOKEN_FILE"] == "/etc/stopbudget/prometheus/token"
    assert env["STOPBUDGET_PROMETHEUS_URL"] == values["prometheus"]["url"]


def test_prometheus_token_from_values_goes_into_a_secret_not_the_environment() -> None:
    objects = render({"prometheus": {"auth": {"token": "s3cret"}}})
    secret = next(s for s in of_kind(objects, "Secret") if "prometheus" in s["metadata"]["name"])
    assert base64.b64decode(secret["data"]["token"]) == b"s3cret"
    assert "s3cret" not in json.dumps(one(objects, "Deployment"))
    assert _secret_volume(objects, "prometheus-token")["secretName"] == secret["metadata"]["name"]


def test_prometheus_ca_is_mounted_from_a_config_map() -> None:
    objects = render(ci_values(CHART / "ci/namespaced-values.yaml"))
    assert (
        env_of(objects)["STOPBUDGET_PROMETHEUS_CA_FILE"] == "/etc/stopbudget/prometheus-ca/ca.crt"
    )
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "prometheus-ca")
    assert volume["configMap"] == {
        "name": "prometheus-ca",
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }


def test_webhook_can_be_turned_off() -> None:
    objects = render({"webhook": {"enabled": False}})
    assert not of_kind(objects, "Secret")
    assert [p["name"] for p in one(objects, "Service")["spec"]["ports"]] == ["metrics"]
    env = env_of(objects)
    assert "STOPBUDGET_WEBHOOK_TOKEN_FILE" not in env
    assert settings.from_env(env).webhook_token_file is None


# ---------------------------------------------------------- network policy


def test_network_policy_admits_alertmanager_to_the_webhook_and_prometheus_to_metrics() -> None:
    objects = render(ci_values(CHART / "ci/namespaced-values.yaml"))
    policy = one(objects, "NetworkPolicy")["spec"]
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    by_port = {rule["ports"][0]["port"]: rule for rule in policy["ingress"]}
    assert set(by_port) == {"webhook", "metrics"}
    assert all(len(rule["ports"]) == 1 for rule in policy["ingress"])
    am = by_port["webhook"]["from"][0]
    assert am["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "alertmanager"}}
    assert am["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    prom = by_port["metrics"]["from"][0]
    assert prom["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}


# ------------------------------------------------------------------ monitoring


def test_service_monitor_scrapes_metrics_and_keeps_the_policy_namespace_label() -> None:
    objects = render(ci_values(CHART / "ci/monitoring-values.yaml"))
    monitor = one(objects, "ServiceMonitor")
    service = one(objects, "Service")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics"
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "15s"
    assert endpoint["honorLabels"] is True


def test_dashboard_config_map_holds_the_committed_json_for_the_sidecar() -> None:
    objects = render(ci_values(CHART / "ci/monitoring-values.yaml"))
    config_map = one(objects, "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "LLM serving"}
    committed = (CHART / "dashboards" / "stopbudget.json").read_text(encoding="utf-8")
    assert json.loads(config_map["data"]["stopbudget.json"]) == json.loads(committed)
    relabelled = render(
        {"monitoring": {"grafanaDashboard": {"enabled": True, "labels": {"dash": "yes"}}}}
    )
    assert one(relabelled, "ConfigMap")["metadata"]["labels"]["dash"] == "yes"


def test_dashboard_matches_its_generator() -> None:
    gen = load_generator("gen_dashboard")
    assert gen.DASHBOARD.read_text(encoding="utf-8") == gen.render(), (
        "dashboards/stopbudget.json is out of date: run "
        "`.venv/bin/python charts/stopbudget/hack/gen_dashboard.py`"
    )


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    board = json.loads((CHART / "dashboards" / "stopbudget.json").read_text(encoding="utf-8"))
    exprs = " ".join(t["expr"] for p in board["panels"] for t in p.get("targets", []))
    for series in (
        "stopbudget_budget_tokens",
        "stopbudget_target_budget_tokens",
        "stopbudget_floor_budget_tokens",
        "stopbudget_pressure_ratio",
        "stopbudget_audit_exact_match_ratio",
        "stopbudget_budget_saving_ratio",
        "stopbudget_audit_runs_total",
        "stopbudget_fallback_active",
    ):
        assert series in exprs, series
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    names = {v["name"] for v in board["templating"]["list"]}
    assert names == {"datasource", "namespace", "stoppolicy"}


# ---------------------------------------------------------------- the README


def alertmanager_example() -> str:
    text = (CHART / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- alertmanager-example:start -->", 1)[1].split(
        "<!-- alertmanager-example:end -->", 1
    )[0]
    match = re.search(r"```yaml\n(.*?)```", block, re.S)
    assert match, "the Alertmanager example must be one yaml block"
    return match.group(1)


def test_readme_alertmanager_example_routes_to_the_webhook_with_a_token_file() -> None:
    config = yaml.safe_load(alertmanager_example())
    route = next(r for r in config["route"]["routes"] if r["receiver"] == "stopbudget")
    assert route["continue"] is True
    assert {"namespace", "stoppolicy"} <= set(route["group_by"])
    receiver = next(r for r in config["receivers"] if r["name"] == "stopbudget")
    (hook,) = receiver["webhook_configs"]
    assert hook["url"] == "http://stopbudget.stopbudget.svc:8081/alertmanager"
    assert hook["http_config"]["authorization"]["credentials_file"].endswith("/token")


def test_readme_alertmanager_example_is_a_valid_alertmanager_config(tmp_path: Path) -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip("amtool not found: `make test` installs Debian's prometheus-alertmanager")
    path = tmp_path / "alertmanager.yml"
    path.write_text(alertmanager_example(), encoding="utf-8")
    done = subprocess.run(
        [amtool, "check-config", str(path)], check=False, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_readme_documents_install_upgrade_and_every_alert() -> None:
    text = (CHART / "README.md").read_text(encoding="utf-8")
    assert "helm install stopbudget ./charts/stopbudget" in text
    assert "kubectl apply --server-side -f charts/stopbudget/crds/" in text
    assert "--skip-crds" in text
    for alert in (
        "StopPolicyEMBelowTarget",
        "StopPolicyEMBelowFloor",
        "StopPolicyBudgetPinnedAtFloor",
        "StopPolicyMetricsUnavailable",
        "StopPolicyAuditFailing",
        "StopPolicyTruncationHigh",
    ):
        assert alert in text, alert
