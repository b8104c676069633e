"""The chart's whole lifecycle with the real Helm engine on a real kube-apiserver (v1.28.7).

Helm is ``helm-python-sdk`` (no helm binary): install, upgrade, rollback, uninstall,
history, against a fresh API server of this module's own (so the CRD is installed by
Helm from ``charts/stopbudget/crds/``). No nodes run, so nothing waits for pods.

The README's install, upgrade and uninstall commands are read from the README and run
as written: ``helm ...`` lines through the SDK (:func:`helm_command`), ``kubectl ...``
lines with kubectl. So the README says exactly what is tested.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from stopbudget import api
from stopbudget.devkit import apiserver, servers
from stopbudget.devkit.exporter import EngineExporter
from tests.support.builders import container, deployment
from tests.support.clusters import CHART, ROOT, install_monitoring_crds
from tests.support.procs import Process
from tests.support.requires import require_real_apiserver
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.servers, pytest.mark.apiserver]

README = ROOT / "README.md"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
#: The previous CRD: the one whose curve field was `n` (here quoted, so the server takes it).
OLD_CRD = ROOT / "tests" / "fixtures" / "stoppolicy-crd-with-n.yaml"
CRD_NAME = f"{api.PLURAL}.{api.GROUP}"
#: Kinds the chart can create; none may remain after an uninstall.
CHART_KINDS = (
    "deployments", "services", "serviceaccounts", "secrets", "configmaps", "roles",
    "rolebindings", "networkpolicies", "servicemonitors", "prometheusrules", "clusterroles",
    "clusterrolebindings",
)  # fmt: skip

Obj = dict[str, Any]


# ----------------------------------------------------------------------------- the README


def readme_commands(section: str) -> list[str]:
    """The shell commands of the README's ``sh`` blocks under heading ``section``
    (continuations joined, comments dropped), and the `inline` commands of its
    paragraphs that start with helm or kubectl."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end > 0 else None]
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", body, flags=re.DOTALL):
        joined = re.sub(r"\\\n\s*", " ", block)
        for raw in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", raw).strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def readme_inline(section: str, prefix: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    spans = re.findall(r"`([^`\n]+)`", text[start:end])
    return [c for c in spans if c.startswith(prefix) and len(c.split()) > 2]  # commands, not names


def helm_command(config: Callable[[str], helm.Config], command: str) -> Obj:
    """Run one ``helm install|upgrade|rollback|uninstall`` command line through the SDK."""
    words = shlex.split(command)
    assert words[0] == "helm", command
    verb, rest = words[1], words[2:]
    positional: list[str] = []
    namespace, values, flags = "default", {}, set()
    i = 0
    while i < len(rest):
        word = rest[i]
        if word in {"--namespace", "-n"}:
            namespace, i = rest[i + 1], i + 2
        elif word == "--set":
            values = _merge(values, helm.parse_set_string(rest[i + 1]))
            i += 2
        elif word in {"--create-namespace", "--reuse-values"}:
            flags.add(word)
            i += 1
        elif word.startswith("-"):
            raise AssertionError(f"the test does not know the helm flag {word} in: {command}")
        else:
            positional.append(word)
            i += 1
    cfg = config(namespace)
    if verb == "install":
        name, chart = positional
        return cfg.install(
            str(ROOT / chart), name, values, namespace=namespace,
            create_namespace="--create-namespace" in flags,
        )  # fmt: skip
    if verb == "upgrade":
        name, chart = positional
        return cfg.upgrade(
            str(ROOT / chart), name, values, namespace=namespace,
            reuse_values="--reuse-values" in flags,
        )  # fmt: skip
    if verb == "uninstall":
        (name,) = positional
        return cfg.uninstall(name)
    raise AssertionError(f"the test does not run `helm {verb}`: {command}")


def _merge(base: Obj, extra: Obj) -> Obj:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def server(tmp_path: Path) -> Iterator[apiserver.DevKubeApiServer]:
    """A fresh real API server: no CRD, nothing installed."""
    require_real_apiserver()
    with apiserver.DevKubeApiServer(workdir=tmp_path / "apiserver") as started:
        yield started


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[apiserver.DevKubeApiServer]:
    """One real API server for the tests that install their own release names."""
    require_real_apiserver()
    with apiserver.DevKubeApiServer(workdir=tmp_path_factory.mktemp("helm")) as started:
        yield started


def configs(server: apiserver.DevKubeApiServer) -> Callable[[str], helm.Config]:
    made: dict[str, helm.Config] = {}

    def config(namespace: str) -> helm.Config:
        if namespace not in made:
            made[namespace] = helm.Config(
                kubeconfig_path=str(server.kubeconfig), namespace=namespace
            )
        return made[namespace]

    return config


def run(server: apiserver.DevKubeApiServer, config: Callable[[str], helm.Config], line: str) -> Any:
    """One README command line: helm through the SDK, kubectl as it is (from the repo root)."""
    if line.startswith("helm "):
        return helm_command(config, line)
    words = shlex.split(line)
    assert words[0] == "kubectl", line
    args = [os.path.join(ROOT, w) if Path(ROOT, w).exists() and not w.startswith("-") else w
            for w in words[1:]]  # fmt: skip
    return server.kubectl(*args)


def leftovers(server: apiserver.DevKubeApiServer, release: str) -> list[str]:
    """The chart's objects of ``release`` still in the cluster (kinds the server lacks,
    such as the Prometheus Operator's, count as none)."""
    found: list[str] = []
    for kind in CHART_KINDS:
        done = server.kubectl(
            "get", kind, "-A", "-l", f"app.kubernetes.io/instance={release}", "-o", "name",
            check=False,
        )  # fmt: skip
        if done.returncode != 0:
            assert "doesn't have a resource type" in done.stderr, done.stderr
            continue
        found += [line for line in done.stdout.splitlines() if line]
    return found


def release_objects(server: apiserver.DevKubeApiServer, release: str, namespace: str) -> Obj:
    deployment = json.loads(
        server.kubectl("get", "deployment", "-n", namespace, "-l",
                       f"app.kubernetes.io/instance={release}", "-o", "json").stdout
    )["items"]  # fmt: skip
    assert len(deployment) == 1
    env = {e["name"]: e.get("value") for e in
           deployment[0]["spec"]["template"]["spec"]["containers"][0].get("env", [])}  # fmt: skip
    return {"env": env, "deployment": deployment[0]}


# ----------------------------------------------------------------------------- lifecycle


def test_readme_install_upgrade_rollback_uninstall(
    server: apiserver.DevKubeApiServer,
    prometheus_server: servers.DevPrometheus,
    make_exporter: Callable[..., EngineExporter],
    tmp_path: Path,
) -> None:
    config = configs(server)
    install = readme_commands("Install in a cluster")
    helm_lines = [c for c in install if c.startswith("helm install")]
    assert len(helm_lines) == 1, install
    # Install, as the README says; the CRD comes from the chart's crds/.
    for line in install:
        run(server, config, line)
    status = config("stopbudget").status("stopbudget")
    assert status["status"] == "deployed"
    assert status["revision"] == 1
    server.wait_established(CRD_NAME)
    assert leftovers(server, "stopbudget")
    env = release_objects(server, "stopbudget", "stopbudget")["env"]
    assert env["STOPBUDGET_NAMESPACES"] == "serving"

    # The operator, authenticated as the chart's ServiceAccount, reconciles the example.
    reconcile_example_as_the_chart(server, prometheus_server, make_exporter, tmp_path)

    # Upgrade with changed values (revision 2), then roll back (revision 3).
    server.kubectl("create", "namespace", "serving-canary")
    changed = (
        "helm upgrade stopbudget ./charts/stopbudget -n stopbudget --reuse-values --set "
        "operator.logLevel=DEBUG --set 'operator.watchNamespaces={serving,serving-canary}'"
    )
    assert helm_command(config, changed)["revision"] == 2
    env = release_objects(server, "stopbudget", "stopbudget")["env"]
    assert env["STOPBUDGET_LOG_LEVEL"] == "DEBUG"
    assert env["STOPBUDGET_NAMESPACES"] == "serving,serving-canary"
    roles = server.kubectl("get", "role", "-n", "serving-canary", "-o", "name").stdout
    assert "role.rbac.authorization.k8s.io/stopbudget" in roles
    config("stopbudget").rollback("stopbudget", version=1)
    history = config("stopbudget").history("stopbudget")
    assert [h["revision"] for h in history] == [1, 2, 3]
    env = release_objects(server, "stopbudget", "stopbudget")["env"]
    assert env["STOPBUDGET_LOG_LEVEL"] == "INFO"
    assert env["STOPBUDGET_NAMESPACES"] == "serving"
    assert not server.kubectl("get", "role", "-n", "serving-canary", "-o", "name").stdout.strip()

    # Uninstall, as the README says: nothing of the chart stays but the CRD.
    (uninstall,) = readme_inline("Install in a cluster", "helm uninstall")
    run(server, config, uninstall)
    assert leftovers(server, "stopbudget") == []
    server.kubectl("get", "crd", CRD_NAME)  # Helm never deletes CRDs


def reconcile_example_as_the_chart(
    server: apiserver.DevKubeApiServer,
    prometheus: servers.DevPrometheus,
    make_exporter: Callable[..., EngineExporter],
    tmp_path: Path,
) -> None:
    """`stopbudget run` with a token of the chart's ServiceAccount patches the vLLM
    example's Deployment: the RBAC the chart installed is the RBAC it runs with."""
    example = yaml.safe_load((ROOT / "examples" / "vllm-arg-sink.yaml").read_text("utf-8"))
    spec = example["spec"]
    exporter = make_exporter(spec["load"]["selector"]["model_name"],
                             labels={"namespace": "serving"})  # fmt: skip
    exporter.set_load(waiting=0)
    server.kubectl("apply", "-f", "-", stdin=json.dumps(_vllm_deployment(spec)))
    kubeconfig = server.token_kubeconfig("stopbudget", "stopbudget", tmp_path / "sa.kubeconfig")
    log = tmp_path / "operator.log"
    with operator_process(kubeconfig, prometheus.url, log) as process:

        def patched() -> bool:
            assert process.poll() is None, log.read_text()
            got = json.loads(server.kubectl("get", "stoppolicy", "llama-chat", "-n", "serving",
                                            "-o", "json").stdout)  # fmt: skip
            return bool((got.get("status") or {}).get("lastPatchTime"))

        wait_for(patched, timeout=60, what="the example patched by the operator")
        stored = server.kubectl("get", "deployment", "vllm-llama", "-n", "serving", "-o", "json")
        vllm_args = json.loads(stored.stdout)["spec"]["template"]["spec"]["containers"][0]["args"]
        assert '{"max_new_tokens": 1024}' not in vllm_args
        assert "403" not in log.read_text()
        assert "Forbidden" not in log.read_text()


def _vllm_deployment(spec: Obj) -> Obj:
    name, vllm = spec["targetRef"]["name"], spec["targetRef"]["container"]
    args = ["--model", "meta-llama/Llama-3.1-8B-Instruct",
            "--override-generation-config", '{"max_new_tokens": 1024}']  # fmt: skip
    return deployment(
        name, "serving", [container(vllm, args=args), container("metrics-proxy", "nginx:1.27")]
    )


@pytest.mark.parametrize("values", CI_VALUES, ids=[p.name for p in CI_VALUES])
def test_each_ci_values_file_installs_upgrades_and_uninstalls(
    shared_server: apiserver.DevKubeApiServer, values: Path
) -> None:
    server = shared_server
    release = values.name.removesuffix("-values.yaml")
    loaded = yaml.safe_load(values.read_text(encoding="utf-8")) or {}
    for ns in (loaded.get("operator") or {}).get("watchNamespaces") or []:
        server.kubectl("create", "namespace", ns, check=False)
    if loaded.get("monitoring"):
        install_monitoring_crds(server)
    config = helm.Config(kubeconfig_path=str(server.kubeconfig), namespace=release)
    installed = config.install(
        str(CHART), release, loaded, namespace=release, create_namespace=True
    )
    assert installed["status"] == "deployed"
    assert leftovers(server, release)
    upgraded = config.upgrade(
        str(CHART), release, {"operator": {"logLevel": "WARNING"}}, namespace=release,
        reuse_values=True,
    )  # fmt: skip
    assert upgraded["revision"] == 2
    assert release_objects(server, release, release)["env"]["STOPBUDGET_LOG_LEVEL"] == "WARNING"
    config.uninstall(release)
    assert leftovers(server, release) == []


def test_a_watched_namespace_that_does_not_exist_fails_before_anything_is_applied(
    shared_server: apiserver.DevKubeApiServer,
) -> None:
    server = shared_server
    server.kubectl("create", "namespace", "serving", check=False)
    config = helm.Config(kubeconfig_path=str(server.kubeconfig), namespace="sb")
    config.install(str(CHART), "sb", {"operator": {"watchNamespaces": ["serving"]}},
                   namespace="sb", create_namespace=True)  # fmt: skip
    before = leftovers(server, "sb")
    watched = {"operator": {"watchNamespaces": ["serving", "other", "x"]}}
    with pytest.raises(helm.HelmError) as failed:
        config.upgrade(str(CHART), "sb", watched, namespace="sb", reuse_values=True)
    message = str(failed.value)
    assert "operator.watchNamespaces" in message
    assert "other, x do not exist" in message
    assert "kubectl create namespace other x" in message
    assert leftovers(server, "sb") == before  # nothing was applied
    assert config.status("sb")["revision"] == 1 or config.status("sb")["status"] == "deployed"
    # A fresh install fails the same way, before anything exists.
    fresh = helm.Config(kubeconfig_path=str(server.kubeconfig), namespace="sb2")
    with pytest.raises(helm.HelmError, match="other do not exist"):
        fresh.install(str(CHART), "sb2", {"operator": {"watchNamespaces": ["other"]}},
                      namespace="sb2", create_namespace=True)  # fmt: skip
    assert leftovers(server, "sb2") == []


# ----------------------------------------------------------------------------- CRD upgrade


def _old_policy() -> Obj:
    """A policy written for the CRD with `n`, as a client that sends JSON stored it."""
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": "chat", "namespace": "serving"},
        "spec": {
            "targetRef": {"name": "vllm"},
            "budget": {"min": 64, "max": 1024, "sink": {"type": "env", "name": "MAX_TOKENS"}},
            "quality": {
                "emTarget": 0.8,
                "emFloor": 0.7,
                "prior": [
                    {"budget": 256, "em": 0.72, "n": 200},
                    {"budget": 1024, "em": 0.86, "n": 200},
                ],
            },
        },
    }


def test_crd_upgrade_from_the_field_n_says_how_to_fix_stored_policies(
    server: apiserver.DevKubeApiServer,
    prometheus_server: servers.DevPrometheus,
    tmp_path: Path,
) -> None:
    config = configs(server)
    # Before: the release, the previous CRD in place of the one the chart installs now
    # (Helm owns its fields, as after an install of the previous version), and a policy
    # stored with `n`.
    server.kubectl("create", "namespace", "serving")
    helm_command(config, "helm install stopbudget ./charts/stopbudget --namespace stopbudget "
                         "--create-namespace "
                         "--set 'operator.watchNamespaces={serving}'")  # fmt: skip
    server.kubectl("replace", "-f", str(OLD_CRD))
    server.wait_established(CRD_NAME)
    server.kubectl("apply", "-f", "-", stdin=json.dumps(_old_policy()))

    # The README's upgrade, as written: the CRD first, then the release.
    (crd_line,) = readme_inline("Install in a cluster", "kubectl apply --server-side")
    (upgrade_line,) = readme_inline("Install in a cluster", "helm upgrade")
    run(server, config, crd_line)
    assert helm_command(config, upgrade_line)["revision"] == 2
    crd = json.loads(server.kubectl("get", "crd", CRD_NAME, "-o", "json").stdout)
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    point = schema["properties"]["spec"]["properties"]["quality"]["properties"]["prior"]["items"]
    assert "samples" in point["required"]
    assert "n" not in point["properties"]

    # The stored policy is kept, but the server prunes the field it no longer knows.
    stored = json.loads(
        server.kubectl("get", api.PLURAL, "chat", "-n", "serving", "-o", "json").stdout
    )
    assert stored["spec"]["quality"]["prior"] == [
        {"budget": 256, "em": 0.72},
        {"budget": 1024, "em": 0.86},
    ]

    # `stopbudget validate` on what is stored says what to do.
    path = tmp_path / "stored.yaml"
    path.write_text(server.kubectl("get", api.PLURAL, "chat", "-n", "serving", "-o", "yaml").stdout)
    checked = subprocess.run([sys.executable, "-m", "stopbudget", "validate", str(path)],
                             capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    said = checked.stdout + checked.stderr
    assert checked.returncode != 0
    assert "spec.quality.prior[0].samples" in said or "spec.quality.prior.0.samples" in said, said
    assert "`n`" in said or " n " in said, said

    # The operator, as the chart's ServiceAccount, reports it as a condition that says the same.
    kubeconfig = server.token_kubeconfig("stopbudget", "stopbudget", tmp_path / "sa.kubeconfig")
    with operator_process(kubeconfig, prometheus_server.url, tmp_path / "operator.log"):

        def ready_reason() -> Obj | None:
            got = json.loads(server.kubectl("get", api.PLURAL, "chat", "-n", "serving", "-o",
                                            "json").stdout)  # fmt: skip
            for c in (got.get("status") or {}).get("conditions", []):
                if c["type"] == "Ready" and c["reason"] == "InvalidSpec":
                    return dict(c)
            return None

        condition = wait_for(ready_reason, timeout=60, what="InvalidSpec")
        assert "samples" in condition["message"]
        assert "`n`" in condition["message"] or " n " in condition["message"]

        # The old file is refused by the server; the fixed one is taken.
        old = server.kubectl("apply", "-f", "-", stdin=json.dumps(_old_policy()), check=False)
        assert old.returncode != 0
        assert 'unknown field "spec.quality.prior[0].n"' in old.stderr
        fixed = _old_policy()
        for item in fixed["spec"]["quality"]["prior"]:
            item["samples"] = item.pop("n")
        server.kubectl("apply", "-f", "-", stdin=json.dumps(fixed))
        wait_for(lambda: ready_reason() is None, timeout=60, what="InvalidSpec cleared")


def operator_process(kubeconfig: Path, prometheus: str, log: Path) -> Process:
    """`stopbudget run -n serving` with a kubeconfig, stopped (SIGTERM) on exit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOPBUDGET_")}
    env |= {"STOPBUDGET_PROMETHEUS_URL": prometheus, "STOPBUDGET_METRICS_PORT": "0",
            "STOPBUDGET_WEBHOOK_PORT": "0", "STOPBUDGET_BIND_ADDRESS": "127.0.0.1"}  # fmt: skip
    return Process(
        [sys.executable, "-m", "stopbudget", "run", "-n", "serving", "--kubeconfig",
         str(kubeconfig)], log, env=env,
    )  # fmt: skip
