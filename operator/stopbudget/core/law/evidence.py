"""Steps 1 and 2, the estimator: the target and floor the evidence supports, and their proposal.

The evidence is the EM-vs-budget curve in use (the pooled audits, else
``quality.prior``). :func:`target_and_floor` and :func:`cost_cap` estimate
``b_target`` and ``b_floor`` once per tick, before any proposal: every later step
reads them from the :class:`~stopbudget.core.law.step.Context`. :func:`propose`
makes the first proposal from them, which the steps after it refine.
"""

from __future__ import annotations

from dataclasses import replace

from stopbudget.api import Priority, StopPolicySpec
from stopbudget.core import paired
from stopbudget.core.curve import Curve
from stopbudget.core.law.decision import Rule
from stopbudget.core.law.step import Context, Evidence, Proposal, fmt


def target_and_floor(spec: StopPolicySpec, curve: Curve) -> Evidence | None:
    """Step 1: the cheapest ladder budgets whose EM lower bound meets emTarget / emFloor.

    When none within [min, max] does: on a curve with per-question outcomes, the
    cheapest budget not significantly worse than the best-measured one (McNemar's
    exact test, :mod:`stopbudget.core.paired`), never below the floor; otherwise
    ``max``. For the target a one-line ``unreachable`` says which and why. None
    without a curve (no prior, no audit).
    """
    if curve.empty:
        return None
    low, high, quality = spec.budget.min, spec.budget.max, spec.quality
    target = curve.cheapest_meeting(quality.em_target, low, high)
    floor = curve.cheapest_meeting(quality.em_floor, low, high)
    if target is not None and floor is not None:
        return Evidence(target=target, floor=floor)
    choice = paired.cheapest_not_worse(curve, low, high)
    flat = high if choice is None else choice.budget
    if target is not None:  # the floor alone is unreachable: never above the target
        return Evidence(target=target, floor=min(flat, target))
    what = "emTarget" if floor is not None else "emTarget nor emFloor"
    floor = flat if floor is None else floor
    head = (
        f"no budget within [{low}, {high}] reaches {what} "
        f"(target {fmt(quality.em_target)}, floor {fmt(quality.em_floor)}) "
        f"on the {curve.source.value} curve"
    )
    if choice is None:
        return Evidence(target=high, floor=floor, unreachable=f"{head}: using max")
    target = max(floor, choice.budget)
    return Evidence(
        target=target, floor=floor, unreachable=f"{head}; {choice.describe()}: using {target}"
    )


def cost_cap(evidence: Evidence | None, spec: StopPolicySpec) -> Evidence | None:
    """Step 2: ``maxTokensPerRequest`` lowers the target; the floor only with priority cost."""
    cap = spec.cost.max_tokens_per_request
    if evidence is None or cap is None:
        return evidence
    if spec.cost.priority == Priority.COST:
        return replace(evidence, target=min(evidence.target, cap), floor=min(evidence.floor, cap))
    return replace(evidence, target=max(evidence.floor, min(evidence.target, cap)))


def propose(context: Context) -> Proposal:
    """The first proposal: the EM-target budget (TARGET); without evidence, ``budget.initial``.

    With evidence, step 3 (or, without usable metrics, step 6) always restates it
    with the pressure in its reason; ``budget.initial`` stands (NO_EVIDENCE) unless
    the metrics fail.
    """
    if context.evidence is None:
        return Proposal(
            budget=float(context.spec.budget.start),
            rule=Rule.NO_EVIDENCE,
            reason="no prior and no audit yet: keeping budget.initial",
        )
    target = context.evidence.target
    return Proposal(budget=float(target), rule=Rule.TARGET, reason=f"EM-target budget {target}")
