"""Sinks: JSON Patches that write the budget and nothing else, and restore the original.

Table-driven cases pin the exact patches (their ``test`` ops included) and the
error messages; hypothesis properties check, on generated Deployments and
ConfigMaps, that a patch applied with ``jsonpatch`` writes the budget, leaves
everything else byte-identical, is None when the value is already right, fails
on a concurrent reorder, and that restoring after writing gives back the
original object exactly.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import jsonpointer
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stopbudget import api
from stopbudget.core import sinks
from tests.support import builders

VLLM_FORMAT = '{"max_new_tokens": {budget}}'
ENV = {"type": "env", "name": "MAX_TOKENS"}
ARG = {"type": "arg", "name": "--max-tokens"}
ARG_VLLM = {"type": "arg", "name": "--override-generation-config", "format": VLLM_FORMAT}
ANNOTATION = {"type": "annotation", "name": "stopbudget.io/max-tokens"}
CONFIG_MAP = {"type": "configMap", "name": "max_tokens", "configMapName": "limits"}
C0 = "/spec/template/spec/containers/0"


def spec_of(sink: dict[str, Any]) -> api.Budget:
    return api.Budget.model_validate({"min": 1, "max": 100_000, "sink": sink})


TARGET = api.TargetRef(name="vllm-llama", container="vllm")


def container(name: str = "vllm", **fields: Any) -> dict[str, Any]:
    return {"name": name, "image": f"example/{name}:1", **fields}


def ev(name: str, value: str | None = None) -> dict[str, Any]:
    return {"name": name} if value is None else {"name": name, "value": value}


#: A sidecar holding the same env var name and flag, to show that they are never touched.
SIDECAR = container(
    "metrics",
    args=["--max-tokens=1", "--port", "9400"],
    env=[ev("MAX_TOKENS", "1")],
)


def deployment(
    *containers: dict[str, Any], annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"resourceVersion": "7"}
    if annotations is not None:
        meta["annotations"] = annotations
    return builders.deployment(
        "vllm-llama",
        "serving",
        list(containers) or [container(), SIDECAR],
        replicas=2,
        app="vllm",
        selector=False,
        **meta,
    )


def with_env(*entries: dict[str, Any]) -> dict[str, Any]:
    """A Deployment whose vllm container has these env entries, and the sidecar."""
    return deployment(container(env=list(entries)), SIDECAR)


def with_args(*items: str) -> dict[str, Any]:
    """A Deployment whose vllm container has these args, and the sidecar."""
    return deployment(container(args=list(items)), SIDECAR)


def config_map(data: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    cm: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "limits", "namespace": "serving", "resourceVersion": "3"},
        **extra,
    }
    if data is not None:
        cm["data"] = data
    return cm


def apply(obj: dict[str, Any], patch: sinks.SinkPatch | None) -> dict[str, Any]:
    return obj if patch is None else jsonpatch.apply_patch(obj, patch.ops)


def objects(sink: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments naming ``obj`` as the object the sink lives in."""
    return {"config_map": obj} if sink["type"] == "configMap" else {"deployment": obj}


# --------------------------------------------------------------------------- read


READS = [
    ("env value", ENV, with_env(ev("MAX_TOKENS", "512")), (True, "512", 512)),
    ("env absent", ENV, with_env(ev("OTHER", "1")), (False, None, None)),
    ("env without value", ENV, with_env(ev("MAX_TOKENS")), (True, None, None)),
    ("env not a number", ENV, with_env(ev("MAX_TOKENS", "lots")), (True, "lots", None)),
    ("env padded", ENV, with_env(ev("MAX_TOKENS", " 64 ")), (True, " 64 ", 64)),
    ("arg one item", ARG, with_args("--model", "m", "--max-tokens=256"), (True, "256", 256)),
    ("arg two items", ARG, with_args("--max-tokens", "256", "--model", "m"), (True, "256", 256)),
    (
        "arg in command",
        ARG,
        deployment(container(command=["vllm", "serve", "--max-tokens", "99"]), SIDECAR),
        (True, "99", 99),
    ),
    ("arg absent", ARG, with_args("--max-tokens-per-batch=5"), (False, None, None)),
    (
        "arg vllm format",
        ARG_VLLM,
        with_args("--override-generation-config", '{"max_new_tokens": 384}'),
        (True, '{"max_new_tokens": 384}', 384),
    ),
    (
        "arg other json",
        ARG_VLLM,
        with_args('--override-generation-config={"temperature": 0}'),
        (True, '{"temperature": 0}', None),
    ),
    (
        "annotation",
        ANNOTATION,
        deployment(annotations={"stopbudget.io/max-tokens": "128", "x": "y"}),
        (True, "128", 128),
    ),
    ("annotation absent", ANNOTATION, deployment(annotations={"x": "y"}), (False, None, None)),
    ("annotations absent", ANNOTATION, deployment(), (False, None, None)),
    (
        "configMap key",
        CONFIG_MAP,
        config_map({"max_tokens": "700", "other": "1"}),
        (True, "700", 700),
    ),
    ("configMap no key", CONFIG_MAP, config_map({"other": "1"}), (False, None, None)),
    ("configMap no data", CONFIG_MAP, config_map(), (False, None, None)),
]


