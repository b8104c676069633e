"""The audit runner against the OpenAI-compatible test server: exact curves, retries,
timeouts, cancellation, the truncate-to-direct fallback and the minSamples rule."""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from stopbudget import api
from stopbudget.clients import audit_runner
from stopbudget.clients.audit_runner import AuditOutcome, AuditPlan, BudgetScore, run_audit
from stopbudget.core.audits.dataset import GoldenItem
from stopbudget.core.curve import Answers
from tests.support.openai_server import MODEL, Canned, OpenAIServer, reply, words
from tests.support.waiting import wait_for_async

BUDGETS = (16, 32, 64, 128)
QUESTIONS = 60


def k_of(i: int) -> int:
    """Tokens question i needs: spread over 1..160, so some never fit the ladder."""
    return 1 + (i * 37) % 160


def right(i: int) -> bool:
    """Whether the model's answer to question i is the gold one (one in six is wrong)."""
    return i % 6 != 5


def golden() -> tuple[list[GoldenItem], dict[str, Canned]]:
    items, replies = [], {}
    for i in range(QUESTIONS):
        question = f"Question {i}: what is {i} + 1?"
        gold = str(i + 1)
        items.append(GoldenItem(question, (gold,), i + 1))
        replies[question] = reply(gold if right(i) else f"{i + 1000}", k_of(i))
    return items, replies


def expected_curve(budgets: Sequence[int]) -> list[BudgetScore]:
    """The curve the test server implies, computed from k_i alone."""
    out = []
    for b in sorted(budgets):
        ks = [k_of(i) for i in range(QUESTIONS)]
        out.append(
            BudgetScore(
                budget=b,
                hits=sum(1 for i, k in enumerate(ks) if k <= b and right(i)),
                samples=QUESTIONS,
                errors=0,
                mean_tokens=sum(min(k, b) for k in ks) / QUESTIONS,
                truncated=sum(1 for k in ks if k > b),
            )
        )
    return out


ITEMS, REPLIES = golden()


@pytest.fixture
async def server() -> AsyncIterator[OpenAIServer]:
    async with OpenAIServer(REPLIES) as s:
        yield s


def plan_for(server: OpenAIServer, **changes: Any) -> AuditPlan:
    base = AuditPlan(
        endpoint=server.url,
        model=MODEL,
        budgets=BUDGETS,
        questions=tuple(ITEMS),
        concurrency=8,
        request_timeout=5,
        timeout=30,
        min_samples=10,
        backoff=0.01,
    )
    return replace(base, **changes)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# ------------------------------------------------------------------ exact curves


def test_the_known_curve_is_not_trivial() -> None:
    curve = expected_curve(BUDGETS)
    assert [p.hits for p in curve] == sorted({p.hits for p in curve})  # strictly rising
    assert curve[0].truncated > 0
    assert curve[-1].truncated > 0  # some outputs never fit the ladder
    assert curve[-1].hits < QUESTIONS - curve[-1].truncated  # and some answers are wrong


@pytest.mark.parametrize("api_kind", list(api.AuditApi))
@pytest.mark.parametrize("method", list(api.AuditMethod))
async def test_measured_curve_equals_the_known_one(
    server: OpenAIServer, method: api.AuditMethod, api_kind: api.AuditApi
) -> None:
    outcome = await run_audit(plan_for(server, method=method, api=api_kind))
    assert outcome.ok, outcome.messages
    assert outcome.method == method
    assert list(outcome.scores) == expected_curve(BUDGETS)
    if method == api.AuditMethod.DIRECT:
        assert outcome.requests == outcome.generations == QUESTIONS * len(BUDGETS)
        assert sorted(r["max_tokens"] for r in server.requests) == sorted(BUDGETS * QUESTIONS)
        assert all("logprobs" not in r for r in server.requests)
        assert outcome.tokens == sum(min(k_of(i), b) for i in range(QUESTIONS) for b in BUDGETS)
    else:
        assert outcome.requests == outcome.generations == QUESTIONS
        assert {r["max_tokens"] for r in server.requests} == {max(BUDGETS)}
        wanted = True if api_kind == api.AuditApi.CHAT else 1
        assert all(r["logprobs"] is wanted for r in server.requests)
        assert outcome.tokens == sum(min(k_of(i), max(BUDGETS)) for i in range(QUESTIONS))
    assert all(r["temperature"] == 0 for r in server.requests)
    assert outcome.message.startswith(f"measured EM at 4 budgets ({method.value})")
    assert [p.hits for p in outcome.points()] == [s.hits for s in outcome.scores]


