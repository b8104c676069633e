"""Tokens and finish reasons read off responses (pure): every API shape, and SSE streams
split at any byte give the same outcome as read whole."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stopbudget.gate import usage
from stopbudget.gate.usage import StreamScanner, from_json


def _sse(*events: Any, done: bool = True) -> bytes:
    lines = [f"data: {json.dumps(e)}\n\n".encode() for e in events]
    return b"".join(lines) + (b"data: [DONE]\n\n" if done else b"")


WHOLE = [
    (
        {"choices": [{"index": 0, "finish_reason": "length"}], "usage": {"completion_tokens": 8}},
        8,
        {0: "length"},
    ),
    (
        {
            "choices": [
                {"index": 0, "finish_reason": "stop"},
                {"index": 1, "finish_reason": "tool_calls"},
            ],
            "usage": {"completion_tokens": 30},
        },
        30,
        {0: "stop", 1: "tool_calls"},
    ),
    ({"choices": [{"index": 0, "finish_reason": "weird"}]}, None, {0: "other"}),
    # responses: incomplete because of max_output_tokens is "length"
    (
        {
            "object": "response",
            "status": "incomplete",
            "incomplete_details": {"reason": "max_output_tokens"},
            "usage": {"output_tokens": 16},
        },
        16,
        {0: "length"},
    ),
    ({"object": "response", "status": "completed", "usage": {"output_tokens": 3}}, 3, {0: "stop"}),
    # Anthropic messages
    (
        {"type": "message", "stop_reason": "max_tokens", "usage": {"output_tokens": 5}},
        5,
        {0: "length"},
    ),
    ({"type": "message", "stop_reason": "end_turn", "usage": {"output_tokens": 5}}, 5, {0: "stop"}),
    # llama.cpp /completion
    ({"content": "x", "stop_type": "limit", "tokens_predicted": 7}, 7, {0: "length"}),
    ({"content": "x", "stop_type": "eos", "tokens_predicted": 2}, 2, {0: "stop"}),
    ({"usage": {"completion_tokens": True}}, None, {}),
    ({"usage": {"completion_tokens": -1}}, None, {}),
]


@pytest.mark.parametrize(("body", "tokens", "reasons"), WHOLE)
def test_whole_responses(body: Any, tokens: int | None, reasons: dict[int, str]) -> None:
    outcome = from_json(json.dumps(body).encode())
    assert outcome.tokens == tokens
    assert outcome.reasons == reasons


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1, 2]", b'"x"', b"[" * 50_000])
def test_not_a_response_is_nothing(raw: bytes) -> None:
    outcome = from_json(raw)
    assert outcome.tokens is None
    assert outcome.reasons == {}


def test_every_reason_folds_into_the_fixed_set() -> None:
    for reason in ("stop", "length", "max_tokens", "tool_use", "abort", "x" * 100, ""):
        assert usage.normalize_reason(reason) in usage.REASONS


CHAT_STREAM = _sse(
    {"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]},
    {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 12}},
)
RESPONSES_STREAM = (
    b"event: response.created\n"
    + _sse(
        {"type": "response.created", "response": {"object": "response", "status": "in_progress"}},
        done=False,
    )
    + b"event: response.incomplete\n"
    + _sse(
        {
            "type": "response.incomplete",
            "response": {
                "object": "response",
                "status": "incomplete",
                "incomplete_details": {"reason": "max_output_tokens"},
                "usage": {"output_tokens": 9},
            },
        },
        done=False,
    )
)
MESSAGES_STREAM = _sse(
    {"type": "message_start", "message": {"usage": {"output_tokens": 1}}},
    {"type": "content_block_delta", "delta": {"text": "Hi"}},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "max_tokens"},
        "usage": {"output_tokens": 6},
    },
    done=False,
)
# llama.cpp's chat stream: no usage unless asked for, CRLF line ends here
LLAMA_STREAM = _sse(
    {"choices": [{"finish_reason": None, "index": 0, "delta": {"content": " of"}}]},
    {"choices": [{"finish_reason": "stop", "index": 0, "delta": {}}], "timings": {}},
).replace(b"\n", b"\r\n")

STREAMS = [
    (CHAT_STREAM, 12, {0: "length"}),
    (RESPONSES_STREAM, 9, {0: "length"}),
    (MESSAGES_STREAM, 6, {0: "length"}),
    (LLAMA_STREAM, None, {0: "stop"}),
]


@pytest.mark.parametrize(("stream", "tokens", "reasons"), STREAMS)
def test_streams_read_whole(stream: bytes, tokens: int | None, reasons: dict[int, str]) -> None:
    scanner = StreamScanner()
    scanner.feed(stream)
    assert scanner.outcome.tokens == tokens
    assert scanner.outcome.reasons == reasons


@pytest.mark.slow
@pytest.mark.parametrize(("stream", "tokens", "reasons"), STREAMS)
@given(data=st.data())
def test_streams_split_anywhere(
    stream: bytes, tokens: int | None, reasons: dict[int, str], data: st.DataObject
) -> None:
    cuts = sorted(data.draw(st.sets(st.integers(min_value=1, max_value=len(stream) - 1))))
    scanner = StreamScanner()
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        scanner.feed(stream[start:end])
    assert scanner.outcome.tokens == tokens
    assert scanner.outcome.reasons == reasons


def test_a_stream_of_token_chunks_is_never_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[bytes] = []
    real = json.loads

    def spy(raw: Any, *args: Any, **kwargs: Any) -> Any:
        parsed.append(raw)
        return real(raw, *args, **kwargs)

    monkeypatch.setattr(usage.json, "loads", spy)
    scanner = StreamScanner()
    for _ in range(100):
        scanner.feed(
            _sse({"choices": [{"delta": {"content": "x"}, "finish_reason": None}]}, done=False)
        )
    assert parsed == []
    scanner.feed(_sse({"choices": [{"delta": {}, "finish_reason": "stop"}]}))
    assert len(parsed) == 1


def test_an_overlong_line_is_skipped_not_kept() -> None:
    scanner = StreamScanner()
    scanner.feed(b"data: " + b"x" * (usage.MAX_LINE + 10))
    scanner.feed(b"\n\n" + _sse({"choices": [{"finish_reason": "stop"}]}))
    assert scanner.outcome.reasons == {0: "stop"}
