"""The gate's body rewrite (pure): tables of what each route and engine gets, bad bodies,
duplicate keys, and hypothesis invariants: never above the cap, never above the client."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stopbudget.gate import caps
from stopbudget.gate.caps import ANSWER_ROOM, BadRequestError, Caps, Engine, Kind, rewrite

VLLM_CHAT = caps.route_for(Engine.VLLM, "POST", "/v1/chat/completions")
assert VLLM_CHAT is not None


def run(
    body: Any,
    limits: Caps,
    *,
    engine: Engine = Engine.VLLM,
    path: str = "/v1/chat/completions",
) -> tuple[dict[str, Any] | None, frozenset[Kind]]:
    """Rewrite ``body`` (an object, or raw bytes); the upstream's body (None: unchanged)."""
    route = caps.route_for(engine, "POST", path)
    assert route is not None
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    done = rewrite(raw, route, limits, caps.thinking_field(engine))
    return (None if done.body is None else json.loads(done.body)), done.capped


# --------------------------------------------------------------------------- routes

ROUTES = [
    (Engine.VLLM, "POST", "/v1/completions", "completions"),
    (Engine.VLLM, "POST", "/v1/chat/completions", "chat"),
    (Engine.VLLM, "POST", "/v1/responses", "responses"),
    (Engine.VLLM, "POST", "/v1/messages", "messages"),
    (Engine.VLLM, "POST", "//v1//chat/completions/", "chat"),
    (Engine.VLLM, "POST", "/v1/./completions", "completions"),
    (Engine.VLLM, "POST", "/v1/x/../completions", "completions"),
    (Engine.VLLM, "GET", "/v1/completions", None),
    (Engine.VLLM, "POST", "/v1/models", None),
    (Engine.VLLM, "POST", "/v1/embeddings", None),
    (Engine.VLLM, "POST", "/completions", None),
    (Engine.VLLM, "POST", "/V1/completions", None),  # routers match case-sensitively
    (Engine.LLAMACPP, "POST", "/completions", "completions"),
    (Engine.LLAMACPP, "POST", "/chat/completions", "chat"),
    (Engine.LLAMACPP, "POST", "/completion", "completion"),
    (Engine.LLAMACPP, "POST", "/v1/responses", "responses"),
    (Engine.SGLANG, "POST", "/v1/chat/completions", "chat"),
    (Engine.OPENAI, "POST", "/v1/chat/completions", "chat"),
    (Engine.OPENAI, "POST", "/health", None),
]


@pytest.mark.parametrize(("engine", "method", "path", "name"), ROUTES)
def test_routes(engine: Engine, method: str, path: str, name: str | None) -> None:
    route = caps.route_for(engine, method, path)
    assert (route.name if route else None) == name


@pytest.mark.parametrize(
    ("path", "normal"),
    [("", "/"), ("/", "/"), ("//", "/"), ("/a//b/", "/a/b"), ("/a/./b/../c", "/a/c")],
)
def test_normalize_path(path: str, normal: str) -> None:
    assert caps.normalize_path(path) == normal


# --------------------------------------------------------------------------- output cap

OUTPUT = [
    # (engine, path, client fields, output cap, fields the upstream sees)
    (Engine.VLLM, "/v1/completions", {"max_tokens": 500}, 100, {"max_tokens": 100}),
    (Engine.VLLM, "/v1/completions", {"max_tokens": 50}, 100, {}),  # a smaller one stays
    (Engine.VLLM, "/v1/completions", {"max_tokens": 100}, 100, {}),
    (Engine.VLLM, "/v1/completions", {"max_tokens": 0}, 100, {}),
    (Engine.VLLM, "/v1/completions", {}, 100, {"max_tokens": 100}),  # set when absent
    (Engine.VLLM, "/v1/completions", {"max_tokens": None}, 100, {"max_tokens": 100}),
    (Engine.VLLM, "/v1/chat/completions", {}, 100, {"max_tokens": 100}),
    (
        Engine.VLLM,
        "/v1/chat/completions",
        {"max_tokens": 500, "max_completion_tokens": 50},
        100,
        {"max_tokens": 100, "max_completion_tokens": 50},
    ),
    (
        Engine.VLLM,
        "/v1/chat/completions",
        {"max_completion_tokens": 500},
        100,
        {"max_completion_tokens": 100},
    ),
    (Engine.OPENAI, "/v1/chat/completions", {}, 100, {"max_completion_tokens": 100}),
    (Engine.VLLM, "/v1/responses", {"max_output_tokens": 900}, 100, {"max_output_tokens": 100}),
    (Engine.VLLM, "/v1/responses", {"max_tokens": 900}, 100, {"max_output_tokens": 100}),
    (Engine.VLLM, "/v1/messages", {"max_tokens": 900}, 100, {"max_tokens": 100}),
    # llama.cpp reads n_predict before max_tokens: it is capped too; -1 means unlimited
    (
        Engine.LLAMACPP,
        "/v1/completions",
        {"max_tokens": 5, "n_predict": 500},
        100,
        {"max_tokens": 5, "n_predict": 100},
    ),
    (Engine.LLAMACPP, "/completion", {"n_predict": -1}, 100, {"n_predict": 100}),
    (Engine.LLAMACPP, "/completion", {}, 100, {"max_tokens": 100}),
    (Engine.VLLM, "/v1/completions", {"n_predict": 500}, 100, {"max_tokens": 100}),
]


