"""What the project ships, applied with kubectl to the real kube-apiserver (v1.28.7).

* the CRD (``crds/``) and the chart's copy apply and become Established;
* every example StopPolicy is accepted by ``kubectl apply``;
* the bad-input cases of ``tests/unit/api/test_bad_input.py`` that the API server can
  check are rejected by the real server at the field paths ``stopbudget
  validate`` reports, and the ones it cannot check are accepted by it (so the
  emulation in ``tests/support/apiserver.py`` is checked against the real thing);
* every object the chart renders (defaults and each ``ci/*-values.yaml``) passes
  ``kubectl apply --dry-run=server``, the Prometheus Operator's kinds against
  CRDs built from the vendored upstream schemas.

Documents go to kubectl as JSON, so only kubectl's reading of them is tested
here (``tests/unit/schema/test_yaml_go_reading.py`` checks the YAML).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from stopbudget import api
from stopbudget.schema import validate
from tests.support.builders import MINIMAL
from tests.support.clusters import (
    CRD,
    RELEASE_NAMESPACE,
    ROOT,
    RealServer,
    chart_objects,
    install_monitoring_crds,
)
from tests.unit.api.test_bad_input import CASES, _norm, _set

pytestmark = [pytest.mark.servers, pytest.mark.apiserver]

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
CI_VALUES = sorted((ROOT / "charts" / "stopbudget" / "ci").glob("*-values.yaml"))
CHART_CRD = ROOT / "charts" / "stopbudget" / "crds" / "stoppolicy.yaml"
#: ``The StopPolicy "p" is invalid: spec.x: ...`` and ``unknown field "spec.x"``.
_FIELD = re.compile(r"(?<![\w.])(spec(?:\.[A-Za-z_][\w]*|\[\d+\])+)")


def fail_fields(stderr: str) -> set[str]:
    """The field paths a kubectl error names."""
    return {_norm(p) for p in _FIELD.findall(stderr)}


@pytest.fixture(scope="module")
def namespace(real_server: RealServer) -> Iterator[str]:
    name = real_server.fresh_namespace("apply")
    yield name
    real_server.remove_policies(name)


@pytest.mark.parametrize("crd", [CRD, CHART_CRD], ids=["crds", "chart-crds"])
def test_the_crd_applies_and_becomes_established(real_server: RealServer, crd: Path) -> None:
    applied = real_server.server.kubectl("apply", "-f", str(crd))
    assert f"{api.PLURAL}.{api.GROUP}" in applied.stdout
    real_server.server.wait_established(f"{api.PLURAL}.{api.GROUP}")
    stored = json.loads(
        real_server.server.kubectl("get", "crd", f"{api.PLURAL}.{api.GROUP}", "-o", "json").stdout
    )
    printed = stored["spec"]["versions"][0]["additionalPrinterColumns"]
    columns = [c["name"] for c in printed if not c.get("priority")]  # `kubectl get`, not -o wide
    assert columns == ["Target", "Mode", "Budget", "EM", "Pressure", "Ready", "Age"]


def _stop_policies(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return [d for d in docs if d.get("kind") == api.KIND]


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_is_accepted_by_kubectl_apply(
    real_server: RealServer, namespace: str, example: Path
) -> None:
    kubectl = real_server.server.kubectl
    done = kubectl("apply", "-n", namespace, "-f", str(example), check=False)
    if "namespace" in done.stderr and "does not match" in done.stderr:
        # The example names its own namespace (serving): apply it there.
        ns = {d["metadata"]["namespace"] for d in _stop_policies(example)}
        for name in ns:
            kubectl("create", "namespace", name, check=False)
        done = kubectl("apply", "-f", str(example), check=False)
        namespaces = sorted(ns)
    else:
        namespaces = [namespace]
    try:
        assert done.returncode == 0, done.stderr
        for policy in _stop_policies(example):
            name = policy["metadata"]["name"]
            ns = policy["metadata"].get("namespace", namespace)
            stored = json.loads(kubectl("get", api.PLURAL, name, "-n", ns, "-o", "json").stdout)
            # What the server stored is what the file says (nothing pruned, nothing renamed).
            assert validate.check_document(stored) == []
            assert stored["spec"] == _with_defaults(stored["spec"], policy["spec"])
    finally:
        for ns in namespaces:
            real_server.remove_policies(ns)


def _with_defaults(stored: Any, written: Any) -> Any:
    """``written`` with the fields the server defaulted taken from ``stored``."""
    if isinstance(written, dict) and isinstance(stored, dict):
        merged = {k: _with_defaults(stored.get(k), v) for k, v in written.items()}
        return {**{k: v for k, v in stored.items() if k not in written}, **merged}
    if isinstance(written, list) and isinstance(stored, list) and len(written) == len(stored):
        return [_with_defaults(s, w) for s, w in zip(stored, written, strict=True)]
    return written


@pytest.mark.parametrize(
    ("changes", "path", "server_checks"),
    [pytest.param(c[1], c[2], c[4], id=c[0]) for c in CASES],
)
def test_bad_input_is_rejected_by_the_real_server_where_it_can_check(
    real_server: RealServer,
    namespace: str,
    changes: dict[str, Any],
    path: str,
    server_checks: bool,
) -> None:
    policy = copy.deepcopy(MINIMAL)
    policy["metadata"]["namespace"] = namespace
    for key, value in changes.items():
        _set(policy, key, value)
    reported = {_norm(p) for p, _ in validate.check_document(policy)}
    done = real_server.server.kubectl(
        "create", "--dry-run=server", "-f", "-", stdin=json.dumps(policy), check=False
    )
    if not server_checks:
        assert done.returncode == 0, f"the real server checks this case: {done.stderr}"
        return
    assert done.returncode != 0, "the real API server accepted a bad policy"
    named = fail_fields(done.stderr)
    want = _norm(path)
    assert any(want.startswith(p) or p.startswith(want) for p in named), done.stderr
    # Every field the server names, validate names too (at that path or above it).
    for field in named:
        assert any(field.startswith(r) or r.startswith(field) for r in reported), (
            field,
            reported,
            done.stderr,
        )


def test_the_minimal_policy_is_accepted(real_server: RealServer, namespace: str) -> None:
    policy = copy.deepcopy(MINIMAL)
    policy["metadata"]["namespace"] = namespace
    real_server.server.kubectl("create", "--dry-run=server", "-f", "-", stdin=json.dumps(policy))


# ---------------------------------------------------------------------------- the chart


@pytest.fixture(scope="module")
def chart_ready(real_server: RealServer) -> RealServer:
    """The namespaces and CRDs the chart's objects need on a real cluster."""
    kubectl = real_server.server.kubectl
    install_monitoring_crds(real_server.server)
    for path in CI_VALUES:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for ns in (values.get("operator") or {}).get("watchNamespaces") or []:
            kubectl("create", "namespace", ns, check=False)
    return real_server


@pytest.mark.parametrize(
    "values", [None, *CI_VALUES], ids=["defaults", *[p.name for p in CI_VALUES]]
)
def test_every_rendered_object_passes_server_side_dry_run(
    chart_ready: RealServer, values: Path | None
) -> None:
    loaded = yaml.safe_load(values.read_text(encoding="utf-8")) if values else {}
    objects = chart_objects(loaded)
    assert objects
    for obj in objects:
        obj["metadata"].setdefault("namespace", RELEASE_NAMESPACE) if _namespaced(obj) else None
        done = chart_ready.server.kubectl(
            "apply", "--dry-run=server", "-f", "-", stdin=json.dumps(obj), check=False
        )
        assert done.returncode == 0, f"{obj['kind']} {obj['metadata']['name']}: {done.stderr}"


def _namespaced(obj: dict[str, Any]) -> bool:
    return obj["kind"] not in {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
