"""The budget law (DESIGN section 4). PURE: no I/O, no clock; ``now`` comes in.

Per tick, :func:`decide` takes the policy's spec, the EM-vs-budget curve in use,
the metrics read this tick and the state remembered from the previous ticks,
and returns a :class:`Decision`: the budget to apply, the law's raw
recommendation, the target and floor budgets, the rule that decided and a
one-line reason for status, Events and logs.

The steps, in order (VPA-style: an estimator, then post-processors):

1. ``b_target`` / ``b_floor``: cheapest ladder budgets whose EM lower bound meets
   ``emTarget`` / ``emFloor`` (none -> ``max``, reported as unreachable).
2. Cost cap: ``maxTokensPerRequest`` lowers the target; it breaks the floor only
   with ``priority: cost``.
3. Load: with ``r = min(applied budget, b_target)`` (the budget the pressure was
   measured at), ``p`` > 1 -> ``max(b_floor, r / p)``; ``p`` <= 1 -> up toward
   ``b_target`` by the headroom, ``min(b_target, r / p)``.  DESIGN writes
   ``b_target / p``; that is the same while the applied budget is ``b_target``,
   but from a lower budget it would *raise* the budget while overloaded, and
   going straight back to ``b_target`` at ``p`` <= 1 saw-tooths around capacity
   (both seen in the simulator on the Azure traces).
4. Quality guard: live EM below the floor -> up (to ``b_target``, or to ``max``
   when already there) at once, and an audit is requested. A firing alert with
   ``raiseBudgetOnFiring`` raises to ``b_target`` at once too.
5. Stability: quantise up to ``step``; ignore changes within ``tolerance``
   (except the last step onto ``b_target``); go
   down only to the highest recommendation of the ``downscaleStabilization``
   window, at most ``maxStepDown`` at a time; up at most ``maxStepUp`` at a
   time; no patch of a pod-restarting sink within ``cooldown``. A raise for
   quality (guard, alert, or a budget below the floor) skips all of these.
6. Fallback: metrics failing ``failureThreshold`` ticks in a row -> ``hold``,
   ``target`` or ``max``; before that the budget is held. One good tick clears it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

from stopbudget.api import (
    RESTARTING_SINKS,
    Budget,
    FallbackBehavior,
    Priority,
    StopPolicySpec,
    format_duration,
)
from stopbudget.core.curve import Curve


@dataclass(frozen=True)
class SignalReading:
    """One load signal as read from Prometheus.

    ``value`` is None when there was no usable number (empty result, NaN, Inf)
    or the query failed; ``error`` then says why in one line.
    """

    name: str
    target: float
    value: float | None
    error: str | None = None

    @property
    def pressure(self) -> float | None:
        return None if self.value is None else max(self.value, 0.0) / self.target


@dataclass(frozen=True)
class Observation:
    """Everything the law reads from the metrics in one tick."""

    signals: tuple[SignalReading, ...] = ()
    #: Live EM from ``quality.query``; None when not configured or no data.
    em: float | None = None
    #: Why the EM query gave nothing, when it is configured and failed.
    em_error: str | None = None
    #: Share of requests stopped by the budget (preset query), informational.
    truncation: float | None = None
    #: Extra informational values, e.g. for status.
    extra: Mapping[str, float] = field(default_factory=dict)

    @property
    def failures(self) -> tuple[str, ...]:
        """One line per signal (or EM query) that gave no usable number."""
        out = [f"{s.name}: {s.error or 'no data'}" for s in self.signals if s.value is None]
        if self.em_error:
            out.append(f"quality.query: {self.em_error}")
        return tuple(out)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def pressure(self) -> float:
        """max(value / target) over the signals, 0 without signals (as HPA takes the max)."""
        values = [p for s in self.signals if (p := s.pressure) is not None]
        return max(values, default=0.0)


# ============================================================================ the law


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
