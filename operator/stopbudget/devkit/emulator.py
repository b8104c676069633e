"""A local Kubernetes API for the tests and ``make demo``: kmock's emulator, with its gaps filled.

kmock's :class:`kmock.KubernetesEmulator` stores objects in memory and serves
them over HTTP, which is enough for kopf and the official ``kubernetes`` client
to talk to it through a kubeconfig exactly as to a cluster.  It is not a full
API server, though, and where it differs from one in a way that kopf, the
``kubernetes`` client or stopbudget's own code notices, :class:`Emulator`
behaves like the real server instead.  Each gap is named where it is filled
(``GAP n``) with how it was found; the list:

1. Object identity: no ``uid``, ``resourceVersion``, ``generation`` or
   ``creationTimestamp`` is stamped, and ``metadata.namespace`` is not taken
   from the URL.  Found by running kopf 1.45 against plain kmock: every JSON
   Patch kopf sends (its finalizer, its progress) starts with
   ``test /metadata/resourceVersion``, and all of them failed.
2. ``metadata.generateName`` is not honoured, so the second object created
   with it (kopf posts every Event that way) conflicts with the first.  Found
   in kmock's ``_handle``: the object key is ``metadata.name``, None here.
3. A JSON Patch whose ``test`` fails answers 500 ``JsonPatchTestFailed``; the
   API server answers 422 ``Invalid`` ("the server rejected our request due to
   an error in our request"), as it does for any patch operation that does not
   apply.  Found with kopf (it retries 500s nine times, while a 422 tells it to
   re-read) and in the API server's ``handlers/patch.go``.
4. ``/status`` is not a subresource: a patch of the object changes its status
   and a patch of ``/status`` changes its spec.  The API server keeps them
   apart for resources with a status subresource (our CRD, Deployments), also
   dropping the status sent on create.  Found in kmock's ``_handle`` (the
   subresource is ignored); without it a status write sent to the wrong URL
   would pass the tests and be lost on a cluster.
5. Writes: every write gets a new ``resourceVersion``; ``generation`` bumps
   only when something outside metadata and status changes (an annotation
   sink must not look like a spec change); a patch that changes nothing is not
   a write (no new version, no watch event), as on the API server.
6. Lists answer ``resourceVersion: "..."`` and every watch replays all objects,
   even from a given ``resourceVersion``; and the replay is streamed before the
   watch subscribes to new events, so an object written meanwhile is never
   seen.  Found in kmock's ``_serve_list``/``_serve_watch``.  Here lists carry
   the current version, and a watch subscribes, snapshots and replays only
   objects newer than the version asked for.
7. ``GET /api/v1/namespaces`` fails with 500 (kmock's path parser expects a
   namespace name after ``namespaces``).  kopf lists and watches namespaces
   when it serves some namespaces rather than the whole cluster.  Served here
   from the namespaces of the stored objects plus ``default``.
8. ``labelSelector`` on a list is ignored: every object is listed.  Found with the
   configMap sink's ``refreshPods``, which lists a Deployment's pods by its selector
   (a pod of another Deployment would have been annotated).  Here a list keeps the
   objects that the selector matches (equality and set-based terms, as the API server).
9. Custom resources other than the StopPolicy are unknown.  Here a CustomResourceDefinition
   given to :meth:`Cluster.install_crd` is served (each version a store of its own, no
   schema), for the aiGateway sink's AIServiceBackend.

Not filled, because nothing here needs it: strategic merge patch (treated as a
merge patch; stopbudget sends JSON Patch and merge patch only), field selectors,
``resourceVersion`` preconditions, server-side apply, admission and schema validation.

Differences the real API server showed (``tests/support/clusters.py`` runs the
end-to-end tests on both; the real server is right, and these stay unfilled
because the tests that need them run there):

* The StopPolicy resource is registered here from :mod:`stopbudget.api`; the
  CRD YAML is never read, so a CRD the real server rejects passes here (the
  field ``n``, a boolean to Go's YAML 1.1 parsers, was found that way).
* Nothing is validated or defaulted: a Deployment without ``spec.selector`` is
  stored, containers get no ``imagePullPolicy`` or ``terminationMessagePath``,
  and a StopPolicy with unknown fields or broken CEL rules is accepted.
* Unknown fields are kept; the real server prunes fields its schema does not
  know, on write and on read (a stored policy read after a CRD upgrade).
* Every request is allowed: RBAC is checked only on the real server, where the
  operator runs as the chart's ServiceAccount.

:func:`emulated_cluster` runs the emulator in the current event loop;
:func:`emulated_cluster_in_thread` runs it in a background thread with its own
loop, for synchronous code and for kopf running in yet another thread.  Both
register the StopPolicy resource (names from :mod:`stopbudget.api`), load
kmock's bundled built-in resources, and write a kubeconfig file.  For long runs
(``make demo``, benchmarks) pass ``record=False``: kmock otherwise keeps every
request and every version of every object, for assertions.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import gzip
import importlib.resources
import json
import random
import re
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock

from stopbudget import api
from stopbudget.schema import yamlout

#: The message of every 422 answer to a JSON Patch that does not apply (apimachinery's
#: ``NewGenericServerResponse`` for ``http.StatusUnprocessableEntity``).
INVALID_MESSAGE = "the server rejected our request due to an error in our request"

#: Characters of the random suffix of generated names (apiserver's ``utilrand`` alphabet).
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_NAMESPACES_PATH = re.compile(r"/api/v1/namespaces(?:/(?P<name>[^/]+))?/?")
#: Put on a watch bus to end the streams when the emulator stops.
_CLOSE = {"type": "_CLOSE"}

STOPPOLICIES = f"{api.GROUP}/{api.VERSION}/{api.PLURAL}"


class ApiStatusError(Exception):
    """An error the emulator answers with a ``Status`` body, as the API server would."""

    def __init__(self, code: int, reason: str, message: str, details: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.code = code
        self.body = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "details": dict(details),
            "code": code,
        }


def _now() -> str:
    return datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON Merge Patch: objects merge, null deletes, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _revision(value: object) -> int | None:
    return int(value) if isinstance(value, str) and value.isdigit() else None


def _version_of(obj: Mapping[str, Any]) -> int:
    return _revision((obj.get("metadata") or {}).get("resourceVersion")) or 0


def _without(obj: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in keys}


class Emulator(kmock.KubernetesEmulator):
    """kmock's Kubernetes emulator with the gaps listed in this module's docstring filled."""

    _revision_counter: int
    _write_lock: asyncio.Lock
    _changed: asyncio.Condition
    _names: random.Random
    _namespace_versions: dict[str, int]
    _closing: bool
    #: Keep kmock's records: every request, and every version of every object (for assertions).
    #: False keeps only the latest version and forgets finished requests, so that long runs
    #: (``make demo``, benchmarks with hundreds of policies) do not grow without bound.
    record: bool

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.record = True
        self._revision_counter = 0
        self._write_lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self._names = random.Random(0)  # noqa: S311 - names, not secrets
        self._namespace_versions = {}
        self._closing = False

    # ----------------------------------------------------------------- writes

    def _next_revision(self) -> str:
        self._revision_counter += 1
        return str(self._revision_counter)

    def isolates_status(self, resource: kmock.resource) -> bool:
        """Whether ``resource`` has a status subresource (writes to status go through it)."""
        return resource in self.resources and "status" in self.resources[resource].subresources

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        handled = [request]
        try:
            return await self._handle_write(request, handled)
        finally:
            if not self.record:
                for done in handled:
                    self._forget(done)

    async def _handle_write(
        self, request: kmock.Request, handled: list[kmock.Request]
    ) -> aiohttp.web.StreamResponse:
        if request.resource is None or request.action not in {
            kmock.action.CREATE,
            kmock.action.UPDATE,
            kmock.action.DELETE,
        }:
            return await super()._handle(request)
        async with self._write_lock:
            if request.action == kmock.action.CREATE:
                request = self._prepare_create(request)
            elif request.action == kmock.action.UPDATE and request.name is not None:
                request, write = self._prepare_update(request)
                if not write:
                    # GAP 5: not a write. Skip kmock's state change, not the reactions: the
                    # fallback answers with the object as it is.
                    return await super(kmock.KubernetesEmulator, self)._handle(request)
            elif request.action == kmock.action.DELETE and request.name is not None:
                self._prepare_delete(request)
            handled.append(request)
            response = await super()._handle(request)
            if not self.record:
                self._trim(request)
        async with self._changed:
            self._changed.notify_all()
        return response

    def _forget(self, request: kmock.Request) -> None:
        """Drop a finished request from kmock's log (``record=False``)."""
        for index in range(len(self._requests) - 1, -1, -1):
            if self._requests[index] is request:
                del self._requests[index]
                return

    def _trim(self, request: kmock.Request) -> None:
        """Keep only the latest version of the object just written (``record=False``)."""
        assert request.resource is not None
        meta = request.data.get("metadata", {}) if isinstance(request.data, Mapping) else {}
        name = request.name or meta.get("name")
        if not isinstance(name, str):
            return
        namespace = request.namespace or meta.get("namespace")
        key = (request.resource, namespace if isinstance(namespace, str) else None, name)
        if key not in self.objects:
            return
        if self.objects[key].deleted:
            del self.objects[key]
        else:
            del self.objects[key].history[:-1]

    def _substitute(self, request: kmock.Request, data: Any) -> kmock.Request:
        """``request`` with another body, for kmock to store.

        kmock matches its reactions to the requests in its log by identity, so the
        new request takes the original's place in the log.
        """
        new = attrs.evolve(request, data=data)
        for index in range(len(self._requests) - 1, -1, -1):
            if self._requests[index] is request:
                self._requests[index] = new
                break
        return new

    def _prepare_create(self, request: kmock.Request) -> kmock.Request:
        if not isinstance(request.data, Mapping) or request.resource is None:
            return request
        body = copy.deepcopy(dict(request.data))
        meta = body.setdefault("metadata", {})
        namespace = request.namespace or meta.get("namespace")
        # GAP 2: a name from generateName, unique among the stored objects.
        if not meta.get("name") and meta.get("generateName"):
            while True:
                suffix = "".join(self._names.choice(_NAME_ALPHABET) for _ in range(5))
                name = f"{meta['generateName']}{suffix}"
                key = (request.resource, namespace, name)
                if key not in self.objects or self.objects[key].deleted:
                    break
            meta["name"] = name
        # GAP 1: identity, and the namespace of the URL.
        if request.namespace is not None:
            meta["namespace"] = request.namespace
        meta["uid"] = str(uuid.uuid4())
        meta["resourceVersion"] = self._next_revision()
        meta["creationTimestamp"] = _now()
        meta.pop("deletionTimestamp", None)
        if self.isolates_status(request.resource):
            # GAP 4 and 5: status is written through /status only; generation starts at 1.
            meta["generation"] = 1
            body.pop("status", None)
        return self._substitute(request, body)

    def _prepare_update(self, request: kmock.Request) -> tuple[kmock.Request, bool]:
        """The request for kmock to store, and whether it is a write at all."""
        assert request.resource is not None
        assert request.name is not None
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return request, True  # kmock answers 404
        if request.subresource not in {None, "status"}:
            return request, True  # e.g. /scale: left to kmock
        old = copy.deepcopy(self.objects[key].raw)
        new = self._apply(old, request.data)
        if self.isolates_status(request.resource):
            # GAP 4: the object and its /status are written separately.
            if request.subresource == "status":
                status = {"status": new["status"]} if "status" in new else {}
                new = {**_without(old, "status"), **status}
            else:
                status = {"status": old["status"]} if "status" in old else {}
                new = {**_without(new, "status"), **status}
        old_meta = old.get("metadata") or {}
        new_meta = dict(new.get("metadata") or {})
        for field in ("name", "namespace", "uid", "creationTimestamp", "resourceVersion"):
            if field in old_meta:
                new_meta[field] = old_meta[field]
        if "generation" in old_meta:
            new_meta["generation"] = old_meta["generation"]
        new["metadata"] = new_meta
        # GAP 5: no write when nothing changes; generation follows spec changes only.
        if new == old:
            return request, False
        if "generation" in old_meta and _without(new, "metadata", "status") != _without(
            old, "metadata", "status"
        ):
            new_meta["generation"] = old_meta["generation"] + 1
        new_meta["resourceVersion"] = self._next_revision()
        # kmock applies this JSON Patch: the whole new object, computed above.
        return self._substitute(request, [{"op": "replace", "path": "", "value": new}]), True

    def _apply(self, old: dict[str, Any], patch: Any) -> dict[str, Any]:
        if isinstance(patch, list):
            try:
                new = jsonpatch.apply_patch(old, patch, in_place=False)
            except jsonpatch.InvalidJsonPatch as exc:
                raise ApiStatusError(400, "BadRequest", str(exc), {}) from exc
            except (
                jsonpatch.JsonPatchTestFailed,
                jsonpatch.JsonPatchConflict,
                jsonpointer.JsonPointerException,
            ) as exc:
                # GAP 3: 422 with the API server's body (it drops the library's message).
                raise ApiStatusError(422, "Invalid", INVALID_MESSAGE, {}) from exc
        elif isinstance(patch, Mapping):
            new = _merge_patch(old, patch)
        else:
            raise ApiStatusError(
                400, "BadRequest", "the body of a patch must be a JSON object or a list", {}
            )
        if not isinstance(new, dict):
            raise ApiStatusError(422, "Invalid", INVALID_MESSAGE, {})
        return new

    def _prepare_delete(self, request: kmock.Request) -> None:
        assert request.resource is not None
        assert request.name is not None
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return
        obj = self.objects[key]
        meta = dict(obj.raw.get("metadata") or {})
        if meta.get("deletionTimestamp"):
            return
        # GAP 5: a deletion is a write; marking an object with finalizers bumps its generation.
        if meta.get("finalizers") and "generation" in meta:
            meta["generation"] += 1
        meta["resourceVersion"] = self._next_revision()
        obj["metadata"] = meta  # the latest version, in place: kmock's event carries it

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        if isinstance(exc, ApiStatusError):
            return aiohttp.web.json_response(exc.body, status=exc.code)
        return await super()._render_error(exc)

    # ----------------------------------------------------------------- reads

    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        # GAP 6: the list's resourceVersion is the version the list was taken at.
        async with self._write_lock:
            revision = self._revision_counter
            payload = await super()._serve_list(request)
        assert isinstance(payload, dict)
        selector = request.params.get("labelSelector")
        if selector:  # GAP 8: only the objects the label selector matches.
            payload["items"] = [
                item
                for item in payload["items"]
                if selector_matches(selector, (item.get("metadata") or {}).get("labels") or {})
            ]
        return {**payload, "metadata": {"resourceVersion": str(revision)}}

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[kmock.Payload]:
        yield b""  # send the headers now, as kmock does
        assert request.resource is not None
        since = _revision(request.params.get("resourceVersion"))
        bus = self._buses[request.resource]

        def wanted(obj: Mapping[str, Any]) -> bool:
            meta = obj.get("metadata") or {}
            return (
                (request.namespace is None or meta.get("namespace") == request.namespace)
                and (request.name is None or meta.get("name") == request.name)
                and (since is None or _version_of(obj) > since)
            )

        # GAP 6: subscribe before the snapshot, under the write lock, so nothing falls between.
        async with self._write_lock:
            marker = await bus.mark()
            snapshot = [
                obj.raw
                for (resource, _, _), obj in self.objects.items()
                if resource == request.resource and not obj.deleted
            ]
        try:
            for raw in snapshot:
                if wanted(raw):
                    yield {"type": "ADDED", "object": raw}
            if self._closing:
                return
            async for event in bus.stream(since=marker):
                if event is _CLOSE:
                    return
                if wanted(event.get("object") or {}):
                    yield event
        finally:
            await bus.unmark(marker)

    # ----------------------------------------------------------------- namespaces

    def _namespaces(self) -> dict[str, int]:
        """Namespaces of the stored objects (and default), with the version first seen at."""
        found = {"default"} | {ns for (_, ns, _), obj in self.objects.items() if ns}
        for ns in sorted(found - set(self._namespace_versions)):
            self._namespace_versions[ns] = self._revision_counter
        return dict(self._namespace_versions)

    @staticmethod
    def _namespace(name: str, version: int) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.namespace.emulator")),
                "resourceVersion": str(version),
                "labels": {"kubernetes.io/metadata.name": name},
            },
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        }

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        match = _NAMESPACES_PATH.fullmatch(raw_request.path)
        if match is None or raw_request.method != "GET":
            return await super().__call__(raw_request)
        # GAP 7: namespaces, which kmock's path parser cannot route.
        await raw_request.read()
        name = match.group("name")
        if name is not None:
            versions = self._namespaces()
            if name not in versions:
                missing = ApiStatusError(
                    404,
                    "NotFound",
                    f'namespaces "{name}" not found',
                    {"name": name, "kind": "namespaces"},
                )
                return aiohttp.web.json_response(missing.body, status=404)
            return aiohttp.web.json_response(self._namespace(name, versions[name]))
        if raw_request.query.get("watch") in {"true", "1"}:
            return await self._watch_namespaces(raw_request)
        versions = self._namespaces()
        return aiohttp.web.json_response(
            {
                "apiVersion": "v1",
                "kind": "NamespaceList",
                "metadata": {"resourceVersion": str(self._revision_counter)},
                "items": [self._namespace(ns, v) for ns, v in sorted(versions.items())],
            }
        )

    async def _watch_namespaces(
        self, raw_request: aiohttp.web.BaseRequest
    ) -> aiohttp.web.StreamResponse:
        since = _revision(raw_request.query.get("resourceVersion")) or -1
        timeout = _revision(raw_request.query.get("timeoutSeconds"))
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(raw_request)
        sent: set[str] = set()
        try:
            while not self._closing:
                for ns, version in sorted(self._namespaces().items()):
                    if ns not in sent and version > since:
                        event = {"type": "ADDED", "object": self._namespace(ns, version)}
                        await response.write(json.dumps(event).encode() + b"\n")
                    sent.add(ns)
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    break
                async with self._changed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), remaining)
        except ConnectionResetError:
            return response
        await response.write_eof()
        return response

    # ----------------------------------------------------------------- lifecycle

    async def close_streams(self) -> None:
        """End every open watch stream, so that the HTTP server can stop at once."""
        self._closing = True
        for bus in list(self._buses.values()):
            await bus.put(_CLOSE)
        async with self._changed:
            self._changed.notify_all()

    async def wait_changed(self, within: float) -> None:
        """Wait until the next write, or until ``within`` seconds have passed."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), within)


# --------------------------------------------------------------------------- running it


def stoppolicy_resource() -> kmock.ResourceInfo:
    """The StopPolicy resource as the CRD declares it (names from :mod:`stopbudget.api`)."""
    return kmock.ResourceInfo(
        kind=api.KIND,
        singular=api.SINGULAR,
        namespaced=True,
        shortnames=set(api.SHORT_NAMES),
        categories={"stopbudget"},
        verbs={"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"},
        subresources={"status"},
    )


_SELECTOR_TERM = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[^\s=!,()]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[^\s,()]*)|\s(?P<set>in|notin)\s*\((?P<values>[^()]*)\))?\s*$"
)


def selector_matches(selector: str, labels: Mapping[str, str]) -> bool:
    """Whether ``labels`` satisfy a ``labelSelector`` query (``a=b``, ``a==b``, ``a!=b``,
    ``a in (x,y)``, ``a notin (x,y)``, ``a``, ``!a``; terms joined by commas)."""
    terms = re.split(r",(?![^()]*\))", selector)
    for term in terms:
        match = _SELECTOR_TERM.match(term)
        if match is None:
            raise ApiStatusError(400, "BadRequest", f"unable to parse requirement: {term!r}", {})
        key, op, value = match["key"], match["op"], match["value"]
        values = {v.strip() for v in (match["values"] or "").split(",") if v.strip()}
        if match["neg"]:
            ok = key not in labels
        elif op in ("=", "=="):
            ok = labels.get(key) == value
        elif op == "!=":
            ok = labels.get(key) != value
        elif match["set"] == "in":
            ok = labels.get(key) in values
        elif match["set"] == "notin":
            ok = labels.get(key) not in values
        else:
            ok = key in labels
        if not ok:
            return False
    return True


def crd_resources(crd: Mapping[str, Any]) -> dict[str, kmock.ResourceInfo]:
    """The resources a CustomResourceDefinition serves, by ``group/version/plural``, as the
    emulator registers them (:meth:`Cluster.install_crd`).

    Each served version is a store of its own here (no conversion between versions, no
    schema): enough for a client that uses one version, as the operator does.
    """
    spec, names = crd["spec"], crd["spec"]["names"]
    return {
        f"{spec['group']}/{version['name']}/{names['plural']}": kmock.ResourceInfo(
            kind=names["kind"],
            singular=names.get("singular", names["kind"].lower()),
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            shortnames=set(names.get("shortNames") or ()),
            categories=set(names.get("categories") or ()),
            verbs={
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            },
            subresources=set(version.get("subresources") or {}),
        )
        for version in spec["versions"]
        if version.get("served", True)
    }


def kubeconfig_for(url: str) -> dict[str, Any]:
    """A kubeconfig for the emulator at ``url`` (it checks no credentials; a token is sent)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": url}}],
        "users": [{"name": "emulator", "user": {"token": "emulator"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "emulator"}}],
        "current-context": "emulator",
    }


