"""The operator's own Prometheus series, served on ``/metrics``.

Names follow the Prometheus conventions: the ``stopbudget_`` prefix, units in
the name (``_tokens``, ``_seconds``, ``_ratio``), ``_total`` for counters.
Every per-policy series carries the labels ``namespace`` and ``stoppolicy``,
the same labels alert rules put on their alerts so that Alertmanager can route
an alert back to the policy's audit (see ``core/audits/alerts.py``).

The chart's alert rules and dashboard may only use names listed here (or the
presets' engine series); a test checks that against :data:`NAMES`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

POLICY = ("namespace", "stoppolicy")

# No `_created` samples: a third of the page at 1,000 policies, and no dashboard or rule
# uses them (this is process-wide in prometheus_client, which suits the operator).
disable_created_metrics()  # type: ignore[no-untyped-call]


class OperatorMetrics:
    """All series of one operator process, in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # -- the control loop
        self.budget = Gauge(
            "stopbudget_budget_tokens", "Budget applied to the target.", POLICY, registry=r
        )
        self.recommended = Gauge(
            "stopbudget_recommended_budget_tokens",
            "Budget the control law recommends (applied or not).",
            POLICY,
            registry=r,
        )
        self.target_budget = Gauge(
            "stopbudget_target_budget_tokens",
            "Cheapest budget whose EM lower bound meets emTarget.",
            POLICY,
            registry=r,
        )
        self.floor_budget = Gauge(
            "stopbudget_floor_budget_tokens",
            "Cheapest budget whose EM lower bound meets emFloor.",
            POLICY,
            registry=r,
        )
        self.min_budget = Gauge(
            "stopbudget_min_budget_tokens", "budget.min of the policy.", POLICY, registry=r
        )
        self.max_budget = Gauge(
            "stopbudget_max_budget_tokens", "budget.max of the policy.", POLICY, registry=r
        )
        self.em_target = Gauge(
            "stopbudget_em_target_ratio", "quality.emTarget of the policy.", POLICY, registry=r
        )
        self.em_floor = Gauge(
            "stopbudget_em_floor_ratio", "quality.emFloor of the policy.", POLICY, registry=r
        )
        self.expected_em = Gauge(
            "stopbudget_expected_exact_match_ratio",
            "EM of the curve in use at the applied budget.",
            POLICY,
            registry=r,
        )
        self.observed_em = Gauge(
            "stopbudget_observed_exact_match_ratio",
            "Live EM from quality.query.",
            POLICY,
            registry=r,
        )
        self.truncation = Gauge(
            "stopbudget_truncation_ratio",
            "Share of requests stopped by the token budget (preset query).",
            POLICY,
            registry=r,
        )
        self.pressure = Gauge(
            "stopbudget_pressure_ratio",
            "Load pressure: max over signals of value / target.",
            POLICY,
            registry=r,
        )
        self.signal = Gauge(
            "stopbudget_signal_value",
            "Latest value of a load signal.",
            (*POLICY, "signal"),
            registry=r,
        )
        self.fallback_active = Gauge(
            "stopbudget_fallback_active",
            "1 while the fallback behavior applies (metrics unavailable).",
            POLICY,
            registry=r,
        )
        self.decisions = Counter(
            "stopbudget_decisions_total",
            "Control-law decisions, by the rule that decided.",
            (*POLICY, "reason"),
            registry=r,
        )
        self.patches = Counter(
            "stopbudget_patches_total",
            "Patches applied to targets, by sink type.",
            (*POLICY, "sink"),
            registry=r,
        )
        self.patch_errors = Counter(
            "stopbudget_patch_errors_total",
            "Patches that failed (conflict, missing target, API error).",
            (*POLICY, "reason"),
            registry=r,
        )
        self.query_errors = Counter(
            "stopbudget_prometheus_query_errors_total",
            "Prometheus queries that gave no usable number, by kind "
            "(timeout, connection, http, bad_response, no_data, ambiguous).",
            (*POLICY, "kind"),
            registry=r,
        )
        self.queries = Counter(
            "stopbudget_prometheus_queries_total",
            "Prometheus queries sent.",
            POLICY,
            registry=r,
        )
        self.reconcile_duration = Histogram(
            "stopbudget_reconcile_duration_seconds",
            "Duration of one control-loop tick of one policy.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.tokens_saved = Gauge(
            "stopbudget_budget_saving_ratio",
            "1 - budget / budget.max: the share of the maximum budget not granted.",
            POLICY,
            registry=r,
        )
        # -- audits
        self.audit_em = Gauge(
            "stopbudget_audit_exact_match_ratio",
            "EM measured by the last successful audit, per ladder budget.",
            (*POLICY, "budget"),
            registry=r,
        )
        self.audit_em_lower = Gauge(
            "stopbudget_audit_exact_match_lower_ratio",
            "Wilson lower bound of the audit EM, per ladder budget.",
            (*POLICY, "budget"),
            registry=r,
        )
        self.audit_truncated = Gauge(
            "stopbudget_audit_truncated_ratio",
            "Share of audit answers cut by the budget with no extractable answer.",
            (*POLICY, "budget"),
            registry=r,
        )
        self.audit_runs = Counter(
            "stopbudget_audit_runs_total",
            "Audits by trigger and result.",
            (*POLICY, "trigger", "result"),
            registry=r,
        )
        self.audit_duration = Histogram(
            "stopbudget_audit_duration_seconds",
            "Wall time of an audit.",
            POLICY,
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600),
            registry=r,
        )
        self.audit_tokens = Counter(
            "stopbudget_audit_tokens_total",
            "Tokens generated by audits.",
            POLICY,
            registry=r,
        )
        self.audit_requests = Counter(
            "stopbudget_audit_requests_total",
            "Generation requests sent by audits.",
            POLICY,
            registry=r,
        )
        self.audit_last_success = Gauge(
            "stopbudget_audit_last_success_timestamp_seconds",
            "Unix time of the last successful audit.",
            POLICY,
            registry=r,
        )
        # -- alerts
        self.alerts_received = Counter(
            "stopbudget_alertmanager_alerts_total",
            "Alerts received on the webhook, by status and outcome.",
            ("status", "outcome"),
            registry=r,
        )
        self.webhook_requests = Counter(
            "stopbudget_webhook_requests_total",
            "Webhook requests by HTTP status code.",
            ("code",),
            registry=r,
        )

    def forget(self, namespace: str, name: str) -> None:
        """Drop every series of a deleted policy."""
        for collector in list(self.registry._collector_to_names):
            labelnames = getattr(collector, "_labelnames", ())
            if labelnames[:2] != POLICY:
                continue
            for labels in list(collector._metrics):  # type: ignore[attr-defined]
                if labels[:2] == (namespace, name):
                    collector.remove(*labels)  # type: ignore[attr-defined]


def names(metrics: OperatorMetrics | None = None) -> frozenset[str]:
    """Every series name the operator exports (with _bucket/_sum/_count for histograms)."""
    m = metrics or OperatorMetrics()
    found: set[str] = set()
    for family in m.registry.collect():
        found |= {sample.name for sample in family.samples}
        found.add(family.name if family.type != "counter" else family.name + "_total")
        if family.type == "histogram":
            found |= {family.name + s for s in ("_bucket", "_sum", "_count")}
    return frozenset(found)