@pytest.mark.parametrize(
    ("sink", "obj", "expected"), [c[1:] for c in READS], ids=[c[0] for c in READS]
)
def test_read(
    sink: dict[str, Any], obj: dict[str, Any], expected: tuple[bool, str | None, int | None]
) -> None:
    value = sinks.read(spec_of(sink), TARGET, **objects(sink, obj))
    assert (value.present, value.raw, value.budget) == expected
    assert value.original() == api.OriginalValue(present=expected[0], value=expected[1])


def test_read_names_the_place() -> None:
    value = sinks.read(spec_of(ENV), TARGET, deployment())
    assert value.where == "env MAX_TOKENS of container vllm in Deployment vllm-llama"
    value = sinks.read(
        spec_of(ARG), TARGET, deployment(container(command=["x", "--max-tokens=1"]), SIDECAR)
    )
    assert value.where.endswith("(in its command)")


def test_target_of() -> None:
    assert sinks.target_of(spec_of(ENV), TARGET) == ("Deployment", "vllm-llama")
    assert sinks.target_of(spec_of(ANNOTATION), TARGET) == ("Deployment", "vllm-llama")
    assert sinks.target_of(spec_of(CONFIG_MAP), TARGET) == ("ConfigMap", "limits")


def test_pointer_escapes_slash_and_tilde() -> None:
    assert (
        sinks.pointer("metadata", "annotations", "a.io/b~c") == "/metadata/annotations/a.io~1b~0c"
    )
    assert sinks.pointer("spec", 0) == "/spec/0"


# --------------------------------------------------------------------------- set: exact patches


def t(path: str, value: Any) -> dict[str, Any]:
    return {"op": "test", "path": path, "value": value}


NAME = t(f"{C0}/name", "vllm")

SETS = [
    (
        "env replace",
        ENV,
        with_env(ev("A", "1"), ev("MAX_TOKENS", "512")),
        [
            NAME,
            t(f"{C0}/env/1/name", "MAX_TOKENS"),
            t(f"{C0}/env/1/value", "512"),
            {"op": "replace", "path": f"{C0}/env/1/value", "value": "256"},
        ],
    ),
    (
        "env without value",
        ENV,
        with_env(ev("MAX_TOKENS")),
        [
            NAME,
            t(f"{C0}/env/0", ev("MAX_TOKENS")),
            {"op": "add", "path": f"{C0}/env/0/value", "value": "256"},
        ],
    ),
    (
        "env append",
        ENV,
        with_env(ev("A", "1")),
        [
            NAME,
            t(f"{C0}/env", [ev("A", "1")]),
            {"op": "add", "path": f"{C0}/env/-", "value": ev("MAX_TOKENS", "256")},
        ],
    ),
    (
        "env list created",
        ENV,
        deployment(container(), SIDECAR),
        [
            t(C0, container()),
            {"op": "add", "path": f"{C0}/env", "value": [ev("MAX_TOKENS", "256")]},
        ],
    ),
    (
        "arg one item",
        ARG,
        with_args("--model", "m", "--max-tokens=512"),
        [
            NAME,
            t(f"{C0}/args/2", "--max-tokens=512"),
            {"op": "replace", "path": f"{C0}/args/2", "value": "--max-tokens=256"},
        ],
    ),
    (
        "arg two items",
        ARG,
        with_args("--max-tokens", "512", "--model", "m"),
        [
            NAME,
            t(f"{C0}/args/0", "--max-tokens"),
            t(f"{C0}/args/1", "512"),
            {"op": "replace", "path": f"{C0}/args/1", "value": "256"},
        ],
    ),
    (
        "arg in command",
        ARG,
        deployment(container(command=["vllm", "--max-tokens", "512"]), SIDECAR),
        [
            NAME,
            t(f"{C0}/command/1", "--max-tokens"),
            t(f"{C0}/command/2", "512"),
            {"op": "replace", "path": f"{C0}/command/2", "value": "256"},
        ],
    ),
    (
        "arg appended",
        ARG,
        with_args("--model", "m"),
        [
            NAME,
            t(f"{C0}/args", ["--model", "m"]),
            {"op": "add", "path": f"{C0}/args/-", "value": "--max-tokens=256"},
        ],
    ),
    (
        "single-dash arg appended as two items",
        {"type": "arg", "name": "-n"},
        with_args("--model", "m"),
        [
            NAME,
            t(f"{C0}/args", ["--model", "m"]),
            {"op": "add", "path": f"{C0}/args/-", "value": "-n"},
            {"op": "add", "path": f"{C0}/args/-", "value": "256"},
        ],
    ),
    (
        "args created",
        ARG,
        deployment(container(command=["vllm", "serve"]), SIDECAR),
        [
            t(C0, container(command=["vllm", "serve"])),
            {"op": "add", "path": f"{C0}/args", "value": ["--max-tokens=256"]},
        ],
    ),
    (
        "vllm format, two items",
        ARG_VLLM,
        with_args("--override-generation-config", '{"max_new_tokens": 512}'),
        [
            NAME,
            t(f"{C0}/args/0", "--override-generation-config"),
            t(f"{C0}/args/1", '{"max_new_tokens": 512}'),
            {"op": "replace", "path": f"{C0}/args/1", "value": '{"max_new_tokens": 256}'},
        ],
    ),
    (
        "vllm format appended",
        ARG_VLLM,
        with_args("--model", "m"),
        [
            NAME,
            t(f"{C0}/args", ["--model", "m"]),
            {
                "op": "add",
                "path": f"{C0}/args/-",
                "value": '--override-generation-config={"max_new_tokens": 256}',
            },
        ],
    ),
    (
        "annotation replace",
        ANNOTATION,
        deployment(annotations={"stopbudget.io/max-tokens": "512"}),
        [
            t("/metadata/annotations/stopbudget.io~1max-tokens", "512"),
            {
                "op": "replace",
                "path": "/metadata/annotations/stopbudget.io~1max-tokens",
                "value": "256",
            },
        ],
    ),
    (
        "annotation added",
        ANNOTATION,
        deployment(annotations={"deployment.kubernetes.io/revision": "3"}),
        [
            t("/metadata/annotations", {"deployment.kubernetes.io/revision": "3"}),
            {
                "op": "add",
                "path": "/metadata/annotations/stopbudget.io~1max-tokens",
                "value": "256",
            },
        ],
    ),
    (
        "annotations created",
        ANNOTATION,
        deployment(),
        [
            t("/metadata", deployment()["metadata"]),
            {
                "op": "add",
                "path": "/metadata/annotations",
                "value": {"stopbudget.io/max-tokens": "256"},
            },
        ],
    ),
    (
        "configMap replace",
        CONFIG_MAP,
        config_map({"max_tokens": "512", "other": "x"}),
        [
            t("/data/max_tokens", "512"),
            {"op": "replace", "path": "/data/max_tokens", "value": "256"},
        ],
    ),
    (
        "configMap key added",
        CONFIG_MAP,
        config_map({"other": "x"}),
        [t("/data", {"other": "x"}), {"op": "add", "path": "/data/max_tokens", "value": "256"}],
    ),
    (
        "configMap data created",
        CONFIG_MAP,
        config_map(),
        [t("", config_map()), {"op": "add", "path": "/data", "value": {"max_tokens": "256"}}],
    ),
]


@pytest.mark.parametrize(("sink", "obj", "ops"), [c[1:] for c in SETS], ids=[c[0] for c in SETS])
def test_set_patch_tests_what_it_changes(
    sink: dict[str, Any], obj: dict[str, Any], ops: list[Any]
) -> None:
    spec = spec_of(sink)
    patch = sinks.set_patch(spec, TARGET, 256, **objects(sink, obj))
    assert patch is not None
    assert patch.ops == ops
    after = apply(obj, patch)
    assert sinks.read(spec, TARGET, **objects(sink, after)).budget == 256
    assert sinks.set_patch(spec, TARGET, 256, **objects(sink, after)) is None


@pytest.mark.parametrize(
    ("sink", "kind", "name", "restarts"),
    [
        (ENV, "Deployment", "vllm-llama", True),
        (ARG, "Deployment", "vllm-llama", True),
        (ANNOTATION, "Deployment", "vllm-llama", False),
        (CONFIG_MAP, "ConfigMap", "limits", False),
    ],
)
def test_patch_says_what_and_where(
    sink: dict[str, Any], kind: str, name: str, restarts: bool
) -> None:
    obj = (
        config_map({"max_tokens": "512"})
        if kind == "ConfigMap"
        else deployment(
            container(env=[ev("MAX_TOKENS", "512")], args=["--max-tokens=512"]),
            SIDECAR,
            annotations={"stopbudget.io/max-tokens": "512"},
        )
    )
    patch = sinks.set_patch(spec_of(sink), TARGET, 256, **objects(sink, obj))
    assert patch is not None
    assert (patch.kind, patch.name, patch.restarts) == (kind, name, restarts)
    assert patch.summary.endswith(": '512' -> '256'")
    assert sink["name"] in patch.summary


def test_summary_of_a_first_write() -> None:
    patch = sinks.set_patch(spec_of(ENV), TARGET, 64, deployment())
    assert patch is not None
    assert (
        patch.summary == "env MAX_TOKENS of container vllm in Deployment vllm-llama: absent -> '64'"
    )


@pytest.mark.parametrize(
    ("sink", "obj"),
    [
        (ENV, with_env(ev("MAX_TOKENS", "256"))),
        (ENV, with_env(ev("MAX_TOKENS", " 256 "))),
        (ARG, with_args("--max-tokens", "256")),
        (ARG_VLLM, with_args('--override-generation-config={"max_new_tokens": 256}')),
        (ANNOTATION, deployment(annotations={"stopbudget.io/max-tokens": "256"})),
        (CONFIG_MAP, config_map({"max_tokens": "256"})),
    ],
)
def test_no_patch_when_already_right(sink: dict[str, Any], obj: dict[str, Any]) -> None:
    assert sinks.set_patch(spec_of(sink), TARGET, 256, **objects(sink, obj)) is None


def test_only_container_needs_no_name() -> None:
    obj = deployment(container("server", env=[ev("MAX_TOKENS", "1")]))
    target = api.TargetRef(name="vllm-llama")
    patch = sinks.set_patch(spec_of(ENV), target, 5, deployment=obj)
    assert patch is not None
    assert patch.ops[0] == t(f"{C0}/name", "server")


def test_the_named_container_is_found_at_its_index() -> None:
    obj = deployment(SIDECAR, container(args=["--max-tokens=9"]))
    patch = sinks.set_patch(spec_of(ARG), TARGET, 5, deployment=obj)
    assert patch is not None
    c1 = "/spec/template/spec/containers/1"
    assert patch.ops == [
        t(f"{c1}/name", "vllm"),
        t(f"{c1}/args/0", "--max-tokens=9"),
        {"op": "replace", "path": f"{c1}/args/0", "value": "--max-tokens=5"},
    ]
    after = apply(obj, patch)
    assert after["spec"]["template"]["spec"]["containers"][0] == SIDECAR


# --------------------------------------------------------------------------- concurrent edits


def test_a_reorder_of_containers_fails_the_patch() -> None:
    obj = with_env(ev("MAX_TOKENS", "512"))
    patch = sinks.set_patch(spec_of(ENV), TARGET, 256, deployment=obj)
    assert patch is not None
    reordered = copy.deepcopy(obj)
    reordered["spec"]["template"]["spec"]["containers"].reverse()
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        apply(reordered, patch)


@pytest.mark.parametrize(
    ("sink", "obj", "edit"),
    [
        (
            ENV,
            with_env(ev("MAX_TOKENS", "512")),
            lambda d: d["spec"]["template"]["spec"]["containers"][0]["env"][0].update(value="600"),
        ),
        (
            ENV,
            with_env(ev("A", "1"), ev("MAX_TOKENS", "5")),
            lambda d: d["spec"]["template"]["spec"]["containers"][0]["env"].pop(0),
        ),
        (
            ENV,
            with_env(ev("A", "1")),
            lambda d: d["spec"]["template"]["spec"]["containers"][0]["env"].append(
                ev("MAX_TOKENS", "7")
            ),
        ),
        (
            ENV,
            deployment(container(), SIDECAR),
            lambda d: d["spec"]["template"]["spec"]["containers"][0].update(env=[ev("B", "2")]),
        ),
        (
            ARG,
            with_args("--max-tokens", "512"),
            lambda d: d["spec"]["template"]["spec"]["containers"][0]["args"].insert(0, "--model=m"),
        ),
        (
            ARG,
            with_args("--model=m"),
            lambda d: d["spec"]["template"]["spec"]["containers"][0]["args"].append(
                "--max-tokens=1"
            ),
        ),
        (
            ANNOTATION,
            deployment(annotations={"stopbudget.io/max-tokens": "512"}),
            lambda d: d["metadata"]["annotations"].update({"stopbudget.io/max-tokens": "1"}),
        ),
        (
            ANNOTATION,
            deployment(annotations={"a": "b"}),
            lambda d: d["metadata"]["annotations"].update({"stopbudget.io/max-tokens": "1"}),
        ),
        (CONFIG_MAP, config_map({"max_tokens": "512"}), lambda d: d["data"].update(max_tokens="9")),
        (CONFIG_MAP, config_map(), lambda d: d.update(data={"max_tokens": "9"})),
    ],
)
def test_a_concurrent_edit_fails_the_patch(
    sink: dict[str, Any], obj: dict[str, Any], edit: Any
) -> None:
    patch = sinks.set_patch(spec_of(sink), TARGET, 256, **objects(sink, obj))
    assert patch is not None
    edited = copy.deepcopy(obj)
    edit(edited)
    with pytest.raises((jsonpatch.JsonPatchException, jsonpointer.JsonPointerException)):
        apply(edited, patch)


# --------------------------------------------------------------------------- errors


ERRORS = [
    (
        "unknown container",
        ENV,
        deployment(container("server"), SIDECAR),
        r"container 'vllm' is not in Deployment vllm-llama, whose containers are "
        r"\['server', 'metrics'\]: set spec.targetRef.container",
    ),
    (
        "no containers",
        ENV,
        {"metadata": {"name": "vllm-llama"}, "spec": {}},
        r"Deployment vllm-llama has no containers in spec.template.spec.containers",
    ),
    (
        "env from valueFrom",
        ENV,
        with_env(
            {"name": "MAX_TOKENS", "valueFrom": {"configMapKeyRef": {"name": "x", "key": "y"}}}
        ),
        r"env MAX_TOKENS of container vllm in Deployment vllm-llama is set with valueFrom: "
        r".*replace valueFrom with value",
    ),
    (
        "env twice",
        ENV,
        with_env(ev("MAX_TOKENS", "1"), ev("MAX_TOKENS", "2")),
        r"is defined 2 times \(env\[0\] and env\[1\]\): remove the duplicates",
    ),
    (
        "flag twice",
        ARG,
        deployment(container(command=["x", "--max-tokens=1"], args=["--max-tokens", "2"]), SIDECAR),
        r"argument --max-tokens of container vllm .* appears 2 times "
        r"\(args\[0\], command\[1\]\): keep one",
    ),
    (
        "flag in a shell string",
        ARG,
        deployment(container(command=["sh", "-c", "vllm serve --max-tokens 5"]), SIDECAR),
        r"is inside the string command\[2\] \(a shell command line\?\): "
        r".*pass the flag as its own argument",
    ),
    (
        "flag with no value",
        ARG,
        with_args("--model=m", "--max-tokens"),
        r"has no value after it in args\[1\]: write it as '--max-tokens=<value>'",
    ),
    (
        "flag followed by a flag",
        ARG,
        with_args("--max-tokens", "--model=m"),
        r"has no value after it in args\[0\]",
    ),
    (
        "key in binaryData",
        CONFIG_MAP,
        config_map(binaryData={"max_tokens": "MTI="}),
        r"key max_tokens of ConfigMap limits is in binaryData: .*move the key to data",
    ),
]


@pytest.mark.parametrize(
    ("sink", "obj", "message"), [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS]
)
def test_errors_name_the_place_and_the_fix(
    sink: dict[str, Any], obj: dict[str, Any], message: str
) -> None:
    spec = spec_of(sink)
    for call in (
        lambda: sinks.read(spec, TARGET, **objects(sink, obj)),
        lambda: sinks.set_patch(spec, TARGET, 1, **objects(sink, obj)),
        lambda: sinks.restore_patch(
            spec, TARGET, api.OriginalValue(present=False), **objects(sink, obj)
        ),
    ):
        with pytest.raises(sinks.SinkTargetError, match=message):
            call()


def test_several_containers_need_a_name() -> None:
    target = api.TargetRef(name="vllm-llama")
    with pytest.raises(
        sinks.SinkTargetError,
        match=r"has 2 containers \['vllm', 'metrics'\]: set spec.targetRef.container",
    ):
        sinks.set_patch(spec_of(ARG), target, 1, deployment=deployment())
    # The annotation and configMap sinks do not write into a container.
    assert sinks.set_patch(spec_of(ANNOTATION), target, 1, deployment=deployment()) is not None


def test_the_object_the_sink_lives_in_is_required() -> None:
    with pytest.raises(sinks.SinkTargetError, match="needs ConfigMap 'limits'"):
        sinks.read(spec_of(CONFIG_MAP), TARGET, deployment=deployment())
    with pytest.raises(sinks.SinkTargetError, match="needs Deployment 'vllm-llama'"):
        sinks.read(spec_of(ENV), TARGET, config_map=config_map())
    assert issubclass(sinks.SinkTargetError, ValueError)


# --------------------------------------------------------------------------- restore


RESTORES = [
    (
        "env value back",
        ENV,
        with_env(ev("MAX_TOKENS", "256")),
        api.OriginalValue(present=True, value="512"),
        [
            NAME,
            t(f"{C0}/env/0/name", "MAX_TOKENS"),
            t(f"{C0}/env/0/value", "256"),
            {"op": "replace", "path": f"{C0}/env/0/value", "value": "512"},
        ],
    ),
    (
        "env value key removed",
        ENV,
        with_env(ev("MAX_TOKENS", "256")),
        api.OriginalValue(present=True, value=None),
        [
            NAME,
            t(f"{C0}/env/0/name", "MAX_TOKENS"),
            t(f"{C0}/env/0/value", "256"),
            {"op": "remove", "path": f"{C0}/env/0/value"},
        ],
    ),
    (
        "env entry removed",
        ENV,
        with_env(ev("A", "1"), ev("MAX_TOKENS", "256")),
        api.OriginalValue(present=False),
        [NAME, t(f"{C0}/env/1", ev("MAX_TOKENS", "256")), {"op": "remove", "path": f"{C0}/env/1"}],
    ),
    (
        "env list removed",
        ENV,
        with_env(ev("MAX_TOKENS", "256")),
        api.OriginalValue(present=False),
        [NAME, t(f"{C0}/env", [ev("MAX_TOKENS", "256")]), {"op": "remove", "path": f"{C0}/env"}],
    ),
    (
        "env re-added",
        ENV,
        with_env(ev("A", "1")),
        api.OriginalValue(present=True, value="512"),
        [
            NAME,
            t(f"{C0}/env", [ev("A", "1")]),
            {"op": "add", "path": f"{C0}/env/-", "value": ev("MAX_TOKENS", "512")},
        ],
    ),
    (
        "arg item removed",
        ARG,
        with_args("--model=m", "--max-tokens=256"),
        api.OriginalValue(present=False),
        [NAME, t(f"{C0}/args/1", "--max-tokens=256"), {"op": "remove", "path": f"{C0}/args/1"}],
    ),
    (
        "arg two items removed",
        ARG,
        with_args("--max-tokens", "256", "--model=m"),
        api.OriginalValue(present=False),
        [
            NAME,
            t(f"{C0}/args/0", "--max-tokens"),
            t(f"{C0}/args/1", "256"),
            {"op": "remove", "path": f"{C0}/args/1"},
            {"op": "remove", "path": f"{C0}/args/0"},
        ],
    ),
    (
        "args removed",
        ARG,
        with_args("--max-tokens=256"),
        api.OriginalValue(present=False),
        [NAME, t(f"{C0}/args", ["--max-tokens=256"]), {"op": "remove", "path": f"{C0}/args"}],
    ),
    (
        "annotation removed",
        ANNOTATION,
        deployment(annotations={"a": "b", "stopbudget.io/max-tokens": "256"}),
        api.OriginalValue(present=False),
        [
            t("/metadata/annotations/stopbudget.io~1max-tokens", "256"),
            {"op": "remove", "path": "/metadata/annotations/stopbudget.io~1max-tokens"},
        ],
    ),
    (
        "annotations removed",
        ANNOTATION,
        deployment(annotations={"stopbudget.io/max-tokens": "256"}),
        api.OriginalValue(present=False),
        [
            t("/metadata/annotations", {"stopbudget.io/max-tokens": "256"}),
            {"op": "remove", "path": "/metadata/annotations"},
        ],
    ),
    (
        "configMap value back",
        CONFIG_MAP,
        config_map({"max_tokens": "256"}),
        api.OriginalValue(present=True, value="1024"),
        [
            t("/data/max_tokens", "256"),
            {"op": "replace", "path": "/data/max_tokens", "value": "1024"},
        ],
    ),
    (
        "configMap data removed",
        CONFIG_MAP,
        config_map({"max_tokens": "256"}),
        api.OriginalValue(present=False),
        [t("/data", {"max_tokens": "256"}), {"op": "remove", "path": "/data"}],
    ),
]


@pytest.mark.parametrize(
    ("sink", "obj", "original", "ops"), [c[1:] for c in RESTORES], ids=[c[0] for c in RESTORES]
)
def test_restore_patch(
    sink: dict[str, Any], obj: dict[str, Any], original: api.OriginalValue, ops: list[Any]
) -> None:
    spec = spec_of(sink)
    patch = sinks.restore_patch(spec, TARGET, original, **objects(sink, obj))
    assert patch is not None
    assert patch.ops == ops
    restored = apply(obj, patch)
    value = sinks.read(spec, TARGET, **objects(sink, restored))
    assert (value.present, value.raw) == (original.present, original.value)
    assert sinks.restore_patch(spec, TARGET, original, **objects(sink, restored)) is None


@pytest.mark.parametrize(
    ("sink", "obj", "original"),
    [
        (ENV, with_env(ev("MAX_TOKENS", "512")), api.OriginalValue(present=True, value="512")),
        (ENV, with_env(ev("MAX_TOKENS")), api.OriginalValue(present=True, value=None)),
        (ENV, deployment(container(), SIDECAR), api.OriginalValue(present=False)),
        (ARG, with_args("--max-tokens", "512"), api.OriginalValue(present=True, value="512")),
        (ARG, deployment(container(), SIDECAR), api.OriginalValue(present=False)),
        (ANNOTATION, deployment(), api.OriginalValue(present=False)),
        (CONFIG_MAP, config_map({"x": "1"}), api.OriginalValue(present=False)),
    ],
)
def test_nothing_to_restore(
    sink: dict[str, Any], obj: dict[str, Any], original: api.OriginalValue
) -> None:
    assert sinks.restore_patch(spec_of(sink), TARGET, original, **objects(sink, obj)) is None


# --------------------------------------------------------------------------- properties

VAR_NAMES = ["A", "B", "HF_HOME"]
OTHER_FLAGS = ["--model", "--port", "--max-tokens-per-batch", "-v"]
ANNOTATION_KEYS = ["deployment.kubernetes.io/revision", "team", "a.io/b~c"]
DATA_KEYS = ["other", "routes.yaml"]
CONTAINER_NAMES = ["vllm", "metrics", "proxy"]

SINKS = st.sampled_from(
    [
        ENV,
        ARG,
        ARG_VLLM,
        {"type": "arg", "name": "-n"},
        {"type": "arg", "name": "--max-tokens", "format": "{budget}tok"},
        ANNOTATION,
        CONFIG_MAP,
    ]
)
VALUES = st.one_of(
    st.integers(1, 100_000).map(str),
    st.text(alphabet='abc 0123456789{}":_', max_size=12).filter(lambda v: not v.startswith("-")),
)


@st.composite
def other_args(draw: st.DrawFn) -> list[str]:
    out: list[str] = []
    for flag in draw(st.lists(st.sampled_from(OTHER_FLAGS), max_size=3)):
        if draw(st.booleans()):
            out.append(f"{flag}={draw(VALUES)}")
        else:
            out += [flag, draw(st.sampled_from(["x", "1", "a b"]))]
    return out


@st.composite
def pod_container(draw: st.DrawFn, name: str, sink: dict[str, Any]) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": draw(st.sampled_from(["vllm:1", "exporter:2"]))}
    env = [ev(var, draw(VALUES)) for var in draw(st.lists(st.sampled_from(VAR_NAMES), unique=True))]
    state = draw(st.sampled_from(["absent", "value", "no value"]))
    if sink["type"] == "env" and state != "absent":
        entry = ev(sink["name"], draw(VALUES) if state == "value" else None)
        env.insert(draw(st.integers(0, len(env))), entry)
    if env:
        c["env"] = env
    lists = {"args": draw(other_args()), "command": draw(st.sampled_from([[], ["vllm", "serve"]]))}
    if sink["type"] == "arg":
        where = draw(st.sampled_from(["none", "args", "command"]))
        if where != "none":
            flag, value = sink["name"], draw(VALUES)
            items = [f"{flag}={value}"] if draw(st.booleans()) else [flag, value]
            at = draw(st.integers(0, len(lists[where])))
            lists[where][at:at] = items
    for key in ("command", "args"):
        if lists[key]:
            c[key] = lists[key]
    if draw(st.booleans()):
        c["resources"] = {"limits": {"nvidia.com/gpu": "1"}}
    return c


@st.composite
def scenario(draw: st.DrawFn) -> tuple[dict[str, Any], api.TargetRef, dict[str, Any]]:
    """A sink, the target, and the object the sink lives in."""
    sink = draw(SINKS)
    if sink["type"] == "configMap":
        data = draw(st.dictionaries(st.sampled_from(DATA_KEYS), VALUES, max_size=3))
        if draw(st.booleans()):
            data[sink["name"]] = draw(VALUES)
        obj = config_map(data or None)
        if draw(st.booleans()):
            obj["binaryData"] = {"blob.bin": "AAEC"}
        return sink, TARGET, obj
    names = draw(st.lists(st.sampled_from(CONTAINER_NAMES), min_size=1, max_size=3, unique=True))
    containers = [draw(pod_container(n, sink)) for n in names]
    annotations = draw(st.dictionaries(st.sampled_from(ANNOTATION_KEYS), VALUES, max_size=3))
    if sink["type"] == "annotation" and draw(st.booleans()):
        annotations[sink["name"]] = draw(VALUES)
    target = api.TargetRef(name="vllm-llama", container=draw(st.sampled_from(names)))
    return sink, target, deployment(*containers, annotations=annotations or None)


def strip(sink: dict[str, Any], target: api.TargetRef, obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` without the sink's value (an independent model of where the sink lives)."""
    out = copy.deepcopy(obj)
    name = sink["name"]
    if sink["type"] == "configMap":
        holder, key = out, "data"
    elif sink["type"] == "annotation":
        holder, key = out["metadata"], "annotations"
    else:
        [c] = [
            c
            for c in out["spec"]["template"]["spec"]["containers"]
            if c["name"] == target.container
        ]
        if sink["type"] == "env":
            holder, key = c, "env"
            if "env" in c:
                c["env"] = [e for e in c["env"] if e["name"] != name]
        else:
            for key in ("args", "command"):
                items, kept = c.get(key, []), []
                skip = False
                for item in items:
                    if skip:
                        skip = False
                    elif item == name:
                        skip = True
                    elif not item.startswith(name + "="):
                        kept.append(item)
                if key in c:
                    c[key] = kept
                if key in c and not kept:
                    del c[key]
            return out
    if sink["type"] in {"configMap", "annotation"} and key in holder:
        holder[key].pop(name, None)
    if key in holder and not holder[key]:
        del holder[key]
    return out


def exact(obj: Any) -> str:
    """Byte-level form: same keys in the same order, same values."""
    return json.dumps(obj)


PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.slow
@PROPERTY
@given(scenario(), st.integers(1, 100_000))
def test_property_set_writes_the_budget_and_nothing_else(
    case: tuple[dict[str, Any], api.TargetRef, dict[str, Any]], budget: int
) -> None:
    sink, target, before = case
    spec = spec_of(sink)
    kw = objects(sink, before)
    patch = sinks.set_patch(spec, target, budget, **kw)
    after = apply(before, patch)
    value = sinks.read(spec, target, **objects(sink, after))
    assert value.budget == budget
    assert value.raw is not None
    assert spec.sink.parse(value.raw) == budget
    assert exact(strip(sink, target, after)) == exact(strip(sink, target, before))
    if patch is None:
        assert sinks.read(spec, target, **kw).budget == budget
    else:
        assert patch.ops[0]["op"] == "test"
        assert sinks.set_patch(spec, target, budget, **objects(sink, after)) is None


@pytest.mark.slow
@PROPERTY
@given(scenario(), st.integers(1, 100_000))
def test_property_restore_after_set_gives_back_the_original(
    case: tuple[dict[str, Any], api.TargetRef, dict[str, Any]], budget: int
) -> None:
    sink, target, before = case
    spec = spec_of(sink)
    original = sinks.read(spec, target, **objects(sink, before)).original()
    after = apply(before, sinks.set_patch(spec, target, budget, **objects(sink, before)))
    restored = apply(after, sinks.restore_patch(spec, target, original, **objects(sink, after)))
    assert restored == before
    assert exact(restored) == exact(before)


@pytest.mark.slow
@PROPERTY
@given(scenario(), st.integers(1, 100_000))
def test_property_a_moved_container_fails_the_patch(
    case: tuple[dict[str, Any], api.TargetRef, dict[str, Any]], budget: int
) -> None:
    sink, target, before = case
    if sink["type"] not in {"env", "arg"}:
        return
    containers = before["spec"]["template"]["spec"]["containers"]
    patch = sinks.set_patch(spec_of(sink), target, budget, deployment=before)
    if patch is None or len(containers) < 2:
        return
    moved = copy.deepcopy(before)
    moved["spec"]["template"]["spec"]["containers"] = containers[1:] + containers[:1]
    with pytest.raises((jsonpatch.JsonPatchException, jsonpointer.JsonPointerException)):
        apply(moved, patch)
