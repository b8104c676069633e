#!/usr/bin/env python3
"""Generate the Grafana dashboard dashboards/stopbudget.json.

The dashboard is written as data here, so panel layout and ids stay
consistent, then committed as JSON (the chart loads it with ``.Files.Get``).
Every query uses only the operator's own series (``stopbudget.clients.metrics``); a
test checks that, and that the committed JSON is this script's output.

Usage::

    python charts/stopbudget/hack/gen_dashboard.py          # rewrite the JSON
    python charts/stopbudget/hack/gen_dashboard.py --check  # exit 1 if out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

CHART = Path(__file__).resolve().parent.parent
DASHBOARD = CHART / "dashboards" / "stopbudget.json"

DS = {"type": "prometheus", "uid": "${datasource}"}
#: The per-policy selector every per-policy query carries.
SEL = 'namespace=~"$namespace", stoppolicy=~"$stoppolicy"'
POLICY = "{{namespace}}/{{stoppolicy}}"


def target(expr: str, legend: str, ref: str, **extra: Any) -> dict[str, Any]:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, **extra}


def panel(
    kind: str,
    title: str,
    description: str,
    grid: tuple[int, int, int, int],
    targets: list[dict[str, Any]],
    *,
    unit: str = "short",
    defaults: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    overrides: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    x, y, w, h = grid
    field_defaults: dict[str, Any] = {"unit": unit, **(defaults or {})}
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": targets,
        "fieldConfig": {"defaults": field_defaults, "overrides": overrides or []},
        "options": options or {},
        **extra,
    }


def row(title: str, y: int) -> dict[str, Any]:
    return {
        "type": "row",
        "title": title,
        "collapsed": False,
        "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
        "panels": [],
    }


def series_style(name: str, color: str, dash: bool = False) -> dict[str, Any]:
    """An override giving the series named `name` a fixed color (and a dashed line)."""
    props: list[dict[str, Any]] = [{"id": "color", "value": {"mode": "fixed", "fixedColor": color}}]
    if dash:
        props.append({"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}})
    return {"matcher": {"id": "byRegexp", "options": f".* {name}$"}, "properties": props}


TIMESERIES_OPTS = {
    "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull"]},
    "tooltip": {"mode": "multi", "sort": "desc"},
}


def panels() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [row("Budget", 0)]
    out.append(
        panel(
            "timeseries",
            "Budget vs target and floor",
            "Applied budget, the budget the EM target needs, the budget the EM floor needs, "
            "and the control law's recommendation (Recommend mode applies nothing).",
            (0, 1, 12, 9),
            [
                target(
                    f"max by (namespace, stoppolicy) (stopbudget_budget_tokens{{{SEL}}})",
                    f"{POLICY} applied",
                    "A",
                ),
                target(
                    f"max by (namespace, stoppolicy) (stopbudget_target_budget_tokens{{{SEL}}})",
                    f"{POLICY} target",
                    "B",
                ),
                target(
                    f"max by (namespace, stoppolicy) (stopbudget_floor_budget_tokens{{{SEL}}})",
                    f"{POLICY} floor",
                    "C",
                ),
                target(
                    f"max by (namespace, stoppolicy) "
                    f"(stopbudget_recommended_budget_tokens{{{SEL}}})",
                    f"{POLICY} recommended",
                    "D",
                ),
            ],
            unit="suffix: tok",
            defaults={
                "custom": {"lineWidth": 2, "drawStyle": "line", "lineInterpolation": "stepAfter"}
            },
            overrides=[
                series_style("target", "green", dash=True),
                series_style("floor", "red", dash=True),
                series_style("recommended", "yellow", dash=True),
            ],
            options=TIMESERIES_OPTS,
        )
    )
    out.append(
        panel(
            "timeseries",
            "Load pressure",
            "max over the load signals of value / target. Above 1 (red line) the operator "
            "trades the budget down toward the floor.",
            (12, 1, 12, 9),
            [
                target(
                    f"max by (namespace, stoppolicy) (stopbudget_pressure_ratio{{{SEL}}})",
                    f"{POLICY}",
                    "A",
                ),
            ],
            unit="none",
            defaults={
                "min": 0,
                "custom": {"thresholdsStyle": {"mode": "line"}},
                "thresholds": {
                    "mode": "absolute",
                    "steps": [{"color": "green", "value": None}, {"color": "red", "value": 1}],
                },
            },
            options=TIMESERIES_OPTS,
        )
    )
    out.append(
        panel(
            "timeseries",
            "Tokens saved",
            "1 - budget / budget.max: the share of the maximum budget not granted to requests.",
            (0, 10, 16, 8),
            [
                target(
                    f"max by (namespace, stoppolicy) (stopbudget_budget_saving_ratio{{{SEL}}})",
                    POLICY,
                    "A",
                ),
            ],
            unit="percentunit",
            defaults={"min": 0, "max": 1},
            options=TIMESERIES_OPTS,
        )
    )
    out.append(
        panel(
            "stat",
            "Tokens saved, mean over the range",
            "Mean of the saving ratio over the dashboard's time range, per policy.",
            (16, 10, 8, 8),
            [
                target(
                    "avg by (namespace, stoppolicy) "
                    f"(avg_over_time(stopbudget_budget_saving_ratio{{{SEL}}}[$__range]))",
                    POLICY,
                    "A",
                    instant=True,
                ),
            ],
            unit="percentunit",
            defaults={"min": 0, "max": 1, "color": {"mode": "thresholds"}},
            options={
                "reduceOptions": {"calcs": ["lastNotNull"], "values": False},
                "colorMode": "value",
                "graphMode": "none",
                "textMode": "value_and_name",
            },
        )
    )

    out.append(row("Quality", 18))
    out.append(
        panel(
            "timeseries",
            "Exact match: expected, live, target and floor",
            "EM of the curve in use at the applied budget (expected), live EM from "
            "quality.query (live), and the policy's emTarget and emFloor.",
            (0, 19, 12, 9),
            [
                target(
                    "max by (namespace, stoppolicy) "
                    f"(stopbudget_expected_exact_match_ratio{{{SEL}}})",
                    f"{POLICY} expected",
                    "A",
                ),
                target(
                    "max by (namespace, stoppolicy) "
                    f"(stopbudget_observed_exact_match_ratio{{{SEL}}})",
                    f"{POLICY} live",
                    "B",
                ),
                target(
                    f"max by (namespace, stoppolicy) (stopbudget_em_target_ratio{{{SEL}}})",
                    f"{POLICY} target",
                    "C",
                ),
                target(
                    f"max by (namespace, stoppolicy) (stopbudget_em_floor_ratio{{{SEL}}})",
                    f"{POLICY} floor",
                    "D",
                ),
            ],
            unit="percentunit",
            defaults={"min": 0, "max": 1},
            overrides=[
                series_style("target", "green", dash=True),
                series_style("floor", "red", dash=True),
            ],
            options=TIMESERIES_OPTS,
        )
    )
    out.append(
        panel(
            "barchart",
            "EM curve of the last audit: $stoppolicy",
            "Exact match per ladder budget measured by the last successful audit, its Wilson "
            "lower bound (what the control law uses) and the share of answers cut by the "
            "budget. One panel per selected policy.",
            (12, 19, 12, 9),
            [
                target(
                    f"max by (budget) (stopbudget_audit_exact_match_ratio{{{SEL}}})",
                    "EM",
                    "A",
                    instant=True,
                    format="table",
                ),
                target(
                    f"max by (budget) (stopbudget_audit_exact_match_lower_ratio{{{SEL}}})",
                    "EM lower bound",
                    "B",
                    instant=True,
                    format="table",
                ),
                target(
                    f"max by (budget) (stopbudget_audit_truncated_ratio{{{SEL}}})",
                    "truncated",
                    "C",
                    instant=True,
                    format="table",
                ),
            ],
            unit="percentunit",
            defaults={"min": 0, "max": 1},
            options={
                "xField": "budget",
                "orientation": "vertical",
                "showValue": "auto",
                "legend": {"displayMode": "list", "placement": "bottom"},
            },
            transformations=[
                {"id": "merge", "options": {}},
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {"Time": True},
                        "renameByName": {
                            "Value #A": "EM",
                            "Value #B": "EM lower bound",
                            "Value #C": "truncated",
                        },
                    },
                },
                {
                    "id": "convertFieldType",
                    "options": {
                        "conversions": [{"targetField": "budget", "destinationType": "number"}]
                    },
                },
                {"id": "sortBy", "options": {"sort": [{"field": "budget"}]}},
                {
                    "id": "convertFieldType",
                    "options": {
                        "conversions": [{"targetField": "budget", "destinationType": "string"}]
                    },
                },
            ],
            repeat="stoppolicy",
            repeatDirection="v",
        )
    )
    out.append(
        panel(
            "timeseries",
            "Requests cut by the budget",
            "Share of requests stopped by the token budget (the preset's truncation query).",
            (0, 28, 24, 7),
            [
                target(
                    f"max by (namespace, stoppolicy) (stopbudget_truncation_ratio{{{SEL}}})",
                    POLICY,
                    "A",
                ),
            ],
            unit="percentunit",
            defaults={"min": 0},
            options=TIMESERIES_OPTS,
        )
    )

    out.append(row("Audits and fallbacks", 35))
    out.append(
        panel(
            "timeseries",
            "Audits by trigger and result",
            "Audits run per interval: schedule, manual, alert or spec-change; Succeeded, "
            "Failed or Deferred.",
            (0, 36, 12, 8),
            [
                target(
                    "sum by (namespace, stoppolicy, trigger, result) "
                    f"(increase(stopbudget_audit_runs_total{{{SEL}}}[$__rate_interval]))",
                    f"{POLICY} {{{{trigger}}}} {{{{result}}}}",
                    "A",
                ),
            ],
            defaults={
                "custom": {"drawStyle": "bars", "fillOpacity": 60, "stacking": {"mode": "normal"}}
            },
            overrides=[
                {
                    "matcher": {"id": "byRegexp", "options": ".* Failed$"},
                    "properties": [
                        {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}}
                    ],
                }
            ],
            options=TIMESERIES_OPTS,
        )
    )
    out.append(
        panel(
            "stat",
            "Since the last successful audit",
            "Time since each policy's last successful audit.",
            (12, 36, 12, 8),
            [
                target(
                    "time() - max by (namespace, stoppolicy) "
                    f"(stopbudget_audit_last_success_timestamp_seconds{{{SEL}}})",
                    POLICY,
                    "A",
                    instant=True,
                ),
            ],
            unit="s",
            defaults={
                "color": {"mode": "thresholds"},
                "thresholds": {
                    "mode": "absolute",
                    "steps": [
                        {"color": "green", "value": None},
                        {"color": "yellow", "value": 86400},
                        {"color": "red", "value": 259200},
                    ],
                },
            },
            options={
                "reduceOptions": {"calcs": ["lastNotNull"], "values": False},
                "colorMode": "background",
                "graphMode": "none",
                "textMode": "value_and_name",
            },
        )
    )
    out.append(
        panel(
            "state-timeline",
            "Fallback",
            "Whether the fallback behavior applies (Prometheus failed failureThreshold ticks "
            "in a row).",
            (0, 44, 12, 8),
            [
                target(
                    f"max by (namespace, stoppolicy) (stopbudget_fallback_active{{{SEL}}})",
                    POLICY,
                    "A",
                ),
            ],
            defaults={
                "color": {"mode": "thresholds"},
                "thresholds": {
                    "mode": "absolute",
                    "steps": [{"color": "green", "value": None}, {"color": "red", "value": 1}],
                },
                "mappings": [
                    {
                        "type": "value",
                        "options": {"0": {"text": "metrics OK"}, "1": {"text": "fallback"}},
                    }
                ],
            },
            options={"showValue": "never", "mergeValues": True, "rowHeight": 0.8},
        )
    )
    out.append(
        panel(
            "timeseries",
            "Prometheus query errors",
            "Queries that gave no usable number, by kind (timeout, connection, http, "
            "bad_response, no_data, ambiguous).",
            (12, 44, 12, 8),
            [
                target(
                    "sum by (namespace, stoppolicy, kind) "
                    f"(rate(stopbudget_prometheus_query_errors_total{{{SEL}}}[$__rate_interval]))",
                    f"{POLICY} {{{{kind}}}}",
                    "A",
                ),
            ],
            unit="reqps",
            options=TIMESERIES_OPTS,
        )
    )

    out.append(row("Operator", 52))
    out.append(
        panel(
            "timeseries",
            "Patches and decisions",
            "Patches applied to targets by sink, failed patches by reason, and control-law "
            "decisions by the rule that decided.",
            (0, 53, 12, 8),
            [
                target(
                    "sum by (namespace, stoppolicy, sink) "
                    f"(increase(stopbudget_patches_total{{{SEL}}}[$__rate_interval]))",
                    f"{POLICY} patch {{{{sink}}}}",
                    "A",
                ),
                target(
                    "sum by (namespace, stoppolicy, reason) "
                    f"(increase(stopbudget_patch_errors_total{{{SEL}}}[$__rate_interval]))",
                    f"{POLICY} patch error {{{{reason}}}}",
                    "B",
                ),
                target(
                    "sum by (reason) "
                    f"(increase(stopbudget_decisions_total{{{SEL}}}[$__rate_interval]))",
                    "decision {{reason}}",
                    "C",
                ),
            ],
            defaults={"custom": {"drawStyle": "bars", "fillOpacity": 60}},
            options=TIMESERIES_OPTS,
        )
    )
    out.append(
        panel(
            "timeseries",
            "Reconcile duration",
            "p50 and p99 of one control-loop tick of one policy (all policies).",
            (12, 53, 12, 8),
            [
                target(
                    "histogram_quantile(0.5, sum by (le) "
                    "(rate(stopbudget_reconcile_duration_seconds_bucket[$__rate_interval])))",
                    "p50",
                    "A",
                ),
                target(
                    "histogram_quantile(0.99, sum by (le) "
                    "(rate(stopbudget_reconcile_duration_seconds_bucket[$__rate_interval])))",
                    "p99",
                    "B",
                ),
            ],
            unit="s",
            options=TIMESERIES_OPTS,
        )
    )
    out.append(
        panel(
            "timeseries",
            "Alertmanager webhook",
            "Webhook requests by HTTP status, and alerts received by status and outcome.",
            (0, 61, 24, 7),
            [
                target(
                    "sum by (code) (rate(stopbudget_webhook_requests_total[$__rate_interval]))",
                    "HTTP {{code}}",
                    "A",
                ),
                target(
                    "sum by (status, outcome) "
                    "(rate(stopbudget_alertmanager_alerts_total[$__rate_interval]))",
                    "alert {{status}} {{outcome}}",
                    "B",
                ),
            ],
            unit="reqps",
            options=TIMESERIES_OPTS,
        )
    )
    for number, item in enumerate(out, start=1):
        item["id"] = number
    return out


def variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DS,
        "query": {"query": query, "refId": f"{name}-var"},
        "definition": query,
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def dashboard() -> dict[str, Any]:
    return {
        "title": "stopbudget",
        "uid": "stopbudget",
        "description": "Token budgets set by the stopbudget operator: budget vs target and "
        "floor, load pressure, exact match, audits and fallbacks.",
        "tags": ["stopbudget", "llm", "kubernetes"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "1m",
        "time": {"from": "now-24h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "type": "datasource",
                    "name": "datasource",
                    "label": "Data source",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                },
                variable(
                    "namespace", "Namespace", "label_values(stopbudget_budget_tokens, namespace)"
                ),
                variable(
                    "stoppolicy",
                    "StopPolicy",
                    'label_values(stopbudget_budget_tokens{namespace=~"$namespace"}, stoppolicy)',
                ),
            ]
        },
        "panels": panels(),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the JSON is out of date")
    args = parser.parse_args(argv)
    text = render()
    current = DASHBOARD.read_text(encoding="utf-8") if DASHBOARD.exists() else ""
    if args.check:
        if current != text:
            sys.stderr.write(f"{DASHBOARD.relative_to(CHART)} is out of date: run {__file__}\n")
            return 1
        return 0
    if current != text:
        DASHBOARD.write_text(text, encoding="utf-8")
        sys.stdout.write(f"wrote {DASHBOARD.relative_to(CHART)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
