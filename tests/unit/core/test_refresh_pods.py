"""refreshPods, the pure part: the Deployment's selector as a ``labelSelector`` query, and
which pods get the annotation (``stopbudget.core.sinks``).  The listing and the patches run
end to end on both backends in ``tests/test_operator_e2e.py``.

The query is checked against the selector's meaning (the Kubernetes API conventions) with
the label-selector parser the emulator serves lists with (``GAP 8``), on generated
selectors and label sets.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stopbudget import api
from stopbudget.core import sinks
from stopbudget.devkit.emulator import selector_matches


def deployment(selector: dict[str, Any] | None) -> dict[str, Any]:
    spec = {} if selector is None else {"selector": selector}
    return {"metadata": {"name": "vllm"}, "spec": spec}


SELECTORS = [
    ({"matchLabels": {"app": "vllm"}}, "app=vllm"),
    (
        {
            "matchLabels": {"app": "vllm", "tier": "gpu"},
            "matchExpressions": [
                {"key": "zone", "operator": "In", "values": ["a", "b"]},
                {"key": "canary", "operator": "DoesNotExist"},
                {"key": "team", "operator": "Exists"},
                {"key": "stage", "operator": "NotIn", "values": ["dev"]},
            ],
        },
        "app=vllm,tier=gpu,zone in (a,b),!canary,team,stage notin (dev)",
    ),
]


@pytest.mark.parametrize(("selector", "query"), SELECTORS)
def test_pod_selector(selector: dict[str, Any], query: str) -> None:
    assert sinks.pod_selector(deployment(selector)) == query


@pytest.mark.parametrize("selector", [None, {}, {"matchLabels": {}}])
def test_no_selector_refreshes_nothing_and_says_so(selector: dict[str, Any] | None) -> None:
    with pytest.raises(sinks.SinkTargetError, match=r"Deployment vllm has no spec\.selector"):
        sinks.pod_selector(deployment(selector))


def test_an_unknown_operator_is_named() -> None:
    bad = {"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}
    with pytest.raises(sinks.SinkTargetError, match="operator 'Gt'"):
        sinks.pod_selector(deployment(bad))


def test_pods_to_refresh_skips_terminating_and_already_refreshed_pods() -> None:
    key = api.ANNOTATION_BUDGET_REVISION
    pods = [
        {"metadata": {"name": "a"}},
        {"metadata": {"name": "b", "annotations": {key: "41"}}},
        {"metadata": {"name": "c", "annotations": {key: "42"}}},
        {"metadata": {"name": "d", "deletionTimestamp": "2026-01-01T00:00:00Z"}},
    ]
    assert sinks.pods_to_refresh(pods, "42") == ["a", "b"]
    assert sinks.refresh_patch("42") == {"metadata": {"annotations": {key: "42"}}}


# --------------------------------------------------------------------------- property

KEYS = st.sampled_from(["app", "tier", "zone", "example.com/team"])
VALUES = st.sampled_from(["a", "b", "vllm", "x-1"])
EXPRESSIONS = st.one_of(
    st.builds(
        lambda k, o, v: {"key": k, "operator": o, "values": v},
        KEYS,
        st.sampled_from(["In", "NotIn"]),
        st.lists(VALUES, min_size=1, max_size=3, unique=True),
    ),
    st.builds(
        lambda k, o: {"key": k, "operator": o}, KEYS, st.sampled_from(["Exists", "DoesNotExist"])
    ),
)


def meaning(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A selector's meaning per the API conventions: every term holds."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op = e["key"], e["operator"]
        holds = {
            "In": key in labels and labels[key] in e.get("values", []),
            "NotIn": key not in labels or labels[key] not in e.get("values", []),
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not holds:
            return False
    return True


@settings(max_examples=300, deadline=None)
@given(
    match_labels=st.dictionaries(KEYS, VALUES, max_size=2),
    expressions=st.lists(EXPRESSIONS, max_size=3),
    labels=st.dictionaries(KEYS, VALUES, max_size=4),
)
def test_property_the_query_selects_what_the_selector_means(
    match_labels: dict[str, str], expressions: list[dict[str, Any]], labels: dict[str, str]
) -> None:
    selector = {"matchLabels": match_labels, "matchExpressions": expressions}
    if not match_labels and not expressions:
        return
    query = sinks.pod_selector(deployment(selector))
    assert selector_matches(query, labels) == meaning(selector, labels)
