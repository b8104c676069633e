"""The two Kubernetes backends the end-to-end tests run on, behind one synchronous interface.

* ``kmock``: kmock's emulator with the gaps that :mod:`stopbudget.devkit.emulator` fills
  (fast, in-process, and what ``make demo`` runs on);
* ``apiserver``: the real kube-apiserver v1.28.7 from ``shared/k8s``
  (:mod:`stopbudget.devkit.apiserver`) with the committed CRD applied by kubectl, and
  the operator authenticated as the Helm chart's ServiceAccount with the RBAC
  the chart renders — so a missing permission is a 403 here, as in a cluster.

Where the two differ, the real server is right (DEVELOPERS.md).  Each test gets
a fresh namespace on the real server (namespaces are never emptied there: no
kube-controller-manager runs) and its StopPolicies are removed at the end,
finalizers included, so that a later operator run never meets them.
"""

from __future__ import annotations

import copy
import itertools
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import requests
import yaml

from stopbudget import api
from stopbudget.devkit.apiserver import DevKubeApiServer
from stopbudget.devkit.emulator import ThreadedCluster

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "stopbudget"
CRD = ROOT / "crds" / "stoppolicy.yaml"
#: The chart is rendered as this release in this namespace for the operator's identity.
RELEASE, RELEASE_NAMESPACE = "sb", "stopbudget-system"

Obj = dict[str, Any]
Predicate = Callable[[Obj | None], bool]


class Cluster(Protocol):
    """What an end-to-end test does with Kubernetes, on either backend."""

    backend: str
    #: The namespace of this test's objects.
    ns: str

    @property
    def kubeconfig(self) -> Path:
        """The kubeconfig the operator runs with."""
        ...

    def kubeconfig_with(self, rbac: Mapping[str, bool]) -> Path:
        """A kubeconfig for the operator as installed with these chart ``rbac`` values
        (e.g. ``{"refreshPods": True}``): its optional permissions granted."""
        ...

    def install_crd(self, crd: Obj) -> None:
        """Serve the custom resources of a CustomResourceDefinition (once per session)."""
        ...

    def create(self, obj: Obj) -> Obj: ...

    def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        patch: Obj | list[Obj],
        *,
        subresource: str | None = None,
    ) -> Obj: ...

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> None: ...

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> Obj | None: ...

    def wait_for(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        predicate: Predicate,
        within: float = 10.0,
    ) -> Obj | None: ...

    def events(self, namespace: str) -> list[Obj]: ...

    def wait_for_event(
        self, namespace: str, name: str, reason: str, count: int = 1, within: float = 20.0
    ) -> None: ...


@dataclass
class EmulatedCluster:
    """kmock's emulator (:class:`ThreadedCluster`) with the :class:`Cluster` interface."""

    threaded: ThreadedCluster
    ns: str = "serving"
    backend: str = "kmock"

    @property
    def kubeconfig(self) -> Path:
        return self.threaded.kubeconfig

    def kubeconfig_with(self, rbac: Mapping[str, bool]) -> Path:
        return self.threaded.kubeconfig  # the emulator allows every request

    def install_crd(self, crd: Obj) -> None:
        self.threaded.install_crd(crd)

    def create(self, obj: Obj) -> Obj:
        return self.threaded.create(obj)

    def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        patch: Obj | list[Obj],
        *,
        subresource: str | None = None,
    ) -> Obj:
        return self.threaded.patch(
            api_version, kind, namespace, name, patch, subresource=subresource
        )

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> None:
        self.threaded.delete(api_version, kind, namespace, name)

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> Obj | None:
        return self.threaded.get(api_version, kind, namespace, name)

    def wait_for(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        predicate: Predicate,
        within: float = 10.0,
    ) -> Obj | None:
        return self.threaded.wait_for(api_version, kind, namespace, name, predicate, within)

    def events(self, namespace: str) -> list[Obj]:
        def stored() -> list[Obj]:
            objects = self.threaded.cluster.emulator.objects
            return [
                copy.deepcopy(objects[key].raw)
                for key in list(objects)
                if key[0].plural == "events" and key[1] == namespace and not objects[key].deleted
            ]

        found: list[Obj] = self.threaded.run(stored)
        return found

    def wait_for_event(
        self, namespace: str, name: str, reason: str, count: int = 1, within: float = 20.0
    ) -> None:
        _wait_for_event(self, namespace, name, reason, count, within)


