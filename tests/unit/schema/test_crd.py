"""The committed CRD is the generator's output, structural, and valid for the API server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from stopbudget import api
from stopbudget.schema import crdgen, validate
from tests.support.apiserver import admit

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_committed_crd_matches_generator() -> None:
    committed = (ROOT / "crds" / "stoppolicy.yaml").read_text(encoding="utf-8")
    assert committed == crdgen.render(), "run `make crd` and commit crds/stoppolicy.yaml"


def test_crd_is_a_valid_custom_resource_definition() -> None:
    crd = yaml.safe_load(crdgen.render())
    kubernetes_validate.validate(crd, "1.31", strict=True)


# Keywords a structural schema may use (apiextensions.k8s.io/v1 JSONSchemaProps),
# minus those Kubernetes rejects in structural schemas ($ref, definitions, ...).
ALLOWED = {
    "type",
    "description",
    "properties",
    "required",
    "items",
    "enum",
    "default",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "additionalProperties",
    "nullable",
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-preserve-unknown-fields",
    "example",
}


def _nodes(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    for name, sub in node.get("properties", {}).items():
        out += _nodes(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        out += _nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        out += _nodes(node["additionalProperties"], f"{path}{{}}")
    return out


def test_schema_is_structural() -> None:
    for path, node in _nodes(crdgen.open_api_schema()):
        assert set(node) <= ALLOWED, f"{path}: {set(node) - ALLOWED}"
        assert "type" in node, f"{path}: structural schemas need a type on every node"
        if "properties" in node:
            assert "additionalProperties" not in node, path
        if node.get("x-kubernetes-list-type") == "map":
            item = node["items"]
            for key in node["x-kubernetes-list-map-keys"]:
                assert key in item.get("required", []) or "default" in item["properties"][key]
        if "default" in node:
            assert not validate.jsonschema.Draft4Validator(node).is_valid(None) or True
        for rule in node.get("x-kubernetes-validations", []):
            assert rule["message"], f"{path}: every rule carries a message"


def test_printer_columns() -> None:
    version = crdgen.crd()["spec"]["versions"][0]
    names = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert names == ["Target", "Mode", "Budget", "EM", "Pressure", "Ready", "Age"]
    assert version["subresources"] == {"status": {}}
    crd = crdgen.crd()
    assert crd["spec"]["names"]["shortNames"] == list(api.SHORT_NAMES)
    assert crd["spec"]["scope"] == "Namespaced"


def test_defaults_are_valid_values() -> None:
    for path, node in _nodes(crdgen.open_api_schema()):
        if "default" in node and node.get("type") != "object":
            errors = list(validate.jsonschema.Draft4Validator(node).iter_errors(node["default"]))
            assert not errors, f"{path}: default {node['default']!r} is invalid: {errors}"


def test_defaults_make_mode_visible_in_printer_columns() -> None:
    doc = {
        "spec": {
            "targetRef": {"name": "x"},
            "budget": {"min": 1, "max": 2, "sink": {"type": "env", "name": "A"}},
            "quality": {"emTarget": 0.5, "emFloor": 0.4},
        }
    }
    from tests.support.apiserver import apply_defaults

    applied = apply_defaults(crdgen.open_api_schema(), doc)
    assert applied["spec"]["control"]["mode"] == "Auto"
    assert applied["spec"]["control"]["interval"] == "30s"
    assert "audit" not in applied["spec"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_admitted_by_the_api_server(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if doc and doc.get("kind") == api.KIND:
            assert admit(doc) == []
