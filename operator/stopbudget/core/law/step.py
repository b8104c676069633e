"""What a step of the law is: a :class:`Proposal` in and out, reading a :class:`Context`.

Also the two helpers every step's arithmetic and reasons share: :func:`quantise`
(onto the ``step`` grid) and :func:`fmt` (a number in a reason).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from stopbudget.api import Budget, StopPolicySpec
from stopbudget.core.curve import Curve
from stopbudget.core.law.decision import Rule, State
from stopbudget.core.law.observation import Observation


@dataclass(frozen=True)
class Evidence:
    """The target and floor budgets the curve in use supports (steps 1 and 2)."""

    #: ``b_target``: cheapest budget whose EM lower bound meets emTarget (after the cost cap).
    target: int
    #: ``b_floor``: cheapest budget whose EM lower bound meets emFloor (after the cost cap).
    floor: int
    #: Why no budget within [min, max] reaches emTarget, when none does (``max`` is used).
    unreachable: str | None = None


@dataclass(frozen=True)
class Context:
    """What every step may read: the tick's inputs, and the target and floor once estimated."""

    spec: StopPolicySpec
    curve: Curve
    observation: Observation
    state: State
    now: datetime
    #: A firing alert asks to go to the EM-target budget at once.
    raise_for_alert: bool
    #: Steps 1 and 2 on ``curve``; None without evidence (no prior, no audit).
    evidence: Evidence | None

    @property
    def current(self) -> int | None:
        """The budget applied now; None when nothing is applied (first tick, sink absent)."""
        return self.state.budget

    @property
    def failures(self) -> int:
        """Ticks in a row whose metrics failed, this one included (0 when they are usable)."""
        return 0 if self.observation.ok else self.state.failures + 1


@dataclass(frozen=True)
class Proposal:
    """The budget under consideration, the rule and reason of the step that last acted on it."""

    #: Tokens: a float while steps 3-6 compute it (``r / p``), whole once quantised.
    budget: float
    rule: Rule
    reason: str
    #: Up for quality (live EM, firing alert, below the floor): no stability step delays it.
    raise_for_quality: bool = False
    #: Live EM fell below the floor: an audit should measure the curve again.
    request_audit: bool = False
    #: The fallback behaviour applies (metrics failed ``failureThreshold`` ticks in a row).
    fallback: bool = False
    #: The law's recommendation, before the stability steps (``status.recommendation.budget``).
    recommended: int | None = None
    #: What the stability steps did to the recommendation on the way ("stabilized to 384").
    notes: tuple[str, ...] = ()
    #: A step decided the budget to apply and wrote the final reason: the chain ends there.
    settled: bool = False

    @property
    def tokens(self) -> int:
        """``budget`` in whole tokens (exact once quantised)."""
        return int(self.budget)


class Step(Protocol):
    """One step of the law: returns ``proposal`` as it is when the step does not act."""

    def __call__(self, proposal: Proposal, context: Context, /) -> Proposal: ...


def run(steps: Iterable[Step], proposal: Proposal, context: Context) -> Proposal:
    """Each step in turn on the proposal, until one settles the budget to apply."""
    for step in steps:
        if proposal.settled:
            break
        proposal = step(proposal, context)
    return proposal


def quantise(value: float, budget: Budget) -> int:
    """Up to the next multiple of ``step``, then clamped to [min, max]."""
    stepped = math.ceil(value / budget.step - 1e-9) * budget.step
    return max(budget.min, min(budget.max, int(stepped)))


def fmt(value: float) -> str:
    """A number in a reason: at most two decimals, no trailing zeros ("1.25", "2", "0.7")."""
    return f"{value:.2f}".rstrip("0").rstrip(".")
