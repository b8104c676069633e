"""A Deployment's rolling update, as the Kubernetes Deployment controller runs it. PURE.

A budget written through a sink that lives in the pod template (``env``, ``arg``)
changes the template, and the Deployment rolls its pods.  The pods of one template
form one ReplicaSet; the *newest* template is the one last written (writing back a
template whose pods still run makes them the newest again, as the ReplicaSet with
that pod-template hash is reused).  :func:`step` is one pass of the controller's
rolling update (``rolloutRolling``), repeated until nothing changes:

* scale up the newest template while the pods that are not terminating number
  at most ``replicas + maxSurge`` and the newest has fewer than ``replicas``;
* remove old pods that are not ready, as long as ``all - minAvailable -
  newUnavailable`` allows (``cleanupUnhealthyReplicas``), then old ready pods
  while more than ``minAvailable = replicas - maxUnavailable`` pods are available
  (the oldest pods first);
* a newest template with more than ``replicas`` pods (written back) is scaled down.

A removed pod that is ready starts *draining* (terminating: it takes no new request
and stops when its last one finishes); one that is not ready yet simply goes.
Terminating pods do not count toward ``maxSurge`` (the Deployment controller's
default).  :func:`counts` resolves ``maxSurge`` / ``maxUnavailable`` (a count or a
percentage of ``replicas``) as Kubernetes does: surge rounded up, unavailable down,
and ``maxUnavailable`` 1 when both come out 0.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

#: Kubernetes' defaults for a Deployment's rolling update.
DEFAULT_MAX_SURGE = "25%"
DEFAULT_MAX_UNAVAILABLE = "25%"

_VALUE_RE = re.compile(r"^\s*([0-9]+)\s*(%?)\s*$")


def parse_count(text: str, name: str) -> tuple[int, bool]:
    """``"25%"`` -> (25, True), ``"1"`` -> (1, False); ValueError naming ``name`` otherwise."""
    match = _VALUE_RE.match(text)
    if match is None:
        raise ValueError(
            f"{name} {text!r} is neither a count nor a percentage: write e.g. 1 or 25%"
        )
    value, percent = int(match.group(1)), match.group(2) == "%"
    if percent and value > 100:
        raise ValueError(f"{name} {text!r}: a percentage is at most 100%")
    return value, percent


def counts(replicas: int, max_surge: str, max_unavailable: str) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) in pods for ``replicas``, as Kubernetes resolves them.

    ValueError when both are given as zero (Kubernetes rejects it: the rollout could not
    move); when only the rounding makes both zero, maxUnavailable is 1 (as Kubernetes).
    """
    surge, surge_pct = parse_count(max_surge, "--max-surge")
    unavailable, unavailable_pct = parse_count(max_unavailable, "--max-unavailable")
    if surge == 0 and unavailable == 0:
        raise ValueError(
            "--max-surge and --max-unavailable are both 0: the rollout could never "
            "replace a pod; make one of them non-zero (Kubernetes' defaults are 25%)"
        )
    if surge_pct:
        surge = math.ceil(surge * replicas / 100)
    if unavailable_pct:
        unavailable = math.floor(unavailable * replicas / 100)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


@dataclass(frozen=True)
class Pod:
    """A pod that is not terminating, as the rollout sees it."""

    id: int
    #: The budget of its template.
    template: int
    ready: bool


@dataclass(frozen=True)
class Step:
    """What the controller does now: start ``create`` pods of the newest template and
    remove the pods ``remove`` (by id; ready ones drain, the others go at once)."""

    create: int
    remove: tuple[int, ...]

    @property
    def idle(self) -> bool:
        return self.create == 0 and not self.remove


def step(pods: Sequence[Pod], newest: int, replicas: int, surge: int, unavailable: int) -> Step:
    """One reconcile of the rolling update of ``pods`` toward the template ``newest``."""
    live = sorted(pods, key=lambda p: p.id)
    created = 0
    removed: list[int] = []
    min_available = replicas - unavailable

    def take(pod: Pod) -> None:
        live.remove(pod)
        removed.append(pod.id)

    while True:
        before = (created, len(removed))
        new = [p for p in live if p.template == newest]
        # A template written back may have more pods than replicas: scale it down.
        extra = len(new) + created - replicas
        if extra > 0:
            unready_new = min(extra, created)
            created -= unready_new
            extra -= unready_new
            for pod in sorted(new, key=lambda p: (p.ready, -p.id))[:extra]:
                take(pod)
            new = [p for p in live if p.template == newest]
        total = len(live) + created
        add = min(replicas + surge - total, replicas - len(new) - created)
        if add > 0:
            created += add
            total += add
        new_unavailable = created + sum(1 for p in new if not p.ready)
        old = [p for p in live if p.template != newest]
        allowed = total - min_available - new_unavailable
        for pod in [p for p in old if not p.ready][: max(allowed, 0)]:
            take(pod)
        available = sum(1 for p in live if p.ready)
        old_ready = [p for p in live if p.template != newest and p.ready]
        for pod in old_ready[: max(available - min_available, 0)]:
            take(pod)
        if (created, len(removed)) == before:
            return Step(created, tuple(removed))
