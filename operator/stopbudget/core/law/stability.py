"""Step 5, stability: the recommendation on the step grid, then how far to move toward it now.

:func:`quantise_recommendation` makes the law's recommendation (whole tokens on
the ``step`` grid); the floor guard then checks it. The other steps compare it with
the budget applied now, in this order, and the first that decides what to apply
settles the proposal (ends the chain):

* nothing applied yet, or no change, or a raise for quality: apply at once;
* a change within ``tolerance`` is ignored, except the one landing on ``b_target``;
* going down, the highest recommendation of the ``downscaleStabilization`` window
  holds the budget or bounds the cut;
* one move goes at most ``maxStepDown`` down or ``maxStepUp`` up;
* a sink that restarts pods is not patched within ``cooldown`` of the last patch;
* a move cut short by the two above may now be within the tolerance: ignored;
* otherwise the budget moves (:func:`move`).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from stopbudget.api import RESTARTING_SINKS, format_duration
from stopbudget.core.law.decision import Rule
from stopbudget.core.law.step import Context, Proposal, fmt, quantise


def quantise_recommendation(proposal: Proposal, context: Context) -> Proposal:
    """Up to the next multiple of ``step``, clamped to [min, max]: the law's recommendation."""
    recommended = quantise(proposal.budget, context.spec.budget)
    return replace(proposal, budget=recommended, recommended=recommended)


def apply_first(proposal: Proposal, context: Context) -> Proposal:
    """Nothing applied yet (first tick, sink absent): apply the recommendation as it is."""
    if context.current is not None:
        return proposal
    return replace(proposal, reason=f"{proposal.reason}; applying {proposal.tokens}", settled=True)


def keep_unchanged(proposal: Proposal, context: Context) -> Proposal:
    """The recommendation is what is applied: keep it."""
    if proposal.tokens != context.current:
        return proposal
    return replace(proposal, reason=f"{proposal.reason}; keeping {context.current}", settled=True)


def raise_at_once(proposal: Proposal, context: Context) -> Proposal:
    """Going up for quality is never delayed: no tolerance, window, step limit or cooldown."""
    if not proposal.raise_for_quality:
        return proposal
    reason = f"{proposal.reason}; {context.current} -> {proposal.tokens}"
    return replace(proposal, reason=reason, settled=True)


def ignore_within_tolerance(proposal: Proposal, context: Context) -> Proposal:
    """A move within ``tolerance`` of the applied budget is ignored (TOLERANCE).

    The EM-target budget itself is always reached: a last step smaller than the
    tolerance would otherwise leave the budget just short of the target for good.
    """
    current, tolerance, value = context.current, context.spec.control.tolerance, proposal.tokens
    target = context.evidence.target if context.evidence is not None else None
    if current is None or abs(value - current) > tolerance * current or value == target:
        return proposal
    return replace(
        proposal,
        budget=current,
        rule=Rule.TOLERANCE,
        reason=(
            f"{proposal.reason}; {value} is within {fmt(tolerance * 100)}% of "
            f"{current}: keeping {current}"
        ),
        settled=True,
    )


def stabilize_downscale(proposal: Proposal, context: Context) -> Proposal:
    """Down only to the highest recommendation of the window; none lower: hold (STABILIZATION)."""
    current, recommended = context.current, proposal.recommended
    if current is None or recommended is None or proposal.tokens >= current:
        return proposal
    highest = max(b for _, b in recent_recommendations(context, recommended))
    stabilized = quantise(highest, context.spec.budget)
    if stabilized >= current:
        window = format_duration(context.spec.control.downscale_stabilization)
        return replace(
            proposal,
            budget=current,
            rule=Rule.STABILIZATION,
            reason=(
                f"{proposal.reason}; highest recommendation in the last {window} is "
                f"{stabilized}: keeping {current}"
            ),
            settled=True,
        )
    if stabilized > proposal.tokens:
        notes = (*proposal.notes, f"stabilized to {stabilized}")
        return replace(proposal, budget=stabilized, notes=notes)
    return proposal


def limit_step(proposal: Proposal, context: Context) -> Proposal:
    """One move goes at most ``maxStepDown`` down or ``maxStepUp`` up, on the grid (STEP_LIMIT).

    One step for both limits: a move goes one way, the recommendation's (the
    stabilization bounds a cut, never turns it into a raise).
    """
    current, value, control = context.current, proposal.tokens, context.spec.control
    if current is None:
        return proposal
    if value < current:
        if control.max_step_down is None or current - value <= control.max_step_down:
            return proposal
        # Up to a multiple of step: never further down than allowed (maxStepDown >= step).
        limited = quantise(current - control.max_step_down, context.spec.budget)
        note = f"limited by maxStepDown {control.max_step_down}"
    else:
        if control.max_step_up is None or value - current <= control.max_step_up:
            return proposal
        # Down to a multiple of step: never further up than allowed (maxStepUp >= step).
        budget = context.spec.budget
        stepped = (current + control.max_step_up) // budget.step * budget.step
        limited = max(budget.min, min(budget.max, stepped))
        note = f"limited by maxStepUp {control.max_step_up}"
    return replace(proposal, budget=limited, rule=Rule.STEP_LIMIT, notes=(*proposal.notes, note))


def wait_for_cooldown(proposal: Proposal, context: Context) -> Proposal:
    """No patch of a sink that restarts pods within ``cooldown`` of the last one (COOLDOWN)."""
    current, last = context.current, context.state.last_patch_time
    cooldown = context.spec.control.cooldown
    if context.spec.budget.sink.type not in RESTARTING_SINKS or current is None or last is None:
        return proposal
    if context.now - last >= cooldown:
        return proposal
    return replace(
        proposal,
        budget=current,
        rule=Rule.COOLDOWN,
        reason=(
            f"{proposal.reason}; last patch {format_duration(context.now - last)} ago, "
            f"cooldown {format_duration(cooldown)}: keeping {current}"
        ),
        settled=True,
    )


def move(proposal: Proposal, context: Context) -> Proposal:
    """Move the applied budget to the proposal, saying what stability did on the way."""
    notes = f" ({', '.join(proposal.notes)})" if proposal.notes else ""
    reason = f"{proposal.reason}; {context.current} -> {proposal.tokens}{notes}"
    return replace(proposal, reason=reason, settled=True)


def recent_recommendations(context: Context, recommended: int) -> tuple[tuple[datetime, int], ...]:
    """The recommendations within the ``downscaleStabilization`` window, this tick's last."""
    window = context.spec.control.downscale_stabilization
    recent = ((t, b) for t, b in context.state.history if context.now - t < window)
    return (*recent, (context.now, recommended))
