"""The one set of builders of the objects tests and benchmarks create: Deployments and
StopPolicies, as plain dicts (what the API server and the emulator take).

Every argument has the value most tests want; a test names only what it changes.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

Obj = dict[str, Any]

#: The image of the serving container unless a test names another.
VLLM_IMAGE = "vllm/vllm-openai:v0.11.0"


def container(
    name: str = "vllm",
    image: str = VLLM_IMAGE,
    *,
    args: Sequence[str] | None = None,
    env: Sequence[Obj] | None = None,
    **fields: Any,
) -> Obj:
    """A container; ``args`` and ``env`` only when given (``env`` items are copied)."""
    out: Obj = {"name": name, "image": image}
    if args is not None:
        out["args"] = list(args)
    if env is not None:
        out["env"] = [dict(item) for item in env]
    return out | copy.deepcopy(fields)


def deployment(
    name: str = "vllm",
    namespace: str = "serving",
    containers: Sequence[Obj] | None = None,
    *,
    replicas: int | None = None,
    app: str | None = None,
    selector: bool = True,
    **metadata: Any,
) -> Obj:
    """A Deployment whose pods carry the label ``app`` (the name unless given).

    ``containers`` defaults to one plain ``vllm`` container; they are deep-copied.
    ``metadata`` adds fields (labels, annotations, resourceVersion).
    """
    app = app or name
    spec: Obj = {}
    if replicas is not None:
        spec["replicas"] = replicas
    if selector:
        spec["selector"] = {"matchLabels": {"app": app}}
    spec["template"] = {
        "metadata": {"labels": {"app": app}},
        "spec": {"containers": copy.deepcopy(list(containers or [container()]))},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace} | copy.deepcopy(metadata),
        "spec": spec,
    }


def stop_policy(
    name: str = "p",
    namespace: str = "serving",
    *,
    target: str = "vllm",
    container: str | None = None,
    budget: Obj | None = None,
    quality: Obj | None = None,
    **sections: Any,
) -> Obj:
    """A valid StopPolicy: budget 64..1024 into env MAX_TOKENS and EM target 0.8, floor
    0.7 unless given; ``sections`` are the other spec sections (load, control, audit)."""
    target_ref: Obj = {"name": target}
    if container is not None:
        target_ref["container"] = container
    spec: Obj = {
        "targetRef": target_ref,
        "budget": budget
        if budget is not None
        else {"min": 64, "max": 1024, "sink": {"type": "env", "name": "MAX_TOKENS"}},
        "quality": quality if quality is not None else {"emTarget": 0.8, "emFloor": 0.7},
    }
    return {
        "apiVersion": "stopbudget.io/v1alpha1",
        "kind": "StopPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": copy.deepcopy(spec | sections),
    }


# A minimal valid StopPolicy; tests copy and change it.
MINIMAL: Obj = stop_policy()
