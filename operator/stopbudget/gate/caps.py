"""Per-request token caps: which routes carry which fields, and the body rewrite. PURE.

The gate lowers a request's output limit to the output cap of the request's
class, and the engine's thinking budget to the thinking cap:

* every output field the route knows and the request holds is lowered to the
  cap (``max_tokens``, ``max_completion_tokens`` on chat, ``max_output_tokens``
  on responses, and llama.cpp's ``n_predict``, which llama.cpp reads before
  ``max_tokens``); a smaller client value is kept; a request with none of them
  (or only ``null``) gets the route's default field set to the cap;
* the thinking cap does the same to the engine's own field: vLLM
  ``thinking_token_budget``, SGLang ``custom_params.thinking_budget``, llama.cpp
  ``thinking_budget_tokens`` (OpenAI's API has none: it counts reasoning tokens
  inside ``max_completion_tokens``, so with ``--engine openai`` only the output
  cap applies);
* when both caps apply, the output cap is raised to at least the thinking
  budget the request ends up with plus :data:`ANSWER_ROOM` tokens: engines count
  thinking tokens inside the output limit, so an output cap at or below the
  thinking budget would stop the model while it thinks and no answer would
  ever come out.

Duplicate keys are read as the engines read them: the last one wins
(Python's ``json`` for vLLM and SGLang, nlohmann::json for llama.cpp; measured
on llama-server: ``{"max_tokens": 3, "max_tokens": 7}`` generated 7 tokens).
Whenever a cap is in force the body is re-serialised, changed or not, so the
upstream sees each key once, whatever its own parser does with duplicates; a
body no cap applies to goes through as the client sent it.

This module is pure: no I/O, no clock.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = [
    "ANSWER_ROOM",
    "BadRequestError",
    "Caps",
    "Engine",
    "Kind",
    "Rewrite",
    "Route",
    "normalize_path",
    "rewrite",
    "route_for",
    "thinking_field",
]

#: Tokens left for the answer above the thinking budget when both caps apply.  An
#: Exact-Match answer after the reasoning (a number, a name, a short closing
#: sentence) fits in far fewer; 256 also holds the short summary that reasoning
#: models (DeepSeek-R1 style) write after ``</think>``, while adding little to a
#: thinking budget of the usual 512-8192 tokens.
ANSWER_ROOM = 256


class Engine(StrEnum):
    """The serving engine behind the gate: it decides the thinking field and some routes."""

    VLLM = "vllm"
    SGLANG = "sglang"
    LLAMACPP = "llamacpp"
    OPENAI = "openai"


class Kind(StrEnum):
    """The two budgets: answer tokens in all, and thinking tokens."""

    OUTPUT = "output"
    THINKING = "thinking"


FieldPath = tuple[str, ...]


@dataclass(frozen=True)
class LimitField:
    """A request field holding a token limit."""

    path: FieldPath
    #: llama.cpp's ``n_predict``: a negative value means no limit (-1 is its default).
    negative_is_unlimited: bool = False

    @property
    def name(self) -> str:
        return ".".join(self.path)


@dataclass(frozen=True)
class Route:
    """A route whose requests are capped."""

    #: Label in the gate's metrics.
    name: str
    #: Output-limit fields: each one present is lowered to the cap.
    output: tuple[LimitField, ...]
    #: Set to the cap when no output field is present.
    default: LimitField


@dataclass(frozen=True)
class Caps:
    """The caps of one class; None: no cap of that kind."""

    output: int | None = None
    thinking: int | None = None


@dataclass(frozen=True)
class Rewrite:
    """What :func:`rewrite` did to a body."""

    #: The body to send; None when the original bytes go through unchanged.
    body: bytes | None
    #: The kinds whose field was lowered or set.
    capped: frozenset[Kind]
    #: The request asks for a streamed (SSE) response.
    stream: bool


class BadRequestError(ValueError):
    """The body cannot be capped; ``param`` names the field (None: the body itself)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


# --------------------------------------------------------------------------- routes

_MAX_TOKENS = LimitField(("max_tokens",))
_MAX_COMPLETION_TOKENS = LimitField(("max_completion_tokens",))
_MAX_OUTPUT_TOKENS = LimitField(("max_output_tokens",))
_N_PREDICT = LimitField(("n_predict",), negative_is_unlimited=True)

_COMPLETIONS = Route("completions", (_MAX_TOKENS,), _MAX_TOKENS)
_CHAT = Route("chat", (_MAX_TOKENS, _MAX_COMPLETION_TOKENS), _MAX_TOKENS)
_RESPONSES = Route("responses", (_MAX_OUTPUT_TOKENS,), _MAX_OUTPUT_TOKENS)
#: Anthropic's Messages API, which vLLM and llama.cpp also serve: ``max_tokens``.
_MESSAGES = Route("messages", (_MAX_TOKENS,), _MAX_TOKENS)

_COMMON: Mapping[str, Route] = {
    "/v1/completions": _COMPLETIONS,
    "/v1/chat/completions": _CHAT,
    "/v1/responses": _RESPONSES,
    "/v1/messages": _MESSAGES,
}

# OpenAI's reasoning models refuse max_tokens on chat: they take max_completion_tokens.
_OPENAI: Mapping[str, Route] = {
    **_COMMON,
    "/v1/chat/completions": Route("chat", _CHAT.output, _MAX_COMPLETION_TOKENS),
}


def _llamacpp(route: Route) -> Route:
    return Route(route.name, (*route.output, _N_PREDICT), route.default)


