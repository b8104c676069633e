"""What the law reads from the metrics in one tick (the Prometheus client fills it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


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
    #: Requests arriving per second (the preset's arrival-rate query); None: no data.
    arrival_rate: float | None = None
    #: Tokens generated per second by the fleet (the preset's throughput query); None: no data.
    throughput: float | None = None
    #: Mean tokens generated per finished request (throughput / completion rate); None: no data.
    served_tokens: float | None = None
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
