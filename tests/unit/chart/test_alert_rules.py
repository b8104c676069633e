"""The chart's alert rules and dashboard queries, checked with the real promtool.

The PrometheusRule is rendered from the chart, its ``spec.groups`` written as
a rules file, and ``promtool test rules`` runs a unit test built here: input
series named as the operator exports them (``stopbudget.clients.metrics``), one
policy per alert that must fire (with the ``namespace`` and ``stoppolicy``
labels that route it back to the operator's webhook) and one that must stay
quiet. Every PromQL expression, in the rules and in the dashboard, may only
use series the operator exports.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from stopbudget.clients import metrics

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "stopbudget"

#: Engine series (vLLM, SGLang, TGI presets) the rules or the dashboard use. None:
#: the operator already turns them into its own series (pressure, truncation, EM).
ENGINE_SERIES: frozenset[str] = frozenset()

#: Values the rules are tested with: the defaults, except a few that show the
#: thresholds and labels come from values.
RULE_VALUES: dict[str, Any] = {
    "monitoring": {
        "prometheusRule": {
            "enabled": True,
            "alertLabels": {"team": "ml"},
            "truncationHigh": {"threshold": 0.25},
        }
    }
}

ALERTS = (
    "StopPolicyEMBelowTarget",
    "StopPolicyEMBelowFloor",
    "StopPolicyBudgetPinnedAtFloor",
    "StopPolicyMetricsUnavailable",
    "StopPolicyAuditFailing",
    "StopPolicyTruncationHigh",
)


def rendered_rule(values: dict[str, Any]) -> dict[str, Any]:
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name="sb", namespace="stopbudget")
    rule: dict[str, Any] = yaml.safe_load(manifests["stopbudget/templates/prometheusrule.yaml"])
    return rule


def rules_by_alert(values: dict[str, Any] = RULE_VALUES) -> dict[str, dict[str, Any]]:
    (group,) = rendered_rule(values)["spec"]["groups"]
    return {rule["alert"]: rule for rule in group["rules"]}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool not found: `make test` installs Debian's prometheus package")
    return found


# --------------------------------------------------------- names in PromQL

_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "offset", "bool", "atan2", "inf", "nan",
}  # fmt: skip


def series_names(expr: str) -> set[str]:
    """The metric names an expression selects (functions, labels and keywords excluded)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^{}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\[\]]*\]", "", text)  # range and subquery windows
    # label lists of by/without/on/ignoring/group_*(...)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", r"\1", text)
    names = set()
    # a name followed by "(" or by "by"/"without" is a function or an aggregation
    for match in re.finditer(r"(?<![\w:.$])([A-Za-z_:][\w:]*)\b(\s*\(|\s+(?:by|without)\b)?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def test_series_names_parser() -> None:
    assert series_names(
        'sum by (namespace, kind) (rate(stopbudget_x_total{a="b}", c=~"$d"}[$__rate_interval]))'
        " / on (namespace) group_left (pod) vllm:num_requests_waiting > bool 0.5"
    ) == {"stopbudget_x_total", "vllm:num_requests_waiting"}
    assert series_names("time() - max(stopbudget_t_seconds offset 5m)") == {"stopbudget_t_seconds"}
    assert series_names("histogram_quantile(0.99, sum by (le) (rate(a_bucket[5m])))") == {
        "a_bucket"
    }


def dashboard_queries() -> list[tuple[str, str]]:
    board = json.loads((CHART / "dashboards" / "stopbudget.json").read_text(encoding="utf-8"))
    queries = [
        (panel["title"], target["expr"])
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", var["query"]["query"])
            assert inner, var["query"]
            queries.append((f"variable {var['name']}", inner.group(1)))
    return queries


def test_rules_use_only_the_operators_series() -> None:
    known = metrics.names() | ENGINE_SERIES
    rules = rules_by_alert()
    assert set(rules) == set(ALERTS)
    for alert, rule in rules.items():
        used = series_names(rule["expr"])
        assert used, alert
        assert used <= known, f"{alert} uses series nobody exports: {used - known}"


def test_dashboard_uses_only_the_operators_series() -> None:
    known = metrics.names() | ENGINE_SERIES
    queries = dashboard_queries()
    assert len(queries) > 10
    for title, expr in queries:
        used = series_names(expr)
        assert used, f"{title}: {expr}"
        assert used <= known, f"{title} uses series nobody exports: {used - known}"


def test_every_alert_is_routed_back_by_namespace_and_stoppolicy() -> None:
    for alert, rule in rules_by_alert().items():
        assert "by (namespace, stoppolicy)" in rule["expr"], alert
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["labels"]["team"] == "ml"
        assert {"summary", "description"} <= set(rule["annotations"])
        assert "$labels.stoppolicy" in rule["annotations"]["summary"]


def test_alerts_can_be_turned_off_one_by_one() -> None:
    values = json.loads(json.dumps(RULE_VALUES))
    values["monitoring"]["prometheusRule"]["emBelowTarget"] = {"enabled": False}
    assert set(rules_by_alert(values)) == set(ALERTS) - {"StopPolicyEMBelowTarget"}


# ------------------------------------------------------------- promtool


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each dashboard query (Grafana's variables given plain values)."""
    tool = promtool()
    rules = []
    for number, (_, expr) in enumerate(dashboard_queries()):
        plain = (
            expr.replace("$__rate_interval", "5m")
            .replace("$__range", "1h")
            .replace("$namespace", ".*")
            .replace("$stoppolicy", ".*")
        )
        assert "$" not in plain, plain
        rules.append({"record": f"dashboard:query_{number}", "expr": plain})
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [tool, "check", "rules", str(path)], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _series(name: str, ns: str, policy: str, values: str, **labels: str) -> dict[str, str]:
    """One input series as the operator exports it, with target labels as scraped."""
    extra = "".join(f', {k}="{v}"' for k, v in sorted(labels.items()))
    return {
        "series": f'{name}{{namespace="{ns}", stoppolicy="{policy}"{extra}, '
        f'job="stopbudget", instance="10.0.0.7:8080"}}',
        "values": values,
    }


def _annotations(rule: dict[str, Any], labels: dict[str, str], value: float) -> dict[str, str]:
    """The rule's annotations as Prometheus renders them, for the few forms the rules use."""

    def fill(template: str) -> str:
        text = template
        for key, label in labels.items():
            text = text.replace(f"{{{{ $labels.{key} }}}}", label)
        text = text.replace("{{ $value | humanizePercentage }}", f"{value * 100:.4g}%")
        text = text.replace("{{ $value | humanize }}", f"{value:.4g}")
        text = text.replace("{{ $value }}", f"{value:g}")
        assert "{{" not in text, f"the test cannot render {template!r}"
        return text

    return {key: fill(text) for key, text in rule["annotations"].items()}


def _expect(
    rules: dict[str, dict[str, Any]],
    alert: str,
    eval_time: str,
    firing: list[tuple[str, str, float]],
) -> dict[str, Any]:
    """An alert_rule_test case: `firing` lists (namespace, stoppolicy, $value)."""
    rule = rules[alert]
    expected = []
    for ns, policy, value in firing:
        labels = {"namespace": ns, "stoppolicy": policy, **rule["labels"]}
        expected.append(
            {"exp_labels": labels, "exp_annotations": _annotations(rule, labels, value)}
        )
    return {"eval_time": eval_time, "alertname": alert, "exp_alerts": expected}


def unit_tests(rules: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    s = _series
    return [
        {
            "name": "EM below target fires after 30m, only where expected EM < emTarget",
            "interval": "1m",
            "input_series": [
                s("stopbudget_expected_exact_match_ratio", "serving", "llama", "0.72x60"),
                s("stopbudget_em_target_ratio", "serving", "llama", "0.8x60"),
                s("stopbudget_expected_exact_match_ratio", "batch", "qwen", "0.85x60"),
                s("stopbudget_em_target_ratio", "batch", "qwen", "0.8x60"),
            ],
            "alert_rule_test": [
                _expect(rules, "StopPolicyEMBelowTarget", "29m", []),
                _expect(rules, "StopPolicyEMBelowTarget", "45m", [("serving", "llama", 0.72)]),
            ],
        },
        {
            "name": "EM below floor fires after 5m on live EM; a short dip stays quiet",
            "interval": "1m",
            "input_series": [
                s("stopbudget_observed_exact_match_ratio", "serving", "llama", "0.6x30"),
                s("stopbudget_em_floor_ratio", "serving", "llama", "0.7x30"),
                s("stopbudget_observed_exact_match_ratio", "batch", "qwen", "0.65x3 0.75x27"),
                s("stopbudget_em_floor_ratio", "batch", "qwen", "0.7x30"),
            ],
            "alert_rule_test": [
                _expect(rules, "StopPolicyEMBelowFloor", "4m", []),
                _expect(rules, "StopPolicyEMBelowFloor", "10m", [("serving", "llama", 0.6)]),
            ],
        },
        {
            "name": "Budget pinned at floor: only while the floor is below the target budget",
            "interval": "1m",
            "input_series": [
                # at the floor, below the target: fires after 1h
                s("stopbudget_budget_tokens", "serving", "llama", "256x90"),
                s("stopbudget_floor_budget_tokens", "serving", "llama", "256x90"),
                s("stopbudget_target_budget_tokens", "serving", "llama", "512x90"),
                # at the floor, but floor == target: nothing to trade, quiet
                s("stopbudget_budget_tokens", "batch", "qwen", "256x90"),
                s("stopbudget_floor_budget_tokens", "batch", "qwen", "256x90"),
                s("stopbudget_target_budget_tokens", "batch", "qwen", "256x90"),
                # above the floor: quiet
                s("stopbudget_budget_tokens", "serving", "mistral", "384x90"),
                s("stopbudget_floor_budget_tokens", "serving", "mistral", "256x90"),
                s("stopbudget_target_budget_tokens", "serving", "mistral", "512x90"),
            ],
            "alert_rule_test": [
                _expect(rules, "StopPolicyBudgetPinnedAtFloor", "59m", []),
                _expect(rules, "StopPolicyBudgetPinnedAtFloor", "75m", [("serving", "llama", 256)]),
            ],
        },
        {
            "name": "Metrics unavailable: fallback for 10m fires; a 5m fallback stays quiet",
            "interval": "1m",
            "input_series": [
                s("stopbudget_fallback_active", "serving", "llama", "0x2 1x30"),
                s("stopbudget_fallback_active", "batch", "qwen", "1x5 0x27"),
            ],
            "alert_rule_test": [
                _expect(rules, "StopPolicyMetricsUnavailable", "11m", []),
                _expect(rules, "StopPolicyMetricsUnavailable", "20m", [("serving", "llama", 1)]),
            ],
        },
        {
            "name": "Audit failing: a failed audit fires for the window; successes never",
            "interval": "10m",
            "input_series": [
                s(
                    "stopbudget_audit_runs_total",
                    "serving",
                    "llama",
                    "0x2 1x50",
                    trigger="schedule",
                    result="Failed",
                ),
                s(
                    "stopbudget_audit_runs_total",
                    "serving",
                    "llama",
                    "0x52",
                    trigger="schedule",
                    result="Succeeded",
                ),
                s(
                    "stopbudget_audit_runs_total",
                    "batch",
                    "qwen",
                    "0 1 2 3 4 5x47",
                    trigger="alert",
                    result="Succeeded",
                ),
                s(
                    "stopbudget_audit_runs_total",
                    "batch",
                    "qwen",
                    "0x52",
                    trigger="alert",
                    result="Failed",
                ),
            ],
            "alert_rule_test": [
                _expect(rules, "StopPolicyAuditFailing", "10m", []),
                _expect(rules, "StopPolicyAuditFailing", "1h", [("serving", "llama", 1)]),
                # the failure at 20m has left the 6h window by 6h30m
                _expect(rules, "StopPolicyAuditFailing", "6h30m", []),
            ],
        },
        {
            "name": "Truncation high: above the threshold from values (0.25), for 15m",
            "interval": "1m",
            "input_series": [
                s("stopbudget_truncation_ratio", "serving", "llama", "0.3x40"),
                s("stopbudget_truncation_ratio", "batch", "qwen", "0.22x40"),
            ],
            "alert_rule_test": [
                _expect(rules, "StopPolicyTruncationHigh", "14m", []),
                _expect(rules, "StopPolicyTruncationHigh", "20m", [("serving", "llama", 0.3)]),
            ],
        },
    ]


def test_promtool_unit_tests_of_every_alert(tmp_path: Path) -> None:
    tool = promtool()
    rule = rendered_rule(RULE_VALUES)
    rules_file = tmp_path / "stopbudget-rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    checked = subprocess.run(
        [tool, "check", "rules", str(rules_file)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    rules = rules_by_alert()
    cases = unit_tests(rules)
    tested = {case["alertname"] for test in cases for case in test["alert_rule_test"]}
    assert tested == set(ALERTS)
    for test in cases:  # each alert fires for one policy and stays quiet for another
        assert any(case["exp_alerts"] for case in test["alert_rule_test"]), test["name"]
        assert any(not case["exp_alerts"] for case in test["alert_rule_test"]), test["name"]
        for series in test["input_series"]:
            name = series["series"].split("{", 1)[0]
            assert name in metrics.names(), name

    tests_file = tmp_path / "stopbudget-tests.yaml"
    tests_file.write_text(
        yaml.safe_dump(
            {
                "rule_files": [rules_file.name],
                "evaluation_interval": "1m",
                "tests": cases,
            },
            sort_keys=False,
        )
    )
    done = subprocess.run(
        [tool, "test", "rules", tests_file.name],
        cwd=tmp_path,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
