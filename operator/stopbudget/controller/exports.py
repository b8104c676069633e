"""The operator's own metrics for one policy, from its spec, its status and what a tick did."""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

from stopbudget import api
from stopbudget.clients.metrics import OperatorMetrics
from stopbudget.controller.mailbox import AuditReport
from stopbudget.core.curve import Curve, Point
from stopbudget.core.law import Decision, Observation


def export_spec(metrics: OperatorMetrics, ns: str, name: str, spec: api.StopPolicySpec) -> None:
    metrics.min_budget.labels(ns, name).set(spec.budget.min)
    metrics.max_budget.labels(ns, name).set(spec.budget.max)
    metrics.em_target.labels(ns, name).set(spec.quality.em_target)
    metrics.em_floor.labels(ns, name).set(spec.quality.em_floor)
    # Counters an alert takes increase() of must exist at 0 before their first increment.
    if spec.audit is not None:
        for trigger in api.AuditTrigger:
            for result in (api.AuditResult.SUCCEEDED, api.AuditResult.FAILED):
                metrics.audit_runs.labels(ns, name, trigger.value, result.value)
    for reason in ("conflict", "api"):
        metrics.patch_errors.labels(ns, name, reason)


def export_audit(
    metrics: OperatorMetrics,
    ns: str,
    name: str,
    report: AuditReport,
    measured: Curve | None,
    now: datetime,
) -> None:
    result = api.AuditResult.SUCCEEDED if report.ok else api.AuditResult.FAILED
    metrics.audit_runs.labels(ns, name, report.trigger.value, result.value).inc()
    outcome = report.outcome
    if outcome is not None:
        metrics.audit_duration.labels(ns, name).observe(outcome.duration)
        metrics.audit_tokens.labels(ns, name).inc(outcome.tokens)
        metrics.audit_requests.labels(ns, name).inc(outcome.requests)
    if measured is None:
        return
    for point in measured.points:
        labels = (ns, name, str(point.budget))
        metrics.audit_em.labels(*labels).set(point.em)
        metrics.audit_em_lower.labels(*labels).set(measured.lower(point))
        metrics.audit_truncated.labels(*labels).set(
            point.truncated / point.samples if point.samples else 0.0
        )
    metrics.audit_last_success.labels(ns, name).set(now.timestamp())


def export_tick(
    metrics: OperatorMetrics,
    ns: str,
    name: str,
    spec: api.StopPolicySpec,
    status: api.StopPolicyStatus,
    decision: Decision | None,
    observation: Observation | None,
    em_point: Point | None,
) -> None:
    def gauge(metric: Any, value: float | None, *labels: str) -> None:
        if value is None:  # no value: no series (not a stale one, not a 0)
            with contextlib.suppress(KeyError):
                metric.remove(ns, name, *labels)
        else:
            metric.labels(ns, name, *labels).set(value)

    gauge(metrics.budget, status.budget)
    if status.budget is not None:
        gauge(metrics.tokens_saved, 1 - status.budget / spec.budget.max)
    gauge(metrics.pressure, status.pressure)
    gauge(metrics.expected_em, em_point.em if em_point is not None else None)
    gauge(metrics.observed_em, observation.em if observation is not None else None)
    gauge(metrics.truncation, status.truncation_ratio)
    if decision is not None:
        gauge(metrics.recommended, decision.recommended)
        gauge(metrics.target_budget, decision.target)
        gauge(metrics.floor_budget, decision.floor)
        gauge(metrics.fallback_active, 1.0 if decision.fallback else 0.0)
    if observation is not None:
        for reading in observation.signals:
            gauge(metrics.signal, reading.value, reading.name)
