"""Durations and sink formats: parsing and printing are inverse, errors name the fix."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stopbudget import api


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("1h30m", 5400),
        ("250ms", 0.25),
        ("1.5h", 5400),
        ("0s", 0),
        ("2h0m5s", 7205),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert api.parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "5", "5 minutes", "1d", "-5s", "5S", "m5", "1h 30m"])
def test_bad_duration_names_the_fix(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration: write a number followed by"):
        api.parse_duration(text)


@given(st.integers(min_value=0, max_value=10**9))
def test_format_then_parse_is_identity(millis: int) -> None:
    value = timedelta(milliseconds=millis)
    text = api.format_duration(value)
    assert api.parse_duration(text) == value
    assert api.format_duration(api.parse_duration(text)) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(30, "30s"), (300, "5m"), (5400, "1h30m"), (0.25, "250ms"), (90.5, "1m30.5s"), (0, "0s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert api.format_duration(timedelta(seconds=seconds)) == text


SINKS = [
    {"type": "env", "name": "MAX_TOKENS"},
    {
        "type": "arg",
        "name": "--override-generation-config",
        "format": '{"max_new_tokens": {budget}}',
    },
    {"type": "annotation", "name": "stopbudget.io/budget", "format": "tokens={budget}"},
    {"type": "configMap", "name": "max_tokens", "configMapName": "limits"},
]


@pytest.mark.parametrize("sink", SINKS)
@given(budget=st.integers(min_value=1, max_value=10_000_000))
def test_sink_render_then_parse_is_identity(sink: dict[str, str], budget: int) -> None:
    model = api.Sink.model_validate(sink)
    assert model.parse(model.render(budget)) == budget


def test_sink_parse_rejects_values_of_another_shape() -> None:
    sink = api.Sink.model_validate(SINKS[1])
    assert sink.parse('{"max_new_tokens": 256}') == 256
    assert sink.parse('{"temperature": 0}') is None
    assert sink.parse("256") is None
    twice = api.Sink.model_validate({"type": "env", "name": "X", "format": "{budget}-{budget}"})
    assert twice.parse("5-5") == 5
    assert twice.parse("5-6") is None
