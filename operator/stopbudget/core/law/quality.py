"""Step 4, the quality guard, and the floor guard: raises for quality, which nothing delays.

:func:`guard_live_em` and :func:`raise_on_alert` act on the load's proposal (step 4
of DESIGN). :func:`guard_floor` acts on the recommendation once it is on the step
grid, because the floor is compared with what would be applied. Each marks its
raise ``raise_for_quality``: the stability steps then apply it at once.
"""

from __future__ import annotations

from dataclasses import replace

from stopbudget.core.law.decision import Rule
from stopbudget.core.law.step import Context, Proposal, fmt, quantise


def guard_live_em(proposal: Proposal, context: Context) -> Proposal:
    """Live EM below emFloor: up to ``b_target`` (to ``max`` when already there), and audit."""
    evidence, em = context.evidence, context.observation.em
    em_floor = context.spec.quality.em_floor
    if evidence is None or em is None or not em < em_floor:
        return proposal
    current = context.current
    budget = max(evidence.target, current or 0)
    if current is not None and budget <= current:
        budget = context.spec.budget.max
        to = "already at or above the target budget: max until an audit re-measures"
    else:
        to = f"EM-target budget {evidence.target}"
    return replace(
        proposal,
        budget=float(budget),
        rule=Rule.QUALITY_GUARD,
        reason=f"live EM {fmt(em)} < floor {fmt(em_floor)}: raising to {to}",
        raise_for_quality=True,
        request_audit=True,
    )


def raise_on_alert(proposal: Proposal, context: Context) -> Proposal:
    """A firing alert (``raiseBudgetOnFiring``): up to ``b_target`` when below it (ALERT).

    Unless the live EM guard already raised: its raise and its audit request stand.
    """
    evidence = context.evidence
    if evidence is None or not context.raise_for_alert or proposal.raise_for_quality:
        return proposal
    if evidence.target <= (context.current or 0):
        return proposal
    return replace(
        proposal,
        budget=float(evidence.target),
        rule=Rule.ALERT,
        reason=f"alert firing: raising to the EM-target budget {evidence.target}",
        raise_for_quality=True,
    )


def guard_floor(proposal: Proposal, context: Context) -> Proposal:
    """Never recommend below ``b_floor``; an applied budget below it is raised at once (FLOOR).

    A raise for quality already proposed keeps its rule and reason. On the first
    tick (nothing applied) the recommendation is lifted onto the floor and the rule
    stays that of the step that proposed it.
    """
    evidence, current = context.evidence, context.current
    if evidence is None or (current is not None and current >= evidence.floor):
        return proposal
    floor = evidence.floor
    if proposal.tokens < floor:
        lifted = quantise(floor, context.spec.budget)
        proposal = replace(proposal, budget=lifted, recommended=lifted)
    if current is None or proposal.raise_for_quality:
        return proposal
    return replace(
        proposal,
        rule=Rule.FLOOR,
        reason=f"budget {current} is below the EM-floor budget {floor}: raising",
        raise_for_quality=True,
    )
