"""refreshPods: after a configMap sink write, annotate the target Deployment's pods.

kubelet refreshes a mounted ConfigMap within its sync period (about a minute with the
defaults) unless the pod changes: an update of the pod makes kubelet sync it at once,
volumes included (Envoy AI Gateway refreshes its external processor's configuration the
same way).  The annotation (:data:`stopbudget.api.ANNOTATION_BUDGET_REVISION`) holds the
ConfigMap's resourceVersion, so a pod is annotated once per write.

A refresh is best effort: the budget is written whatever happens here, and kubelet picks
it up within its sync period anyway.  A failure (no RBAC for pods, a pod that refuses the
patch) is logged and returned as a Warning Event, never a failed tick.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from stopbudget import api
from stopbudget.clients.kube import KubeError, TargetNotFound
from stopbudget.controller.operator import Operator
from stopbudget.core import sinks
from stopbudget.core.status import Event

log = logging.getLogger(__name__)


def wanted(spec: api.StopPolicySpec) -> bool:
    """Whether the policy's sink asks for a refresh after each write."""
    sink = spec.budget.sink
    return sink.type == api.SinkType.CONFIG_MAP and sink.refresh_pods


async def refresh_pods(
    operator: Operator, namespace: str, spec: api.StopPolicySpec, written: Mapping[str, Any]
) -> tuple[Event, ...]:
    """Annotate the pods of ``spec.targetRef`` with the revision of ``written`` (the
    ConfigMap as the write returned it); a Warning Event when some could not be."""
    if not wanted(spec):
        return ()
    revision = str((written.get("metadata") or {}).get("resourceVersion") or "")
    target = spec.target_ref.name
    try:
        deployment = await operator.kube.get_deployment(namespace, target)
        pods = await operator.kube.list_pods(namespace, sinks.pod_selector(deployment))
    except (KubeError, sinks.SinkError) as exc:
        return (_failed(namespace, target, f"its pods could not be listed: {exc}"),)
    failures: list[str] = []
    refreshed = 0
    for name in sinks.pods_to_refresh(pods, revision):
        try:
            await operator.kube.patch_pod_metadata(namespace, name, sinks.refresh_patch(revision))
        except TargetNotFound:
            continue  # the pod went away meanwhile: its replacement mounts the new data
        except KubeError as exc:
            failures.append(f"pod {name}: {exc}")
        else:
            refreshed += 1
    log.debug("%s: %d pod(s) of %s annotated with revision %s", namespace, refreshed, target,
              revision)  # fmt: skip
    if failures:
        return (_failed(namespace, target, "; ".join(failures)),)
    return ()


def _failed(namespace: str, target: str, why: str) -> Event:
    message = (
        f"refreshPods: the budget is written, but the pods of Deployment {namespace}/{target} "
        f"were not all annotated ({why}); kubelet refreshes the mounted ConfigMap within its "
        "sync period instead"
    )
    log.warning("%s", message)
    return Event("Warning", "PodRefreshFailed", message)
