"""Step 3, load: the budget that brings the pressure ``p`` to 1, between the floor and the target.

Pressure is measured at the budget applied now, so the budget that brings it to 1
is ``r / p`` with ``r = min(applied budget, b_target)``: above 1 the budget goes
down from there, never below ``b_floor`` (and never up while overloaded); at or
below 1 it goes up by the headroom only, ``min(b_target, r / p)``, with no
sawtooth back to ``b_target`` while the fleet is near capacity. DESIGN writes
``b_target / p``: the same while ``b_target`` is applied, but from a lower budget
it would *raise* the budget while overloaded (both seen in the simulator on the
Azure traces).
"""

from __future__ import annotations

import math
from dataclasses import replace

from stopbudget.core.law.decision import Rule
from stopbudget.core.law.observation import Observation
from stopbudget.core.law.step import Context, Evidence, Proposal, fmt


def follow_load(proposal: Proposal, context: Context) -> Proposal:
    """p > 1: down to ``max(b_floor, r / p)`` (LOAD); p <= 1: up by the headroom (TARGET)."""
    evidence = context.evidence
    if evidence is None:
        return proposal
    pressure = context.observation.pressure
    current = context.current
    reference = min(current, evidence.target) if current is not None else evidence.target
    if pressure <= 1.0:
        return _use_headroom(proposal, evidence, reference, pressure, current)
    return _shed_load(proposal, evidence, reference, pressure, context.observation)


def _shed_load(
    proposal: Proposal, evidence: Evidence, reference: int, pressure: float, obs: Observation
) -> Proposal:
    budget = reference / pressure
    return replace(
        proposal,
        budget=max(float(evidence.floor), budget),
        rule=Rule.LOAD,
        reason=(
            f"pressure {fmt(pressure)} ({_top_signal(obs)}): "
            f"{reference}/{fmt(pressure)} = {fmt(budget)}, floor {evidence.floor}"
        ),
    )


def _use_headroom(
    proposal: Proposal, evidence: Evidence, reference: int, pressure: float, current: int | None
) -> Proposal:
    target = evidence.target
    headroom = reference / pressure if pressure > 0 else math.inf
    if headroom >= target or current is None or current >= target:
        reason = f"pressure {fmt(pressure)} <= 1: EM-target budget {target}"
        return replace(proposal, budget=float(target), rule=Rule.TARGET, reason=reason)
    return replace(
        proposal,
        budget=max(float(evidence.floor), headroom),
        rule=Rule.TARGET,
        reason=(
            f"pressure {fmt(pressure)} <= 1: headroom {reference}/{fmt(pressure)} = "
            f"{fmt(headroom)} toward the EM-target budget {target}"
        ),
    )


def _top_signal(observation: Observation) -> str:
    """The signal with the highest pressure, as "name value/target"."""
    readings = [s for s in observation.signals if s.pressure is not None]
    top = max(readings, key=lambda s: s.pressure or 0.0)
    assert top.value is not None
    return f"{top.name} {fmt(top.value)}/{fmt(top.target)}"
