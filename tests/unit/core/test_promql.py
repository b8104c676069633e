"""promql.py: the presets' queries, the per-tick plan, and label escaping.

Table-driven and property-based tests of the pure module; that every generated query
and selector parses in a real Prometheus and reads back exactly is checked in
tests/e2e/test_promql.py.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stopbudget import api
from stopbudget.api import Preset
from stopbudget.core import promql
from stopbudget.core.promql import PromQLError, Role
from tests.support.builders import MINIMAL

SEL = {"namespace": "serving", "model_name": "llama"}
M = '{model_name="llama",namespace="serving"}'


def spec_with(**sections: Any) -> api.StopPolicySpec:
    doc = copy.deepcopy(MINIMAL["spec"])
    doc.update(sections)
    return api.StopPolicySpec.model_validate(doc)


# --------------------------------------------------------------------------- literals


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        ("llama", '"llama"'),
        ("", '""'),
        ('say "hi"', r'"say \"hi\""'),
        ("C:\\models\\llama", r'"C:\\models\\llama"'),
        ("two\nlines", r'"two\nlines"'),
        ("tab\there", r'"tab\there"'),
        ("cr\r", r'"cr\r"'),
        ("nul\x00", r'"nul\u0000"'),
        ("bell\x07del\x7f", r'"bell\u0007del\u007f"'),
        ("c1\x85", r'"c1\u0085"'),
        # U+FFFD raw makes Prometheus' lexer report "invalid UTF-8 rune" (seen on 2.42).
        ("bad\ufffd", r'"bad\ufffd"'),
        ("ünïcödé 😀", '"ünïcödé 😀"'),
        ("$1 ${x} {budget}", '"$1 ${x} {budget}"'),
        ("'single'", "\"'single'\""),
    ],
)
def test_quote(value: str, literal: str) -> None:
    assert promql.quote(value) == literal


def test_quote_rejects_a_lone_surrogate() -> None:
    with pytest.raises(PromQLError, match="surrogate"):
        promql.quote("\ud800")


@given(st.text())
def test_quote_reads_back_as_json(value: str) -> None:
    """The escapes used are common to PromQL (Go) and JSON, so JSON reads them back too."""
    literal = promql.quote(value)
    assert json.loads(literal) == value
    assert "\n" not in literal
    assert literal.startswith('"')
    assert literal.endswith('"')


MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)=("(?:[^"\\\n]|\\.)*")(?:,|$)')


@given(st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), st.text()))
def test_matchers_parse_back_sorted(labels: dict[str, str]) -> None:
    labels.pop("__name__", None)
    text = promql.matchers(labels)
    if not labels:
        assert text == ""
        return
    assert text.startswith("{")
    assert text.endswith("}")
    body = text[1:-1]
    parsed: list[tuple[str, str]] = []
    pos = 0
    while pos < len(body):
        match = MATCHER.match(body, pos)
        assert match is not None, body[pos:]
        parsed.append((match.group(1), json.loads(match.group(2))))
        pos = match.end()
    assert parsed == sorted(labels.items())


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"__name__": "x"}, "cannot match __name__"),
        ({"bad-name": "x"}, "not a Prometheus label name"),
        ({"0abc": "x"}, "not a Prometheus label name"),
    ],
)
def test_matchers_reject(labels: dict[str, str], message: str) -> None:
    with pytest.raises(PromQLError, match=message):
        promql.matchers(labels)


def test_series_lets_fixed_matchers_win() -> None:
    assert (
        promql.series("vllm:request_success_total", {"finished_reason": "stop", "a": "b"},
                      finished_reason="length")
        == 'vllm:request_success_total{a="b",finished_reason="length"}'
    )  # fmt: skip


@pytest.mark.parametrize("metric", ["", "1abc", "has-dash", "sp ace", 'q"'])
def test_series_rejects_bad_metric_names(metric: str) -> None:
    with pytest.raises(PromQLError, match="metric name"):
        promql.series(metric, {})


# --------------------------------------------------------------------------- presets

LAT = "({q} and on() ({n} > 0)) or on() ({n} == 0)"


def _latency(histogram: str, matchers: str, window: str = "2m") -> str:
    q = f"histogram_quantile(0.95, sum by (le) (rate({histogram}_bucket{matchers}[{window}])))"
    n = f"sum(rate({histogram}_count{matchers}[{window}]))"
    return LAT.format(q=q, n=n)


PRESET_TABLE = [
    (Preset.VLLM, "queue", f"sum(vllm:num_requests_waiting{M})"),
    (Preset.VLLM, "kvCache", f"max(vllm:kv_cache_usage_perc{M})"),
    (Preset.VLLM, "latencyP95", _latency("vllm:e2e_request_latency_seconds", M)),
    (Preset.SGLANG, "queue", f"sum(sglang:num_queue_reqs{M})"),
    (Preset.SGLANG, "kvCache", f"max(sglang:token_usage{M})"),
    (Preset.SGLANG, "latencyP95", _latency("sglang:e2e_request_latency_seconds", M)),
    (Preset.TGI, "queue", f"sum(tgi_queue_size{M})"),
    (Preset.TGI, "latencyP95", _latency("tgi_request_duration", M)),
    (Preset.LLAMACPP, "queue", f"sum(llamacpp:requests_deferred{M})"),
    (Preset.LLAMACPP, "running", f"sum(llamacpp:requests_processing{M})"),
    (Preset.LLAMACPP, "tokensPerSecond", f"sum(rate(llamacpp:tokens_predicted_total{M}[2m]))"),
]


@pytest.mark.parametrize(("preset", "signal", "expected"), PRESET_TABLE)
def test_preset_queries(preset: Preset, signal: str, expected: str) -> None:
    assert promql.preset_query(preset, signal, SEL) == expected


def test_every_preset_signal_has_a_query() -> None:
    listed = {(p, s) for p, names in api.PRESET_SIGNALS.items() for s in names}
    assert listed == {(p, s) for p, s, _ in PRESET_TABLE}


def test_engine_series_lists_what_the_presets_read() -> None:
    names = promql.engine_series()
    assert {"vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"} <= names
    assert {"vllm:e2e_request_latency_seconds_bucket", "vllm:request_success_total"} <= names
    assert {"sglang:num_queue_reqs", "sglang:token_usage", "tgi_queue_size"} <= names
    assert {"tgi_request_duration_bucket", "tgi_request_duration_count"} <= names
    assert {"llamacpp:requests_deferred", "llamacpp:tokens_predicted_total"} <= names
    for p, names_ in api.PRESET_SIGNALS.items():
        for signal in names_:
            query = promql.preset_query(p, signal, {})
            assert any(n in query for n in names), query


def test_preset_without_selector_has_no_braces() -> None:
    assert promql.preset_query(Preset.TGI, "queue", {}) == "sum(tgi_queue_size)"


def test_window_is_used_and_checked() -> None:
    assert "[30s]" in promql.preset_query(Preset.VLLM, "latencyP95", SEL, window="30s")
    with pytest.raises(PromQLError, match="not a PromQL range"):
        promql.preset_query(Preset.VLLM, "latencyP95", SEL, window="30")


@pytest.mark.parametrize(
    ("preset", "signal"),
    [
        (Preset.TGI, "kvCache"),
        (Preset.NONE, "queue"),
        (Preset.VLLM, "gpu"),
        (Preset.LLAMACPP, "latencyP95"),
        (Preset.VLLM, "tokensPerSecond"),
    ],
)
def test_preset_query_names_what_is_offered(preset: Preset, signal: str) -> None:
    with pytest.raises(PromQLError, match="offers"):
        promql.preset_query(preset, signal, SEL)


def test_truncation_query() -> None:
    total = f"sum(rate(vllm:request_success_total{M}[2m]))"
    cut = (
        'sum(rate(vllm:request_success_total{finished_reason="length",model_name="llama",'
        'namespace="serving"}[2m]))'
    )
    assert promql.truncation_query(Preset.VLLM, SEL) == (
        f"(({cut} or on() vector(0)) / ({total} > 0)) or on() ({total} == 0)"
    )
    for preset in (Preset.SGLANG, Preset.TGI, Preset.LLAMACPP, Preset.NONE):
        assert promql.truncation_query(preset, SEL) is None


def test_quantile_bounds() -> None:
    with pytest.raises(PromQLError, match="quantile"):
        promql.quantile_over("h", {}, 1.5, "1m")


# --------------------------------------------------------------------------- the plan


def test_plan_of_a_vllm_policy() -> None:
    spec = spec_with(
        quality={"emTarget": 0.8, "emFloor": 0.7, "query": "avg(live_em)"},
        load={
            "preset": "vllm",
            "selector": SEL,
            "signals": [
                {"name": "queue", "target": 16},
                {"name": "p99", "query": "histogram_quantile(0.99, x)", "target": 30},
                {"name": "kvCache", "query": "max(my_kv)", "target": 0.9},
            ],
        },
    )
    queries = promql.plan(spec)
    assert [(q.role, q.name, q.target) for q in queries] == [
        (Role.SIGNAL, "queue", 16.0),
        (Role.SIGNAL, "p99", 30.0),
        (Role.SIGNAL, "kvCache", 0.9),  # the signal's own query beats the preset's
        (Role.QUALITY, "quality", None),
        (Role.TRUNCATION, "truncation", None),
    ]
    assert queries[0].expr == f"sum(vllm:num_requests_waiting{M})"
    assert queries[1].expr == "histogram_quantile(0.99, x)"
    assert queries[2].expr == "max(my_kv)"
    assert queries[3].expr == "avg(live_em)"
    assert queries[4].expr == promql.truncation_query(Preset.VLLM, SEL)


def test_plan_without_load_or_quality_query_is_empty() -> None:
    assert promql.plan(spec_with()) == ()


def test_plan_of_tgi_has_no_truncation() -> None:
    spec = spec_with(load={"preset": "tgi", "signals": [{"name": "queue", "target": 4}]})
    assert [q.role for q in promql.plan(spec)] == [Role.SIGNAL]


def test_plan_passes_the_window() -> None:
    spec = spec_with(load={"preset": "sglang", "signals": [{"name": "latencyP95", "target": 9}]})
    (query,) = promql.plan(spec, window="15s")
    assert "[15s]" in query.expr


MODEL_QUERIES = {
    "arrivalRate": promql.arrival_rate_query,
    "throughput": promql.throughput_query,
    "servedTokens": promql.served_tokens_query,
}


@pytest.mark.parametrize(
    ("preset", "roles"),
    [
        ("vllm", [Role.ARRIVAL_RATE, Role.THROUGHPUT, Role.SERVED_TOKENS]),
        ("tgi", [Role.ARRIVAL_RATE, Role.THROUGHPUT, Role.SERVED_TOKENS]),
        ("sglang", [Role.THROUGHPUT]),  # no request counter: no arrival rate
        ("llamacpp", [Role.THROUGHPUT]),
        ("none", []),
    ],
)
def test_plan_reads_the_queueing_models_inputs_where_the_engine_has_them(
    preset: str, roles: list[Role]
) -> None:
    signals = [] if preset == "none" else [{"name": "queue", "target": 4}]
    load = {"preset": preset, "signals": signals}
    default = [q.role for q in promql.plan(spec_with(load=load))]
    assert not set(default) & set(roles)  # the reactive model reads none of them
    queueing = promql.plan(spec_with(load=load, control={"model": "queueing"}))
    assert [q.role for q in queueing] == default + roles
    assert [q.name for q in queueing[len(default) :]] == [r.value for r in roles]


def test_the_queueing_models_queries() -> None:
    assert promql.arrival_rate_query(Preset.VLLM, SEL, window="30s") == (
        f"sum(rate(vllm:request_success_total{M}[30s])) + "
        f"(sum(delta(vllm:num_requests_waiting{M}[30s])) + "
        f"sum(delta(vllm:num_requests_running{M}[30s]))) / 30"
    )
    assert promql.arrival_rate_query(Preset.TGI, {}, window="1h30m") == (
        "sum(rate(tgi_request_count[1h30m]))"
    )
    assert promql.throughput_query(Preset.LLAMACPP, {}) == (
        "sum(rate(llamacpp:tokens_predicted_total[2m]))"
    )
    assert promql.served_tokens_query(Preset.VLLM, {}) == (
        "sum(rate(vllm:generation_tokens_total[2m])) / "
        "(sum(rate(vllm:request_success_total[2m])) > 0)"
    )
    assert promql.arrival_rate_query(Preset.NONE, {}) is None
    with pytest.raises(PromQLError, match="range"):
        promql.throughput_query(Preset.VLLM, {}, window="2")


def test_plan_reports_a_selector_on_name() -> None:
    spec = spec_with(
        load={
            "preset": "vllm",
            "selector": {"__name__": "x"},
            "signals": [{"name": "queue", "target": 4}],
        }
    )
    with pytest.raises(PromQLError, match="__name__"):
        promql.plan(spec)


# --------------------------------------------------------------------------- real parser

SEL_TRICKY = {"namespace": "serving", "model_name": 'meta-llama/"x"\\\n\ufffd'}


def _all_queries() -> list[tuple[str, str]]:
    out = [
        (f"{p.value}.{s}", promql.preset_query(p, s, SEL_TRICKY))
        for p, names in api.PRESET_SIGNALS.items()
        for s in names
    ]
    truncation = promql.truncation_query(Preset.VLLM, SEL_TRICKY)
    assert truncation is not None
    out.append(("vllm.truncation", truncation))
    for preset in Preset:
        for name, build in MODEL_QUERIES.items():
            expr = build(preset, SEL_TRICKY)
            if expr is not None:
                out.append((f"{preset.value}.{name}", expr))
    return out


label_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,12}", fullmatch=True).filter(
    lambda n: not n.startswith("__")
)
# Any text Prometheus can hold (valid UTF-8), biased towards what needs escaping.
label_values = st.text(
    alphabet=st.one_of(
        st.sampled_from(['"', "\\", "\n", "\r", "\t", "\x00", "\ufffd", "'", "`", "}", "{", "="]),
        st.characters(codec="utf-8"),
    ),
    max_size=24,
)
