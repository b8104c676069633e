"""The gate's own Prometheus series, served on ``--metrics-listen`` at ``/metrics``.

Labels stay bounded whatever clients send: ``class`` is a class that has a
budget file, else ``default``; ``route`` is a capped route's name or ``other``;
``reason`` is one of :data:`stopbudget.gate.usage.REASONS`.

* ``stopbudget_gate_requests_total{class,route,code}``: requests answered (code
  ``502`` when the upstream failed, ``499`` when the client went away first);
* ``stopbudget_gate_requests_capped_total{class,route,kind}``: requests whose
  output or thinking field the gate lowered or set;
* ``stopbudget_gate_completion_tokens_total{class}``: tokens generated, from the
  responses' ``usage`` when present;
* ``stopbudget_gate_finish_reasons_total{class,reason}``: per choice; ``length``
  over the sum is the truncation ratio;
* ``stopbudget_gate_budget_tokens{class,kind}``: the budget of each file in force;
* ``stopbudget_gate_budget_file_errors_total{class,kind}``: files found holding no
  budget (each problem counted once, as it is logged);
* ``stopbudget_gate_upstream_latency_seconds{route}``: from sending the request
  upstream to the response's last byte (llama.cpp has no latency histogram of its
  own: this one can feed a ``latencyP95`` signal query);
* ``stopbudget_gate_upstream_errors_total{reason}``: upstream failures
  (``unreachable``, ``timeout``, ``broken``) answered with 502 or cut mid-stream;
* ``stopbudget_gate_requests_in_flight``: requests being served now.
"""

from __future__ import annotations

import contextlib
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from stopbudget.gate.caps import Kind

__all__ = ["GateMetrics"]

# No `_created` samples, as the operator (process-wide in prometheus_client).
disable_created_metrics()  # type: ignore[no-untyped-call]

#: Upstream latency buckets (s): a cached 1-token answer to a long reasoning trace.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
)  # fmt: skip


class GateMetrics:
    """All series of one gate process, in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "stopbudget_gate_requests",
            "Requests answered by the gate, by class, route and HTTP status.",
            ("class", "route", "code"),
            registry=r,
        )
        self.capped = Counter(
            "stopbudget_gate_requests_capped",
            "Requests whose token limit the gate lowered or set, by kind of cap.",
            ("class", "route", "kind"),
            registry=r,
        )
        self.tokens = Counter(
            "stopbudget_gate_completion_tokens",
            "Tokens generated, from the responses' usage.",
            ("class",),
            registry=r,
        )
        self.finish = Counter(
            "stopbudget_gate_finish_reasons",
            "Finished choices by finish reason (length: cut by the token limit).",
            ("class", "reason"),
            registry=r,
        )
        self.budget = Gauge(
            "stopbudget_gate_budget_tokens",
            "Budget in force, by class and kind (from the budget files).",
            ("class", "kind"),
            registry=r,
        )
        self.budget_errors = Counter(
            "stopbudget_gate_budget_file_errors",
            "Budget files found holding no valid budget (the last good value is kept).",
            ("class", "kind"),
            registry=r,
        )
        self.latency = Histogram(
            "stopbudget_gate_upstream_latency_seconds",
            "From sending a request upstream to the last byte of its response.",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "stopbudget_gate_upstream_errors",
            "Upstream failures: unreachable, timeout, broken.",
            ("reason",),
            registry=r,
        )
        self.in_flight = Gauge(
            "stopbudget_gate_requests_in_flight", "Requests being served now.", registry=r
        )
        self._requests: dict[tuple[str, str, int], Any] = {}

    def answered(self, cls: str, route: str, code: int) -> None:
        """Count one request answered (children cached: this runs for every request)."""
        key = (cls, route, code)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(cls, route, str(code))
        child.inc()

    def set_budget(self, cls: str, kind: Kind, value: int | None) -> None:
        """Publish (or, with None, withdraw) the budget of one file."""
        if value is None:
            with contextlib.suppress(KeyError):
                self.budget.remove(cls, kind.value)
            return
        self.budget.labels(cls, kind.value).set(value)
