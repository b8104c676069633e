"""The CEL rules in the CRD and the pydantic validators are the same rules.

Hypothesis builds policies whose fields are each valid on their own but whose
combinations break the cross-field rules at random; the API server (CEL, see
``tests/support/apiserver.py``) and pydantic must flag exactly the same fields.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from stopbudget import api
from stopbudget.schema import crdgen, validate
from tests.support.apiserver import admit, cel_problems

budgets = st.integers(min_value=1, max_value=5000)
fractions = st.floats(min_value=0, max_value=1, allow_nan=False).map(lambda x: round(x, 3))


@st.composite
def policies(draw: st.DrawFn) -> dict[str, Any]:
    low, high = draw(budgets), draw(budgets)
    sink_type = draw(st.sampled_from(["env", "arg", "annotation", "configMap"]))
    sink: dict[str, Any] = {
        "type": sink_type,
        "name": draw(
            st.sampled_from(
                ["MAX_TOKENS", "--max-tokens", "stopbudget.io/budget", "max_tokens", "max-tokens"]
            )
        ),
    }
    if draw(st.booleans()):
        sink["configMapName"] = "limits"
    if draw(st.booleans()):
        sink["format"] = draw(st.sampled_from(['{"max_new_tokens": {budget}}', "{budget}", "512"]))
    budget: dict[str, Any] = {"min": low, "max": high, "sink": sink}
    if draw(st.booleans()):
        budget["initial"] = draw(budgets)
    quality: dict[str, Any] = {"emTarget": draw(fractions), "emFloor": draw(fractions)}
    prior_budgets = draw(st.lists(budgets, max_size=4, unique=True))
    quality["prior"] = [{"budget": b, "em": 0.5, "samples": 10} for b in prior_budgets]
    spec: dict[str, Any] = {"targetRef": {"name": "vllm"}, "budget": budget, "quality": quality}
    if draw(st.booleans()):
        spec["cost"] = {"maxTokensPerRequest": draw(budgets)}
    preset = draw(st.sampled_from(["vllm", "sglang", "tgi", "llamacpp", "none"]))
    names = draw(
        st.lists(
            st.sampled_from(["queue", "kvCache", "latencyP95", "running", "custom"]),
            max_size=3,
            unique=True,
        )
    )
    signals = []
    for name in names:
        signal: dict[str, Any] = {"name": name, "target": 1.5}
        if draw(st.booleans()):
            signal["query"] = "sum(up)"
        signals.append(signal)
    spec["load"] = {"preset": preset, "signals": signals}
    if draw(st.booleans()):
        spec["audit"] = {
            "endpoint": "http://m:8000",
            "model": "m",
            "dataset": {"configMapRef": {"name": "g"}},
            "budgets": draw(st.lists(budgets, min_size=1, max_size=4, unique=True)),
        }
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": "p"},
        "spec": spec,
    }


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(policies())
def test_cel_and_pydantic_flag_the_same_fields(doc: dict[str, Any]) -> None:
    server = admit(doc)
    ours = validate.check_document(doc)
    assert {p for p, _ in ours} == {p for p, _ in server}
    assert {m for _, m in ours} == {m for _, m in server}
    try:
        api.StopPolicy.model_validate(doc)
    except ValidationError:
        assert server, "pydantic rejects what the API server admits"
    else:
        assert not server, "pydantic admits what the API server rejects"


def _crd_rules(node: dict[str, Any]) -> list[str]:
    found = [r["rule"] for r in node.get("x-kubernetes-validations", [])]
    for sub in node.get("properties", {}).values():
        found += _crd_rules(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            found += _crd_rules(node[key])
    return found


def test_cel_string_literals_with_backslashes_are_raw() -> None:
    # cel-go (the API server) rejects escapes such as '\.' in ordinary string
    # literals, cel-python accepts them: check what cel-python would let through.
    for rule in _crd_rules(crdgen.open_api_schema()):
        for match in re.finditer(r"(r?)'([^']*)'", rule):
            assert match.group(1) == "r" or "\\" not in match.group(2), rule


def test_every_rule_is_in_the_crd_and_compiles() -> None:
    schema = crdgen.open_api_schema()
    text = _crd_rules(schema)
    models = [
        m
        for m in vars(api).values()
        if isinstance(m, type) and issubclass(m, api._Model) and m.rules
    ]
    assert models, "no model declares cross-field rules"
    for model in models:
        for rule in model.rules:
            assert rule.cel in text, f"{model.__name__}: {rule.message}"
    # Evaluating on a valid policy compiles every rule on the way.
    assert cel_problems(schema, {"spec": {}}) is not None


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(policies())
def test_valid_policies_round_trip_through_json(doc: dict[str, Any]) -> None:
    try:
        policy = api.StopPolicy.model_validate(doc)
    except ValidationError:
        return
    again = api.StopPolicy.model_validate(policy.to_json())
    assert again == policy