@pytest.mark.parametrize("method", list(api.AuditMethod))
async def test_reasoning_and_answer_patterns(method: api.AuditMethod) -> None:
    """Chat outputs that think first, scored with an answer pattern; the same either way."""
    think = words("<think> 9 plus 9 is 18 </think>\nThe answer is 18 , surely .")
    early = words("The answer is 18 and here is why : nine plus nine")
    items = [GoldenItem("think", ("18",)), GoldenItem("early", ("18",))]
    async with OpenAIServer({"think": think, "early": early}) as s:
        plan = plan_for(
            s,
            questions=tuple(items),
            budgets=(3, 6, 9, 10, 11, 12),
            api=api.AuditApi.CHAT,
            method=method,
            answer_pattern=r"answer is (\S+)",
            min_samples=1,
        )
        outcome = await run_audit(plan)
    assert len(think.tokens) == 14
    assert think.tokens[7:11] == ("\nThe", " answer", " is", " 18")
    # think: the answer "18" is token 11, complete once token 12 follows it (or the output ends)
    # early: "18" is token 4, complete from 5 tokens on
    by_budget = {s.budget: (s.hits, s.truncated) for s in outcome.scores}
    assert by_budget == {3: (0, 2), 6: (1, 1), 9: (1, 1), 10: (1, 1), 11: (1, 1), 12: (2, 0)}


# ------------------------------------------------------------------ retries


async def test_retries_on_429_and_5xx(server: OpenAIServer) -> None:
    server.fail_next(500)
    server.fail_next(503)
    server.fail_next(429, retry_after="0")
    server.fail_next(502)
    plan = plan_for(server, method=api.AuditMethod.TRUNCATE, concurrency=1, max_attempts=5)
    outcome = await run_audit(plan)
    assert outcome.ok, outcome.messages
    assert outcome.requests == QUESTIONS + 4
    assert outcome.generations == QUESTIONS
    assert list(outcome.scores) == expected_curve(BUDGETS)


async def test_retry_after_is_honoured(server: OpenAIServer) -> None:
    server.fail_next(429, retry_after="0.3")
    plan = plan_for(server, questions=tuple(ITEMS[:1]), min_samples=1, backoff=5)
    outcome = await run_audit(replace(plan, method=api.AuditMethod.TRUNCATE))
    assert outcome.ok
    assert len(server.arrivals) == 2
    assert server.arrivals[1] - server.arrivals[0] >= 0.29  # the client waited as told


async def test_attempts_are_bounded(server: OpenAIServer) -> None:
    server.fail_next(500, times=100)
    plan = plan_for(server, questions=tuple(ITEMS[:2]), max_attempts=3, concurrency=1)
    outcome = await run_audit(replace(plan, method=api.AuditMethod.TRUNCATE))
    assert not outcome.ok
    assert outcome.requests == 6
    assert outcome.generations == 0
    assert [s.errors for s in outcome.scores] == [2] * len(BUDGETS)
    assert "2 requests failed: HTTP 500 from " in outcome.message
    assert "injected failure 500 (after 3 attempts) (x2)" in outcome.message


async def test_client_errors_are_not_retried_and_the_audit_gives_up(server: OpenAIServer) -> None:
    outcome = await run_audit(plan_for(server, model="no-such-model", give_up_after=5))
    assert not outcome.ok
    assert 5 <= outcome.requests <= 5 + 8  # in-flight requests of the other workers finish
    assert outcome.messages[0].startswith("gave up after 5 failed questions in a row; last: ")
    assert "HTTP 404" in outcome.messages[0]
    assert "The model `no-such-model` does not exist." in outcome.messages[0]


async def test_an_unreachable_endpoint_stops_the_audit_at_once() -> None:
    plan = AuditPlan(
        endpoint=f"http://127.0.0.1:{closed_port()}",
        model=MODEL,
        budgets=BUDGETS,
        questions=tuple(ITEMS),
        max_attempts=2,
        backoff=0.01,
        concurrency=1,
    )
    outcome = await run_audit(plan)
    assert not outcome.ok
    assert outcome.requests == 2  # one question, retried once
    assert outcome.messages[0].startswith(
        "the endpoint is unreachable: cannot reach http://127.0.0.1:"
    )


async def test_the_endpoint_going_away_midway_gives_up_after_some_questions() -> None:
    server = OpenAIServer(REPLIES)
    await server.start()
    plan = plan_for(server, max_attempts=1, concurrency=1, give_up_after=3)
    progress: list[int] = []

    def step(done: int, total: int) -> None:
        progress.append(done)

    task = asyncio.create_task(run_audit(plan, progress=step))
    await wait_for_async(lambda: len(progress) > 5)
    await server.stop()
    outcome = await task
    assert not outcome.ok
    assert outcome.generations >= 5
    assert outcome.messages[0].startswith("gave up after 3 failed questions in a row; last: ")


