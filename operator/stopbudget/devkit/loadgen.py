"""A bounded open-loop load on an OpenAI-compatible server, and llama-server's own counts.

For the end-to-end test of the loop on llama-server and ``stopbudget demo
--engine llamacpp``: requests go to ``/v1/completions`` *without* ``max_tokens``
(the gate sets it to the budget) and with ``ignore_eos``, so that every request
generates exactly its budget: the budget sets the work, as a model that talks
past its budget does.  Loopback only; the number of requests in flight and the
run's length are bounded (arrivals beyond the bound are dropped and counted).

Numbers come from the engine itself (:class:`EngineCounts`), never from the
gate or the client: llama-server has no request counter, so requests are
counted from its prompt-token counters (processed + reused from the cache, the
same ``prompt_tokens`` for every request of the load), and finished requests
are those started minus ``llamacpp:requests_processing``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

__all__ = [
    "PROMPT",
    "Calibration",
    "EngineCounts",
    "OpenLoopLoad",
    "Sent",
    "calibrate",
    "load_body",
    "tokens_per_request",
]

#: The load's prompt: the same for every request, so each adds the same prompt tokens.
PROMPT = "Tell me a long story about a dragon."

TOKENS = "llamacpp:tokens_predicted_total"
PROMPT_PROCESSED = "llamacpp:prompt_tokens_total"
PROMPT_CACHED = "llamacpp:prompt_tokens_cached_total"
PROCESSING = "llamacpp:requests_processing"
DEFERRED = "llamacpp:requests_deferred"


def load_body() -> dict[str, Any]:
    """A request of the load: no ``max_tokens`` (the gate's budget applies), ``ignore_eos``."""
    return {"prompt": PROMPT, "ignore_eos": True}


@dataclass(frozen=True)
class EngineCounts:
    """llama-server's ``/metrics`` at one moment (``at``: ``time.monotonic()``)."""

    at: float
    #: ``tokens_predicted_total``: tokens of finished requests.
    tokens: float
    #: Prompt tokens processed plus reused from the cache: ``prompt_tokens`` per request started.
    prompt: float
    processing: float
    deferred: float

    @classmethod
    def of(cls, metrics: Mapping[str, float], at: float | None = None) -> EngineCounts:
        return cls(
            at=time.monotonic() if at is None else at,
            tokens=metrics.get(TOKENS, 0.0),
            prompt=metrics.get(PROMPT_PROCESSED, 0.0) + metrics.get(PROMPT_CACHED, 0.0),
            processing=metrics.get(PROCESSING, 0.0),
            deferred=metrics.get(DEFERRED, 0.0),
        )

    def finished(self, prompt_tokens: int) -> float:
        """Requests finished so far (of the load's size): started minus those in a slot."""
        return self.prompt / prompt_tokens - self.processing


def tokens_per_request(a: EngineCounts, b: EngineCounts, prompt_tokens: int) -> float | None:
    """Tokens per request of the requests that finished between ``a`` and ``b``; None if none."""
    finished = b.finished(prompt_tokens) - a.finished(prompt_tokens)
    return (b.tokens - a.tokens) / finished if finished >= 1 else None


@dataclass(frozen=True)
class Calibration:
    """What the engine does now: prompt tokens of a load request, generated tokens per second."""

    prompt_tokens: int
    tokens_per_second: float

    def rate(self, overload: float, budget: int) -> float:
        """Requests per second that is ``overload`` times what the engine serves at ``budget``."""
        return overload * self.tokens_per_second / budget


async def calibrate(
    session: aiohttp.ClientSession,
    engine_url: str,
    read: Any,
    *,
    requests: int = 4,
    tokens: int = 24,
) -> Calibration:
    """Send ``requests`` load requests of ``tokens`` tokens at once, straight to the engine.

    ``read()`` returns the engine's metrics (``DevLlamaServer.metrics``); it is called in
    a thread.  The machine is shared, so its speed is measured rather than assumed.
    """
    body = {**load_body(), "max_tokens": tokens}
    before = EngineCounts.of(await asyncio.to_thread(read))
    began = time.monotonic()

    async def one() -> None:
        async with session.post(f"{engine_url}/v1/completions", json=body) as response:
            response.raise_for_status()
            await response.read()

    await asyncio.gather(*(one() for _ in range(requests)))
    wall = time.monotonic() - began
    after = EngineCounts.of(await asyncio.to_thread(read))
    prompt = round((after.prompt - before.prompt) / requests)
    generated = after.tokens - before.tokens
    if prompt < 1 or generated < requests * tokens:
        raise RuntimeError(
            f"calibration: the engine counted {after.prompt - before.prompt:g} prompt and "
            f"{generated:g} generated tokens for {requests} requests of {tokens}: "
            "is it llama-server with --metrics, serving nothing else?"
        )
    return Calibration(prompt_tokens=prompt, tokens_per_second=generated / wall)


@dataclass(frozen=True)
class Sent:
    """One request of the load: when it left and came back (monotonic), its HTTP status."""

    sent: float
    done: float | None = None
    status: int | None = None


@dataclass
class OpenLoopLoad:
    """``rate`` requests per second to ``url`` for at most ``duration`` s, ``concurrency`` at most.

    Arrivals are evenly spaced (open loop: they do not wait for answers); one that
    would exceed ``concurrency`` requests in flight is dropped and counted.
    """

    url: str
    rate: float
    concurrency: int = 16
    duration: float = 90.0
    body: dict[str, Any] = field(default_factory=load_body)
    sent: list[Sent] = field(default_factory=list)
    dropped: int = 0
    #: Requests that failed (no answer, or a status other than 200).
    failed: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _cancel: bool = False

    def stop(self, *, cancel: bool = False) -> None:
        """No more arrivals; with ``cancel``, requests in flight are abandoned too (the
        client goes away: the gate cancels them upstream)."""
        self._cancel = self._cancel or cancel
        self._stop.set()

    def in_flight(self) -> int:
        return sum(1 for s in self.sent if s.done is None)

    def outstanding_sent_before(self, moment: float) -> int:
        """Requests sent before ``moment`` (monotonic) that have not come back yet."""
        return sum(1 for s in self.sent if s.sent < moment and s.done is None)

    async def _one(self, session: aiohttp.ClientSession, index: int) -> None:
        status: int | None = None
        try:
            async with session.post(self.url, json=self.body) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError):
            status = None
        except asyncio.CancelledError:  # abandoned by stop(cancel=True): not a failure
            self.sent[index] = Sent(self.sent[index].sent, time.monotonic(), None)
            raise
        if status != 200:
            self.failed += 1
        self.sent[index] = Sent(self.sent[index].sent, time.monotonic(), status)

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Send until ``duration`` has passed or :meth:`stop`; then wait for the answers."""
        began = time.monotonic()
        tasks: set[asyncio.Task[None]] = set()
        n = 0
        while not self._stop.is_set():
            due = began + n / self.rate
            if due - began >= self.duration:
                break
            try:
                await asyncio.wait_for(self._stop.wait(), max(0.0, due - time.monotonic()))
                break
            except TimeoutError:
                pass
            n += 1
            if self.in_flight() >= self.concurrency:
                self.dropped += 1
                continue
            self.sent.append(Sent(time.monotonic()))
            task = asyncio.create_task(self._one(session, len(self.sent) - 1))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if self._cancel:
            for task in tasks:
                task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
