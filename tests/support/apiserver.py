"""What the Kubernetes API server does with a StopPolicy on `kubectl apply`, without a cluster.

Used by the tests to check the generated CRD the way the API server would:
structural defaults are applied, the ``openAPIV3Schema`` is checked (strictly
about unknown fields, as ``kubectl apply``'s default field validation is), and
every ``x-kubernetes-validations`` CEL rule is evaluated with cel-python.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import celpy
import jsonschema

from stopbudget.schema import crdgen, validate
from stopbudget.schema.validate import apply_defaults

# cel-python's parser raises the recursion limit the first time it runs; do it at
# import so that it does not happen inside a hypothesis test (which warns).
celpy.Environment().compile("true")


@cache
def _program(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def cel_problems(schema: dict[str, Any], obj: Any, path: str = "") -> list[tuple[str, str]]:
    """Every CEL rule that fails (or cannot evaluate) on ``obj``, as (field path, message)."""
    out: list[tuple[str, str]] = []
    for rule in schema.get("x-kubernetes-validations", []):
        try:
            ok = _program(rule["rule"]).evaluate({"self": celpy.json_to_cel(obj)})
        except Exception as exc:  # an evaluation error rejects the object too
            out.append((path + rule.get("fieldPath", ""), f"CEL error {exc}"))
            continue
        if ok is not True and ok != celpy.celtypes.BoolType(True):
            out.append((path + rule.get("fieldPath", ""), rule["message"]))
    if isinstance(obj, list) and schema.get("x-kubernetes-list-type") in {"map", "set"}:
        keys = schema.get("x-kubernetes-list-map-keys")
        seen = [tuple(i.get(k) for k in keys) if keys else i for i in obj]
        for i, key in enumerate(seen):
            if key in seen[:i]:
                out.append((f"{path}[{i}]", f"Duplicate value: {key!r}"))
    if isinstance(obj, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in obj:
                out += cel_problems(sub, obj[name], f"{path}.{name}")
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and "properties" not in schema:
            for key, value in obj.items():
                out += cel_problems(extra, value, f"{path}.{key}")
    elif isinstance(obj, list) and "items" in schema:
        for i, item in enumerate(obj):
            out += cel_problems(schema["items"], item, f"{path}[{i}]")
    return out


def admit(obj: dict[str, Any]) -> list[tuple[str, str]]:
    """The API server's verdict: [] when admitted, else (path, message) of each rejection."""
    schema = crdgen.open_api_schema()
    obj = apply_defaults(schema, copy.deepcopy(obj))
    strict = jsonschema.Draft4Validator(validate._strict(schema))
    errors = [
        (".".join(str(p) for p in e.absolute_path), e.message) for e in strict.iter_errors(obj)
    ]
    if errors:
        return errors
    return [(p.lstrip("."), m) for p, m in cel_problems(schema, obj)]