@pytest.mark.parametrize(("engine", "path", "client", "cap", "sent"), OUTPUT)
def test_output_cap(
    engine: Engine, path: str, client: dict[str, Any], cap: int, sent: dict[str, Any]
) -> None:
    body = {"model": "m", "prompt": "p", **client}
    got, capped = run(body, Caps(output=cap), engine=engine, path=path)
    assert got == {**body, **sent}  # every other field as sent
    assert capped == ({Kind.OUTPUT} if sent else frozenset())


def test_no_cap_leaves_the_body_alone() -> None:
    raw = b'{"model": "m",  "max_tokens": 5000, "prompt": "\\u00e9"}'
    route = caps.route_for(Engine.VLLM, "POST", "/v1/completions")
    assert route is not None
    done = rewrite(raw, route, Caps(), caps.thinking_field(Engine.VLLM))
    assert done.body is None
    assert done.capped == frozenset()


def test_stream_flag() -> None:
    route = VLLM_CHAT
    assert rewrite(b'{"stream": true}', route, Caps(), None).stream
    assert not rewrite(b'{"stream": "yes"}', route, Caps(), None).stream
    assert not rewrite(b"{}", route, Caps(), None).stream


# --------------------------------------------------------------------------- thinking cap

THINKING = [
    (Engine.VLLM, {}, {"thinking_token_budget": 300}),
    (Engine.VLLM, {"thinking_token_budget": 1000}, {"thinking_token_budget": 300}),
    (Engine.VLLM, {"thinking_token_budget": 20}, {"thinking_token_budget": 20}),
    (Engine.SGLANG, {}, {"custom_params": {"thinking_budget": 300}}),
    (
        Engine.SGLANG,
        {"custom_params": {"thinking_budget": 900, "other": 1}},
        {"custom_params": {"thinking_budget": 300, "other": 1}},
    ),
    (Engine.SGLANG, {"custom_params": None}, {"custom_params": {"thinking_budget": 300}}),
    (Engine.LLAMACPP, {}, {"thinking_budget_tokens": 300}),
    (Engine.LLAMACPP, {"thinking_budget_tokens": 5}, {"thinking_budget_tokens": 5}),
]


@pytest.mark.parametrize(("engine", "client", "sent"), THINKING)
def test_thinking_cap_in_the_engines_field(
    engine: Engine, client: dict[str, Any], sent: dict[str, Any]
) -> None:
    got, capped = run({"messages": [], **client}, Caps(thinking=300), engine=engine)
    assert got == {"messages": [], **sent}
    assert (Kind.THINKING in capped) == (sent != client)
    assert "max_tokens" not in got  # no output cap: no output field set


def test_openai_has_no_thinking_field() -> None:
    got, capped = run({"messages": []}, Caps(thinking=300), engine=Engine.OPENAI)
    assert got is None
    assert capped == frozenset()


