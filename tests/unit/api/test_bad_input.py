"""Every malformed policy is rejected with a message that names the field and the fix.

Each case is checked twice: by ``stopbudget validate``'s layers (pydantic and the
CRD schema) and by what the API server does with the generated CRD (schema and
CEL, see ``tests/support/apiserver.py``).  Cases the API server cannot check are marked;
the README lists them and the operator reports them as a condition.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from stopbudget.schema import validate
from tests.support.apiserver import admit

ROOT = Path(__file__).resolve().parents[3]

AUDIT = {
    "endpoint": "http://vllm:8000",
    "model": "m",
    "dataset": {"configMapRef": {"name": "golden"}},
    "budgets": [64, 128],
}

_ABSENT = object()


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node.setdefault(key, {})
    if value is _ABSENT:
        node.pop(last, None)
    else:
        node[last] = value


# (id, {path: value}, field path expected, fragment of the message, API server can check)
CASES: list[tuple[str, dict[str, Any], str, str, bool]] = [
    (
        "floor-above-target",
        {"spec.quality.emFloor": 0.9},
        "spec.quality.emFloor",
        "emFloor must not exceed emTarget",
        True,
    ),
    (
        "min-above-max",
        {"spec.budget.min": 2048},
        "spec.budget.min",
        "min must not exceed max",
        True,
    ),
    (
        "initial-below-min",
        {"spec.budget.initial": 32},
        "spec.budget.initial",
        "initial must lie within [min, max]",
        True,
    ),
    (
        "initial-above-max",
        {"spec.budget.initial": 4096},
        "spec.budget.initial",
        "initial must lie within [min, max]",
        True,
    ),
    (
        "negative-budget",
        {"spec.budget.min": -5},
        "spec.budget.min",
        "greater than or equal to 1",
        True,
    ),
    ("zero-budget", {"spec.budget.max": 0}, "spec.budget.max", "greater than or equal to 1", True),
    (
        "unknown-sink-type",
        {"spec.budget.sink.type": "file"},
        "spec.budget.sink.type",
        "'env', 'arg', 'annotation', 'configMap' or 'aiGateway'",
        True,
    ),
    (
        "configmap-sink-without-name",
        {"spec.budget.sink": {"type": "configMap", "name": "max_tokens"}},
        "spec.budget.sink.configMapName",
        "configMapName is required when type is configMap",
        True,
    ),
    (
        "configmap-name-on-env-sink",
        {"spec.budget.sink.configMapName": "limits"},
        "spec.budget.sink.configMapName",
        "only used when type is configMap",
        True,
    ),
    (
        "aigateway-sink-without-backend",
        {"spec.budget.sink": {"type": "aiGateway", "name": "max_tokens"}},
        "spec.budget.sink.aiServiceBackendName",
        "aiServiceBackendName is required when type is aiGateway",
        True,
    ),
    (
        "aigateway-backend-on-env-sink",
        {"spec.budget.sink.aiServiceBackendName": "vllm"},
        "spec.budget.sink.aiServiceBackendName",
        "only used when type is aiGateway",
        True,
    ),
    (
        "aigateway-sink-nested-field",
        {
            "spec.budget.sink": {
                "type": "aiGateway",
                "name": "custom_params.thinking_budget",
                "aiServiceBackendName": "sglang",
            }
        },
        "spec.budget.sink.name",
        "top-level field of the request body",
        True,
    ),
    (
        "aigateway-format-not-json",
        {
            "spec.budget.sink": {
                "type": "aiGateway",
                "name": "max_tokens",
                "aiServiceBackendName": "vllm",
                "format": "max={budget}",
            }
        },
        "spec.budget.sink",
        "does not render a JSON value",
        False,  # CEL cannot parse JSON: the operator reports it (InvalidSpec)
    ),
    (
        "aigateway-thinking-budget-into-max-tokens",
        {
            "spec.budget.kind": "thinking",
            "spec.budget.sink": {
                "type": "aiGateway",
                "name": "max_tokens",
                "aiServiceBackendName": "vllm",
            },
        },
        "spec.budget.sink.name",
        "must be a field of the budget's kind",
        True,
    ),
    (
        "aigateway-output-budget-into-thinking-field",
        {
            "spec.budget.sink": {
                "type": "aiGateway",
                "name": "thinking_token_budget",
                "aiServiceBackendName": "vllm",
            },
        },
        "spec.budget.sink.name",
        "with kind thinking the engine's thinking field",
        True,
    ),
    (
        "refresh-pods-on-env-sink",
        {"spec.budget.sink.refreshPods": True},
        "spec.budget.sink.refreshPods",
        "only used with type configMap",
        True,
    ),
    (
        "arg-sink-not-a-flag",
        {"spec.budget.sink": {"type": "arg", "name": "max-tokens"}},
        "spec.budget.sink.name",
        "the flag whose value is set",
        True,
    ),
    (
        "format-without-placeholder",
        {"spec.budget.sink.format": "512"},
        "spec.budget.sink.format",
        "must contain the placeholder {budget}",
        True,
    ),
    (
        "unparsable-duration",
        {"spec.control.interval": "5 minutes"},
        "spec.control.interval",
        "is not a duration",
        True,
    ),
    (
        "bare-number-duration",
        {"spec.control.cooldown": 300},
        "spec.control.cooldown",
        "is not a duration",
        True,
    ),
    (
        "interval-too-short",
        {"spec.control.interval": "0s"},
        "spec.control.interval",
        "between 1s and 1h",
        True,
    ),
    (
        "ladder-outside-bounds",
        {"spec.audit": {**AUDIT, "budgets": [32, 128, 4096]}},
        "spec.audit.budgets",
        "every audit budget must lie within [budget.min, budget.max]",
        True,
    ),
    (
        "prior-outside-bounds",
        {"spec.quality.prior": [{"budget": 8, "em": 0.5, "samples": 10}]},
        "spec.quality.prior",
        "every prior budget must lie within",
        True,
    ),
    (
        "prior-with-old-name-n",
        {"spec.quality.prior": [{"budget": 256, "em": 0.5, "n": 200}]},
        "spec.quality.prior[0].n",
        "n is now called samples: write samples: 200 instead",
        True,
    ),
    (
        "prior-n-as-kubectl-reads-it",  # `n: 200` read by a YAML 1.1 parser and written out
        {"spec.quality.prior": [{"budget": 256, "em": 0.5, "false": 200}]},
        "spec.quality.prior[0].false",
        "the old field n as kubectl and Helm read it (YAML 1.1 reads a plain n as false): "
        "write samples: 200",
        True,
    ),
    (
        "prior-n-as-boolean-key",  # a plain `false: 200` read by PyYAML
        {"spec.quality.prior": [{"budget": 256, "em": 0.5, False: 200}]},
        "spec.quality.prior[0].false",
        "write samples: 200 instead",
        True,
    ),
    (
        "prior-n-pruned-by-the-api-server",  # a stored n after the new CRD was applied
        {"spec.quality.prior": [{"budget": 256, "em": 0.5}]},
        "spec.quality.prior[0].samples",
        "samples was called n before, and the API server drops an n it no longer knows",
        True,
    ),
    (
        "unknown-preset",
        {"spec.load": {"preset": "triton"}},
        "spec.load.preset",
        "'vllm', 'sglang', 'tgi', 'llamacpp' or 'none'",
        True,
    ),
    (
        "empty-signal-query",
        {"spec.load": {"signals": [{"name": "q", "query": "", "target": 1}]}},
        "spec.load.signals[0].query",
        "at least 1 character",
        True,
    ),
    (
        "blank-signal-query",
        {"spec.load": {"signals": [{"name": "q", "query": "   ", "target": 1}]}},
        "spec.load.signals[0].query",
        "is blank: write a PromQL expression",
        True,
    ),
    (
        "signal-target-zero",
        {"spec.load": {"signals": [{"name": "q", "query": "up", "target": 0}]}},
        "spec.load.signals[0].target",
        "greater than 0",
        True,
    ),
    (
        "signal-target-negative",
        {"spec.load": {"signals": [{"name": "q", "query": "up", "target": -2}]}},
        "spec.load.signals[0].target",
        "greater than 0",
        True,
    ),
    (
        "signal-without-query-no-preset",
        {"spec.load": {"signals": [{"name": "queue", "target": 4}]}},
        "spec.load.signals",
        "every signal needs a query unless",
        True,
    ),
    (
        "duplicate-signal-names",
        {
            "spec.load": {
                "signals": [
                    {"name": "q", "query": "up", "target": 1},
                    {"name": "q", "query": "up", "target": 2},
                ]
            }
        },
        "spec.load.signals",
        "duplicate signal name",
        True,
    ),
    (
        "cron-wrong-shape",
        {"spec.audit": {**AUDIT, "schedule": "every day"}},
        "spec.audit.schedule",
        "is not a cron expression",
        True,
    ),
    (
        "cron-bad-field",
        {"spec.audit": {**AUDIT, "schedule": "61 * * * *"}},
        "spec.audit.schedule",
        "is not a cron expression",
        False,
    ),
    (
        "answer-pattern-invalid",
        {"spec.audit": {**AUDIT, "answerPattern": "(unclosed"}},
        "spec.audit.answerPattern",
        "is not a regular expression",
        False,
    ),
    (
        "answer-pattern-no-group",
        {"spec.audit": {**AUDIT, "answerPattern": "answer: \\d+"}},
        "spec.audit.answerPattern",
        "has no capture group",
        False,
    ),
    (
        "em-target-above-one",
        {"spec.quality.emTarget": 1.2},
        "spec.quality.emTarget",
        "less than or equal to 1",
        True,
    ),
    (
        "em-floor-negative",
        {"spec.quality.emFloor": -0.1},
        "spec.quality.emFloor",
        "greater than or equal to 0",
        True,
    ),
    (
        "cost-cap-below-min",
        {"spec.cost": {"maxTokensPerRequest": 32}},
        "spec.cost.maxTokensPerRequest",
        "must be at least budget.min",
        True,
    ),
    ("unknown-field", {"spec.budget.maximum": 10}, "spec.budget.maximum", "unknown field", True),
    ("unknown-top-level-field", {"spec.budgets": {}}, "spec.budgets", "unknown field", True),
    ("missing-target", {"spec.targetRef": _ABSENT}, "spec.targetRef", "Field required", True),
    (
        "bad-deployment-name",
        {"spec.targetRef.name": "Vllm_Server"},
        "spec.targetRef.name",
        "is not a Kubernetes name",
        True,
    ),
    (
        "unknown-mode",
        {"spec.control.mode": "auto"},
        "spec.control.mode",
        "'Auto', 'Recommend' or 'Paused'",
        True,
    ),
    (
        "tolerance-too-high",
        {"spec.control.tolerance": 1.5},
        "spec.control.tolerance",
        "less than or equal to 0.9",
        True,
    ),
    (
        "bad-endpoint",
        {"spec.audit": {**AUDIT, "endpoint": "vllm:8000"}},
        "spec.audit.endpoint",
        "is not an http(s) URL",
        True,
    ),
    (
        "empty-ladder",
        {"spec.audit": {**AUDIT, "budgets": []}},
        "spec.audit.budgets",
        "at least 1 item",
        True,
    ),
    (
        "bad-selector-label",
        {"spec.load": {"selector": {"model-name": "x"}}},
        "spec.load.selector",
        "is not a Prometheus label name",
        True,
    ),
]


def _norm(path: str) -> str:
    return re.sub(r"\[(\d+)\]", r".\1", path)


@pytest.mark.parametrize(
    ("changes", "path", "fragment", "server_checks"),
    [pytest.param(*c[1:], id=c[0]) for c in CASES],
)
def test_rejected_with_field_and_fix(
    policy: dict[str, Any], changes: dict[str, Any], path: str, fragment: str, server_checks: bool
) -> None:
    for key, value in changes.items():
        _set(policy, key, value)

    problems = validate.check_document(policy)
    assert problems, "stopbudget validate accepted a bad policy"
    matching = [m for p, m in problems if p.startswith(path)]
    assert matching, f"no problem reported at {path}: {problems}"
    assert any(fragment in m for m in matching), f"{fragment!r} not in {matching}"

    rejected = admit(policy)
    if server_checks:
        assert rejected, "the API server would admit this policy"
        want = _norm(path)
        assert any(want.startswith(_norm(p)) or _norm(p).startswith(want) for p, _ in rejected), (
            rejected
        )
    else:
        assert rejected == [], "case marked as unchecked by the API server, but it is"


def test_minimal_policy_is_valid(policy: dict[str, Any]) -> None:
    assert validate.check_document(policy) == []
    assert admit(policy) == []


def test_every_problem_is_reported_not_only_the_first(policy: dict[str, Any]) -> None:
    _set(policy, "spec.quality.emFloor", 0.95)
    _set(policy, "spec.budget.initial", 4096)
    _set(policy, "spec.control.interval", "soon")
    paths = {p for p, _ in validate.check_document(policy)}
    assert {"spec.quality.emFloor", "spec.budget.initial", "spec.control.interval"} <= paths


@pytest.mark.parametrize("key", ["n", "false", False])
def test_an_old_n_is_one_problem_and_the_rest_is_still_checked(
    policy: dict[str, Any], key: object
) -> None:
    _set(policy, "spec.quality.prior", [{"budget": 256, "em": 0.5, key: 200}])
    _set(policy, "spec.quality.emFloor", 0.95)
    problems = validate.check_document(policy)
    assert [p for p, _ in problems] == [
        "spec.quality.emFloor",
        f"spec.quality.prior[0].{str(key).lower()}",
    ], problems
    assert "write samples: 200 instead" in problems[1][1]


def test_a_file_with_the_old_n_names_the_new_field() -> None:
    text = (ROOT / "examples" / "recommend-mode.yaml").read_text(encoding="utf-8")
    old = re.sub(r"samples: (\d+)", r"n: \1", text)
    assert old != text
    problems = validate.check_text(old, "old.yaml")
    assert [str(p) for p in problems] == [
        f"old.yaml: spec.quality.prior[{i}].n: n is now called samples: write samples: 300 instead"
        for i in range(3)
    ]