# ------------------------------------------------------------------ timeouts


async def test_a_hung_request_times_out_and_is_retried(server: OpenAIServer) -> None:
    server.hang_next(1)
    plan = plan_for(server, method=api.AuditMethod.TRUNCATE, request_timeout=0.2)
    outcome = await run_audit(plan)
    assert outcome.ok, outcome.messages
    assert outcome.requests == QUESTIONS + 1
    assert list(outcome.scores) == expected_curve(BUDGETS)


async def test_a_request_that_always_hangs_is_an_error(server: OpenAIServer) -> None:
    server.hang_next(2)
    plan = plan_for(server, questions=tuple(ITEMS[:1]), request_timeout=0.1, max_attempts=2)
    outcome = await run_audit(replace(plan, method=api.AuditMethod.TRUNCATE))
    assert not outcome.ok
    assert "no response from " in outcome.message
    assert "within 0.1s (after 2 attempts)" in outcome.message


async def test_the_whole_audit_times_out(server: OpenAIServer) -> None:
    server.hang_next(1000)
    outcome = await run_audit(plan_for(server, timeout=0.3, request_timeout=60))
    assert not outcome.ok
    assert outcome.messages[0] == "timed out after 0.3s with 0 of 240 requests done"
    assert outcome.duration < 5
    assert leftover_tasks() == []


def leftover_tasks() -> list[asyncio.Task[Any]]:
    """Pending tasks besides this test's and the test server's request handlers."""
    current = asyncio.current_task()
    return [
        t
        for t in asyncio.all_tasks()
        if t is not current
        and not t.done()
        and "RequestHandler" not in getattr(t.get_coro(), "__qualname__", "")
    ]


# ------------------------------------------------------------------ cancellation


