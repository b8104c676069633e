"""``stopbudget validate``: check StopPolicy YAML offline, as the API server and the operator would.

Golden-set ConfigMaps (``kind: ConfigMap`` holding JSONL) are checked too, line by line.

Two layers, each reporting every problem as ``(path.to.field, message)``:

* the CRD's ``openAPIV3Schema`` through ``jsonschema`` (types, bounds, enums,
  patterns), made strict about unknown fields the way ``kubectl apply``'s
  default server-side field validation is;
* the pydantic model, which adds durations, cron expressions and regular
  expressions;
* the cross-field rules (the CRD's CEL rules, in their Python form), run on
  every object the API server would run them on, with structural defaults
  applied first, so one invalid object does not hide another's problems.

When two layers flag the same field, the pydantic message is kept (it names
the fix).  Pure apart from reading the text handed in.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jsonschema
import yaml
from pydantic import ValidationError

from stopbudget import api
from stopbudget.core.audits import dataset
from stopbudget.schema import crdgen


@dataclass(frozen=True)
class Problem:
    """One problem found in one document."""

    where: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.path}: {self.message}"


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """Copy of ``schema`` where every object with properties rejects unknown ones."""
    out = copy.deepcopy(schema)

    def walk(node: dict[str, Any], is_metadata: bool = False) -> None:
        if "properties" in node and not is_metadata:
            node.setdefault("additionalProperties", False)
        for name, child in node.get("properties", {}).items():
            walk(child, is_metadata=name == "metadata" and node is out)
        if isinstance(node.get("items"), dict):
            walk(node["items"])
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"])

    walk(out)
    return out


_VALIDATOR = jsonschema.Draft4Validator(_strict(crdgen.open_api_schema()))


def _schema_problems(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """Problems of the schema layer, each at the field it is about.

    A missing or an unknown field is reported at its own path, not at the
    object holding it, so that it meets the pydantic layer's report of the
    same field (whose message is kept).
    """
    found = []
    for err in _VALIDATOR.iter_errors(doc):
        parts = [f"[{p}]" if type(p) is int else str(p) for p in err.absolute_path]
        path = ""
        for p in parts:
            path += p if p.startswith("[") or not path else "." + p
        instance = err.instance if isinstance(err.instance, dict) else {}
        if err.validator == "additionalProperties":
            known = err.schema.get("properties", {})
            unknown = sorted((k for k in instance if k not in known), key=str)
            found += [
                (_field(path, k), "unknown field: remove it or check its spelling") for k in unknown
            ]
        elif err.validator == "required":
            found += [
                (_field(path, k), "Field required")
                for k in err.validator_value
                if k not in instance
            ]
        else:
            found.append((path or "(document)", err.message))
    return found


def _field(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def apply_defaults(schema: dict[str, Any], obj: Any) -> Any:
    """Fill structural-schema defaults into ``obj`` the way the API server does."""
    if isinstance(obj, dict) and "properties" in schema:
        for name, sub in schema["properties"].items():
            if name not in obj and "default" in sub:
                obj[name] = copy.deepcopy(sub["default"])
            if name in obj:
                obj[name] = apply_defaults(sub, obj[name])
    elif isinstance(obj, list) and "items" in schema:
        obj = [apply_defaults(schema["items"], item) for item in obj]
    return obj


_RULES = api.all_rules()


def _rule_problems(schema: dict[str, Any], obj: Any, path: str) -> list[tuple[str, str]]:
    found = []
    if isinstance(obj, dict):
        for crd_rule in schema.get("x-kubernetes-validations", []):
            rule = _RULES.get(crd_rule["rule"])
            if rule is None:
                continue  # a single-field rule; pydantic reports those
            try:
                ok = rule.check(obj)
            except (KeyError, TypeError, AttributeError, ValueError):
                continue  # a field it reads is malformed: the schema layer says which
            if not ok:
                found.append((f"{path}.{rule.field}", rule.message))
        for name, sub in schema.get("properties", {}).items():
            if name in obj:
                found += _rule_problems(sub, obj[name], f"{path}.{name}")
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(obj):
            found += _rule_problems(schema["items"], item, f"{path}[{i}]")
    return found


#: Lists whose items hold a renamed field (:data:`stopbudget.api.RENAMED`), by path.
_RENAMED_LISTS = (("spec", "quality", "prior"), ("status", "curve"))


def _rename_old_keys(doc: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """``doc`` with renamed fields under their new name, and one problem for each.

    A policy written for an older version says ``n: 200``; read by kubectl or
    Helm (YAML 1.1) and written out again it says ``"false": 200``.  Each is
    reported once, at the old key, as the new name, and the rest of the
    document is checked as if it had been written with the new name.
    """
    fixed = copy.deepcopy(doc)
    found: list[tuple[str, str]] = []
    for path in _RENAMED_LISTS:
        items: Any = fixed
        for key in path:
            items = items.get(key) if isinstance(items, dict) else None
        old, new = api.RENAMED[path[-1]]
        for i, item in enumerate(items if isinstance(items, list) else []):
            if not isinstance(item, dict) or new in item:
                continue
            for old_key in api.OLD_KEYS[old]:
                if old_key in item:
                    value = item.pop(old_key)
                    item[new] = value
                    where = ".".join(path) + f"[{i}].{str(old_key).lower()}"
                    found.append((where, api.renamed_message(old_key, old, new, value)))
                    break
    return fixed, found


def check_document(doc: Any) -> list[tuple[str, str]]:
    """Every problem of one parsed YAML document, as ``(path, message)`` pairs."""
    if not isinstance(doc, dict):
        return [
            ("(document)", f"expected a mapping (a Kubernetes object), got {type(doc).__name__}")
        ]
    kind, version = doc.get("kind"), doc.get("apiVersion")
    if kind == "ConfigMap" and version == "v1":
        return dataset.check_configmap(doc)
    if kind != api.KIND or version != api.API_VERSION:
        return [
            (
                "kind",
                f"{version}/{kind} is not a {api.API_VERSION} {api.KIND}: "
                "stopbudget validate checks StopPolicy documents and golden-set ConfigMaps only",
            )
        ]
    doc, renamed = _rename_old_keys(doc)
    model: list[tuple[str, str]] = []
    try:
        api.StopPolicy.model_validate(doc)
    except ValidationError as exc:
        model = api.problems_of(exc, cross_field=False)
    schema = crdgen.open_api_schema()
    rules = _rule_problems(schema, apply_defaults(schema, copy.deepcopy(doc)), "")
    flagged = {path for path, _ in model}
    structure = [(p, m) for p, m in _schema_problems(doc) if p not in flagged]
    found = set(model) | {(p.lstrip("."), m) for p, m in rules} | set(structure) | set(renamed)
    return sorted(found)


def _documents(text: str) -> Iterator[tuple[int, Any]]:
    for index, doc in enumerate(yaml.safe_load_all(text), start=1):
        if doc is not None:
            yield index, doc


def check_text(text: str, name: str) -> list[Problem]:
    """Every problem in a YAML file's text; ``name`` labels the file in the output."""
    try:
        docs = list(_documents(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark else "yaml"
        return [Problem(name, where, f"not valid YAML: {getattr(exc, 'problem', exc)}")]
    if not docs:
        return [Problem(name, "(file)", "no YAML document found")]
    multi = len(docs) > 1
    problems = []
    for index, doc in docs:
        where = f"{name}#{index}" if multi else name
        problems += [Problem(where, path, msg) for path, msg in check_document(doc)]
    return problems
