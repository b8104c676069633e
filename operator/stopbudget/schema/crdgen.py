"""Generate the StopPolicy CRD from the pydantic models in :mod:`stopbudget.api`.

Pydantic emits JSON Schema (draft 2020-12); Kubernetes wants a *structural*
OpenAPI v3 schema.  :func:`structural` walks the pydantic schema once and
applies the transformations listed in its docstring, each for a stated reason.
``crds/stoppolicy.yaml`` is the output of ``stopbudget crd`` and a test fails
when the committed file differs from it.  Pure: no I/O.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic.json_schema import GenerateJsonSchema

from stopbudget import api
from stopbudget.schema import yamlout


class _Schema(GenerateJsonSchema):
    """Pydantic's generator, with durations defaulted as ``5m`` rather than ISO 8601 ``PT5M``."""

    def encode_default(self, dft: Any) -> Any:
        if isinstance(dft, timedelta):
            return api.format_duration(dft)
        return super().encode_default(dft)


def _json_schema(model: type[api._Model]) -> dict[str, Any]:
    return model.model_json_schema(by_alias=True, mode="validation", schema_generator=_Schema)


def structural(schema: dict[str, Any], *, keep_defaults: bool = True) -> dict[str, Any]:
    """Turn one pydantic JSON schema into a Kubernetes structural schema.

    Transformations, and why:

    * ``$ref``/``$defs`` are inlined: Kubernetes rejects references.  Keywords
      beside a ``$ref`` (description, default) override the referenced schema's.
    * ``anyOf: [X, {type: null}]`` (an optional field) becomes ``X``: a
      structural schema needs ``type`` at the top of every node, and Kubernetes
      prunes explicit nulls of non-nullable fields instead of storing them.
      Its ``default: null`` is dropped (a null default is no default).
    * An optional object field that pydantic fills with a default factory gets
      ``default: {}`` so the API server applies its nested defaults (``kubectl
      get`` then shows e.g. ``control.mode: Auto``).
    * ``title`` is dropped: it is pydantic's class name, noise in ``kubectl explain``.
    * ``const`` becomes a one-value ``enum``: Kubernetes has no ``const``.
    * ``additionalProperties: false`` is dropped: Kubernetes forbids it beside
      ``properties``; unknown fields are pruned, and rejected by ``kubectl``'s
      strict field validation (the default since 1.27).
    * ``patternProperties``/``propertyNames`` (a dict with constrained keys)
      become ``additionalProperties`` plus a CEL rule checking every key,
      because Kubernetes supports neither keyword.
    * A numeric ``exclusiveMinimum: X`` (draft 2020-12) becomes ``minimum: X``
      with ``exclusiveMinimum: true`` (OpenAPI v3.0, which Kubernetes speaks).
    * ``keep_defaults=False`` (the status) drops every default: the status is
      written by the operator, a default there would only hide a missing value.
    """
    defs: dict[str, Any] = schema.get("$defs", {})

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        node = dict(node)
        if "$ref" in node:
            target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
            node = {**resolve(target), **node}
        any_of = node.get("anyOf")
        if any_of is not None:
            non_null = [s for s in any_of if s.get("type") != "null"]
            if len(non_null) != 1:
                raise ValueError(f"cannot express anyOf {any_of!r} in a structural schema")
            del node["anyOf"]
            if node.get("default", ...) is None:
                del node["default"]
            node = {**resolve(non_null[0]), **node}
        return node

    def walk(node: dict[str, Any]) -> dict[str, Any]:
        node = resolve(node)
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in {"title", "$defs", "additionalProperties", "propertyNames"}:
                continue
            if key == "default" and not keep_defaults:
                continue
            if key == "const":
                out["enum"] = [value]
            elif key == "exclusiveMinimum" and not isinstance(value, bool):
                out["minimum"] = value
                out["exclusiveMinimum"] = True
            elif key == "properties":
                required = set(node.get("required", []))
                props: dict[str, Any] = {}
                for name, sub in value.items():
                    had_null = "anyOf" in sub
                    child = walk(sub)
                    if (
                        keep_defaults
                        and name not in required
                        and not had_null
                        and child.get("type") == "object"
                        and "properties" in child
                        and "default" not in child
                    ):
                        child["default"] = {}
                    props[name] = child
                out["properties"] = props
            elif key == "items":
                out["items"] = walk(value)
            elif key == "patternProperties":
                ((pattern, values),) = value.items()
                out["additionalProperties"] = walk(values)
                rules = out.setdefault("x-kubernetes-validations", [])
                rules.append(
                    {
                        "rule": f"self.all(k, k.matches(r'{pattern}'))",
                        "message": f"every key must match {pattern} (a Prometheus label name)",
                    }
                )
            else:
                out[key] = value
        if node.get("type") == "object" and isinstance(node.get("additionalProperties"), dict):
            out["additionalProperties"] = walk(node["additionalProperties"])
        return out

    return walk(schema)


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition of StopPolicy as a dict."""
    spec = structural(_json_schema(api.StopPolicySpec))
    status = structural(_json_schema(api.StopPolicyStatus), keep_defaults=False)
    ready = '.status.conditions[?(@.type=="Ready")]'
    evidence = '.status.conditions[?(@.type=="EvidenceReady")]'
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{api.PLURAL}.{api.GROUP}",
            "labels": {"app.kubernetes.io/name": "stopbudget"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": ["stopbudget"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        _column("Target", "string", ".spec.targetRef.name"),
                        _column("Mode", "string", ".spec.control.mode"),
                        _column("Budget", "integer", ".status.budget"),
                        _column("EM", "number", ".status.observedEM"),
                        _column("Pressure", "number", ".status.pressure"),
                        _column("Ready", "string", f"{ready}.status"),
                        _column("Reason", "string", f"{ready}.reason", priority=1),
                        _column("Evidence", "string", f"{evidence}.reason", priority=1),
                        _column("Age", "date", ".metadata.creationTimestamp"),
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "StopPolicy keeps the token budget of one serving "
                            "Deployment at the cheapest point that meets its Exact-Match "
                            "target, trading down toward the EM floor under load.",
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                            "required": ["spec"],
                        }
                    },
                }
            ],
        },
    }


def _column(name: str, type_: str, path: str, priority: int = 0) -> dict[str, Any]:
    column: dict[str, Any] = {"name": name, "type": type_, "jsonPath": path}
    if priority:
        column["priority"] = priority
    return column


HEADER = (
    "# Generated by `stopbudget crd` from operator/stopbudget/api/. Do not edit:\n"
    "# change the models and run `make crd`.\n"
)


def render() -> str:
    """The CRD as the YAML committed in ``crds/stoppolicy.yaml``.

    Dumped by :mod:`stopbudget.schema.yamlout`, so kubectl and Helm (YAML 1.1) read the
    same names and values as PyYAML: a property named ``n`` would otherwise be
    read as the boolean ``false``.
    """
    return HEADER + yamlout.dump(crd(), sort_keys=False, width=100, allow_unicode=True)


def open_api_schema() -> dict[str, Any]:
    """The CRD's ``openAPIV3Schema``, as ``stopbudget validate`` and the tests check against."""
    schema: dict[str, Any] = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema
