"""Where the budget lands: JSON Patches for the env, arg, annotation, configMap and aiGateway
sinks.

This module is pure: it takes objects as the Kubernetes API returns them (plain
dicts) and returns RFC 6902 JSON Patches; it does no I/O and reads no clock.
``kube.py`` sends the patches.

Three questions, one function each:

* :func:`read` -- what does the sink hold now (raw text and parsed budget)?
* :func:`set_patch` -- the patch that writes a budget, or ``None`` when the sink
  already holds it;
* :func:`restore_patch` -- the patch that puts back the value found before the
  first write (``status.originalValue``), or removes what the operator added.

Every patch carries ``test`` operations on exactly what it changes -- the value
being replaced, and the names of the container and env var at the indexes the
patch uses -- so that a concurrent edit (containers reordered, the env var
removed, the value changed by someone else) makes the API server reject the
whole patch with 422 instead of writing into the wrong place.  JSON Patch
cannot test that something is absent, so a patch that adds a member (a new env
var, argument, annotation or key) tests the collection it adds to as it was
read, or, when that collection does not exist yet, the object that will hold
it.  Nothing else in the object is touched: other containers (a metrics
sidecar), other env vars, other arguments and other annotations stay
byte-identical.

The API server omits empty ``env``, ``args``, ``annotations`` and ``data``
(``omitempty``), so when removing the operator's entry leaves one of them
empty, the restore patch removes the parent too: restoring gives back the
object exactly as it was read.  The aiGateway sink does the same with the
AIServiceBackend's ``spec.bodyMutation.set`` and ``spec.bodyMutation`` (a custom
resource keeps empty lists, so an AIServiceBackend read with ``set: []`` comes
back without it).

The aiGateway sink writes the entry ``{path: <name>, value: <budget>}`` of
``spec.bodyMutation.set`` of an Envoy AI Gateway ``AIServiceBackend``
(:data:`AI_SERVICE_BACKEND`); Envoy overwrites that top-level field of every
request body routed to the backend with the value, parsed as JSON.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from stopbudget import api

#: One RFC 6902 operation, e.g. ``{"op": "replace", "path": "/data/k", "value": "512"}``.
JsonPatchOp = dict[str, Any]
#: A JSON object as the API returns it.
Obj = Mapping[str, Any]
#: The kinds of object a sink lives in.
TargetKind = Literal["Deployment", "ConfigMap", "AIServiceBackend"]

#: Envoy AI Gateway's AIServiceBackend: (group, version, plural).  v1alpha1 is served by every
#: release that has ``spec.bodyMutation`` (newer ones also serve v1beta1, with the same
#: bodyMutation schema; tests/schemas/aigateway-aiservicebackends.yaml has both).
AI_SERVICE_BACKEND = ("aigateway.envoyproxy.io", "v1alpha1", "aiservicebackends")
#: Envoy AI Gateway's limit on the entries of ``bodyMutation.set`` (the CRD's ``maxItems``).
BODY_MUTATION_MAX = 16

_CONTAINERS = "/spec/template/spec/containers"
_BODY_SET = "/spec/bodyMutation/set"


class SinkError(ValueError):
    """The sink cannot be read or written; the message names the field and the fix."""


class SinkTargetError(SinkError):
    """The sink's place in the target is missing or ambiguous (container, env, arg, key)."""


@dataclass(frozen=True)
class SinkValue:
    """What a sink holds now."""

    #: Whether the env var, argument, annotation or key exists.
    present: bool
    #: The raw text; None when absent (or an env var that exists without a ``value``).
    raw: str | None
    #: The budget in ``raw`` per the sink's format; None when absent or not parsable.
    budget: int | None
    #: Where the value lives, for messages, e.g. "env MAX_TOKENS of container vllm in ...".
    where: str

    def original(self) -> api.OriginalValue:
        """This value as ``status.originalValue``, to be restored on delete."""
        return api.OriginalValue(present=self.present, value=self.raw)


@dataclass(frozen=True)
class SinkPatch:
    """A JSON Patch for one object, and what it does."""

    kind: TargetKind
    #: Name of the Deployment or ConfigMap (in the policy's namespace).
    name: str
    ops: list[JsonPatchOp] = field(hash=False)
    #: Whether the change rolls the pods (env and arg change the pod template).
    restarts: bool
    #: One line for events and logs, e.g. "env MAX_TOKENS of container vllm ...: '512' -> '256'".
    summary: str


@dataclass(frozen=True)
class LocatedSink:
    """A policy's sink found in the object it lives in: read once per tick, then the
    patches that write a budget or put the original back are computed from it."""

    budget: api.Budget
    target: api.TargetRef
    kind: TargetKind
    #: The Deployment or ConfigMap as the API returned it.
    obj: Obj = field(hash=False)
    #: What the sink holds now.
    value: SinkValue

    @classmethod
    def found_in(cls, budget: api.Budget, target: api.TargetRef, obj: Obj) -> LocatedSink:
        """The sink in ``obj`` (the object :func:`target_of` names); SinkError if it is not
        where the policy says."""
        kind, _ = target_of(budget, target)
        value = read(budget, target, **_by_kind(kind, obj))
        return cls(budget, target, kind, obj, value)

    def set_patch(self, budget: int) -> SinkPatch | None:
        """The patch that writes ``budget``; None when the sink already holds it."""
        return set_patch(self.budget, self.target, budget, **_by_kind(self.kind, self.obj))

    def restore_patch(self, original: api.OriginalValue) -> SinkPatch | None:
        """The patch that puts ``original`` back; None when the sink already holds it."""
        return restore_patch(self.budget, self.target, original, **_by_kind(self.kind, self.obj))


_KEYWORD: Mapping[TargetKind, str] = {
    "Deployment": "deployment",
    "ConfigMap": "config_map",
    "AIServiceBackend": "ai_service_backend",
}


def _by_kind(kind: TargetKind, obj: Obj) -> dict[str, Obj]:
    return {_KEYWORD[kind]: obj}


def target_of(spec: api.Budget, target: api.TargetRef) -> tuple[TargetKind, str]:
    """The object the sink lives in, which the caller reads and patches: (kind, name)."""
    if spec.sink.type == api.SinkType.CONFIG_MAP:
        assert spec.sink.config_map_name is not None  # guaranteed by the Sink's rules
        return "ConfigMap", spec.sink.config_map_name
    if spec.sink.type == api.SinkType.AI_GATEWAY:
        assert spec.sink.ai_service_backend_name is not None  # guaranteed by the Sink's rules
        return "AIServiceBackend", spec.sink.ai_service_backend_name
    return "Deployment", target.name


def read(
    spec: api.Budget,
    target: api.TargetRef,
    deployment: Obj | None = None,
    config_map: Obj | None = None,
    ai_service_backend: Obj | None = None,
) -> SinkValue:
    """What the sink holds in the given objects (see :func:`target_of` for which is needed)."""
    slot = _locate(spec, target, deployment, config_map, ai_service_backend)
    budget = spec.sink.parse(slot.raw) if slot.raw is not None else None
    return SinkValue(present=slot.present, raw=slot.raw, budget=budget, where=slot.where)


def set_patch(
    spec: api.Budget,
    target: api.TargetRef,
    budget: int,
    deployment: Obj | None = None,
    config_map: Obj | None = None,
    ai_service_backend: Obj | None = None,
) -> SinkPatch | None:
    """The patch that writes ``budget``; None when the sink already holds it."""
    slot = _locate(spec, target, deployment, config_map, ai_service_backend)
    if slot.raw is not None and spec.sink.parse(slot.raw) == budget:
        return None
    new = spec.sink.render(budget)
    return _patch(spec, target, slot, slot.write(new), f"{_shown(slot)} -> {new!r}")


def restore_patch(
    spec: api.Budget,
    target: api.TargetRef,
    original: api.OriginalValue,
    deployment: Obj | None = None,
    config_map: Obj | None = None,
    ai_service_backend: Obj | None = None,
) -> SinkPatch | None:
    """The patch that puts ``original`` back; None when the sink already holds it.

    With ``original.present`` false the operator added the sink, so it is removed
    (nothing to do when it is already gone).  Otherwise the original raw value is
    written back, re-adding the env var, argument, annotation or key if someone
    removed it since.
    """
    slot = _locate(spec, target, deployment, config_map, ai_service_backend)
    if not original.present:
        if not slot.present:
            return None
        return _patch(spec, target, slot, slot.remove(), f"{_shown(slot)} -> removed")
    if slot.present and slot.raw == original.value:
        return None
    return _patch(
        spec, target, slot, slot.write(original.value), f"{_shown(slot)} -> {original.value!r}"
    )