class EmulatorRequestError(Exception):
    """A helper's request was refused by the emulator; carries the Status body."""

    def __init__(self, status: int, body: Any) -> None:
        message = body.get("message") if isinstance(body, Mapping) else body
        super().__init__(f"{status}: {message}")
        self.status = status
        self.body = body


@dataclass
class Cluster:
    """A running emulator: its URL, its kubeconfig, and helpers to create and read objects.

    Objects are named by ``api_version`` and ``kind`` as in YAML (``"apps/v1",
    "Deployment"``).  Writes go through the HTTP API, so they are stamped and
    seen by watchers like any client's; reads look at the emulator's memory.
    Use from the emulator's event loop (see :class:`ThreadedCluster` otherwise).
    """

    emulator: Emulator
    server: kmock.Server
    url: str
    kubeconfig: Path

    def install_crd(self, crd: Mapping[str, Any]) -> None:
        """Serve the custom resources of ``crd`` (a CustomResourceDefinition) from now on."""
        for key, info in crd_resources(crd).items():
            self.emulator.resources[key] = info

    def resource(self, api_version: str, kind: str) -> kmock.resource:
        group, _, version = api_version.rpartition("/")
        for resource in self.emulator.resources:
            info = self.emulator.resources[resource]
            if (resource.group, resource.version, info.kind) == (group, version, kind):
                return resource
        raise KeyError(f"the emulator serves no {kind} in {api_version}")

    def path(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str | None = None,
        subresource: str | None = None,
    ) -> str:
        resource = self.resource(api_version, kind)
        root = f"/apis/{api_version}" if resource.group else f"/api/{api_version}"
        parts = [root]
        if namespace is not None:
            parts.append(f"namespaces/{namespace}")
        parts.append(str(resource.plural))
        parts += [p for p in (name, subresource) if p is not None]
        return "/".join(parts)

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        """One HTTP request to the emulator; a list body is sent as a JSON Patch."""
        content_type = (
            "application/json-patch+json"
            if isinstance(body, list)
            else "application/merge-patch+json"
            if method == "PATCH"
            else "application/json"
        )
        data = None if body is None else json.dumps(body)
        async with self.server.client.request(
            method, path, data=data, headers={"Content-Type": content_type}
        ) as response:
            text = await response.text()
            payload = json.loads(text) if text else None
            if response.status >= 400:
                raise EmulatorRequestError(response.status, payload)
            return payload

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create ``obj``; a ``status`` in it is then written through ``/status``."""
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace")
        path = self.path(obj["apiVersion"], obj["kind"], namespace)
        created: dict[str, Any] = await self.request("POST", path, dict(obj))
        if "status" in obj and self.emulator.isolates_status(
            self.resource(obj["apiVersion"], obj["kind"])
        ):
            name = created["metadata"]["name"]
            status_path = self.path(obj["apiVersion"], obj["kind"], namespace, name, "status")
            created = await self.request("PATCH", status_path, {"status": obj["status"]})
        return created

    async def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any] | list[dict[str, Any]],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """A merge patch (a mapping) or a JSON Patch (a list)."""
        path = self.path(api_version, kind, namespace, name, subresource)
        body = list(patch) if isinstance(patch, list) else dict(patch)
        result: dict[str, Any] = await self.request("PATCH", path, body)
        return result

    async def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> None:
        await self.request("DELETE", self.path(api_version, kind, namespace, name))

    def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        """The stored object (a deep copy), or None if there is none."""
        key = (self.resource(api_version, kind), namespace, name)
        if key not in self.emulator.objects or self.emulator.objects[key].deleted:
            return None
        return copy.deepcopy(self.emulator.objects[key].raw)

    async def wait_for(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        predicate: Callable[[dict[str, Any] | None], bool],
        within: float = 10.0,
    ) -> dict[str, Any] | None:
        """Wait until ``predicate(object or None)`` holds; woken by writes, not by polling."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            obj = self.get(api_version, kind, namespace, name)
            if predicate(obj):
                return obj
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(
                    f"{kind} {namespace}/{name} did not reach the expected state within "
                    f"{within}s; last seen: {json.dumps(obj)[:2000]}"
                )
            await self.emulator.wait_changed(remaining)


