"""The aiGateway sink: JSON Patches of an Envoy AI Gateway AIServiceBackend's
``spec.bodyMutation.set``, checked against Envoy AI Gateway's own CRD schema.

Table-driven cases pin the exact patches (their ``test`` ops included), what is read and
the error messages; hypothesis properties check, on generated AIServiceBackends, that a
patch applied with ``jsonpatch`` writes the field and nothing else, that the result is
still valid against the vendored upstream schema (``tests/schemas/``), that a concurrent
edit fails the patch, and that restoring after writing gives back the object exactly.
The same patches run on the real API server and the emulator in
``tests/test_operator_e2e.py``.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import jsonpatch
import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stopbudget import api
from stopbudget.core import sinks

ROOT = Path(__file__).resolve().parents[3]
UPSTREAM_CRD = ROOT / "tests" / "schemas" / "aigateway-aiservicebackends.yaml"
SINK = {"type": "aiGateway", "name": "max_tokens", "aiServiceBackendName": "vllm"}
TARGET = api.TargetRef(name="vllm-llama")
SET = "/spec/bodyMutation/set"


def spec_of(sink: dict[str, Any] | None = None, **budget: Any) -> api.Budget:
    return api.Budget.model_validate({"min": 1, "max": 100_000, "sink": sink or SINK, **budget})


def backend(mutation: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "backendRef": {"group": "gateway.envoyproxy.io", "kind": "Backend", "name": "vllm"},
        "schema": {"name": "OpenAI", "prefix": "/v1"},
        **spec,
    }
    if mutation is not None:
        body["bodyMutation"] = mutation
    return {
        "apiVersion": "aigateway.envoyproxy.io/v1alpha1",
        "kind": "AIServiceBackend",
        "metadata": {"name": "vllm", "namespace": "serving", "resourceVersion": "5"},
        "spec": body,
    }


def entry(path: str, value: str) -> dict[str, str]:
    return {"path": path, "value": value}


def t(path: str, value: Any) -> dict[str, Any]:
    return {"op": "test", "path": path, "value": value}


def load_upstream_crd() -> dict[str, Any]:
    """Envoy AI Gateway's AIServiceBackend CRD, vendored in tests/schemas/."""
    crd: dict[str, Any] = yaml.safe_load(UPSTREAM_CRD.read_text(encoding="utf-8"))
    return crd


