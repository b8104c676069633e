"""The one polling helper of the tests and benchmarks: wait for a condition, never a fixed time.

``wait_for`` polls a plain callable; ``wait_for_async`` polls one from a coroutine without
blocking the event loop; ``eventually`` awaits a probe until its result is accepted. All
raise TimeoutError naming ``what`` (``eventually``: and the last result seen) when time is up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

#: How often a condition is polled, in seconds.
INTERVAL = 0.05


def wait_for(
    condition: Callable[[], T | None], timeout: float = 20.0, what: str = "condition"
) -> T:
    """Call ``condition`` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached within {timeout:g}s")
        time.sleep(INTERVAL)


async def wait_for_async(
    condition: Callable[[], T | None], within: float = 20.0, what: str = "condition"
) -> T:
    """``wait_for`` inside a coroutine: the event loop runs between two polls."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached within {within:g}s")
        await asyncio.sleep(INTERVAL / 10)


async def eventually(
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool],
    within: float = 20.0,
    what: str = "condition",
) -> T:
    """Await ``probe()`` until ``accept`` holds for its result; return that result.

    The TimeoutError shows the last result, so a failure says what was seen.
    """
    deadline = time.monotonic() + within
    while True:
        last = await probe()
        if accept(last):
            return last
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached within {within:g}s; last: {last!r}")
        await asyncio.sleep(INTERVAL)