@contextlib.asynccontextmanager
async def emulated_cluster(
    directory: Path, *, record: bool = True, factory: Callable[[], Emulator] = Emulator
) -> AsyncIterator[Cluster]:
    """Run the emulator on 127.0.0.1 (a free port) in this loop; write ``directory/kubeconfig``.

    ``record=False`` is for long runs: see :attr:`Emulator.record`.  ``factory`` builds the
    emulator: a subclass that measures or changes something (the operator benchmark counts
    requests) is passed here.
    """
    emulator = factory()
    emulator.record = record
    async with emulator, kmock.Server(emulator, host="127.0.0.1") as server:
        # Without the bundled built-in resources kopf never starts watching (no v1 events).
        # This is kmock's load_bundled() without its deprecated importlib.resources.read_binary
        # (a DeprecationWarning, which the test suite turns into an error).
        bundled = importlib.resources.files("kmock._internal").joinpath("resources.json.gz")
        emulator.resources.load_data(gzip.decompress(bundled.read_bytes()))
        emulator.resources[STOPPOLICIES] = stoppolicy_resource()
        url = str(server.url).rstrip("/")
        path = Path(directory) / "kubeconfig"
        path.write_text(yamlout.dump(kubeconfig_for(url)), encoding="utf-8")
        try:
            yield Cluster(emulator=emulator, server=server, url=url, kubeconfig=path)
        finally:
            await emulator.close_streams()