# llama-server also serves its OpenAI routes without /v1, and its own /completion; on
# every route it reads n_predict before max_tokens (measured: n_predict 20 with
# max_tokens 5 generated 20 tokens), so n_predict is capped too.
_LLAMACPP: Mapping[str, Route] = {
    **{path: _llamacpp(route) for path, route in _COMMON.items()},
    "/completions": _llamacpp(_COMPLETIONS),
    "/chat/completions": _llamacpp(_CHAT),
    "/completion": _llamacpp(Route("completion", (_MAX_TOKENS,), _MAX_TOKENS)),
}

ROUTES: Mapping[Engine, Mapping[str, Route]] = {
    Engine.VLLM: _COMMON,
    Engine.SGLANG: _COMMON,
    Engine.LLAMACPP: _LLAMACPP,
    Engine.OPENAI: _OPENAI,
}

_THINKING: Mapping[Engine, LimitField | None] = {
    Engine.VLLM: LimitField(("thinking_token_budget",)),
    Engine.SGLANG: LimitField(("custom_params", "thinking_budget")),
    Engine.LLAMACPP: LimitField(("thinking_budget_tokens",)),
    Engine.OPENAI: None,
}

_SLASHES = re.compile(r"/{2,}")


def normalize_path(path: str) -> str:
    """``path`` as a router would match it: no repeated slashes, dot segments or
    trailing slash, so ``//v1/./chat/completions/`` is not a way around the cap."""
    collapsed = _SLASHES.sub("/", path or "/")
    normal = posixpath.normpath(collapsed)
    return "/" if normal in ("", ".", "//") else normal


def route_for(engine: Engine, method: str, path: str) -> Route | None:
    """The capped route of a request, or None when it passes through unchanged."""
    if method != "POST":
        return None
    return ROUTES[engine].get(normalize_path(path))


def thinking_field(engine: Engine) -> LimitField | None:
    """The engine's thinking-budget field; None when it has none (OpenAI)."""
    return _THINKING[engine]


# --------------------------------------------------------------------------- parsing


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse(body: bytes) -> dict[str, Any]:
    """The body as an object; of duplicate keys the last one wins, as in the engines."""
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise BadRequestError("the body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN
        raise BadRequestError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequestError(
            f"the body must be a JSON object, got {_json_type(data)}: send {{...}}"
        )
    return data


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _parent(body: dict[str, Any], path: FieldPath, *, create: bool) -> dict[str, Any] | None:
    """The object holding the last key of ``path``; None when absent and not created."""
    node = body
    for i, key in enumerate(path[:-1]):
        child = node.get(key)
        if child is None:
            if not create:
                return None
            child = node[key] = {}
        elif not isinstance(child, dict):
            name = ".".join(path[: i + 1])
            raise BadRequestError(f"{name} must be an object, got {_json_type(child)}", param=name)
        node = child
    return node


def _read(body: dict[str, Any], field: LimitField) -> tuple[bool, int | None]:
    """``(present, limit)``; limit None means no limit (absent, null, or unlimited)."""
    parent = _parent(body, field.path, create=False)
    if parent is None or field.path[-1] not in parent:
        return False, None
    value = parent[field.path[-1]]
    if value is None:
        return True, None
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequestError(
            f"{field.name} must be an integer number of tokens, got {_json_type(value)}: "
            f"{json.dumps(value)[:40]}",
            param=field.name,
        )
    if value < 0:
        if field.negative_is_unlimited:
            return True, None
        raise BadRequestError(f"{field.name} must not be negative, got {value}", param=field.name)
    return True, value


def _write(body: dict[str, Any], field: LimitField, value: int) -> None:
    parent = _parent(body, field.path, create=True)
    assert parent is not None
    parent[field.path[-1]] = value


def _lower(body: dict[str, Any], field: LimitField, cap: int) -> tuple[bool, int]:
    """Lower (or set) ``field`` to ``cap``; ``(changed, value now)``."""
    _, limit = _read(body, field)
    if limit is not None and limit <= cap:
        return False, limit
    _write(body, field, cap)
    return True, cap


# --------------------------------------------------------------------------- rewrite


def _cap_output(body: dict[str, Any], route: Route, cap: int | None) -> bool:
    """Apply the output cap to every output field present (or the default); changed?"""
    present = [f for f in route.output if _read(body, f)[0]]
    if cap is None:
        return False
    changed = False
    for field in present or [route.default]:
        changed = _lower(body, field, cap)[0] or changed
    return changed


def rewrite(body: bytes, route: Route, caps: Caps, thinking: LimitField | None) -> Rewrite:
    """Cap one request body; raises :class:`BadRequestError` naming the bad field."""
    data = _parse(body)
    capped: set[Kind] = set()
    budget = None
    if thinking is not None:
        _read(data, thinking)  # validated even when no thinking cap applies
        if caps.thinking is not None:
            changed, budget = _lower(data, thinking, caps.thinking)
            if changed:
                capped.add(Kind.THINKING)
    output = caps.output
    if output is not None and budget is not None:
        output = max(output, budget + ANSWER_ROOM)
    if _cap_output(data, route, output):
        capped.add(Kind.OUTPUT)
    stream = data.get("stream") is True
    if output is None and budget is None:  # nothing enforced: the client's bytes as sent
        return Rewrite(None, frozenset(), stream)
    return Rewrite(_dump(data), frozenset(capped), stream)


def _dump(data: dict[str, Any]) -> bytes:
    try:
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:  # 1e400 reads as inf, which JSON cannot carry
        raise BadRequestError("the body holds a number too large for JSON (e.g. 1e400)") from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (\ud800) the client escaped: escape it back
        return json.dumps(data, separators=(",", ":")).encode("ascii")
