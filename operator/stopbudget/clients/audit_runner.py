"""Run an audit: send the golden set to an OpenAI-compatible endpoint at every budget. I/O.

Two methods (``audit.method``):

* ``direct``: one request per (question, budget) with ``max_tokens`` = budget.
* ``truncate``: one request per question at the largest budget, asking for
  token-level output (``logprobs: 1`` on ``/v1/completions``, ``logprobs: true``
  on ``/v1/chat/completions``), then EM on the text of each prefix of ``b``
  tokens.  The tokens are read from OpenAI's legacy ``logprobs.tokens[]`` or,
  as llama.cpp's server sends them on ``/v1/completions`` too, from the chat
  format ``logprobs.content[]`` (``bytes``, else ``token``).  With greedy
  decoding (temperature 0, the default) the first ``b`` tokens of a longer
  generation are what a request with ``max_tokens: b`` returns, so the whole
  ladder costs one generation per question.  When the
  server sends no tokens (no logprobs support, or tokens that do not spell the
  output), the audit starts over with ``direct`` and says so in its messages.

Scoring (:mod:`stopbudget.core.audits.em`): an output is *cut* when the budget
stopped it: ``finish_reason: length``, or a prefix shorter than the whole
output.  A cut output without an extractable answer counts as ``truncated``.

Per budget the result has ``hits`` (exact matches), ``n`` (answers scored),
``errors`` (requests that failed for good), ``mean_tokens`` (tokens generated
per answer, from ``usage.completion_tokens``) and ``truncated``.  When any
budget has fewer than ``min_samples`` answers the result is ``ok=False`` and its
curve must not be used; the messages say which budget and how many.  Wilson
bounds are not computed here (:mod:`stopbudget.core.curve` does that).

Robustness: at most ``concurrency`` requests in flight; a time limit per
request and for the whole audit; retries with exponential backoff and jitter
(or the server's ``Retry-After``) on 429, 5xx, timeouts and connection errors,
``max_attempts`` in all; after ``give_up_after`` questions in a row failed the
audit stops instead of hammering a dead endpoint, and when the endpoint cannot
be connected to at all before anything succeeded, it stops after the first
question.  Cancelling the task that
awaits :func:`run_audit` cancels every request and closes the HTTP session
before the cancellation propagates.

The runner takes plain values (:class:`AuditPlan`), so it needs no Kubernetes;
:func:`plan_from_spec` builds a plan from a policy's ``audit`` and ``quality``.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp

from stopbudget.api import Audit, AuditApi, AuditMethod, Quality
from stopbudget.core import curve
from stopbudget.core.audits import em
from stopbudget.core.audits.dataset import GoldenItem

__all__ = [
    "AuditOutcome",
    "AuditPlan",
    "BudgetScore",
    "ProgressCallback",
    "plan_from_spec",
    "run_audit",
]

#: ``progress(done, total)``: called after each request unit (a question in
#: truncate, a question and budget in direct).  ``total`` changes once when
#: truncate falls back to direct, and ``done`` starts again from 0 then.
ProgressCallback = Callable[[int, int], None]

#: HTTP statuses worth retrying: rate limited, or the server is failing.
RETRY_STATUSES = frozenset({408, 429})


@dataclass(frozen=True)
class AuditPlan:
    """Everything one audit needs, as plain values (seconds for times)."""

    endpoint: str
    """Base URL, e.g. ``http://vllm.serving:8000`` (a trailing ``/v1`` is accepted)."""
    model: str
    budgets: tuple[int, ...]
    questions: tuple[GoldenItem, ...]
    api: AuditApi = AuditApi.COMPLETIONS
    method: AuditMethod = AuditMethod.DIRECT
    concurrency: int = 4
    request_timeout: float = 120.0
    timeout: float = 900.0
    answer_pattern: str | None = None
    min_samples: int = 30
    temperature: float = 0.0
    max_attempts: int = 4
    """Attempts per request, the first one included."""
    backoff: float = 0.5
    """First retry delay in seconds; doubles each retry, with jitter."""
    max_backoff: float = 30.0
    """Longest delay between attempts, ``Retry-After`` included."""
    give_up_after: int = 10
    """Stop the audit after this many questions in a row failed for good."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Extra HTTP headers, e.g. ``Authorization: Bearer ...``."""

    def __post_init__(self) -> None:
        if not self.budgets:
            raise ValueError("budgets: give at least one budget")
        if any(b < 1 for b in self.budgets):
            raise ValueError(f"budgets must be positive token counts, got {list(self.budgets)}")
        if len(set(self.budgets)) != len(self.budgets):
            raise ValueError(f"budgets must be distinct, got {list(self.budgets)}")
        if not self.questions:
            raise ValueError("questions: the golden set is empty")
        if self.concurrency < 1 or self.max_attempts < 1 or self.give_up_after < 1:
            raise ValueError("concurrency, max_attempts and give_up_after must be at least 1")
        if self.request_timeout <= 0 or self.timeout <= 0:
            raise ValueError("timeouts must be positive")
        if self.min_samples < 1:
            raise ValueError("min_samples must be at least 1")
        if self.answer_pattern is not None and re.compile(self.answer_pattern).groups < 1:
            raise ValueError(f"answer pattern {self.answer_pattern!r} has no capture group")
        if not re.match(r"^https?://[^\s/]+", self.endpoint):
            raise ValueError(f"endpoint {self.endpoint!r} is not an http(s) URL")

    @property
    def ladder(self) -> tuple[int, ...]:
        """The budgets, ascending."""
        return tuple(sorted(self.budgets))

    @property
    def url(self) -> str:
        """The URL requests go to."""
        base = self.endpoint.rstrip("/")
        if not base.endswith("/v1"):
            base += "/v1"
        return base + ("/chat/completions" if self.api == AuditApi.CHAT else "/completions")