def _wait_for_event(
    cluster: Cluster, namespace: str, name: str, reason: str, count: int, within: float
) -> None:
    """Poll until ``count`` Events of ``reason`` about ``name`` are stored: the operator
    posts Events after it writes status, and stopping it sooner can cut a POST short."""
    deadline = time.monotonic() + within
    while True:
        found = [
            e
            for e in cluster.events(namespace)
            if e.get("reason") == reason and (e.get("involvedObject") or {}).get("name") == name
        ]
        if len(found) >= count:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{count} Event(s) {reason} about {namespace}/{name} not posted")
        time.sleep(0.05)


def plural(kind: str) -> str:
    """The resource name of a kind (enough for the kinds the tests use)."""
    lower = kind.lower()
    return f"{lower[:-1]}ies" if lower.endswith("y") else f"{lower}s"


class ApiRequestError(Exception):
    def __init__(self, code: int, body: Any) -> None:
        super().__init__(f"HTTP {code}: {json.dumps(body)[:2000]}")
        self.code = code
        self.body = body


@dataclass
class RealServer:
    """The session's real API server, with the CRD and the chart's RBAC installed."""

    server: DevKubeApiServer
    #: A kubeconfig authenticating as the chart's ServiceAccount (``kubectl create token``).
    operator_kubeconfig: Path
    service_account: str
    _session: requests.Session = field(default_factory=requests.Session)
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _identities: dict[str, Path] = field(default_factory=dict)
    _crds: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        # REQUESTS_CA_BUNDLE (set on CI machines) would otherwise replace our CA.
        self._session.trust_env = False
        self._session.verify = str(self.server.pki / "ca.crt")
        self._session.headers["Authorization"] = f"Bearer {self.server.admin_token}"

    def fresh_namespace(self, prefix: str = "e2e") -> str:
        name = f"{prefix}-{next(self._names)}"
        self.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
        return name

    def path(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str | None = None,
        subresource: str | None = None,
    ) -> str:
        root = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
        parts = [root]
        if namespace is not None:
            parts.append(f"namespaces/{namespace}")
        parts.append(plural(kind))
        parts += [p for p in (name, subresource) if p is not None]
        return "/".join(parts)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        content_type = (
            "application/json-patch+json"
            if isinstance(body, list)
            else "application/merge-patch+json"
            if method == "PATCH"
            else "application/json"
        )
        response = self._session.request(
            method,
            f"{self.server.url}{path}",
            data=None if body is None else json.dumps(body),
            headers={"Content-Type": content_type},
            timeout=30,
        )
        payload = response.json() if response.content else None
        if response.status_code >= 400:
            raise ApiRequestError(response.status_code, payload)
        return payload

    def identity(self, rbac: Mapping[str, bool]) -> Path:
        """A kubeconfig for a second install of the chart's identity with these ``rbac``
        values (its own ServiceAccount, ClusterRole and binding; made once per session)."""
        enabled = sorted(k for k, v in rbac.items() if v)
        if not enabled:
            return self.operator_kubeconfig
        release = "sb-" + "-".join(e.lower() for e in enabled)
        if release not in self._identities:
            values = {"rbac": dict.fromkeys(enabled, True)}
            identity = [
                o
                for o in chart_objects(values, release=release)
                if o["kind"] in {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
            ]
            self.server.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(identity))
            (account,) = (o["metadata"]["name"] for o in identity if o["kind"] == "ServiceAccount")
            path = self.operator_kubeconfig.with_name(f"{release}.kubeconfig")
            self._identities[release] = self.server.token_kubeconfig(
                account, RELEASE_NAMESPACE, path
            )
        return self._identities[release]

    def install_crd(self, crd: Obj) -> None:
        """Apply a CustomResourceDefinition with kubectl, once, and wait until it serves."""
        name = crd["metadata"]["name"]
        if name not in self._crds:
            self.server.kubectl("apply", "-f", "-", stdin=json.dumps(crd))
            self.server.wait_established(name)
            self._crds.add(name)

    def remove_policies(self, namespace: str) -> None:
        """Delete the namespace's StopPolicies without an operator: finalizers dropped."""
        path = self.path(api.API_VERSION, api.KIND, namespace)
        for item in (self.request("GET", path) or {}).get("items", []):
            name = item["metadata"]["name"]
            item_path = self.path(api.API_VERSION, api.KIND, namespace, name)
            try:
                self.request("PATCH", item_path, {"metadata": {"finalizers": None}})
                self.request("DELETE", item_path)
            except ApiRequestError as exc:
                if exc.code != 404:
                    raise


