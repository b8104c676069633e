"""Cold start in the simulator (``stopbudget simulate --cold-start``). PURE: no I/O, no clock.

The worst moment to create a policy without evidence: ``quality.prior`` is dropped and
the policy is created at the trace's *busiest minute*, the minute (counted from the
first arrival) with the most arriving requests (the earliest on a tie; on the bundled
Azure traces it is also the minute with the most arriving tokens), and runs for an hour
from there.  A trace that ends before the hour is replayed from its beginning, shifted
by its span in whole minutes, so the hour keeps the trace's own traffic.

The fleet is as loaded at the policy's creation as it was in the trace: the run starts
:data:`WARMUP` earlier, and before the creation every strategy serves
``budget.initial`` (the world before the policy; the law is not called), so the
queue the busiest minute meets is there.  Every figure is taken over the hour after the
creation (:func:`after`).

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
from stopbudget.sim.model import Workload

MINUTE = 60.0
#: How long a cold-start run lasts from the policy's creation.
HOUR = 3600.0
#: Trace played before the creation, at ``budget.initial``, to load the fleet as it was.
WARMUP = 600.0


@dataclass(frozen=True)
class ColdStart:
    """Where a cold-start run begins, and the trace it replays."""

    #: The busiest minute, counted from the trace's first arrival (0-based).
    minute: int
    #: Requests arriving in that minute.
    requests: int
    #: The warm-up and the hour from the start of that minute (``start``: the warm-up's).
    trace: Trace
    #: Whether the run goes past the trace's end (the trace repeats).
    wrapped: bool
    #: Trace seconds before the creation (the warm-up).
    warmup: float = 0.0


def busiest_minute(trace: Trace) -> tuple[int, int]:
    """(minute, requests): the minute with the most arriving requests, the earliest on a tie."""
    counts = Counter(int(t // MINUTE) for t in trace.arrivals)
    top = max(counts.values())
    return min(m for m, c in counts.items() if c == top), top


def from_minute(trace: Trace, minute: int, length: float = HOUR) -> tuple[Trace, bool]:
    """The requests of ``[minute, minute + length)``, the trace repeated past its end.

    The repetition's period is the whole minutes that hold every arrival (an arrival
    at exactly a minute's start opens that minute); the result's ``start`` is the start
    of ``minute`` and its arrivals count from it.
    """
    return window(trace, minute * MINUTE, length, f"minute {minute}")


def window(trace: Trace, begin: float, length: float, name: str) -> tuple[Trace, bool]:
    """The requests of ``[begin, begin + length)`` (seconds; ``begin`` may be negative:
    the repetition before the trace), the trace repeated with :func:`from_minute`'s period."""
    period = (math.floor(trace.duration / MINUTE) + 1) * MINUTE
    origin, wraps_before = begin, begin < 0
    begin %= period
    picked: list[tuple[float, int, int]] = []
    shift = 0.0
    while shift < begin + length:  # period >= one minute: ends
        for t, ctx, gen in zip(trace.arrivals, trace.context, trace.generated, strict=True):
            at = t + shift
            if begin <= at < begin + length:
                picked.append((at - begin, ctx, gen))
        shift += period
    wrapped = wraps_before or begin + length > period
    return (
        Trace(
            source=f"{trace.source} ({name}, {length / MINUTE:g} min)",
            start=trace.start + timedelta(seconds=origin),
            arrivals=tuple(p[0] for p in picked),
            context=tuple(p[1] for p in picked),
            generated=tuple(p[2] for p in picked),
        ),
        wrapped,
    )


def at_busiest_minute(trace: Trace, length: float = HOUR, warmup: float = WARMUP) -> ColdStart:
    """The cold-start run of ``trace``: ``warmup`` then ``length`` seconds from its busiest
    minute."""
    minute, requests = busiest_minute(trace)
    run, wrapped = window(trace, minute * MINUTE - warmup, warmup + length, f"minute {minute}")
    return ColdStart(minute, requests, run, wrapped, warmup)


def after(workload: Workload, first: int) -> Workload:
    """The part of ``workload`` from interval ``first`` on, its times counted from there."""
    if first == 0:
        return workload
    lo = workload.bounds(first)[0]
    shift = first * workload.interval
    return Workload(
        arrivals=tuple(t - shift for t in workload.arrivals[lo:]),
        context=workload.context[lo:],
        answer=workload.answer[lo:],
        question=workload.question[lo:],
        interval=workload.interval,
        intervals=workload.intervals - first,
    )


def without_prior(spec: StopPolicySpec) -> StopPolicySpec:
    """``spec`` with ``quality.prior`` dropped: the law has no evidence until an audit."""
    return spec.model_copy(update={"quality": spec.quality.model_copy(update={"prior": []})})