def plan_from_spec(
    audit: Audit,
    quality: Quality,
    questions: Sequence[GoldenItem],
    *,
    headers: Mapping[str, str] | None = None,
) -> AuditPlan:
    """The plan of a policy's audit over ``questions`` (already sampled)."""
    return AuditPlan(
        endpoint=audit.endpoint,
        model=audit.model,
        budgets=tuple(audit.budgets),
        questions=tuple(questions),
        api=audit.api,
        method=audit.method,
        concurrency=audit.concurrency,
        request_timeout=audit.request_timeout.total_seconds(),
        timeout=audit.timeout.total_seconds(),
        answer_pattern=audit.answer_pattern,
        min_samples=quality.min_samples,
        headers=dict(headers or {}),
    )


@dataclass(frozen=True)
class BudgetScore:
    """What one budget of the ladder scored."""

    budget: int
    hits: int
    """Exact matches."""
    samples: int
    """Answers scored (successful requests)."""
    errors: int
    """Requests that failed for good (after retries)."""
    mean_tokens: float | None
    """Mean tokens generated per answer, None when unknown."""
    truncated: int
    """Answers cut by the budget with no extractable answer."""
    scored: int = field(default=0, compare=False)
    """Questions scored, as a bitset: bit ``i`` is question ``i`` of the plan (not compared:
    two scores are equal on their counts)."""
    correct: int = field(default=0, compare=False)
    """Questions answered exactly, as a bitset like ``scored``."""

    @property
    def em(self) -> float:
        """Exact-Match rate, 0 when nothing was scored."""
        return self.hits / self.samples if self.samples else 0.0


@dataclass(frozen=True)
class AuditOutcome:
    """The result of one audit."""

    ok: bool
    """False when the curve must not be used (too few answers, timed out, gave up)."""
    method: AuditMethod
    """The method actually used (truncate may have fallen back to direct)."""
    scores: tuple[BudgetScore, ...]
    """One per budget, ascending."""
    requests: int
    """HTTP requests sent, retries included."""
    generations: int
    """Requests that returned a generation."""
    tokens: int
    """Tokens generated in all (``usage.completion_tokens``)."""
    duration: float
    """Wall time in seconds."""
    messages: tuple[str, ...]
    """What happened, for status and logs; the first is the most important."""

    @property
    def message(self) -> str:
        """The messages in one line."""
        return "; ".join(self.messages)

    def points(self) -> list[curve.Point]:
        """The measured points, for :class:`stopbudget.core.curve.Curve`."""
        return [
            curve.Point(
                s.budget,
                s.hits,
                s.samples,
                s.mean_tokens,
                s.truncated,
                audits=1,
                answers=(curve.Answers(s.scored, s.correct),),
            )
            for s in self.scores
        ]


# --------------------------------------------------------------------------- HTTP


