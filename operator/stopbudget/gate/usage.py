"""What a response says about its generation: tokens and finish reasons. PURE.

Read from a whole JSON response, or from an SSE stream chunk by chunk as it
passes through (:class:`StreamScanner`, which parses only the events that can
carry a finish reason or usage, so token chunks cost a regular-expression
search).  The shapes understood:

* OpenAI completions and chat: ``choices[].finish_reason``,
  ``usage.completion_tokens`` (a stream carries usage only when the client asked
  for it with ``stream_options.include_usage``; the gate does not add it);
* OpenAI responses: ``status`` (``incomplete`` with ``incomplete_details.reason
  = max_output_tokens`` is ``length``), ``usage.output_tokens``; in a stream, the
  ``response.completed`` / ``response.incomplete`` event's ``response``;
* Anthropic messages (vLLM, llama.cpp): ``stop_reason`` (``max_tokens`` is
  ``length``), ``usage.output_tokens``; in a stream, ``message_delta``;
* llama.cpp's ``/completion``: ``stop_type`` (``limit`` is ``length``),
  ``tokens_predicted``.

Finish reasons are folded into a small fixed set (:data:`REASONS`) so the
metric's labels stay bounded whatever an upstream sends.

This module is pure: no I/O, no clock.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["REASONS", "Outcome", "StreamScanner", "from_json", "normalize_reason"]

#: Finish reasons as the gate counts them.
REASONS = ("stop", "length", "tool_calls", "content_filter", "abort", "other")

_REASON: Mapping[str, str] = {
    "stop": "stop",
    "eos": "stop",
    "word": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "completed": "stop",
    "length": "length",
    "max_tokens": "length",
    "max_output_tokens": "length",
    "limit": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "tool_use": "tool_calls",
    "content_filter": "content_filter",
    "abort": "abort",
    "cancelled": "abort",
}

#: The longest SSE line the scanner keeps between chunks; longer ones are skipped.
MAX_LINE = 1 << 20

#: An SSE data line worth parsing: a finish reason that is not null, or usage.
_INTERESTING = re.compile(
    rb'"(?:finish_reason|stop_reason|stop_type)"\s*:\s*"'
    rb'|"usage"\s*:\s*\{'
    rb'|"tokens_predicted"\s*:'
    rb'|"type"\s*:\s*"response\.(?:completed|incomplete|failed)"'
)


def normalize_reason(reason: str) -> str:
    """One of :data:`REASONS`."""
    return _REASON.get(reason, "other")


@dataclass
class Outcome:
    """Tokens generated (None: not reported) and one finish reason per choice."""

    tokens: int | None = None
    reasons: dict[int, str] = field(default_factory=dict)

    def merge(self, data: Any) -> None:
        """Take what one response object (or stream event) says."""
        if not isinstance(data, dict):
            return
        tokens = _tokens(data)
        if tokens is not None:
            self.tokens = tokens  # streams report cumulative usage: the last one counts
        self._choices(data.get("choices"))
        reason = _single_reason(data)
        if reason is not None:
            self.reasons[0] = reason

    def _choices(self, choices: Any) -> None:
        if not isinstance(choices, list):
            return
        for position, choice in enumerate(choices):
            if not isinstance(choice, dict):
                continue
            reason = choice.get("finish_reason")
            if isinstance(reason, str):
                index = choice.get("index", position)
                self.reasons[index if isinstance(index, int) else position] = normalize_reason(
                    reason
                )


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _tokens(data: Mapping[str, Any]) -> int | None:
    usage = data.get("usage")
    if isinstance(usage, dict):
        for name in ("completion_tokens", "output_tokens"):
            found = _count(usage.get(name))
            if found is not None:
                return found
    response = data.get("response")
    if isinstance(response, dict):
        return _tokens(response)
    return _count(data.get("tokens_predicted"))


def _single_reason(data: Mapping[str, Any]) -> str | None:
    """The finish reason of response shapes without ``choices``."""
    for name in ("stop_reason", "stop_type"):
        value = data.get(name)
        if isinstance(value, str) and value != "none":
            return normalize_reason(value)
    delta = data.get("delta")
    if data.get("type") == "message_delta" and isinstance(delta, dict):
        return _single_reason(delta)
    response = data.get("response")
    if isinstance(response, dict) and isinstance(data.get("type"), str):
        return _single_reason(response)
    status = data.get("status")
    if data.get("object") == "response" and isinstance(status, str):
        if status == "incomplete":
            details = data.get("incomplete_details")
            reason = details.get("reason") if isinstance(details, dict) else None
            return normalize_reason(reason if isinstance(reason, str) else "other")
        return normalize_reason(status) if status != "in_progress" else None
    return None


def from_json(body: bytes) -> Outcome:
    """The outcome of a whole JSON response; empty when it is not JSON."""
    outcome = Outcome()
    with contextlib.suppress(ValueError, RecursionError):
        outcome.merge(json.loads(body))
    return outcome


class StreamScanner:
    """Reads an SSE stream's outcome from its chunks, split anywhere."""

    def __init__(self) -> None:
        self.outcome = Outcome()
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        data = self._tail + chunk if self._tail else chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            self._tail = data if len(data) <= MAX_LINE else b""
            return
        self._tail = data[cut + 1 :]
        if len(self._tail) > MAX_LINE:
            self._tail = b""
        complete = data[:cut]
        if _INTERESTING.search(complete) is None:
            return
        for line in complete.split(b"\n"):
            if line.startswith(b"data:") and _INTERESTING.search(line) is not None:
                try:
                    self.outcome.merge(json.loads(line[5:]))
                except (ValueError, RecursionError):
                    continue
