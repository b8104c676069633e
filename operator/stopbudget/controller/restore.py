"""On delete: put back what the sink held before the operator first wrote it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stopbudget import api
from stopbudget.clients.kube import TargetNotFound
from stopbudget.controller.operator import Operator
from stopbudget.controller.refresh import refresh_pods
from stopbudget.core import sinks
from stopbudget.core.status import read_status


async def restore(
    operator: Operator,
    namespace: str,
    raw_spec: Mapping[str, Any],
    raw_status: Mapping[str, Any] | None,
) -> str:
    """Put back ``status.originalValue``; a one-line account of what was done.

    Raises :class:`stopbudget.clients.kube.KubeError` when the API fails (the
    handler retries); a target that is gone, or a sink already holding its
    original value, is nothing to do.
    """
    original = read_status(raw_status).status.original_value
    if original is None:
        return "nothing to restore: the target was never patched"
    try:
        spec = api.StopPolicySpec.model_validate(dict(raw_spec))
    except ValueError:
        return "nothing restored: the spec is invalid, the sink cannot be located"
    kind, name = sinks.target_of(spec.budget, spec.target_ref)
    try:
        obj = await operator.kube.get_sink_object(kind, namespace, name)
    except TargetNotFound:
        return f"nothing to restore: {kind} {namespace}/{name} is gone"
    patch = sinks.LocatedSink.found_in(spec.budget, spec.target_ref, obj).restore_patch(original)
    if patch is None:
        return "nothing to restore: the sink already holds its original value"
    written = await operator.kube.apply(namespace, patch)
    failed = await refresh_pods(operator, namespace, spec, written)
    return f"restored {patch.summary}" + "".join(f"; {e.message}" for e in failed)