@pytest.mark.parametrize(
    ("client", "output", "thinking", "sent_output", "sent_thinking"),
    [
        # the output cap keeps room for the answer above the thinking budget
        ({}, 256, 1024, 1024 + ANSWER_ROOM, 1024),
        ({}, 4096, 1024, 4096, 1024),
        # the room is counted from the thinking budget the request ends up with
        ({"thinking_token_budget": 100}, 128, 1024, 100 + ANSWER_ROOM, 100),
        # a smaller client output limit stays, even below the room
        ({"max_tokens": 64}, 256, 1024, 64, 1024),
        ({"max_tokens": 9000}, 256, 1024, 1024 + ANSWER_ROOM, 1024),
    ],
)
def test_both_caps_keep_room_for_the_answer(
    client: dict[str, Any], output: int, thinking: int, sent_output: int, sent_thinking: int
) -> None:
    got, _ = run({"messages": [], **client}, Caps(output=output, thinking=thinking))
    assert got is not None
    assert got["max_tokens"] == sent_output
    assert got["thinking_token_budget"] == sent_thinking


# --------------------------------------------------------------------------- bad input

BAD = [
    (b"", None, "not valid JSON"),
    (b"{", None, "not valid JSON"),
    (b"max_tokens=5", None, "not valid JSON"),
    (b"\xff\xfe{", None, "not valid JSON"),
    (b'{"max_tokens": NaN}', None, "NaN is not valid JSON"),
    (b'{"a": Infinity}', None, "Infinity is not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, None, "nested too deeply"),
    (b"[]", None, "must be a JSON object, got an array"),
    (b'"text"', None, "must be a JSON object, got a string"),
    (b"null", None, "must be a JSON object, got null"),
    (b"5", None, "must be a JSON object, got a number"),
    (b'{"max_tokens": "100"}', "max_tokens", "must be an integer number of tokens, got a string"),
    (b'{"max_tokens": 1.5}', "max_tokens", "got a number: 1.5"),
    (b'{"max_tokens": 100.0}', "max_tokens", "got a number: 100.0"),
    (b'{"max_tokens": true}', "max_tokens", "got a boolean"),
    (b'{"max_tokens": [1]}', "max_tokens", "got an array"),
    (b'{"max_tokens": -1}', "max_tokens", "must not be negative, got -1"),
    (b'{"max_completion_tokens": -5}', "max_completion_tokens", "must not be negative"),
    (b'{"thinking_token_budget": "x"}', "thinking_token_budget", "integer"),
    (b'{"thinking_token_budget": -1}', "thinking_token_budget", "must not be negative"),
]


@pytest.mark.parametrize(("raw", "param", "message"), BAD)
@pytest.mark.parametrize("limits", [Caps(), Caps(output=100, thinking=50)], ids=["none", "caps"])
def test_bad_bodies_name_the_field(
    raw: bytes, param: str | None, message: str, limits: Caps
) -> None:
    with pytest.raises(BadRequestError) as caught:
        rewrite(raw, VLLM_CHAT, limits, caps.thinking_field(Engine.VLLM))
    assert message in caught.value.message
    assert caught.value.param == param
    if param is not None:
        assert param in caught.value.message


@pytest.mark.parametrize(
    ("raw", "param"),
    [(b'{"custom_params": 5}', "custom_params"), (b'{"custom_params": []}', "custom_params")],
)
def test_sglang_custom_params_must_be_an_object(raw: bytes, param: str) -> None:
    with pytest.raises(BadRequestError, match="custom_params must be an object") as caught:
        rewrite(raw, VLLM_CHAT, Caps(thinking=10), caps.thinking_field(Engine.SGLANG))
    assert caught.value.param == param


def test_fields_of_other_engines_are_not_checked() -> None:
    """``n_predict`` means nothing to vLLM: the gate neither checks nor caps it there."""
    got, _ = run({"n_predict": "x"}, Caps(output=5))
    assert got == {"n_predict": "x", "max_tokens": 5}


# --------------------------------------------------------------------------- duplicate keys


@pytest.mark.parametrize(
    ("raw", "sent"),
    [
        # the last key is what the engine reads: a second, larger one cannot slip past
        (b'{"max_tokens": 10, "max_tokens": 5000}', 100),
        (b'{"max_tokens": 5000, "max_tokens": 10}', 10),
        (b'{"max_tokens": 5000, "max_tokens": null}', 100),
        (b'{"max_tokens": 10, "max_tokens": 5000, "max_tokens": 20}', 20),
    ],
)
def test_duplicate_keys_last_wins_and_the_upstream_sees_one(raw: bytes, sent: int) -> None:
    done = rewrite(raw, VLLM_CHAT, Caps(output=100), None)
    assert done.body is not None  # always re-serialised: one key each
    assert done.body.count(b'"max_tokens"') == 1
    assert json.loads(done.body) == {"max_tokens": sent}


def test_without_a_cap_the_bytes_go_as_sent() -> None:
    """Nothing is enforced: the upstream reads the client's body itself, duplicates and all."""
    raw = b'{"max_tokens": 1, "max_tokens": 2, "m": {"b": 1, "b": 3}}'
    assert rewrite(raw, VLLM_CHAT, Caps(), caps.thinking_field(Engine.VLLM)).body is None
    # a thinking cap for an engine without a thinking field enforces nothing either
    assert rewrite(raw, VLLM_CHAT, Caps(thinking=5), None).body is None


def test_a_capped_body_is_always_reserialised() -> None:
    done = rewrite(b'{"a": 1, "a": 2, "max_tokens": 5}', VLLM_CHAT, Caps(output=100), None)
    assert done.body == b'{"a":2,"max_tokens":5}'
    assert done.capped == frozenset()


def test_a_number_json_cannot_carry_is_a_bad_request() -> None:
    with pytest.raises(BadRequestError, match="too large for JSON"):
        rewrite(b'{"temperature": 1e400}', VLLM_CHAT, Caps(output=100), None)


def test_duplicate_nested_thinking_key() -> None:
    raw = b'{"custom_params": {"thinking_budget": 1, "thinking_budget": 900}}'
    done = rewrite(raw, VLLM_CHAT, Caps(thinking=50), caps.thinking_field(Engine.SGLANG))
    assert done.body is not None
    assert json.loads(done.body) == {"custom_params": {"thinking_budget": 50}}


def test_text_survives_reserialisation() -> None:
    raw = '{"prompt": "é 中文 🙂 \\"q\\" \\n", "max_tokens": 900}'.encode()
    done = rewrite(raw, VLLM_CHAT, Caps(output=100), None)
    assert done.body is not None
    assert json.loads(done.body) == {"prompt": 'é 中文 🙂 "q" \n', "max_tokens": 100}
    lone = b'{"prompt": "\\ud800", "max_tokens": 900}'  # a lone surrogate, escaped
    done = rewrite(lone, VLLM_CHAT, Caps(output=100), None)
    assert done.body is not None
    assert json.loads(done.body) == {"prompt": "\ud800", "max_tokens": 100}


# --------------------------------------------------------------------------- invariants

limit_values = st.one_of(st.none(), st.integers(min_value=0, max_value=10**6))
cap_values = st.one_of(st.none(), st.integers(min_value=1, max_value=10**6))


@given(
    max_tokens=st.one_of(st.just("absent"), limit_values),
    max_completion=st.one_of(st.just("absent"), limit_values),
    thinking_client=st.one_of(st.just("absent"), limit_values),
    output=cap_values,
    thinking=cap_values,
)
def test_never_above_the_cap_never_above_the_client(
    max_tokens: Any, max_completion: Any, thinking_client: Any, output: Any, thinking: Any
) -> None:
    fields = {
        "max_tokens": max_tokens,
        "max_completion_tokens": max_completion,
        "thinking_token_budget": thinking_client,
    }
    client: dict[str, Any] = {
        "messages": [{"role": "user", "content": "hi"}],
        **{name: value for name, value in fields.items() if value != "absent"},
    }
    got, capped = run(client, Caps(output, thinking))
    sent = got if got is not None else client
    assert sent["messages"] == client["messages"]
    # thinking: min(client, cap), set when absent
    t_client = client.get("thinking_token_budget")
    if thinking is None:
        assert sent.get("thinking_token_budget") == t_client
    else:
        expected = thinking if t_client is None else min(t_client, thinking)
        assert sent["thinking_token_budget"] == expected
    # output: every field present is at most the effective cap and at most the client's
    effective = output
    if output is not None and thinking is not None:
        effective = max(output, sent["thinking_token_budget"] + ANSWER_ROOM)
    present = [f for f in ("max_tokens", "max_completion_tokens") if f in client]
    if effective is None:
        assert all(sent[f] == client[f] for f in present)
        return
    for name in present:
        mine = client[name]
        assert sent[name] == (effective if mine is None else min(mine, effective))
    if not present:
        assert sent["max_tokens"] == effective
    changed = any(sent.get(f) != client.get(f) for f in ("max_tokens", "max_completion_tokens"))
    assert (Kind.OUTPUT in capped) == changed