@cache
def _schemas() -> dict[str, dict[str, Any]]:
    crd = load_upstream_crd()
    return {v["name"]: v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"]}


def assert_valid_upstream(obj: dict[str, Any]) -> None:
    """Valid against Envoy AI Gateway's schema (both versions), list-map keys unique."""
    for schema in _schemas().values():
        jsonschema.Draft4Validator(schema).validate(obj)
    paths = [e["path"] for e in ((obj["spec"].get("bodyMutation") or {}).get("set") or [])]
    assert len(paths) == len(set(paths)), paths


# --------------------------------------------------------------------------- the vendored CRD


def test_the_vendored_crd_has_the_version_the_sink_uses_and_both_agree_on_body_mutation() -> None:
    group, version, plural = sinks.AI_SERVICE_BACKEND
    crd = yaml.safe_load(UPSTREAM_CRD.read_text(encoding="utf-8"))
    assert crd["metadata"]["name"] == f"{plural}.{group}"
    served = {v["name"] for v in crd["spec"]["versions"] if v["served"]}
    assert version in served
    mutations = [s["properties"]["spec"]["properties"]["bodyMutation"] for s in _schemas().values()]
    assert all(m == mutations[0] for m in mutations)
    assert mutations[0]["properties"]["set"]["maxItems"] == sinks.BODY_MUTATION_MAX


# --------------------------------------------------------------------------- read


READS = [
    ("set holds it", backend({"set": [entry("max_tokens", "512")]}), (True, "512", 512)),
    (
        "among others",
        backend({"set": [entry("temperature", "0"), entry("max_tokens", "64")]}),
        (True, "64", 64),
    ),
    ("other fields only", backend({"set": [entry("temperature", "0")]}), (False, None, None)),
    ("remove only", backend({"remove": ["max_tokens"]}), (False, None, None)),
    ("no bodyMutation", backend(), (False, None, None)),
    ("not a number", backend({"set": [entry("max_tokens", "null")]}), (True, "null", None)),
]


@pytest.mark.parametrize(("obj", "expected"), [c[1:] for c in READS], ids=[c[0] for c in READS])
def test_read(obj: dict[str, Any], expected: tuple[bool, str | None, int | None]) -> None:
    value = sinks.read(spec_of(), TARGET, ai_service_backend=obj)
    assert (value.present, value.raw, value.budget) == expected
    assert value.where == "field max_tokens in spec.bodyMutation.set of AIServiceBackend vllm"


def test_target_of_is_the_backend() -> None:
    assert sinks.target_of(spec_of(), TARGET) == ("AIServiceBackend", "vllm")


# --------------------------------------------------------------------------- set


SETS = [
    (
        "replace the value",
        backend({"set": [entry("temperature", "0"), entry("max_tokens", "512")]}),
        [
            t(f"{SET}/1/path", "max_tokens"),
            t(f"{SET}/1/value", "512"),
            {"op": "replace", "path": f"{SET}/1/value", "value": "256"},
        ],
    ),
    (
        "add an entry",
        backend({"set": [entry("temperature", "0")]}),
        [
            t(SET, [entry("temperature", "0")]),
            {"op": "add", "path": f"{SET}/-", "value": entry("max_tokens", "256")},
        ],
    ),
    (
        "add the set list",
        backend({"remove": ["service_tier"]}),
        [
            t("/spec/bodyMutation", {"remove": ["service_tier"]}),
            {"op": "add", "path": SET, "value": [entry("max_tokens", "256")]},
        ],
    ),
    (
        "add bodyMutation",
        backend(),
        [
            t("/spec", backend()["spec"]),
            {
                "op": "add",
                "path": "/spec/bodyMutation",
                "value": {"set": [entry("max_tokens", "256")]},
            },
        ],
    ),
]


@pytest.mark.parametrize(("obj", "ops"), [c[1:] for c in SETS], ids=[c[0] for c in SETS])
def test_set_patch_tests_what_it_changes(obj: dict[str, Any], ops: list[Any]) -> None:
    spec = spec_of()
    patch = sinks.set_patch(spec, TARGET, 256, ai_service_backend=obj)
    assert patch is not None
    assert patch.ops == ops
    assert (patch.kind, patch.name, patch.restarts) == ("AIServiceBackend", "vllm", False)
    after = jsonpatch.apply_patch(obj, patch.ops)
    assert_valid_upstream(after)
    assert sinks.read(spec, TARGET, ai_service_backend=after).raw == "256"
    assert sinks.set_patch(spec, TARGET, 256, ai_service_backend=after) is None


def test_a_json_format_is_written_as_the_value() -> None:
    sink = {**SINK, "name": "override", "format": '{"max_new_tokens": {budget}}'}
    patch = sinks.set_patch(spec_of(sink), TARGET, 64, ai_service_backend=backend())
    assert patch is not None
    assert patch.ops[-1]["value"] == {"set": [entry("override", '{"max_new_tokens": 64}')]}
    assert patch.summary.endswith("""absent -> '{"max_new_tokens": 64}'""")


def test_the_thinking_field_of_the_engine() -> None:
    sink = {**SINK, "name": "thinking_token_budget"}
    obj = backend({"set": [entry("max_tokens", "4096")]})
    patch = sinks.set_patch(spec_of(sink, kind="thinking"), TARGET, 1024, ai_service_backend=obj)
    assert patch is not None
    after = jsonpatch.apply_patch(obj, patch.ops)
    assert after["spec"]["bodyMutation"]["set"] == [
        entry("max_tokens", "4096"),
        entry("thinking_token_budget", "1024"),
    ]


# --------------------------------------------------------------------------- restore


RESTORES = [
    (
        "put the value back",
        backend({"set": [entry("max_tokens", "256")]}),
        api.OriginalValue(present=True, value="4096"),
        [
            t(f"{SET}/0/path", "max_tokens"),
            t(f"{SET}/0/value", "256"),
            {"op": "replace", "path": f"{SET}/0/value", "value": "4096"},
        ],
    ),
    (
        "remove the entry among others",
        backend({"set": [entry("max_tokens", "256"), entry("temperature", "0")]}),
        api.OriginalValue(present=False),
        [t(f"{SET}/0", entry("max_tokens", "256")), {"op": "remove", "path": f"{SET}/0"}],
    ),
    (
        "remove the set list",
        backend({"set": [entry("max_tokens", "256")], "remove": ["x"]}),
        api.OriginalValue(present=False),
        [t(SET, [entry("max_tokens", "256")]), {"op": "remove", "path": SET}],
    ),
    (
        "remove bodyMutation",
        backend({"set": [entry("max_tokens", "256")]}),
        api.OriginalValue(present=False),
        [
            t("/spec/bodyMutation", {"set": [entry("max_tokens", "256")]}),
            {"op": "remove", "path": "/spec/bodyMutation"},
        ],
    ),
]


@pytest.mark.parametrize(
    ("obj", "original", "ops"), [c[1:] for c in RESTORES], ids=[c[0] for c in RESTORES]
)
def test_restore_patch(obj: dict[str, Any], original: api.OriginalValue, ops: list[Any]) -> None:
    patch = sinks.restore_patch(spec_of(), TARGET, original, ai_service_backend=obj)
    assert patch is not None
    assert patch.ops == ops
    after = jsonpatch.apply_patch(obj, patch.ops)
    assert_valid_upstream(after)
    assert sinks.restore_patch(spec_of(), TARGET, original, ai_service_backend=after) is None


# --------------------------------------------------------------------------- errors


ERRORS = [
    (
        "duplicate",
        backend({"set": [entry("max_tokens", "1"), entry("max_tokens", "2")]}),
        "is set 2 times: keep one",
    ),
    (
        "full",
        backend({"set": [entry(f"f{i}", "1") for i in range(16)]}),
        "already holds 16 entries, Envoy AI Gateway's maximum: remove one",
    ),
    (
        "set not a list",
        backend({"set": {"max_tokens": "1"}}),
        "spec.bodyMutation.set that is not a list",
    ),
    ("bodyMutation not a map", backend(["x"]), "spec.bodyMutation that is not a map"),  # type: ignore[arg-type]
    ("no spec", {"metadata": {"name": "vllm"}}, "has no spec"),
]


@pytest.mark.parametrize(("obj", "fragment"), [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_errors_name_the_place_and_the_fix(obj: dict[str, Any], fragment: str) -> None:
    with pytest.raises(sinks.SinkTargetError, match="AIServiceBackend vllm") as raised:
        sinks.LocatedSink.found_in(spec_of(), TARGET, obj)
    assert fragment in str(raised.value)


def test_a_full_list_that_holds_the_field_is_fine() -> None:
    entries = [entry(f"f{i}", "1") for i in range(15)] + [entry("max_tokens", "9")]
    found = sinks.LocatedSink.found_in(spec_of(), TARGET, backend({"set": entries}))
    assert found.value.budget == 9
    assert found.set_patch(10) is not None


def test_the_backend_must_be_read_first() -> None:
    with pytest.raises(sinks.SinkTargetError, match="needs AIServiceBackend 'vllm'"):
        sinks.read(spec_of(), TARGET, deployment={"metadata": {"name": "vllm-llama"}})


# --------------------------------------------------------------------------- properties

FIELDS = st.sampled_from(["temperature", "service_tier", "max_tokens", "top_p", "seed"])
VALUES = st.sampled_from(["0", "1", "512", '"scale"', "null", "true"])


@st.composite
def backends(draw: st.DrawFn) -> dict[str, Any]:
    """AIServiceBackends as users write them: with or without bodyMutation, set and remove."""
    mutation: dict[str, Any] = {}
    if draw(st.booleans()):
        names = draw(st.lists(FIELDS, unique=True, min_size=1, max_size=5))
        mutation["set"] = [entry(n, draw(VALUES)) for n in names]
    if draw(st.booleans()):
        mutation["remove"] = draw(
            st.lists(st.sampled_from(["user", "store"]), unique=True, min_size=1)
        )
    extra = (
        {"headerMutation": {"set": [{"name": "x-team", "value": "a"}]}}
        if draw(st.booleans())
        else {}
    )
    return backend(mutation or None, **extra)


PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(obj=backends(), budget=st.integers(1, 100_000))
def test_property_set_writes_the_field_and_nothing_else(obj: dict[str, Any], budget: int) -> None:
    spec = spec_of()
    before = copy.deepcopy(obj)
    patch = sinks.set_patch(spec, TARGET, budget, ai_service_backend=obj)
    assert obj == before  # pure: the input is not changed
    if patch is None:
        assert sinks.read(spec, TARGET, ai_service_backend=obj).budget == budget
        return
    after = jsonpatch.apply_patch(obj, patch.ops)
    assert_valid_upstream(after)
    assert sinks.read(spec, TARGET, ai_service_backend=after).budget == budget

    def others(o: dict[str, Any]) -> tuple[Any, ...]:
        spec_ = copy.deepcopy(o["spec"])
        mutation = spec_.pop("bodyMutation", {})
        kept = [e for e in mutation.get("set", []) if e["path"] != "max_tokens"]
        return (o["metadata"], spec_, mutation.get("remove"), kept)

    assert others(after) == others(obj)


@PROPERTY
@given(obj=backends(), budget=st.integers(1, 100_000))
def test_property_restore_after_set_gives_back_the_original(
    obj: dict[str, Any], budget: int
) -> None:
    spec = spec_of()
    located = sinks.LocatedSink.found_in(spec, TARGET, obj)
    patch = located.set_patch(budget)
    after = obj if patch is None else jsonpatch.apply_patch(obj, patch.ops)
    restore = sinks.LocatedSink.found_in(spec, TARGET, after).restore_patch(
        located.value.original()
    )
    restored = after if restore is None else jsonpatch.apply_patch(after, restore.ops)
    assert restored == obj


@PROPERTY
@given(obj=backends(), budget=st.integers(1, 100_000), edit=st.sampled_from(["value", "first"]))
def test_property_a_concurrent_edit_fails_the_patch(
    obj: dict[str, Any], budget: int, edit: str
) -> None:
    """Someone edits bodyMutation between the read and the patch: the patch does not apply."""
    patch = sinks.set_patch(spec_of(), TARGET, budget, ai_service_backend=obj)
    if patch is None:
        return
    edited = copy.deepcopy(obj)
    mutation = edited["spec"].setdefault("bodyMutation", {})
    entries = mutation.setdefault("set", [])
    mine = [e for e in entries if e["path"] == "max_tokens"]
    if edit == "value" and mine:
        mine[0]["value"] = str(budget + 1)
    else:
        entries.insert(0, entry("frequency_penalty", "0.5"))
    with pytest.raises(jsonpatch.JsonPatchException):
        jsonpatch.apply_patch(edited, patch.ops)