class _RequestError(Exception):
    """A request that failed; ``retryable`` says whether another attempt may help."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        unreachable: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
        self.unreachable = unreachable
        """No connection could be made at all (refused, unknown host)."""


@dataclass(frozen=True)
class _Generation:
    text: str
    finish_reason: str | None
    completion_tokens: int | None
    pieces: tuple[bytes, ...] | None
    """The generated tokens as UTF-8 bytes, None when the server sent none."""

    def prefix(self, n: int) -> str:
        assert self.pieces is not None
        return b"".join(self.pieces[:n]).decode("utf-8", errors="ignore")

    @property
    def used_tokens(self) -> int | None:
        if self.completion_tokens is not None:
            return self.completion_tokens
        return None if self.pieces is None else len(self.pieces)


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _server_message(body: str) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:300]
        if isinstance(error, str):
            return error[:300]
    return " ".join(body.split())[:300] or "(empty body)"


def _pieces(choice: Mapping[str, Any], chat: bool) -> tuple[bytes, ...] | None:
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict):
        return None
    if not chat and "tokens" in logprobs:  # OpenAI's legacy completions format
        tokens = logprobs.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            return None
        return tuple(t.encode("utf-8") for t in tokens)
    # The chat format, which llama.cpp also sends on /v1/completions.
    content = logprobs.get("content")
    if not isinstance(content, list):
        return None
    out = []
    for entry in content:
        if not isinstance(entry, dict):
            return None
        raw = entry.get("bytes")
        if isinstance(raw, list) and all(isinstance(b, int) and 0 <= b < 256 for b in raw):
            out.append(bytes(raw))
        elif isinstance(entry.get("token"), str):
            out.append(str(entry["token"]).encode("utf-8"))
        else:
            return None
    return tuple(out)


def _parse(data: Any, chat: bool) -> _Generation:
    if not isinstance(data, dict):
        raise TypeError("the response is not a JSON object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError('the response has no "choices"')
    choice = choices[0]
    if chat:
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else None
    else:
        text = choice.get("text")
    if text is not None and not isinstance(text, str):
        raise ValueError("the generated text is not a string")
    usage = data.get("usage")
    used = usage.get("completion_tokens") if isinstance(usage, dict) else None
    finish = choice.get("finish_reason")
    return _Generation(
        text=text or "",
        finish_reason=finish if isinstance(finish, str) else None,
        completion_tokens=used if isinstance(used, int) and not isinstance(used, bool) else None,
        pieces=_pieces(choice, chat),
    )


class _Client:
    """Requests with retries against one endpoint."""

    def __init__(self, session: aiohttp.ClientSession, plan: AuditPlan) -> None:
        self.session = session
        self.plan = plan
        self.requests = 0
        self.generations = 0
        self.tokens = 0
        self._headers = dict(plan.headers)
        self._timeout = aiohttp.ClientTimeout(total=plan.request_timeout)

    def _body(self, prompt: str, max_tokens: int, logprobs: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.plan.model,
            "max_tokens": max_tokens,
            "temperature": self.plan.temperature,
            "n": 1,
            "stream": False,
        }
        if self.plan.api == AuditApi.CHAT:
            body["messages"] = [{"role": "user", "content": prompt}]
            if logprobs:
                body["logprobs"] = True
        else:
            body["prompt"] = prompt
            if logprobs:
                body["logprobs"] = 1
        return body

    async def _attempt(self, body: Mapping[str, Any]) -> _Generation:
        url = self.plan.url
        self.requests += 1
        try:
            async with self.session.post(
                url, json=body, headers=self._headers, timeout=self._timeout
            ) as response:
                if response.status == 200:
                    try:
                        data = await response.json(content_type=None)
                        return _parse(data, self.plan.api == AuditApi.CHAT)
                    except (ValueError, TypeError) as exc:
                        raise _RequestError(
                            f"malformed response from {url}: {exc}", retryable=False
                        ) from None
                text = await response.text(errors="replace")
                message = f"HTTP {response.status} from {url}: {_server_message(text)}"
                retryable = response.status >= 500 or response.status in RETRY_STATUSES
                raise _RequestError(
                    message,
                    retryable=retryable,
                    retry_after=_retry_after(response.headers.get("Retry-After")),
                )
        except TimeoutError:
            raise _RequestError(
                f"no response from {url} within {self.plan.request_timeout:g}s", retryable=True
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise _RequestError(
                f"cannot reach {url}: {exc}", retryable=True, unreachable=True
            ) from None
        except aiohttp.ClientError as exc:
            raise _RequestError(f"request to {url} failed: {exc}", retryable=True) from None

    async def generate(self, prompt: str, max_tokens: int, *, logprobs: bool) -> _Generation:
        body = self._body(prompt, max_tokens, logprobs)
        for attempt in range(1, self.plan.max_attempts + 1):
            try:
                generation = await self._attempt(body)
            except _RequestError as failure:
                if not failure.retryable or attempt == self.plan.max_attempts:
                    if attempt > 1:
                        failure.message += f" (after {attempt} attempts)"
                    raise
                if failure.retry_after is not None:
                    delay = failure.retry_after
                else:
                    delay = self.plan.backoff * 2 ** (attempt - 1)
                    delay *= 0.5 + random.random() / 2  # noqa: S311 - jitter, not crypto
                await asyncio.sleep(min(delay, self.plan.max_backoff))
                continue
            self.generations += 1
            self.tokens += generation.used_tokens or 0
            return generation
        raise AssertionError("unreachable")  # pragma: no cover


@asynccontextmanager
async def _session(plan: AuditPlan) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=plan.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


# --------------------------------------------------------------------------- the audit


class _NoTokensError(Exception):
    """Truncate cannot work: the server sent no usable token-level output."""


class _GiveUpError(Exception):
    """Too many questions in a row failed."""


@dataclass
class _Tally:
    hits: int = 0
    samples: int = 0
    errors: int = 0
    truncated: int = 0
    tokens: int = 0
    counted: int = 0
    scored: int = 0
    correct: int = 0

    def add(self, question: int, score: em.Score, used: int | None) -> None:
        self.samples += 1
        self.hits += score.hit
        self.scored |= 1 << question
        if score.hit:
            self.correct |= 1 << question
        self.truncated += score.truncated
        if used is not None:
            self.tokens += used
            self.counted += 1


class _Run:
    def __init__(self, plan: AuditPlan, progress: ProgressCallback | None) -> None:
        self.plan = plan
        self.progress = progress
        self.pattern = re.compile(plan.answer_pattern) if plan.answer_pattern else None
        self.method = plan.method
        self.messages: list[str] = []
        self.failed = False
        self.failures: Counter[str] = Counter()
        self.in_a_row = 0
        self.done = 0
        self.total = 0
        self.tallies: dict[int, _Tally] = {}
        self.client: _Client | None = None

    def _reset(self, total: int) -> None:
        self.tallies = {b: _Tally() for b in self.plan.ladder}
        self.failures.clear()
        self.in_a_row = 0
        self.done = 0
        self.total = total
        if self.progress:
            self.progress(0, total)

    def _step(self) -> None:
        self.done += 1
        if self.progress:
            self.progress(self.done, self.total)

    def _failed(self, failure: _RequestError, budgets: Sequence[int]) -> None:
        for b in budgets:
            self.tallies[b].errors += 1
        self.failures[failure.message] += 1
        self.in_a_row += 1
        assert self.client is not None
        if failure.unreachable and not self.client.generations:
            raise _GiveUpError(f"the endpoint is unreachable: {failure.message}")
        if self.in_a_row >= self.plan.give_up_after:
            raise _GiveUpError(
                f"gave up after {self.plan.give_up_after} failed questions in a row; "
                f"last: {failure.message}"
            )

    def _score(self, item: GoldenItem, text: str, cut: bool) -> em.Score:
        return em.score(text, item.answers, pattern=self.pattern, cut=cut)

    async def _direct(self, job: tuple[int, GoldenItem, int]) -> None:
        assert self.client is not None
        index, item, budget = job
        try:
            gen = await self.client.generate(item.question, budget, logprobs=False)
        except _RequestError as failure:
            self._failed(failure, [budget])
        else:
            self.in_a_row = 0
            cut = gen.finish_reason == "length"
            self.tallies[budget].add(index, self._score(item, gen.text, cut), gen.used_tokens)
        self._step()

    async def _truncate(self, job: tuple[int, GoldenItem]) -> None:
        assert self.client is not None
        index, item = job
        ladder = self.plan.ladder
        try:
            gen = await self.client.generate(item.question, ladder[-1], logprobs=True)
        except _RequestError as failure:
            self._failed(failure, ladder)
            self._step()
            return
        self.in_a_row = 0
        if gen.pieces is None:
            raise _NoTokensError("the server returned no token-level output (logprobs)")
        spelled = gen.prefix(len(gen.pieces))
        if gen.text.strip() and gen.text.strip() not in spelled:
            raise _NoTokensError("the tokens the server returned do not spell its output")
        length = len(gen.pieces)
        for budget in ladder:
            if budget < length:
                score, used = self._score(item, gen.prefix(budget), True), budget
            else:
                score, used = self._score(item, gen.text, gen.finish_reason == "length"), length
            self.tallies[budget].add(index, score, used)
        self._step()

    async def _pool(self, jobs: Sequence[Any], work: Callable[[Any], Any]) -> None:
        queue: Iterator[Any] = iter(jobs)

        async def worker() -> None:
            for job in queue:  # shared iterator: each job goes to one worker
                await work(job)

        async with asyncio.TaskGroup() as group:
            for _ in range(min(self.plan.concurrency, len(jobs))):
                group.create_task(worker())

    async def measure(self, session: aiohttp.ClientSession) -> None:
        self.client = _Client(session, self.plan)
        questions = self.plan.questions
        fallback, reason = False, ""
        if self.method == AuditMethod.TRUNCATE:
            self._reset(len(questions))
            try:
                await self._pool(list(enumerate(questions)), self._truncate)
            except* _NoTokensError as group:
                fallback = True
                reason = str(group.exceptions[0])
            except* _GiveUpError as group:
                self._gave_up(str(group.exceptions[0]))
            if not fallback:
                return
            self.messages.append(
                f"truncate: {reason}; fell back to direct (one request per question and budget)"
            )
            self.method = AuditMethod.DIRECT
        jobs = [(i, item, b) for i, item in enumerate(questions) for b in self.plan.ladder]
        self._reset(len(jobs))
        try:
            await self._pool(jobs, self._direct)
        except* _GiveUpError as group:
            self._gave_up(str(group.exceptions[0]))

    def _gave_up(self, why: str) -> None:
        self.failed = True
        self.messages.insert(0, why)

    def timed_out(self) -> None:
        self.failed = True
        self.messages.insert(
            0,
            f"timed out after {self.plan.timeout:g}s with {self.done} of {self.total} "
            "requests done",
        )

    def outcome(self, duration: float) -> AuditOutcome:
        scores = tuple(
            BudgetScore(
                budget=b,
                hits=t.hits,
                samples=t.samples,
                errors=t.errors,
                mean_tokens=t.tokens / t.counted if t.counted else None,
                truncated=t.truncated,
                scored=t.scored,
                correct=t.correct,
            )
            for b, t in sorted(self.tallies.items())
        )
        messages = list(self.messages)
        short = [s for s in scores if s.samples < self.plan.min_samples]
        if short:
            listed = ", ".join(f"budget {s.budget}: {s.samples} ({s.errors} failed)" for s in short)
            messages.append(
                f"too few answers: {listed}; minSamples is {self.plan.min_samples}, "
                "so this curve is not used"
            )
        if self.failures:
            total = sum(self.failures.values())
            common = "; ".join(f"{m} (x{c})" for m, c in self.failures.most_common(3))
            messages.append(f"{total} requests failed: {common}")
        ok = not self.failed and not short
        if ok:
            ems = ", ".join(f"{s.budget}: {s.em:.3f}" for s in scores)
            messages.insert(0, f"measured EM at {len(scores)} budgets ({self.method.value}): {ems}")
        client = self.client
        return AuditOutcome(
            ok=ok,
            method=self.method,
            scores=scores,
            requests=client.requests if client else 0,
            generations=client.generations if client else 0,
            tokens=client.tokens if client else 0,
            duration=duration,
            messages=tuple(messages),
        )


async def run_audit(
    plan: AuditPlan,
    *,
    progress: ProgressCallback | None = None,
    session: aiohttp.ClientSession | None = None,
) -> AuditOutcome:
    """Run one audit and return its outcome; never raises for endpoint failures.

    ``session``: an aiohttp session to use (left open); by default one is
    created and closed.  Cancelling the calling task cancels all requests.
    """
    started = time.monotonic()
    run = _Run(plan, progress)
    deadline = asyncio.timeout(plan.timeout)
    try:
        async with deadline:
            if session is not None:
                await run.measure(session)
            else:
                async with _session(plan) as own:
                    await run.measure(own)
    except TimeoutError:
        if not deadline.expired():
            raise
        run.timed_out()
    return run.outcome(time.monotonic() - started)
