"""The law as one chain: the steps in DESIGN section 4's order, and :func:`decide`, its runner."""

from __future__ import annotations

from datetime import datetime

from stopbudget.api import RESTARTING_SINKS, StopPolicySpec
from stopbudget.core.curve import Curve
from stopbudget.core.law.decision import Decision, State
from stopbudget.core.law.evidence import cost_cap, propose, target_and_floor
from stopbudget.core.law.fallback import MetricsOrFallback
from stopbudget.core.law.load import follow_load
from stopbudget.core.law.observation import Observation
from stopbudget.core.law.quality import guard_floor, guard_live_em, raise_on_alert
from stopbudget.core.law.queueing import predict_load
from stopbudget.core.law.stability import (
    apply_first,
    ignore_within_tolerance,
    keep_unchanged,
    limit_step,
    move,
    quantise_recommendation,
    raise_at_once,
    recent_recommendations,
    stabilize_downscale,
    wait_for_cooldown,
)
from stopbudget.core.law.step import Context, Proposal, Step, run

#: The steps after the first proposal (steps 1 and 2 make it), in order.
STEPS: tuple[Step, ...] = (
    # 3 and 4 read the metrics; without usable ones, 6 proposes instead. predict_load
    # replaces follow_load's proposal with spec.control.model: queueing.
    MetricsOrFallback((follow_load, predict_load, guard_live_em, raise_on_alert)),
    # 5: the recommendation, on the step grid; never below the floor.
    quantise_recommendation,
    guard_floor,
    # 5: how far to move toward it now; the first step that decides ends the chain.
    apply_first,
    keep_unchanged,
    raise_at_once,
    ignore_within_tolerance,
    stabilize_downscale,
    limit_step,
    wait_for_cooldown,
    ignore_within_tolerance,  # again: a move cut short may now be within the tolerance
    move,
)


def decide(
    spec: StopPolicySpec,
    curve: Curve,
    observation: Observation,
    state: State,
    now: datetime,
    *,
    raise_for_alert: bool = False,
) -> Decision:
    """One tick of the budget law (DESIGN section 4). Same input, same output.

    ``raise_for_alert``: a firing alert asks to go to the EM-target budget at once.
    """
    evidence = cost_cap(target_and_floor(spec, curve), spec)
    context = Context(spec, curve, observation, state, now, raise_for_alert, evidence)
    return _decision(run(STEPS, propose(context), context), context)


def _decision(proposal: Proposal, context: Context) -> Decision:
    """The settled proposal as a :class:`Decision`, with the state to remember."""
    recommended, budget, current = proposal.recommended, proposal.tokens, context.current
    if recommended is None:
        raise ValueError("the chain made no recommendation: quantise_recommendation is missing")
    last_patch_time = context.state.last_patch_time
    if budget != current and context.spec.budget.sink.type in RESTARTING_SINKS:
        last_patch_time = context.now
    evidence = context.evidence
    return Decision(
        budget=budget,
        recommended=recommended,
        target=evidence.target if evidence is not None else None,
        floor=evidence.floor if evidence is not None else None,
        rule=proposal.rule,
        reason=proposal.reason,
        state=State(
            budget, last_patch_time, context.failures, recent_recommendations(context, recommended)
        ),
        previous=current,
        request_audit=proposal.request_audit,
        fallback=proposal.fallback,
        unreachable=evidence.unreachable if evidence is not None else None,
    )
