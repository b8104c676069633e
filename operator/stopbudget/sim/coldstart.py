"""Cold start in the simulator (``stopbudget simulate --cold-start``). PURE: no I/O, no clock.

The worst moment to create a policy without evidence: ``quality.prior`` is dropped and
the policy is created at the trace's *busiest minute*, the minute (counted from the
first arrival) with the most arriving requests (the earliest on a tie; on the bundled
Azure traces it is also the minute with the most arriving tokens), and runs for an hour
from there.  A trace that ends before the hour is replayed from its beginning, shifted
by its span in whole minutes, so the hour keeps the trace's own traffic.

The figure it measures is the *time to first evidence*: simulated seconds from the
policy's creation to the first decision of the law made with a curve (before it, the
law holds ``budget.initial``); :meth:`stopbudget.sim.strategies.StopBudget.first_evidence`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta

from stopbudget.api import StopPolicySpec
from stopbudget.sim.inputs import Trace

MINUTE = 60.0
#: How long a cold-start run lasts from the policy's creation.
HOUR = 3600.0


@dataclass(frozen=True)
class ColdStart:
    """Where a cold-start run begins, and the trace it replays."""

    #: The busiest minute, counted from the trace's first arrival (0-based).
    minute: int
    #: Requests arriving in that minute.
    requests: int
    #: The hour replayed from the start of that minute (``start`` is the policy's creation).
    trace: Trace
    #: Whether the hour runs past the trace's end (the trace repeats).
    wrapped: bool


def busiest_minute(trace: Trace) -> tuple[int, int]:
    """(minute, requests): the minute with the most arriving requests, the earliest on a tie."""
    counts = Counter(int(t // MINUTE) for t in trace.arrivals)
    top = max(counts.values())
    return min(m for m, c in counts.items() if c == top), top


def from_minute(trace: Trace, minute: int, length: float = HOUR) -> tuple[Trace, bool]:
    """The requests of ``[minute, minute + length)``, the trace repeated past its end.

    The repetition's period is the trace's span rounded up to whole minutes (at least
    one); the result's ``start`` is the start of ``minute`` and its arrivals count from it.
    """
    begin = minute * MINUTE
    period = max(math.ceil(trace.duration / MINUTE), 1) * MINUTE
    picked: list[tuple[float, int, int]] = []
    shift = 0.0
    while shift < begin + length:  # period >= one minute: ends
        for t, ctx, gen in zip(trace.arrivals, trace.context, trace.generated, strict=True):
            at = t + shift
            if begin <= at < begin + length:
                picked.append((at - begin, ctx, gen))
        shift += period
    wrapped = begin + length > period
    return (
        Trace(
            source=f"{trace.source} (minute {minute}, {length / MINUTE:g} min)",
            start=trace.start + timedelta(seconds=begin),
            arrivals=tuple(p[0] for p in picked),
            context=tuple(p[1] for p in picked),
            generated=tuple(p[2] for p in picked),
        ),
        wrapped,
    )


def at_busiest_minute(trace: Trace, length: float = HOUR) -> ColdStart:
    """The cold-start run of ``trace``: ``length`` seconds from its busiest minute."""
    minute, requests = busiest_minute(trace)
    hour, wrapped = from_minute(trace, minute, length)
    return ColdStart(minute, requests, hour, wrapped)


def without_prior(spec: StopPolicySpec) -> StopPolicySpec:
    """``spec`` with ``quality.prior`` dropped: the law has no evidence until an audit."""
    return spec.model_copy(update={"quality": spec.quality.model_copy(update={"prior": []})})