async def test_cancellation_leaks_nothing(
    server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions: list[aiohttp.ClientSession] = []
    original = aiohttp.ClientSession

    def recording(*args: Any, **kwargs: Any) -> aiohttp.ClientSession:
        session = original(*args, **kwargs)
        sessions.append(session)
        return session

    monkeypatch.setattr(aiohttp, "ClientSession", recording)
    server.hang_next(1000)
    task = asyncio.create_task(run_audit(plan_for(server, concurrency=4)))
    await wait_for_async(lambda: server.hung == 4)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(sessions) == 1
    assert sessions[0].closed
    assert leftover_tasks() == []
    gc.collect()  # an unclosed session or connector would warn here (warnings are errors)


# ------------------------------------------------------------------ fallback, minSamples


@pytest.mark.parametrize("api_kind", list(api.AuditApi))
async def test_truncate_falls_back_to_direct_without_tokens(api_kind: api.AuditApi) -> None:
    async with OpenAIServer(REPLIES, logprobs=False) as s:
        plan = plan_for(s, method=api.AuditMethod.TRUNCATE, api=api_kind, concurrency=4)
        progress: list[tuple[int, int]] = []
        outcome = await run_audit(plan, progress=lambda d, t: progress.append((d, t)))
    assert outcome.ok, outcome.messages
    assert outcome.method == api.AuditMethod.DIRECT
    assert list(outcome.scores) == expected_curve(BUDGETS)
    direct = QUESTIONS * len(BUDGETS)
    assert direct < outcome.requests <= direct + 4  # the truncate requests in flight are lost
    assert (
        "truncate: the server returned no token-level output (logprobs); fell back to direct"
        in outcome.message
    )
    assert (0, direct) in progress
    assert progress[-1] == (direct, direct)


async def test_too_few_samples_fail_the_audit(server: OpenAIServer) -> None:
    outcome = await run_audit(plan_for(server, min_samples=QUESTIONS + 1))
    assert not outcome.ok
    assert list(outcome.scores) == expected_curve(BUDGETS)  # measured, but not to be used
    assert outcome.messages[-1] == (
        "too few answers: budget 16: 60 (0 failed), budget 32: 60 (0 failed), "
        "budget 64: 60 (0 failed), budget 128: 60 (0 failed); minSamples is 61, "
        "so this curve is not used"
    )


async def test_errors_at_one_budget_fail_the_audit(server: OpenAIServer) -> None:
    server.fail_next(500, times=3)
    plan = plan_for(
        server,
        questions=tuple(ITEMS[:3]),
        budgets=(16, 32),
        max_attempts=1,
        concurrency=1,
        min_samples=3,
    )
    outcome = await run_audit(plan)
    # questions-major order: the 3 failures are q0@16, q0@32, q1@16
    assert [(s.budget, s.samples, s.errors) for s in outcome.scores] == [(16, 1, 2), (32, 2, 1)]
    assert not outcome.ok
    assert "too few answers: budget 16: 1 (2 failed), budget 32: 2 (1 failed)" in outcome.message


# ------------------------------------------------------------------ concurrency, progress


async def test_concurrency_is_bounded() -> None:
    async with OpenAIServer(REPLIES, token_delay=0.0005) as s:
        plan = plan_for(s, concurrency=3, questions=tuple(ITEMS[:24]), min_samples=1)
        outcome = await run_audit(replace(plan, method=api.AuditMethod.TRUNCATE))
        assert outcome.ok
        assert 2 <= s.max_in_flight <= 3


async def test_progress_reports_every_request(server: OpenAIServer) -> None:
    seen: list[tuple[int, int]] = []
    await run_audit(plan_for(server), progress=lambda d, t: seen.append((d, t)))
    total = QUESTIONS * len(BUDGETS)
    assert seen == [(0, total)] + [(d, total) for d in range(1, total + 1)]


# ------------------------------------------------------------------ plans


def test_plan_from_spec() -> None:
    audit = api.Audit.model_validate(
        {
            "endpoint": "http://vllm.serving:8000/v1/",
            "model": "m",
            "api": "chat",
            "dataset": {"configMapRef": {"name": "golden"}},
            "budgets": [512, 128, 256],
            "method": "truncate",
            "concurrency": 16,
            "timeout": "10m",
            "requestTimeout": "30s",
            "answerPattern": "#### (.+)",
        }
    )
    quality = api.Quality.model_validate({"emTarget": 0.8, "emFloor": 0.7, "minSamples": 50})
    plan = audit_runner.plan_from_spec(audit, quality, ITEMS[:5], headers={"Authorization": "x"})
    assert plan.url == "http://vllm.serving:8000/v1/chat/completions"
    assert plan.ladder == (128, 256, 512)
    assert (plan.method, plan.concurrency, plan.timeout, plan.request_timeout) == (
        api.AuditMethod.TRUNCATE,
        16,
        600.0,
        30.0,
    )
    assert (plan.min_samples, plan.answer_pattern, len(plan.questions)) == (50, "#### (.+)", 5)
    assert plan.headers == {"Authorization": "x"}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"budgets": ()}, "at least one budget"),
        ({"budgets": (0, 8)}, "positive"),
        ({"budgets": (8, 8)}, "distinct"),
        ({"questions": ()}, "golden set is empty"),
        ({"concurrency": 0}, "at least 1"),
        ({"timeout": 0}, "positive"),
        ({"answer_pattern": r"\d+"}, "no capture group"),
        ({"endpoint": "vllm:8000"}, "not an http"),
    ],
)
def test_bad_plans(changes: dict[str, Any], message: str) -> None:
    base = {"endpoint": "http://x", "model": "m", "budgets": (8,), "questions": tuple(ITEMS)}
    with pytest.raises(ValueError, match=message):
        AuditPlan(**(base | changes))


def test_outcome_message_joins_messages() -> None:
    outcome = AuditOutcome(True, api.AuditMethod.DIRECT, (), 0, 0, 0, 0.0, ("a", "b"))
    assert outcome.message == "a; b"


async def test_truncate_reads_llamacpp_completion_tokens() -> None:
    """llama.cpp's /v1/completions sends tokens as logprobs.content[], not tokens[]."""
    async with OpenAIServer(REPLIES, completion_logprobs="content") as s:
        outcome = await run_audit(plan_for(s, method=api.AuditMethod.TRUNCATE))
    assert outcome.ok, outcome.messages
    assert outcome.method == api.AuditMethod.TRUNCATE  # no fallback to direct
    assert outcome.requests == QUESTIONS
    assert list(outcome.scores) == expected_curve(BUDGETS)


@pytest.mark.parametrize("method", [api.AuditMethod.DIRECT, api.AuditMethod.TRUNCATE])
async def test_each_budget_keeps_which_questions_it_got_right(
    server: OpenAIServer, method: api.AuditMethod
) -> None:
    """Per question and budget, as bitsets over the plan's questions: what the paired test
    (core/paired.py) compares between budgets."""
    outcome = await run_audit(plan_for(server, method=method))
    assert outcome.ok, outcome.messages
    for score in outcome.scores:
        right_here = {i for i in range(QUESTIONS) if k_of(i) <= score.budget and right(i)}
        assert score.scored == (1 << QUESTIONS) - 1
        assert {i for i in range(QUESTIONS) if score.correct >> i & 1} == right_here
        (point,) = [p for p in outcome.points() if p.budget == score.budget]
        assert point.answers == (Answers(score.scored, score.correct),)