@dataclass
class ApiServerCluster:
    """One test's view of the real API server: its own namespace."""

    real: RealServer
    ns: str
    backend: str = "apiserver"

    @property
    def kubeconfig(self) -> Path:
        return self.real.operator_kubeconfig

    def kubeconfig_with(self, rbac: Mapping[str, bool]) -> Path:
        return self.real.identity(rbac)

    def install_crd(self, crd: Obj) -> None:
        self.real.install_crd(crd)

    def create(self, obj: Obj) -> Obj:
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace")
        path = self.real.path(obj["apiVersion"], obj["kind"], namespace)
        created: Obj = self.real.request("POST", path, dict(obj))
        return created

    def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        patch: Obj | list[Obj],
        *,
        subresource: str | None = None,
    ) -> Obj:
        path = self.real.path(api_version, kind, namespace, name, subresource)
        result: Obj = self.real.request("PATCH", path, patch)
        return result

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> None:
        self.real.request("DELETE", self.real.path(api_version, kind, namespace, name))

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> Obj | None:
        try:
            found: Obj = self.real.request(
                "GET", self.real.path(api_version, kind, namespace, name)
            )
        except ApiRequestError as exc:
            if exc.code == 404:
                return None
            raise
        return found

    def wait_for(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        predicate: Predicate,
        within: float = 10.0,
    ) -> Obj | None:
        """Poll (every 50 ms) until ``predicate(object or None)`` holds."""
        deadline = time.monotonic() + within
        while True:
            obj = self.get(api_version, kind, namespace, name)
            if predicate(obj):
                return obj
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{kind} {namespace}/{name} did not reach the expected state within "
                    f"{within}s; last seen: {json.dumps(obj)[:2000]}"
                )
            time.sleep(0.05)

    def events(self, namespace: str) -> list[Obj]:
        listed = self.real.request("GET", f"/api/v1/namespaces/{namespace}/events") or {}
        return list(listed.get("items") or [])

    def wait_for_event(
        self, namespace: str, name: str, reason: str, count: int = 1, within: float = 20.0
    ) -> None:
        _wait_for_event(self, namespace, name, reason, count, within)


def chart_objects(values: Obj | None = None, release: str = RELEASE) -> list[Obj]:
    """The objects the chart renders (real Helm engine), cluster-wide by default."""
    import helm_python as helm

    manifests = helm.Chart.load(CHART).render(
        values or {}, name=release, namespace=RELEASE_NAMESPACE, is_install=True
    )
    objects: list[Obj] = []
    for path, text in sorted(manifests.items()):
        if not path.endswith("NOTES.txt"):
            objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def install_operator_identity(server: DevKubeApiServer, directory: Path) -> RealServer:
    """Apply the CRD (kubectl, as a user would) and the chart's ServiceAccount and RBAC;
    return the server with a kubeconfig for that ServiceAccount."""
    server.kubectl("apply", "-f", str(CRD))
    server.wait_established(f"{api.PLURAL}.{api.GROUP}")
    server.kubectl("create", "namespace", RELEASE_NAMESPACE)
    identity = [
        o
        for o in chart_objects()
        if o["kind"] in {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
    ]
    server.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(identity))
    (account,) = (o["metadata"]["name"] for o in identity if o["kind"] == "ServiceAccount")
    kubeconfig = server.token_kubeconfig(
        account, RELEASE_NAMESPACE, directory / "operator.kubeconfig"
    )
    return RealServer(server=server, operator_kubeconfig=kubeconfig, service_account=account)


def monitoring_crds() -> list[Obj]:
    """CRDs of the Prometheus Operator's kinds, built from the vendored upstream schemas
    (``tests/schemas/prometheus-operator.yaml``), for a real server to check the chart's
    ServiceMonitor and PrometheusRule against."""
    loaded = yaml.safe_load((ROOT / "tests/schemas/prometheus-operator.yaml").read_text("utf-8"))
    kinds = (("ServiceMonitor", "servicemonitors"), ("PrometheusRule", "prometheusrules"))
    return [
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.monitoring.coreos.com"},
            "spec": {
                "group": "monitoring.coreos.com",
                "names": {"kind": kind, "plural": plural, "listKind": f"{kind}List"},
                "scope": "Namespaced",
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {"openAPIV3Schema": loaded[kind]},
                    }
                ],
            },
        }
        for kind, plural in kinds
    ]


def install_monitoring_crds(server: DevKubeApiServer) -> None:
    crds = monitoring_crds()
    server.kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List",
                                                         "items": crds}))  # fmt: skip
    for crd in crds:
        name = crd["metadata"]["name"]
        server.wait_established(name)
