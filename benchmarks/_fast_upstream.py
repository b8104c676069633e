"""A fast OpenAI-style upstream for ``bench_gate.py``, run as its own process.

    python benchmarks/_fast_upstream.py PORT

``POST /v1/chat/completions`` answers at once: a JSON completion whose
``usage.completion_tokens`` is the request's ``max_tokens``, or with ``"stream":
true`` an SSE stream of :data:`CHUNKS` token events, the finish event and
``[DONE]``.  ``GET /health`` answers ``ok``.  No model, no delay: what is measured
in front of it is the cost of HTTP, and of the gate.
"""

from __future__ import annotations

import json
import sys

from aiohttp import web

CHUNKS = 16


def _event(data: object) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


TOKEN = _event(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": " word"}, "finish_reason": None}],
    }
)
LAST = (
    _event({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
    + b"data: [DONE]\n\n"
)


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    tokens = body.get("max_tokens") or 16
    if body.get("stream") is True:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(CHUNKS):
            await response.write(TOKEN)
        await response.write(LAST)
        await response.write_eof()
        return response
    return web.json_response(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "word " * 16},
                    "finish_reason": "length",
                }
            ],
            "usage": {
                "prompt_tokens": 12,
                "completion_tokens": tokens,
                "total_tokens": tokens + 12,
            },
        }
    )


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/health", health)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
