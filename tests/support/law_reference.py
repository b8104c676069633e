"""The budget law as it was before it became a chain of steps (commit 62d1f86), frozen.

This is the pre-refactor ``decide`` kept ONLY as an oracle for the refactor of
``stopbudget.core.law`` into small steps: ``tests/unit/core/law/test_law_oracle.py`` checks with
hypothesis that the new :func:`stopbudget.core.law.decide` returns exactly what this
one returns (budget, rule, reason, state, flags) on generated specs, curves,
observations and states. It is not product code: nothing outside the tests imports
it, and it is not to be extended. When the law is meant to change, change the law,
then delete this module and its test (they guard a refactor, not a behaviour).
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime

from stopbudget.api import (
    RESTARTING_SINKS,
    Budget,
    FallbackBehavior,
    Priority,
    StopPolicySpec,
    format_duration,
)
from stopbudget.core.curve import Curve
from stopbudget.core.law import Decision, Observation, Rule, State


def _quantise(value: float, budget: Budget) -> int:
    """Up to the next multiple of ``step``, then clamped to [min, max]."""
    stepped = math.ceil(value / budget.step - 1e-9) * budget.step
    return max(budget.min, min(budget.max, int(stepped)))


def _fmt(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


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
    budget, quality, control = spec.budget, spec.quality, spec.control
    low, high = budget.min, budget.max
    current = state.budget
    cap = spec.cost.max_tokens_per_request
    cost_first = spec.cost.priority == Priority.COST

    # 1. Target and floor from the curve.
    unreachable = None
    b_target = b_floor = None
    if not curve.empty:
        b_target = curve.cheapest_meeting(quality.em_target, low, high)
        b_floor = curve.cheapest_meeting(quality.em_floor, low, high)
        if b_target is None:
            what = "emTarget" if b_floor is not None else "emTarget nor emFloor"
            unreachable = (
                f"no budget within [{low}, {high}] reaches {what} "
                f"(target {_fmt(quality.em_target)}, floor {_fmt(quality.em_floor)}) "
                f"on the {curve.source.value} curve: using max"
            )
            b_target = high
        if b_floor is None:
            b_floor = high

    # 2. Cost cap: it lowers the target; it breaks the floor only with priority cost.
    if cap is not None and b_target is not None and b_floor is not None:
        if cost_first:
            b_target, b_floor = min(b_target, cap), min(b_floor, cap)
        else:
            b_target = max(b_floor, min(b_target, cap))

    # 6 (first: it decides whether the metrics are usable). Fallback.
    failures = 0 if observation.ok else state.failures + 1
    fallback = failures >= control.fallback.failure_threshold
    start = current if current is not None else budget.start
    quality_raise = False
    request_audit = False

    if not observation.ok:
        errors = "; ".join(observation.failures)
        if fallback:
            behavior = control.fallback.behavior
            if behavior == FallbackBehavior.MAX:
                raw = float(high)
            elif behavior == FallbackBehavior.TARGET:
                raw = float(b_target if b_target is not None else budget.start)
            else:
                raw = float(start)
            rule = Rule.FALLBACK
            reason = (
                f"metrics unavailable for {failures} ticks ({errors}): fallback {behavior.value}"
            )
        else:
            raw = float(start)
            rule = Rule.METRICS_WAIT
            reason = (
                f"metrics unavailable ({failures}/{control.fallback.failure_threshold}: "
                f"{errors}): holding"
            )
    elif b_target is None or b_floor is None:
        raw = float(budget.start)
        rule = Rule.NO_EVIDENCE
        reason = "no prior and no audit yet: keeping budget.initial"
    else:
        # 3. Load. Pressure is measured at the budget applied now, so the budget that
        # brings it to 1 is (applied budget) / p: above 1 the budget goes down from
        # there (never up while overloaded), below 1 it goes up by the headroom only
        # (no sawtooth back to b_target while the fleet is near capacity).
        pressure = observation.pressure
        reference = min(current, b_target) if current is not None else b_target
        if pressure <= 1.0:
            headroom = reference / pressure if pressure > 0 else math.inf
            rule = Rule.TARGET
            if headroom >= b_target or current is None or current >= b_target:
                raw = float(b_target)
                reason = f"pressure {_fmt(pressure)} <= 1: EM-target budget {b_target}"
            else:
                raw = max(float(b_floor), headroom)
                reason = (
                    f"pressure {_fmt(pressure)} <= 1: headroom {reference}/{_fmt(pressure)} = "
                    f"{_fmt(headroom)} toward the EM-target budget {b_target}"
                )
        else:
            raw = max(float(b_floor), reference / pressure)
            rule = Rule.LOAD
            reason = (
                f"pressure {_fmt(pressure)} ({_top_signal(observation)}): "
                f"{reference}/{_fmt(pressure)} = {_fmt(reference / pressure)}, floor {b_floor}"
            )
        # 4. Quality guard: live EM below the floor, or a firing alert.
        em = observation.em
        if em is not None and em < quality.em_floor:
            guard = max(b_target, current or 0)
            if current is not None and guard <= current:
                guard = high
                why = "already at or above the target budget: max until an audit re-measures"
            else:
                why = f"EM-target budget {b_target}"
            raw, rule, quality_raise, request_audit = float(guard), Rule.QUALITY_GUARD, True, True
            reason = f"live EM {_fmt(em)} < floor {_fmt(quality.em_floor)}: raising to {why}"
        elif raise_for_alert and b_target > (current or 0):
            raw, rule, quality_raise = float(b_target), Rule.ALERT, True
            reason = f"alert firing: raising to the EM-target budget {b_target}"

    recommended = _quantise(raw, budget)

    # Never below the floor (unless the cost cap wins): going up for quality is not delayed.
    if b_floor is not None and (current is None or current < b_floor) and recommended < b_floor:
        recommended = _quantise(b_floor, budget)
    if b_floor is not None and current is not None and current < b_floor:
        quality_raise = True
        if recommended <= current:
            recommended = _quantise(b_floor, budget)
        if rule not in {Rule.QUALITY_GUARD, Rule.ALERT}:
            rule = Rule.FLOOR
            reason = f"budget {current} is below the EM-floor budget {b_floor}: raising"

    # 5. Stability, relative to what is applied now.
    window = control.downscale_stabilization
    history = (*((t, b) for t, b in state.history if now - t < window), (now, recommended))
    new_state = State(current, state.last_patch_time, failures, history)

    def result(value: int, rule_: Rule, why: str) -> Decision:
        patch_time = state.last_patch_time
        if value != current and budget.sink.type in RESTARTING_SINKS:
            patch_time = now
        return Decision(
            budget=value,
            recommended=recommended,
            target=b_target,
            floor=b_floor,
            rule=rule_,
            reason=why,
            state=replace(new_state, budget=value, last_patch_time=patch_time),
            previous=current,
            request_audit=request_audit,
            fallback=fallback,
            unreachable=unreachable,
        )

    if current is None:
        return result(recommended, rule, f"{reason}; applying {recommended}")
    if recommended == current:
        return result(current, rule, f"{reason}; keeping {current}")
    if quality_raise:
        return result(recommended, rule, f"{reason}; {current} -> {recommended}")

    def within_tolerance(value: int) -> Decision | None:
        # The EM-target budget itself is always reached: a last step smaller than the
        # tolerance would otherwise leave the budget just short of the target for good.
        if abs(value - current) > control.tolerance * current or value == b_target:
            return None
        return result(
            current,
            Rule.TOLERANCE,
            f"{reason}; {value} is within {_fmt(control.tolerance * 100)}% of "
            f"{current}: keeping {current}",
        )

    if (held := within_tolerance(recommended)) is not None:
        return held

    value = recommended
    notes = []
    if value < current:
        stabilized = _quantise(max(b for _, b in history), budget)
        if stabilized >= current:
            return result(
                current,
                Rule.STABILIZATION,
                f"{reason}; highest recommendation in the last "
                f"{format_duration(window)} is {stabilized}: keeping {current}",
            )
        if stabilized > value:
            notes.append(f"stabilized to {stabilized}")
            value = stabilized
        if control.max_step_down is not None and current - value > control.max_step_down:
            # Up to a multiple of step: never further down than allowed (maxStepDown >= step).
            value = _quantise(current - control.max_step_down, budget)
            notes.append(f"limited by maxStepDown {control.max_step_down}")
    elif control.max_step_up is not None and value - current > control.max_step_up:
        # Down to a multiple of step: never further up than allowed (maxStepUp >= step).
        stepped = (current + control.max_step_up) // budget.step * budget.step
        value = max(budget.min, min(budget.max, stepped))
        notes.append(f"limited by maxStepUp {control.max_step_up}")

    if (
        budget.sink.type in RESTARTING_SINKS
        and state.last_patch_time is not None
        and now - state.last_patch_time < control.cooldown
    ):
        waited = format_duration(now - state.last_patch_time)
        return result(
            current,
            Rule.COOLDOWN,
            f"{reason}; last patch {waited} ago, cooldown {format_duration(control.cooldown)}:"
            f" keeping {current}",
        )

    if value != recommended and (held := within_tolerance(value)) is not None:
        return held
    suffix = f" ({', '.join(notes)})" if notes else ""
    final_rule = Rule.STEP_LIMIT if any("limited" in n for n in notes) else rule
    return result(value, final_rule, f"{reason}; {current} -> {value}{suffix}")


def _top_signal(observation: Observation) -> str:
    readings = [s for s in observation.signals if s.pressure is not None]
    top = max(readings, key=lambda s: s.pressure or 0.0)
    assert top.value is not None
    return f"{top.name} {_fmt(top.value)}/{_fmt(top.target)}"
