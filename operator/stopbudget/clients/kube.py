"""The Kubernetes API, for everything the operator does besides what kopf does itself.

This is the only stopbudget module that talks to the Kubernetes API.  It uses
the official ``kubernetes`` client, which is synchronous, off the event loop:
every call runs in a dedicated :class:`~concurrent.futures.ThreadPoolExecutor`
owned by :class:`Kube`, not in asyncio's default executor (``asyncio.to_thread``).
The reasons:

* isolation: the default executor is shared with kopf's synchronous handlers
  and with any other blocking client (Prometheus queries); a slow Prometheus
  must not starve the Deployment patches, nor the reverse;
* a bound on concurrency towards the API server, sized with the HTTP
  connection pool: the pool keeps one connection per worker thread
  (``connection_pool_maxsize = workers``), so no connection is discarded and
  re-opened under load ("Connection pool is full");
* sizing for hundreds of policies: a tick makes two requests (a GET of the
  target, a status PATCH). Measured (``make bench-operator``), a call holds its
  worker 10-20 ms at 100 policies and 80-110 ms when the process is busy (the
  GIL, not the network), so 16 workers carry about 80-100 ticks/s: 1,000
  policies need an interval of 15 s or more per operator process
  (:data:`DEFAULT_WORKERS`; ``STOPBUDGET_KUBE_WORKERS``).

Objects are returned as plain dicts exactly as the API server sent them (the
response body is decoded as JSON, not turned into client models), which is what
:mod:`stopbudget.core.sinks` computes its JSON Patches against.

Errors are typed: :class:`TargetNotFound` (404), :class:`PatchConflict` (a JSON
Patch ``test`` failed or the object changed since it was read: re-read on the
next tick), :class:`PatchRejected` (the server refused the new object) and
:class:`KubeApiError` (anything else, including an unreachable server); all
derive from :class:`KubeError` and carry a message that says what to do.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import urllib3.exceptions
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from stopbudget import api
from stopbudget.core.sinks import AI_SERVICE_BACKEND, JsonPatchOp, SinkPatch, TargetKind

# The config loaders and ApiClient.close are untyped in some client versions, typed in others.
_config: Any = config

#: Worker threads (and pooled HTTP connections) of a :class:`Kube`; see the module docstring.
DEFAULT_WORKERS = 16
#: Seconds to connect to the API server, and to wait for one answer.
DEFAULT_TIMEOUT = (5.0, 30.0)

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"

#: What the API server answers to a JSON Patch that does not apply (a failed ``test``,
#: a missing path): 422 with this message and no causes (apiserver ``handlers/patch.go``).
_PATCH_DOES_NOT_APPLY = "the server rejected our request due to an error in our request"

#: RBAC rules the operator needs, as ``(api group, resource, verbs)``: kopf's and this
#: module's, for the operator as it runs (cluster-wide, standalone, ``settings.scanning.
#: disabled = True``).  The Helm chart's ClusterRole is tested against this list.
PERMISSIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    # kopf: list+watch the policies; patch them for its finalizer and progress annotations
    # (and this module: remove the annotation stopbudget.io/audit-requested).
    (api.GROUP, api.PLURAL, ("list", "watch", "patch")),
    # kopf and this module: status is a subresource of the CRD.
    (api.GROUP, f"{api.PLURAL}/status", ("patch",)),
    # kopf: Events about the policies (kopf.event/info/warn, handler failures), core v1.
    ("", "events", ("create",)),
    # This module: read the target and patch its env/args/annotation.
    ("apps", "deployments", ("get", "patch")),
    # This module: read and patch the configMap sink; read golden sets.
    ("", "configmaps", ("get", "patch")),
)

#: Rules the operator needs only for a feature that a chart value enables, by that value
#: (``rbac.<value>`` in the chart): the ClusterRole or Roles hold :data:`PERMISSIONS` plus
#: the rules of the values set to true (``tests/unit/chart/test_chart.py`` checks both
#: ways).  Without them the operator names the value in its error (a 403 here, a Warning
#: Event from the tick).
OPTIONAL_PERMISSIONS: Mapping[str, tuple[tuple[str, str, tuple[str, ...]], ...]] = {
    # The configMap sink with refreshPods: list the target's pods, annotate them so that
    # kubelet refreshes the mounted ConfigMap at once.
    "refreshPods": (("", "pods", ("list", "patch")),),
    # The aiGateway sink: read and patch Envoy AI Gateway's AIServiceBackends.
    "aiGateway": ((AI_SERVICE_BACKEND[0], AI_SERVICE_BACKEND[2], ("get", "patch")),),
}

#: The chart value that grants the rules for a kind of object, for the messages of a 403.
CHART_VALUE_OF_KIND: Mapping[str, str] = {"Pod": "refreshPods", "AIServiceBackend": "aiGateway"}

#: Extra rules when kopf's peering is enabled (``STOPBUDGET_KOPF_PEERING``, cluster-wide):
#: kopf lists, watches and patches its ClusterKopfPeering object.
PEERING_PERMISSIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("kopf.dev", "clusterkopfpeerings", ("list", "watch", "patch")),
)


class KubeError(Exception):
    """A Kubernetes API call failed; the message says what to do."""


class TargetNotFound(KubeError):  # noqa: N818 - the name says what happened
    """The object does not exist (404), or the ConfigMap lacks the key."""

    def __init__(self, kind: str, namespace: str, name: str, detail: str = "") -> None:
        self.kind = kind
        self.namespace = namespace
        self.name = name
        where = ""
        if kind == "AIServiceBackend":
            group, version, plural = AI_SERVICE_BACKEND
            where = (
                f" (the operator reads {group}/{version}: is Envoy AI Gateway installed, with "
                f"its CRD {plural}.{group}?)"
            )
        super().__init__(
            detail
            or f"{kind} {namespace}/{name} was not found{where}: create it, or point the policy "
            "at an existing one"
        )


class PatchConflict(KubeError):  # noqa: N818 - the name says what happened
    """The object changed since it was read (a ``test`` failed): read it again next tick."""

    def __init__(self, kind: str, namespace: str, name: str) -> None:
        self.kind = kind
        self.namespace = namespace
        self.name = name
        super().__init__(
            f"{kind} {namespace}/{name} changed since it was read (the patch's test failed), "
            "so nothing was written; it is read again on the next tick"
        )


class PatchRejected(KubeError):  # noqa: N818 - the name says what happened
    """The API server refused the patched object (validation, admission)."""

    def __init__(self, kind: str, namespace: str, name: str, status: int, message: str) -> None:
        self.kind = kind
        self.namespace = namespace
        self.name = name
        self.status = status
        super().__init__(
            f"the API server refused the patch of {kind} {namespace}/{name} ({status}): {message}"
        )


class KubeApiError(KubeError):
    """Any other failure: forbidden, server error, timeout, unreachable server."""

    def __init__(self, status: int | None, message: str) -> None:
        self.status = status
        super().__init__(message)


class Forbidden(KubeApiError):  # noqa: N818 - the name says what happened
    """403: the operator's ServiceAccount lacks a rule; the message names the chart value."""

    def __init__(self, kind: str, namespace: str, name: str, message: str) -> None:
        self.kind = kind
        value = CHART_VALUE_OF_KIND.get(kind)
        fix = (
            f"install the Helm chart with rbac.{value}=true (it grants "
            + ", ".join(f"{r}: {'/'.join(v)}" for _, r, v in OPTIONAL_PERMISSIONS[value])
            + ")"
            if value is not None
            else "grant the operator's ServiceAccount the rules in stopbudget.clients.kube."
            "PERMISSIONS (the Helm chart's ClusterRole does)"
        )
        super().__init__(403, f"forbidden to access {kind} {namespace}/{name}: {message}; {fix}")