def pointer(*parts: str | int) -> str:
    """A JSON Pointer (RFC 6901) from path parts: ``~`` and ``/`` in keys are escaped."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


# --------------------------------------------------------------------------- internals


def _patch(
    spec: api.Budget, target: api.TargetRef, slot: _Slot, ops: list[JsonPatchOp], change: str
) -> SinkPatch:
    kind, name = target_of(spec, target)
    return SinkPatch(
        kind=kind,
        name=name,
        ops=ops,
        restarts=spec.sink.type in api.RESTARTING_SINKS,
        summary=f"{slot.where}: {change}",
    )


def _shown(slot: _Slot) -> str:
    if not slot.present:
        return "absent"
    return "(no value)" if slot.raw is None else repr(slot.raw)


def _test(path: str, value: Any) -> JsonPatchOp:
    return {"op": "test", "path": path, "value": value}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


@dataclass(frozen=True)
class _Slot:
    """A sink's place in an object: how to write it and how to remove it.

    ``guard`` are the tests every patch of this slot starts with (e.g. the
    container's name at its index).  The subclasses know their shapes.
    """

    where: str
    present: bool
    raw: str | None
    guard: tuple[JsonPatchOp, ...]

    def write(self, value: str | None) -> list[JsonPatchOp]:  # pragma: no cover - abstract
        raise NotImplementedError

    def remove(self) -> list[JsonPatchOp]:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class _MapSlot(_Slot):
    """A key of a string map: Deployment annotations or ConfigMap data.

    ``parent`` is the map's path; ``ancestor`` the path and value of the nearest
    object that exists when the map does not.
    """

    parent: str
    key: str
    mapping: Mapping[str, Any] | None
    ancestor: tuple[str, Any]

    def write(self, value: str | None) -> list[JsonPatchOp]:
        text = value if value is not None else ""
        path = self.parent + pointer(self.key)
        if self.mapping is not None and self.key in self.mapping:
            old = self.mapping[self.key]
            return [*self.guard, _test(path, old), {"op": "replace", "path": path, "value": text}]
        if self.mapping:
            return [
                *self.guard,
                _test(self.parent, dict(self.mapping)),
                {"op": "add", "path": path, "value": text},
            ]
        where, value_read = self.ancestor
        return [
            *self.guard,
            _test(where, value_read),
            {"op": "add", "path": self.parent, "value": {self.key: text}},
        ]

    def remove(self) -> list[JsonPatchOp]:
        assert self.mapping is not None
        path = self.parent + pointer(self.key)
        if len(self.mapping) == 1:
            return [
                *self.guard,
                _test(self.parent, dict(self.mapping)),
                {"op": "remove", "path": self.parent},
            ]
        return [*self.guard, _test(path, self.mapping[self.key]), {"op": "remove", "path": path}]


@dataclass(frozen=True)
class _EnvSlot(_Slot):
    """An env var of a container (``base`` is the container's path)."""

    base: str
    var: str
    container: Mapping[str, Any]
    index: int | None

    @property
    def _env(self) -> list[Any]:
        env = self.container.get("env")
        return list(env) if isinstance(env, list) else []

    def write(self, value: str | None) -> list[JsonPatchOp]:
        env = self._env
        entry: dict[str, Any] = {"name": self.var}
        if value is not None:
            entry["value"] = value
        if self.index is not None:
            at = f"{self.base}/env/{self.index}"
            current = env[self.index]
            if "value" in current:
                ops = [
                    *self.guard,
                    _test(f"{at}/name", self.var),
                    _test(f"{at}/value", current["value"]),
                ]
                if value is None:
                    return [*ops, {"op": "remove", "path": f"{at}/value"}]
                return [*ops, {"op": "replace", "path": f"{at}/value", "value": value}]
            # The entry has no value key: only a test of the whole entry proves it has none.
            if value is None:
                return []
            return [
                *self.guard,
                _test(at, current),
                {"op": "add", "path": f"{at}/value", "value": value},
            ]
        if env:
            return [
                *self.guard,
                _test(f"{self.base}/env", env),
                {"op": "add", "path": f"{self.base}/env/-", "value": entry},
            ]
        return [
            _test(self.base, dict(self.container)),
            {"op": "add", "path": f"{self.base}/env", "value": [entry]},
        ]

    def remove(self) -> list[JsonPatchOp]:
        assert self.index is not None
        env = self._env
        if len(env) == 1:
            return [
                *self.guard,
                _test(f"{self.base}/env", env),
                {"op": "remove", "path": f"{self.base}/env"},
            ]
        at = f"{self.base}/env/{self.index}"
        return [*self.guard, _test(at, env[self.index]), {"op": "remove", "path": at}]


@dataclass(frozen=True)
class _ArgSlot(_Slot):
    """A flag's value in a container's ``args`` (or ``command``).

    ``form`` is ``"="`` for one item ``--flag=value``, ``" "`` for two items
    ``--flag value``, None when the flag is absent (it is then added to args).
    """

    base: str
    flag: str
    container: Mapping[str, Any]
    field_name: str
    index: int | None
    form: Literal["=", " "] | None

    @property
    def _items(self) -> list[Any]:
        items = self.container.get(self.field_name)
        return list(items) if isinstance(items, list) else []

    def _new_items(self, value: str) -> list[str]:
        # '--flag=value' is one unambiguous item for argparse, click, clap and Go's flag;
        # a single-dash flag (-n) takes its value as the next item.
        return [f"{self.flag}={value}"] if self.flag.startswith("--") else [self.flag, value]

    def write(self, value: str | None) -> list[JsonPatchOp]:
        text = value if value is not None else ""
        items = self._items
        at = f"{self.base}/{self.field_name}"
        if self.index is not None and self.form == "=":
            return [
                *self.guard,
                _test(f"{at}/{self.index}", items[self.index]),
                {"op": "replace", "path": f"{at}/{self.index}", "value": f"{self.flag}={text}"},
            ]
        if self.index is not None:
            return [
                *self.guard,
                _test(f"{at}/{self.index}", items[self.index]),
                _test(f"{at}/{self.index + 1}", items[self.index + 1]),
                {"op": "replace", "path": f"{at}/{self.index + 1}", "value": text},
            ]
        new = self._new_items(text)
        if items:
            return [
                *self.guard,
                _test(at, items),
                *({"op": "add", "path": f"{at}/-", "value": item} for item in new),
            ]
        return [_test(self.base, dict(self.container)), {"op": "add", "path": at, "value": new}]

    def remove(self) -> list[JsonPatchOp]:
        assert self.index is not None
        items = self._items
        at = f"{self.base}/{self.field_name}"
        width = 1 if self.form == "=" else 2
        if len(items) == width:
            return [*self.guard, _test(at, items), {"op": "remove", "path": at}]
        tests = [_test(f"{at}/{self.index + i}", items[self.index + i]) for i in range(width)]
        removes = [
            {"op": "remove", "path": f"{at}/{self.index + i}"} for i in reversed(range(width))
        ]
        return [*self.guard, *tests, *removes]


@dataclass(frozen=True)
class _BodyFieldSlot(_Slot):
    """An entry ``{path: field, value: ...}`` of an AIServiceBackend's ``spec.bodyMutation.set``.

    ``entries`` is that list as read (None when absent), ``index`` the entry's place in
    it, ``mutation`` the ``bodyMutation`` object (None when absent), ``spec`` the spec.
    """

    field_name: str
    entries: list[Any] | None
    index: int | None
    mutation: Mapping[str, Any] | None
    spec: Mapping[str, Any]

    def write(self, value: str | None) -> list[JsonPatchOp]:
        text = value if value is not None else ""
        entry = {"path": self.field_name, "value": text}
        if self.index is not None and self.entries is not None:
            at = f"{_BODY_SET}/{self.index}"
            current = self.entries[self.index]
            if "value" not in current:  # the CRD requires it; only a whole-entry test proves it
                return [_test(at, current), {"op": "add", "path": f"{at}/value", "value": text}]
            return [
                _test(f"{at}/path", self.field_name),
                _test(f"{at}/value", current["value"]),
                {"op": "replace", "path": f"{at}/value", "value": text},
            ]
        if self.entries is not None:
            return [
                _test(_BODY_SET, list(self.entries)),
                {"op": "add", "path": f"{_BODY_SET}/-", "value": entry},
            ]
        if self.mutation is not None:
            return [
                _test("/spec/bodyMutation", dict(self.mutation)),
                {"op": "add", "path": _BODY_SET, "value": [entry]},
            ]
        return [
            _test("/spec", dict(self.spec)),
            {"op": "add", "path": "/spec/bodyMutation", "value": {"set": [entry]}},
        ]

    def remove(self) -> list[JsonPatchOp]:
        assert self.index is not None
        assert self.entries is not None
        assert self.mutation is not None
        if len(self.entries) > 1:
            at = f"{_BODY_SET}/{self.index}"
            return [_test(at, self.entries[self.index]), {"op": "remove", "path": at}]
        if set(self.mutation) == {"set"}:  # nothing else in it: remove what the write added
            return [
                _test("/spec/bodyMutation", dict(self.mutation)),
                {"op": "remove", "path": "/spec/bodyMutation"},
            ]
        return [_test(_BODY_SET, list(self.entries)), {"op": "remove", "path": _BODY_SET}]


def _locate(
    spec: api.Budget,
    target: api.TargetRef,
    deployment: Obj | None,
    config_map: Obj | None,
    ai_service_backend: Obj | None = None,
) -> _Slot:
    sink = spec.sink
    if sink.type == api.SinkType.CONFIG_MAP:
        if config_map is None:
            raise SinkTargetError(
                f"the configMap sink needs ConfigMap {sink.config_map_name!r}: read it first"
            )
        return _config_map_slot(sink, config_map)
    if sink.type == api.SinkType.AI_GATEWAY:
        if ai_service_backend is None:
            raise SinkTargetError(
                f"the aiGateway sink needs AIServiceBackend {sink.ai_service_backend_name!r}: "
                "read it first"
            )
        return _body_field_slot(sink, ai_service_backend)
    if deployment is None:
        raise SinkTargetError(f"the {sink.type.value} sink needs Deployment {target.name!r}")
    if sink.type == api.SinkType.ANNOTATION:
        return _annotation_slot(sink, target, deployment)
    index, container = _container(target, deployment, sink)
    base = f"{_CONTAINERS}/{index}"
    guard = (_test(f"{base}/name", container.get("name")),)
    if sink.type == api.SinkType.ENV:
        return _env_slot(sink, target, base, guard, container)
    return _arg_slot(sink, target, base, guard, container)


def _config_map_slot(sink: api.Sink, config_map: Obj) -> _Slot:
    name = sink.config_map_name
    where = f"key {sink.name} of ConfigMap {name}"
    binary = config_map.get("binaryData") or {}
    if sink.name in binary:
        raise SinkTargetError(
            f"{where} is in binaryData: the budget is text, so move the key to data "
            "or choose another budget.sink.name"
        )
    data = config_map.get("data")
    if data is not None and not isinstance(data, Mapping):
        raise SinkTargetError(f"ConfigMap {name} has a data field that is not a map")
    present = data is not None and sink.name in data
    return _MapSlot(
        where=where,
        present=present,
        raw=_text(data[sink.name]) if present and data is not None else None,
        guard=(),
        parent="/data",
        key=sink.name,
        mapping=data,
        ancestor=("", dict(config_map)),
    )


def _body_field_slot(sink: api.Sink, backend: Obj) -> _Slot:
    name = (backend.get("metadata") or {}).get("name", sink.ai_service_backend_name)
    where = f"field {sink.name} in spec.bodyMutation.set of AIServiceBackend {name}"
    spec = backend.get("spec")
    if not isinstance(spec, Mapping):
        raise SinkTargetError(f"AIServiceBackend {name} has no spec: is it an AIServiceBackend?")
    mutation = spec.get("bodyMutation")
    if mutation is not None and not isinstance(mutation, Mapping):
        raise SinkTargetError(f"AIServiceBackend {name} has a spec.bodyMutation that is not a map")
    entries = (mutation or {}).get("set")
    if entries is not None and not isinstance(entries, list):
        raise SinkTargetError(
            f"AIServiceBackend {name} has a spec.bodyMutation.set that is not a list"
        )
    found = [
        i
        for i, e in enumerate(entries or [])
        if isinstance(e, Mapping) and e.get("path") == sink.name
    ]
    if len(found) > 1:
        raise SinkTargetError(
            f"{where} is set {len(found)} times: keep one, so that the value written is the one "
            "Envoy AI Gateway applies"
        )
    if not found and entries is not None and len(entries) >= BODY_MUTATION_MAX:
        raise SinkTargetError(
            f"{where} is absent and the list already holds {len(entries)} entries, Envoy AI "
            f"Gateway's maximum: remove one, or set {sink.name} there yourself"
        )
    index = found[0] if found else None
    raw = None
    if index is not None and entries is not None and "value" in entries[index]:
        raw = _text(entries[index]["value"])
    return _BodyFieldSlot(
        where=where,
        present=index is not None,
        raw=raw,
        guard=(),
        field_name=sink.name,
        entries=list(entries) if entries is not None else None,
        index=index,
        mutation=mutation,
        spec=spec,
    )


def _annotation_slot(sink: api.Sink, target: api.TargetRef, deployment: Obj) -> _Slot:
    metadata = deployment.get("metadata") or {}
    annotations = metadata.get("annotations")
    present = annotations is not None and sink.name in annotations
    return _MapSlot(
        where=f"annotation {sink.name} of Deployment {target.name}",
        present=present,
        raw=_text(annotations[sink.name]) if present and annotations is not None else None,
        guard=(),
        parent="/metadata/annotations",
        key=sink.name,
        mapping=annotations,
        ancestor=("/metadata", dict(metadata)),
    )


def _container(target: api.TargetRef, deployment: Obj, sink: api.Sink) -> tuple[int, Obj]:
    pod = ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}
    containers = pod.get("containers")
    if not isinstance(containers, list) or not containers:
        raise SinkTargetError(
            f"Deployment {target.name} has no containers in spec.template.spec.containers: "
            f"the {sink.type.value} sink writes into a container"
        )
    names = [c.get("name") for c in containers]
    if target.container is not None:
        if target.container not in names:
            raise SinkTargetError(
                f"container {target.container!r} is not in Deployment {target.name}, whose "
                f"containers are {names}: set spec.targetRef.container to one of them"
            )
        index = names.index(target.container)
        return index, containers[index]
    if len(containers) > 1:
        raise SinkTargetError(
            f"Deployment {target.name} has {len(containers)} containers {names}: set "
            "spec.targetRef.container to the one that serves the model, so that the "
            f"{sink.type.value} sink does not write into a sidecar"
        )
    return 0, containers[0]


def _env_slot(
    sink: api.Sink,
    target: api.TargetRef,
    base: str,
    guard: tuple[JsonPatchOp, ...],
    container: Obj,
) -> _Slot:
    cname = container.get("name")
    where = f"env {sink.name} of container {cname} in Deployment {target.name}"
    env = container.get("env")
    entries = env if isinstance(env, list) else []
    found = [
        i for i, e in enumerate(entries) if isinstance(e, Mapping) and e.get("name") == sink.name
    ]
    if len(found) > 1:
        raise SinkTargetError(
            f"{where} is defined {len(found)} times (env[{found[0]}] and env[{found[-1]}]): "
            "remove the duplicates so that the value written is the one the server reads"
        )
    index = found[0] if found else None
    raw: str | None = None
    if index is not None:
        entry = entries[index]
        if "valueFrom" in entry:
            raise SinkTargetError(
                f"{where} is set with valueFrom: the operator writes a literal value, so "
                "replace valueFrom with value, or use another sink type"
            )
        raw = _text(entry["value"]) if "value" in entry else None
    return _EnvSlot(
        where=where,
        present=index is not None,
        raw=raw,
        guard=guard,
        base=base,
        var=sink.name,
        container=container,
        index=index,
    )


def _flag_matches(items: Sequence[Any], flag: str) -> list[tuple[int, Literal["=", " "]]]:
    found: list[tuple[int, Literal["=", " "]]] = []
    for i, item in enumerate(items):
        if item == flag:
            found.append((i, " "))
        elif isinstance(item, str) and item.startswith(flag + "="):
            found.append((i, "="))
    return found


def _arg_slot(
    sink: api.Sink,
    target: api.TargetRef,
    base: str,
    guard: tuple[JsonPatchOp, ...],
    container: Obj,
) -> _Slot:
    flag = sink.name
    cname = container.get("name")
    where = f"argument {flag} of container {cname} in Deployment {target.name}"
    lists = {
        name: items if isinstance(items := container.get(name), list) else []
        for name in ("args", "command")
    }
    found = {name: _flag_matches(items, flag) for name, items in lists.items()}
    hits = [(name, i, form) for name, matches in found.items() for i, form in matches]
    if len(hits) > 1:
        places = ", ".join(f"{name}[{i}]" for name, i, _ in hits)
        raise SinkTargetError(
            f"{where} appears {len(hits)} times ({places}): keep one, so that the value "
            "written is the one the server reads"
        )
    if not hits:
        embedded = re.compile(rf"(^|\s){re.escape(flag)}(=|\s|$)")
        for name, items in lists.items():
            for i, item in enumerate(items):
                if isinstance(item, str) and embedded.search(item):
                    raise SinkTargetError(
                        f"{where} is inside the string {name}[{i}] (a shell command line?): "
                        "the operator edits whole arguments, so pass the flag as its own "
                        "argument, or use an env sink and $(VAR) in the command"
                    )
        return _ArgSlot(
            where=where,
            present=False,
            raw=None,
            guard=guard,
            base=base,
            flag=flag,
            container=container,
            field_name="args",
            index=None,
            form=None,
        )
    name, index, form = hits[0]
    items = lists[name]
    if name == "command":
        where += " (in its command)"
    if form == "=":
        raw = _text(items[index])[len(flag) + 1 :]
    else:
        following = items[index + 1] if index + 1 < len(items) else None
        if not isinstance(following, str) or following.startswith("--"):
            raise SinkTargetError(
                f"{where} has no value after it in {name}[{index}]: write it as "
                f"'{flag}=<value>' or put its value in the next argument"
            )
        raw = following
    return _ArgSlot(
        where=where,
        present=True,
        raw=raw,
        guard=guard,
        base=base,
        flag=flag,
        container=container,
        field_name=name,
        index=index,
        form=form,
    )


# --------------------------------------------------------------------------- refreshPods
# A configMap sink with ``refreshPods: true``: after a write the operator annotates the
# target Deployment's pods, so kubelet syncs them and refreshes the mounted ConfigMap at
# once rather than within its sync period.  What to list and what to patch is computed here;
# the listing and the patches are the controller's (``controller/refresh.py``).

_SET_OPERATORS = {"In": "in", "NotIn": "notin"}


def pod_selector(deployment: Obj) -> str:
    """The Deployment's ``spec.selector`` as a ``labelSelector`` query, e.g.
    ``app=vllm,tier in (a,b),!canary``; :class:`SinkTargetError` when it selects nothing
    definite (no selector, or an empty one, would match every pod of the namespace)."""
    name = (deployment.get("metadata") or {}).get("name", "?")
    selector = (deployment.get("spec") or {}).get("selector") or {}
    terms = [f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items()]
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression.get("key"), expression.get("operator")
        values = ",".join(str(v) for v in expression.get("values") or [])
        if operator in _SET_OPERATORS:
            terms.append(f"{key} {_SET_OPERATORS[operator]} ({values})")
        elif operator == "Exists":
            terms.append(str(key))
        elif operator == "DoesNotExist":
            terms.append(f"!{key}")
        else:
            raise SinkTargetError(
                f"Deployment {name} has a selector operator {operator!r} that is not In, "
                "NotIn, Exists or DoesNotExist: refreshPods cannot find its pods"
            )
    if not terms:
        raise SinkTargetError(
            f"Deployment {name} has no spec.selector: refreshPods would annotate every pod of "
            "the namespace, so it annotates none; give the Deployment a selector"
        )
    return ",".join(terms)


def pods_to_refresh(pods: Sequence[Obj], revision: str) -> list[str]:
    """Names of the ``pods`` to annotate with ``revision``: those not being deleted and not
    annotated with it yet (a refresh already done is not done again)."""
    names = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        if (meta.get("annotations") or {}).get(api.ANNOTATION_BUDGET_REVISION) == revision:
            continue
        names.append(str(meta.get("name")))
    return names


def refresh_patch(revision: str) -> dict[str, Any]:
    """The merge patch of a pod's metadata that makes kubelet sync it (and its volumes)."""
    return {"metadata": {"annotations": {api.ANNOTATION_BUDGET_REVISION: revision}}}
