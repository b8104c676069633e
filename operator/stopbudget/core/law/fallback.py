"""Step 6, fallback: without usable metrics, hold the budget, then fall back after a while.

DESIGN lists it last because it is the exception, but it must act *instead of*
steps 3 and 4, before anything else sees their proposal: the load and the live EM
are exactly what is missing, and no data is not zero load (read as 0, a failed
query would raise the budget to the target). So :class:`MetricsOrFallback` wraps
steps 3 and 4 in the chain: with usable metrics it runs them, otherwise
:func:`fall_back` proposes instead. Its proposal then goes through the floor guard
and the stability steps like any other: a fallback to ``max`` is still quantised,
limited by ``maxStepUp`` and held by the cooldown. One good tick clears it
(``Context.failures`` is back to 0).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from stopbudget.api import FallbackBehavior
from stopbudget.core.law.decision import Rule
from stopbudget.core.law.step import Context, Proposal, Step, run


@dataclass(frozen=True)
class MetricsOrFallback:
    """Runs ``steps`` (3 and 4 read the metrics) on usable metrics, else :func:`fall_back`."""

    steps: tuple[Step, ...]

    def __call__(self, proposal: Proposal, context: Context, /) -> Proposal:
        if context.observation.ok:
            return run(self.steps, proposal, context)
        return fall_back(proposal, context)


def fall_back(proposal: Proposal, context: Context) -> Proposal:
    """Hold the budget (METRICS_WAIT) until ``failureThreshold`` failed ticks, then FALLBACK."""
    failures, threshold = context.failures, context.spec.control.fallback.failure_threshold
    errors = "; ".join(context.observation.failures)
    if failures < threshold:
        return replace(
            proposal,
            budget=float(_held(context)),
            rule=Rule.METRICS_WAIT,
            reason=f"metrics unavailable ({failures}/{threshold}: {errors}): holding",
        )
    behavior = context.spec.control.fallback.behavior
    return replace(
        proposal,
        budget=float(_fallback_budget(behavior, context)),
        rule=Rule.FALLBACK,
        reason=f"metrics unavailable for {failures} ticks ({errors}): fallback {behavior.value}",
        fallback=True,
    )


def _fallback_budget(behavior: FallbackBehavior, context: Context) -> int:
    if behavior == FallbackBehavior.MAX:
        return context.spec.budget.max
    if behavior == FallbackBehavior.TARGET:
        evidence = context.evidence
        return evidence.target if evidence is not None else context.spec.budget.start
    return _held(context)


def _held(context: Context) -> int:
    """The budget applied now, else ``budget.initial``."""
    current = context.current
    return current if current is not None else context.spec.budget.start