@dataclass
class ThreadedCluster:
    """A :class:`Cluster` running in a background thread; its helpers are synchronous."""

    cluster: Cluster
    loop: asyncio.AbstractEventLoop
    timeout: float = 30.0

    @property
    def url(self) -> str:
        return self.cluster.url

    @property
    def kubeconfig(self) -> Path:
        return self.cluster.kubeconfig

    def run(self, make: Callable[[], Any]) -> Any:
        """Run ``make()`` (a coroutine factory, or a plain function) in the emulator's loop."""

        async def call() -> Any:
            result = make()
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(self.timeout)

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.run(lambda: self.cluster.create(obj))
        return result

    def install_crd(self, crd: Mapping[str, Any]) -> None:
        self.run(lambda: self.cluster.install_crd(crd))

    def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any] | list[dict[str, Any]],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        result: dict[str, Any] = self.run(
            lambda: self.cluster.patch(
                api_version, kind, namespace, name, patch, subresource=subresource
            )
        )
        return result

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> None:
        self.run(lambda: self.cluster.delete(api_version, kind, namespace, name))

    def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        result: dict[str, Any] | None = self.run(
            lambda: self.cluster.get(api_version, kind, namespace, name)
        )
        return result

    def wait_for(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        predicate: Callable[[dict[str, Any] | None], bool],
        within: float = 10.0,
    ) -> dict[str, Any] | None:
        future = asyncio.run_coroutine_threadsafe(
            self.cluster.wait_for(api_version, kind, namespace, name, predicate, within),
            self.loop,
        )
        result: dict[str, Any] | None = future.result(within + 5)
        return result


@contextlib.contextmanager
def emulated_cluster_in_thread(
    directory: Path, *, record: bool = True, factory: Callable[[], Emulator] = Emulator
) -> Iterator[ThreadedCluster]:
    """Run the emulator in a background thread with its own event loop, for synchronous code
    (``record`` and ``factory`` as for :func:`emulated_cluster`)."""
    loop = asyncio.new_event_loop()
    started: concurrent.futures.Future[Cluster] = concurrent.futures.Future()
    stop = asyncio.Event()

    async def serve() -> None:
        async with emulated_cluster(directory, record=record, factory=factory) as cluster:
            started.set_result(cluster)
            await stop.wait()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(serve())
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    thread = threading.Thread(target=run, name="kubernetes-emulator", daemon=True)
    thread.start()
    try:
        cluster = started.result(timeout=30)
        yield ThreadedCluster(cluster=cluster, loop=loop)
    finally:
        if not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