def _status_body(exc: ApiException) -> dict[str, Any]:
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


class Kube:
    """An async facade over the official client, with its own thread pool.

    Make one with :meth:`connect`, use it from the event loop, and
    :meth:`close` it (or use ``async with``).
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        workers: int = DEFAULT_WORKERS,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    ) -> None:
        self._client: Any = api_client
        self._apps = client.AppsV1Api(api_client)
        self._core = client.CoreV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kube")

    @classmethod
    def connect(
        cls,
        kubeconfig: str | Path | None = None,
        *,
        context: str | None = None,
        workers: int = DEFAULT_WORKERS,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    ) -> Kube:
        """Configure from ``kubeconfig``; without it, in-cluster in a pod, else the default one.

        The default kubeconfig is ``$KUBECONFIG`` or ``~/.kube/config``, as for kubectl.
        """
        configuration = client.Configuration()
        if kubeconfig is not None:
            _config.load_kube_config(
                config_file=str(kubeconfig), context=context, client_configuration=configuration
            )
        elif os.environ.get("KUBERNETES_SERVICE_HOST") and context is None:
            _config.load_incluster_config(client_configuration=configuration)
        else:
            path = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
            _config.load_kube_config(
                config_file=path, context=context, client_configuration=configuration
            )
        configuration.connection_pool_maxsize = workers
        return cls(client.ApiClient(configuration), workers=workers, timeout=timeout)

    async def close(self) -> None:
        """Stop the worker threads and close the HTTP connections."""
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        self._executor.shutdown(wait=True)
        self._client.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ----------------------------------------------------------------- calls

    async def _call(
        self,
        kind: str,
        namespace: str,
        name: str,
        method: Callable[..., Any],
        *args: Any,
        patching: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Run one client call in the pool; decode the raw JSON answer; map errors."""

        def run() -> dict[str, Any]:
            response = method(
                *args, _preload_content=False, _request_timeout=self._timeout, **kwargs
            )
            try:
                data = json.loads(response.data)
            except ValueError:
                data = None
            finally:
                response.release_conn()
            if not isinstance(data, dict):
                raise KubeApiError(
                    None, f"the Kubernetes API answered {kind} {namespace}/{name} with no object"
                )
            return data

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, run)
        except RuntimeError as exc:  # the pool is shut down: the operator is stopping
            raise KubeApiError(None, f"the Kubernetes client is closed: {exc}") from exc
        except ApiException as exc:
            raise self._error(exc, kind, namespace, name, patching=patching) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            host = self._client.configuration.host
            raise KubeApiError(
                None,
                f"cannot reach the Kubernetes API at {host} ({exc.__class__.__name__}: {exc}): "
                "check the kubeconfig or the in-cluster network; retried on the next tick",
            ) from exc

    @staticmethod
    def _error(
        exc: ApiException, kind: str, namespace: str, name: str, *, patching: bool
    ) -> KubeError:
        body = _status_body(exc)
        message = str(body.get("message") or exc.reason or "")
        status = int(exc.status or 0)
        if status == 404:
            return TargetNotFound(kind, namespace, name)
        if patching and status == 409:
            return PatchConflict(kind, namespace, name)
        if patching and status == 422:
            causes = (body.get("details") or {}).get("causes")
            if message == _PATCH_DOES_NOT_APPLY and not causes:
                return PatchConflict(kind, namespace, name)
            return PatchRejected(kind, namespace, name, status, message)
        if status == 403:
            return Forbidden(kind, namespace, name, message)
        return KubeApiError(
            status,
            f"the Kubernetes API failed on {kind} {namespace}/{name} ({status} "
            f"{body.get('reason') or exc.reason}): {message}; retried on the next tick",
        )

    # ----------------------------------------------------------------- reads

    async def get_sink_object(self, kind: TargetKind, namespace: str, name: str) -> dict[str, Any]:
        """The Deployment, ConfigMap or AIServiceBackend a sink lives in; :class:`TargetNotFound`
        if none."""
        if kind == "ConfigMap":
            return await self.get_config_map(namespace, name)
        if kind == "AIServiceBackend":
            return await self.get_ai_service_backend(namespace, name)
        return await self.get_deployment(namespace, name)

    async def get_ai_service_backend(self, namespace: str, name: str) -> dict[str, Any]:
        """Envoy AI Gateway's AIServiceBackend; :class:`TargetNotFound` if none."""
        group, version, plural = AI_SERVICE_BACKEND
        return await self._call(
            "AIServiceBackend", namespace, name, self._custom.get_namespaced_custom_object,
            group, version, namespace, plural, name,
        )  # fmt: skip

    async def get_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        """The Deployment as the API returns it; :class:`TargetNotFound` if there is none."""
        return await self._call(
            "Deployment", namespace, name, self._apps.read_namespaced_deployment, name, namespace
        )

    async def list_policies(self, namespaces: tuple[str, ...] = ()) -> set[tuple[str, str]]:
        """``(namespace, name)`` of the StopPolicies in ``namespaces`` (all when empty)."""
        if not namespaces:
            listed = [
                await self._call(
                    "StopPolicy", "*", "*", self._custom.list_cluster_custom_object,
                    api.GROUP, api.VERSION, api.PLURAL,
                )
            ]  # fmt: skip
        else:
            listed = [
                await self._call(
                    "StopPolicy", ns, "*", self._custom.list_namespaced_custom_object,
                    api.GROUP, api.VERSION, ns, api.PLURAL,
                )
                for ns in namespaces
            ]  # fmt: skip
        return {
            (item["metadata"]["namespace"], item["metadata"]["name"])
            for answer in listed
            for item in answer.get("items") or []
        }

    async def get_config_map(self, namespace: str, name: str) -> dict[str, Any]:
        """The ConfigMap as the API returns it; :class:`TargetNotFound` if there is none."""
        return await self._call(
            "ConfigMap", namespace, name, self._core.read_namespaced_config_map, name, namespace
        )

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """The namespace's pods that ``selector`` (a ``labelSelector`` query) matches."""
        listed = await self._call(
            "Pod", namespace, f"(labelSelector {selector})",
            self._core.list_namespaced_pod, namespace, label_selector=selector,
        )  # fmt: skip
        return [dict(p) for p in listed.get("items") or []]

    async def get_config_map_key(self, namespace: str, name: str, key: str) -> str:
        """One key of a ConfigMap's data, e.g. a golden set's JSONL."""
        data = (await self.get_config_map(namespace, name)).get("data") or {}
        if key not in data:
            raise TargetNotFound(
                "ConfigMap",
                namespace,
                name,
                f"ConfigMap {namespace}/{name} has no key {key!r} in data (its keys: "
                f"{sorted(data)}): add it, or name an existing key",
            )
        return str(data[key])

    # ----------------------------------------------------------------- patches

    async def patch_deployment(
        self, namespace: str, name: str, ops: list[JsonPatchOp]
    ) -> dict[str, Any]:
        """Apply a JSON Patch; :class:`PatchConflict` when one of its tests fails."""
        return await self._call(
            "Deployment",
            namespace,
            name,
            self._apps.patch_namespaced_deployment,
            name,
            namespace,
            list(ops),
            patching=True,
            _content_type=JSON_PATCH,
        )

    async def patch_config_map(
        self, namespace: str, name: str, ops: list[JsonPatchOp]
    ) -> dict[str, Any]:
        """Apply a JSON Patch; :class:`PatchConflict` when one of its tests fails."""
        return await self._call(
            "ConfigMap",
            namespace,
            name,
            self._core.patch_namespaced_config_map,
            name,
            namespace,
            list(ops),
            patching=True,
            _content_type=JSON_PATCH,
        )

    async def patch_ai_service_backend(
        self, namespace: str, name: str, ops: list[JsonPatchOp]
    ) -> dict[str, Any]:
        """Apply a JSON Patch; :class:`PatchConflict` when one of its tests fails."""
        group, version, plural = AI_SERVICE_BACKEND
        return await self._call(
            "AIServiceBackend", namespace, name, self._custom.patch_namespaced_custom_object,
            group, version, namespace, plural, name, list(ops),
            patching=True, _content_type=JSON_PATCH,
        )  # fmt: skip

    async def patch_pod_metadata(
        self, namespace: str, name: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Merge-patch a pod (its metadata: the annotation of a refresh)."""
        return await self._call(
            "Pod", namespace, name, self._core.patch_namespaced_pod, name, namespace, dict(body),
            patching=True, _content_type=MERGE_PATCH,
        )  # fmt: skip

    async def apply(self, namespace: str, patch: SinkPatch) -> dict[str, Any]:
        """Apply a sink's patch to its Deployment, ConfigMap or AIServiceBackend; the patched
        object."""
        if patch.kind == "ConfigMap":
            return await self.patch_config_map(namespace, patch.name, patch.ops)
        if patch.kind == "AIServiceBackend":
            return await self.patch_ai_service_backend(namespace, patch.name, patch.ops)
        return await self.patch_deployment(namespace, patch.name, patch.ops)

    async def patch_policy_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Merge-patch ``status`` into the StopPolicy's ``/status`` (None deletes a field)."""
        return await self._call(
            "StopPolicy",
            namespace,
            name,
            self._custom.patch_namespaced_custom_object_status,
            api.GROUP,
            api.VERSION,
            namespace,
            api.PLURAL,
            name,
            {"status": dict(status)},
            patching=True,
            _content_type=MERGE_PATCH,
        )

    async def patch_policy_metadata(
        self, namespace: str, name: str, metadata: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Merge-patch the StopPolicy's ``metadata`` (labels, annotations; None deletes)."""
        return await self._call(
            "StopPolicy",
            namespace,
            name,
            self._custom.patch_namespaced_custom_object,
            api.GROUP,
            api.VERSION,
            namespace,
            api.PLURAL,
            name,
            {"metadata": dict(metadata)},
            patching=True,
            _content_type=MERGE_PATCH,
        )

    async def remove_policy_annotation(
        self, namespace: str, name: str, key: str = api.ANNOTATION_AUDIT_REQUESTED
    ) -> dict[str, Any]:
        """Remove one annotation of the StopPolicy (absent is fine)."""
        return await self.patch_policy_metadata(namespace, name, {"annotations": {key: None}})
