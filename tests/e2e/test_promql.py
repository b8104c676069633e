"""promql.py's generated queries and selectors parse in a real Prometheus and read back
exactly (the pure module's tests: tests/unit/core/test_promql.py).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stopbudget.core import promql
from stopbudget.devkit import servers
from tests.unit.core.test_promql import _all_queries, label_names, label_values


@pytest.mark.servers
@pytest.mark.parametrize(("name", "expr"), _all_queries())
def test_query_parses_in_real_prometheus(
    prometheus_server: servers.DevPrometheus, name: str, expr: str
) -> None:
    """format_query parses without evaluating; then the query evaluates without error."""
    formatted = prometheus_server.api("format_query", query=expr)
    assert isinstance(formatted, str)
    assert formatted
    data = prometheus_server.query(expr)
    assert data["resultType"] == "vector", name


@pytest.mark.servers
def test_colon_metric_names_parse_as_written(prometheus_server: servers.DevPrometheus) -> None:
    for metric in (promql.VLLM_WAITING, promql.SGLANG_QUEUE, promql.VLLM_KV_CACHE):
        assert prometheus_server.api("format_query", query=metric) == metric


@pytest.mark.servers
@settings(max_examples=150, deadline=None)
@given(selector=st.dictionaries(label_names, label_values, max_size=4))
def test_selector_round_trips_through_real_prometheus(
    prometheus_server: servers.DevPrometheus, selector: dict[str, str]
) -> None:
    """absent(m{a="v"}) returns the labels of its equality matchers, as Prometheus read them."""
    expr = f"absent({promql.series('stopbudget_roundtrip_absent', selector)})"
    data = prometheus_server.query(expr)
    (sample,) = data["result"]
    # An empty value matches "label absent", and absent() leaves such labels out.
    assert sample["metric"] == {k: v for k, v in selector.items() if v}
