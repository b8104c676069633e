"""A small OpenAI-compatible server whose answers depend on the budget in a known way.

Each known prompt has a canned full output, a sequence of tokens.  A **token**
here is one whitespace-separated word together with the whitespace before it
(``"Let"``, ``" me"``, ``"\\n18"``), so the output text is the tokens joined and
the first ``b`` tokens are a prefix of it, as with a real tokenizer.  A request
with ``max_tokens`` = ``b`` gets the first ``b`` tokens; when that is fewer than
the whole output, ``finish_reason`` is ``length``, otherwise ``stop``.  So the
EM-vs-budget curve of a golden set is known exactly: with :func:`reply`,
question *i* whose output has ``k_i`` tokens ending in the line ``answer_i`` is
answered at budget ``b`` if and only if ``b >= k_i``.

Served on 127.0.0.1 at a free port:

* ``POST /v1/completions`` (``prompt``; ``logprobs: N`` gives
  ``choices[0].logprobs.tokens``, or with ``completion_logprobs="content"`` the
  chat format ``logprobs.content[]`` that llama.cpp's server sends) and
  ``POST /v1/chat/completions`` (the last user message; ``logprobs: true``
  gives ``choices[0].logprobs.content[].token`` and ``bytes``);
* ``usage.completion_tokens`` is the number of tokens returned;
* ``model`` must be the server's model (404 otherwise, as vLLM does); an
  unknown prompt is a 400.

Knobs for failure tests: :meth:`OpenAIServer.fail_next` (N responses with an
HTTP status, optionally ``Retry-After``), :meth:`OpenAIServer.hang_next` (N
requests never answered until the server stops), ``logprobs=False`` (never
send token-level output) and ``token_delay`` (seconds per generated token, so
concurrency matters).  Every request body is kept in ``requests`` (its raw bytes in
``bodies``), its arrival time (event loop clock) in ``arrivals``.

Use ``async with OpenAIServer(...) as server`` inside a test's event loop, or
``with ThreadedOpenAIServer(...) as server`` from synchronous code (the CLI).
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiohttp import web

MODEL = "test-model"


@dataclass(frozen=True)
class Canned:
    """The full output the server generates for one prompt."""

    tokens: tuple[str, ...]

    @property
    def text(self) -> str:
        return "".join(self.tokens)


def words(text: str) -> Canned:
    """``text`` as tokens: each whitespace-separated word with the whitespace before it."""
    tokens: list[str] = []
    pending = ""
    for part in _split_keep(text):
        if part.isspace():
            pending += part
        else:
            tokens.append(pending + part)
            pending = ""
    if pending:
        tokens.append(pending)
    return Canned(tuple(tokens))


def _split_keep(text: str) -> Iterable[str]:
    current = ""
    for ch in text:
        if current and ch.isspace() != current[-1].isspace():
            yield current
            current = ""
        current += ch
    if current:
        yield current


def reply(answer: str, k: int) -> Canned:
    """An output of exactly ``k`` tokens: ``k - 1`` filler words, then the line ``answer``."""
    if k < 1:
        raise ValueError("an output has at least one token")
    filler = [f"{'' if i == 0 else ' '}step{i + 1}" for i in range(k - 1)]
    return Canned((*filler, ("\n" if filler else "") + answer))


@dataclass
class _Fault:
    status: int
    retry_after: str | None = None


class OpenAIServer:
    """The server; see the module docstring."""

    def __init__(
        self,
        replies: Mapping[str, Canned],
        *,
        model: str = MODEL,
        logprobs: bool = True,
        token_delay: float = 0.0,
        completion_logprobs: str = "legacy",
    ) -> None:
        if completion_logprobs not in ("legacy", "content"):
            raise ValueError("completion_logprobs is legacy or content")
        self.replies = replies
        self.model = model
        self.logprobs = logprobs
        self.token_delay = token_delay
        self.completion_logprobs = completion_logprobs
        self.requests: list[dict[str, Any]] = []
        self.bodies: list[bytes] = []
        self.arrivals: list[float] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.hung = 0
        self.url = ""
        self._faults: deque[_Fault | None] = deque()
        self._runner: web.AppRunner | None = None
        self._release: asyncio.Event | None = None

    def fail_next(self, status: int, times: int = 1, retry_after: str | None = None) -> None:
        """Answer the next ``times`` requests with ``status`` (and ``Retry-After``)."""
        self._faults.extend(_Fault(status, retry_after) for _ in range(times))

    def hang_next(self, times: int = 1) -> None:
        """Never answer the next ``times`` requests (until the server stops)."""
        self._faults.extend(None for _ in range(times))

    async def start(self) -> None:
        self._release = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._release is not None:
            self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> OpenAIServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ handlers

    async def _prologue(self, request: web.Request) -> dict[str, Any] | web.Response:
        self.bodies.append(await request.read())
        body = await request.json()
        self.requests.append(body)
        self.arrivals.append(asyncio.get_running_loop().time())
        if self._faults:
            fault = self._faults.popleft()
            if fault is None:
                assert self._release is not None
                self.hung += 1
                try:
                    await self._release.wait()
                finally:
                    self.hung -= 1
                return web.json_response({"error": {"message": "shutting down"}}, status=503)
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
            return web.json_response(
                {"error": {"message": f"injected failure {fault.status}"}},
                status=fault.status,
                headers=headers,
            )
        if body.get("model") != self.model:
            return web.json_response(
                {"error": {"message": f"The model `{body.get('model')}` does not exist."}},
                status=404,
            )
        assert isinstance(body, dict)
        return body

    async def _generate(self, prompt: str, max_tokens: int | None) -> tuple[list[str], str]:
        canned = self.replies[prompt]
        limit = len(canned.tokens) if max_tokens is None else max_tokens
        out = list(canned.tokens[:limit])
        finish = "length" if limit < len(canned.tokens) else "stop"
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.token_delay:
                await asyncio.sleep(self.token_delay * len(out))  # simulated decoding time
        finally:
            self.in_flight -= 1
        return out, finish

    @staticmethod
    def _unknown(prompt: str) -> web.Response:
        return web.json_response(
            {"error": {"message": f"unknown prompt {prompt[:60]!r}"}}, status=400
        )

    async def _completions(self, request: web.Request) -> web.Response:
        body = await self._prologue(request)
        if isinstance(body, web.Response):
            return body
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or prompt not in self.replies:
            return self._unknown(str(prompt))
        out, finish = await self._generate(prompt, body.get("max_tokens", 16))
        choice: dict[str, Any] = {
            "index": 0,
            "text": "".join(out),
            "finish_reason": finish,
            "logprobs": None,
        }
        if body.get("logprobs") is not None and self.logprobs:
            if self.completion_logprobs == "content":
                choice["logprobs"] = _content_logprobs(out)
                return web.json_response(
                    _envelope("text_completion", self.model, prompt, out, choice)
                )
            offsets = [0, *itertools.accumulate(len(t) for t in out)][: len(out)]
            choice["logprobs"] = {
                "tokens": out,
                "token_logprobs": [-0.1] * len(out),
                "top_logprobs": [{t: -0.1} for t in out],
                "text_offset": offsets,
            }
        return web.json_response(_envelope("text_completion", self.model, prompt, out, choice))

    async def _chat(self, request: web.Request) -> web.Response:
        body = await self._prologue(request)
        if isinstance(body, web.Response):
            return body
        messages = body.get("messages") or [{}]
        prompt = messages[-1].get("content")
        if not isinstance(prompt, str) or prompt not in self.replies:
            return self._unknown(str(prompt))
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        out, finish = await self._generate(prompt, limit)
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": "".join(out)},
            "finish_reason": finish,
            "logprobs": None,
        }
        if body.get("logprobs") is True and self.logprobs:
            choice["logprobs"] = _content_logprobs(out)
        return web.json_response(_envelope("chat.completion", self.model, prompt, out, choice))


def _content_logprobs(out: list[str]) -> dict[str, Any]:
    """Token-level output in the chat format (also llama.cpp's on /v1/completions)."""
    return {
        "content": [
            {"token": t, "logprob": -0.1, "bytes": list(t.encode()), "top_logprobs": []}
            for t in out
        ]
    }


def _envelope(
    kind: str, model: str, prompt: str, out: list[str], choice: dict[str, Any]
) -> dict[str, Any]:
    prompt_tokens = len(words(prompt).tokens)
    return {
        "id": "cmpl-test",
        "object": kind,
        "created": 0,
        "model": model,
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(out),
            "total_tokens": prompt_tokens + len(out),
        },
    }


class ThreadedOpenAIServer:
    """:class:`OpenAIServer` on its own event loop in a thread, for synchronous callers."""

    def __init__(self, replies: Mapping[str, Canned], **options: Any) -> None:
        self.server = OpenAIServer(replies, **options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return self.server.url

    def __enter__(self) -> OpenAIServer:
        self._thread.start()
        started: Future[None] = asyncio.run_coroutine_threadsafe(self.server.start(), self._loop)
        started.result(timeout=10)
        return self.server

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
