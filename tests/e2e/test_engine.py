"""A real engine: llama.cpp's llama-server with SmolLM2-135M, behind the gate and under audit.

Tokens are counted by the engine itself (``llamacpp:tokens_predicted_total`` before and
after each request), with ``ignore_eos`` so that a request generates exactly its limit:
what the engine generated is the cap, never more, and never less than asked below it.
Caps and requests stay small (the model makes about 80 tokens/s on two cores).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from stopbudget import api
from stopbudget.clients.audit_runner import AuditOutcome, AuditPlan, run_audit
from stopbudget.clients.metrics import OperatorMetrics
from stopbudget.clients.prometheus import PrometheusReader
from stopbudget.clients.settings import Settings
from stopbudget.core.audits.dataset import GoldenItem
from stopbudget.devkit import engine, servers
from stopbudget.gate.caps import Engine
from stopbudget.gate.proxy import GateConfig
from stopbudget.gate.server import Address, RunningGate, ServeOptions, running_gate
from tests.conftest import ENGINES_JOB
from tests.support.builders import MINIMAL
from tests.support.kubelet import ConfigMapVolume
from tests.support.waiting import eventually

pytestmark = pytest.mark.engine

STORY = {"messages": [{"role": "user", "content": "Tell me a long story."}], "ignore_eos": True}
PROMPT = {"prompt": "Once upon a time", "ignore_eos": True}


@asynccontextmanager
async def gate_on(server: engine.DevLlamaServer, budgets: Path) -> AsyncIterator[RunningGate]:
    config = GateConfig(server.url, engine=Engine.LLAMACPP)
    listen = Address(servers.HOST, 0)
    options = ServeOptions(config, budgets, listen, listen, poll_interval=0.05)
    async with running_gate(options) as gate:
        yield gate


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as client:
        yield client


async def generated(
    server: engine.DevLlamaServer, send: Callable[[], Any], expected: int
) -> tuple[int, Any]:
    """Tokens the engine generated for one request (its counter's step) and the answer."""
    before = server.tokens_predicted()
    answer = await send()

    async def counted() -> int:
        return server.tokens_predicted() - before

    # the counter moves when the slot is released: poll for it rather than race it
    delta = await eventually(counted, lambda d: d >= expected, 10, "tokens_predicted_total")
    return delta, answer


async def post_json(
    client: aiohttp.ClientSession, url: str, body: dict[str, Any], cls: str | None = None
) -> dict[str, Any]:
    headers = {"x-stopbudget-class": cls} if cls else {}
    async with client.post(url, json=body, headers=headers) as response:
        assert response.status == 200, await response.text()
        answer: dict[str, Any] = await response.json()
        return answer


def usage_tokens(answer: dict[str, Any]) -> int:
    if "tokens_predicted" in answer:  # llama.cpp's own /completion
        return int(answer["tokens_predicted"])
    usage = answer["usage"]
    return int(usage.get("completion_tokens", usage.get("output_tokens", -1)))


# Each route a client could use to ask llama-server for more than its cap.
ATTEMPTS = [
    ("/v1/completions", {**PROMPT, "max_tokens": 400}),
    # llama-server reads n_predict before max_tokens: capped, it is what the engine uses
    ("/v1/completions", {**PROMPT, "max_tokens": 2, "n_predict": 400}),
    ("/v1/chat/completions", {**STORY, "max_completion_tokens": 400}),
    ("/chat/completions", {**STORY}),  # llama-server's alias without /v1
    ("/completion", {**PROMPT, "n_predict": -1}),  # its own API: -1 is unlimited
    ("/v1/responses", {"input": "Tell me a long story.", "ignore_eos": True}),
]


async def test_caps_per_class_by_the_engines_own_count(
    llama_server: engine.DevLlamaServer, tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    volume = ConfigMapVolume(tmp_path / "budgets")
    volume.write({"default.output": "8", "long.output": "24"})
    async with gate_on(llama_server, volume.dir) as gate:
        for cls, cap in ((None, 8), ("long", 24)):
            for path, body in ATTEMPTS:
                wanted = cap

                async def send(
                    path: str = path, body: dict[str, Any] = body, cls: str | None = cls
                ) -> Any:
                    return await post_json(session, gate.url + path, body, cls)

                tokens, answer = await generated(llama_server, send, wanted)
                assert tokens == wanted, (cls, path)  # never above the cap, and the cap applied
                assert usage_tokens(answer) == wanted, (cls, path)
        labels = {"class": "long", "route": "chat", "kind": "output"}
        assert (
            gate.metrics.registry.get_sample_value("stopbudget_gate_requests_capped_total", labels)
            == 2
        )


async def test_a_kubelet_update_reaches_the_next_request(
    llama_server: engine.DevLlamaServer, tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    volume = ConfigMapVolume(tmp_path / "budgets")
    volume.write({"default.output": "4"})
    async with gate_on(llama_server, volume.dir) as gate:
        url = gate.url + "/v1/completions"
        body = {**PROMPT, "max_tokens": 100}
        assert usage_tokens(await post_json(session, url, body)) == 4
        volume.write({"default.output": "12"})

        async def capped_at() -> int:
            return usage_tokens(await post_json(session, url, body))

        await eventually(capped_at, lambda n: n == 12, 10, "the new budget")

        async def send() -> Any:
            return await post_json(session, url, body)

        tokens, _ = await generated(llama_server, send, 12)
        assert tokens == 12


async def test_the_thinking_field_is_set_and_accepted(
    llama_server: engine.DevLlamaServer, tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """SmolLM2 does not think: this checks llama-server takes thinking_budget_tokens."""
    volume = ConfigMapVolume(tmp_path / "budgets")
    volume.write({"default.thinking": "16", "default.output": "8"})
    async with gate_on(llama_server, volume.dir) as gate:
        body = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2}
        answer = await post_json(session, gate.url + "/v1/chat/completions", body)
        assert usage_tokens(answer) <= 2
        labels = {"class": "default", "route": "chat", "kind": "thinking"}
        assert (
            gate.metrics.registry.get_sample_value("stopbudget_gate_requests_capped_total", labels)
            == 1
        )


async def test_a_client_that_goes_away_stops_the_generation(
    llama_server: engine.DevLlamaServer, tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    volume = ConfigMapVolume(tmp_path / "budgets")
    volume.write({"default.output": "1500"})  # about 20 s of generation if never stopped
    async with gate_on(llama_server, volume.dir) as gate:
        before = llama_server.tokens_predicted()
        body = {**STORY, "stream": True}
        response = await session.post(gate.url + "/v1/chat/completions", json=body)
        assert response.status == 200
        first = await response.content.readuntil(b"\n\n")  # a token, streamed as it comes
        assert json.loads(first.removeprefix(b"data: "))["object"] == "chat.completion.chunk"
        assert llama_server.metrics()["llamacpp:requests_processing"] == 1
        response.close()

        async def processing() -> float:
            return llama_server.metrics()["llamacpp:requests_processing"]

        await eventually(processing, lambda n: n == 0, 10, "llama-server stopped generating")
        assert llama_server.tokens_predicted() - before < 1500
        assert gate.metrics.registry.get_sample_value("stopbudget_gate_requests_in_flight") == 0


# --------------------------------------------------------------------------- load preset


async def test_the_llamacpp_preset_reads_the_engine(
    llama_server: engine.DevLlamaServer,
    prometheus_server: servers.DevPrometheus,
    session: aiohttp.ClientSession,
) -> None:
    target = f"{servers.HOST}:{llama_server.port}"
    selector = {"engine": "llama-server-under-test"}
    prometheus_server.add_targets(ENGINES_JOB, "llama-server", [target], labels=selector)
    spec = api.StopPolicySpec.model_validate(
        {
            **MINIMAL["spec"],
            "load": {
                "preset": "llamacpp",
                "selector": selector,
                "signals": [
                    {"name": "queue", "target": 4},
                    {"name": "running", "target": 4},
                    {"name": "tokensPerSecond", "target": 80},
                ],
            },
        }
    )
    reader = PrometheusReader(
        Settings(prometheus_url=prometheus_server.url), OperatorMetrics(), window="5s"
    )
    try:
        await asyncio.to_thread(prometheus_server.wait_for_targets, ENGINES_JOB, [target])
        idle = await eventually(
            lambda: reader.observe("serving", "p", spec), lambda o: o.ok, 20, "the preset"
        )
        assert {s.name: s.value for s in idle.signals}["queue"] == 0
        assert idle.truncation is None  # llama.cpp reports no finish reasons
        # six generations on four slots: four running, two waiting, tokens flowing
        body = {**STORY, "max_tokens": 60}
        url = llama_server.url + "/v1/chat/completions"
        busy = asyncio.gather(*(post_json(session, url, body) for _ in range(6)))

        def read(o: Any) -> dict[str, float | None]:
            return {s.name: s.value for s in o.signals}

        await eventually(
            lambda: reader.observe("serving", "p", spec),
            lambda o: o.ok and read(o)["running"] == 4 and read(o)["queue"] == 2,
            30,
            "running 4, queue 2",
        )
        await busy
        after = await eventually(
            lambda: reader.observe("serving", "p", spec),
            lambda o: o.ok and (read(o)["tokensPerSecond"] or 0) > 0,
            30,
            "tokens per second",
        )
        assert after.pressure == pytest.approx(
            max(
                (read(after)[n] or 0) / t
                for n, t in (("queue", 4), ("running", 4), ("tokensPerSecond", 80))
            )
        )
    finally:
        reader.close()
        prometheus_server.remove_targets(ENGINES_JOB, "llama-server")


# --------------------------------------------------------------------------- audits

# Questions SmolLM2-135M answers within 8 tokens in chat ("The capital of France is Paris.").
CHAT_SET = [
    GoldenItem(f"What is the capital of {country}? Answer in one word.", (city,))
    for country, city in (
        ("France", "Paris"),
        ("Italy", "Rome"),
        ("Germany", "Berlin"),
        ("Spain", "Madrid"),
    )
]
COMPLETION_SET = [
    GoldenItem(
        f"Q: What is the capital of {item.question.split(' of ')[1].split('?')[0]}?\nA:",
        item.answers,
    )
    for item in CHAT_SET
]
PATTERN = r"\b(Paris|Rome|Berlin|Madrid)\b"


async def audit(
    server: engine.DevLlamaServer, kind: api.AuditApi, method: api.AuditMethod
) -> AuditOutcome:
    plan = AuditPlan(
        endpoint=server.url,
        model="smollm2",
        budgets=(4, 8),
        questions=tuple(CHAT_SET if kind == api.AuditApi.CHAT else COMPLETION_SET),
        api=kind,
        method=method,
        concurrency=1,  # one sequence at a time: greedy decoding gives the same tokens
        min_samples=1,
        answer_pattern=PATTERN,
        request_timeout=60,
    )
    return await run_audit(plan)


@pytest.mark.parametrize("kind", list(api.AuditApi))
async def test_audits_direct_and_truncate_agree_on_the_engine(
    llama_server: engine.DevLlamaServer, kind: api.AuditApi
) -> None:
    truncate = await audit(llama_server, kind, api.AuditMethod.TRUNCATE)
    direct = await audit(llama_server, kind, api.AuditMethod.DIRECT)
    assert truncate.ok, truncate.messages
    assert direct.ok, direct.messages
    assert truncate.method == api.AuditMethod.TRUNCATE, truncate.messages  # tokens were read
    assert (truncate.requests, direct.requests) == (4, 8)
    assert [(s.budget, s.hits, s.truncated) for s in truncate.scores] == [
        (s.budget, s.hits, s.truncated) for s in direct.scores
    ]
    for score in truncate.scores:
        assert score.mean_tokens is not None
        assert score.mean_tokens <= score.budget
    assert truncate.scores[0].truncated == 4  # 4 tokens cut every answer
