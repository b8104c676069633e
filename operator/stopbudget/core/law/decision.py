"""The law's output, a :class:`Decision` with its :class:`Rule`, and the :class:`State` it keeps."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Rule(StrEnum):
    """Which step of the law decided; the label of ``stopbudget_decisions_total``."""

    NO_EVIDENCE = "no_evidence"
    TARGET = "target"
    LOAD = "load"
    QUALITY_GUARD = "quality_guard"
    ALERT = "alert"
    FLOOR = "floor"
    FALLBACK = "fallback"
    METRICS_WAIT = "metrics_wait"
    TOLERANCE = "tolerance"
    STABILIZATION = "stabilization"
    COOLDOWN = "cooldown"
    STEP_LIMIT = "step_limit"


@dataclass(frozen=True)
class State:
    """What the law remembers between ticks (kept in the policy's status)."""

    #: Budget applied to the target now; None when nothing is applied (sink absent).
    budget: int | None = None
    #: When a sink that restarts pods was last patched.
    last_patch_time: datetime | None = None
    #: Metric failures in a row.
    failures: int = 0
    #: Recommendations (time, budget) within the downscale stabilization window.
    history: tuple[tuple[datetime, int], ...] = ()


@dataclass(frozen=True)
class Decision:
    """The outcome of one tick: what to apply, why, and the state to remember."""

    budget: int
    #: The law's recommendation before the stability rules (status.recommendation.budget).
    recommended: int
    target: int | None
    floor: int | None
    rule: Rule
    reason: str
    state: State
    #: The budget applied before this tick (None: nothing applied).
    previous: int | None = None
    #: Live EM fell below the floor: an audit should measure the curve again.
    request_audit: bool = False
    fallback: bool = False
    #: Set when the curve has no budget meeting emTarget (or emFloor) within bounds.
    unreachable: str | None = None

    @property
    def changes(self) -> bool:
        """Whether the budget to apply differs from what is applied."""
        return self.budget != self.previous
