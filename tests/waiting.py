"""Waiting in tests for a condition itself, never for a guessed sleep.

`wait_for` (async) and `wait_until` (blocking, for threads and subprocess tests) poll a
predicate until it holds; if it does not within `within` seconds the test fails with an
AssertionError that names `what` never happened. A test that must show something did NOT
happen waits for a marker sent after it instead (see the tests that use these).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

Predicate = Callable[[], object]


async def wait_for(
    predicate: Predicate, within: float = 20.0, what: str = "condition", interval: float = 0.02
) -> None:
    """Return once `predicate()` is true; fail the test after `within` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(interval)


def wait_until(
    predicate: Predicate, within: float = 20.0, what: str = "condition", interval: float = 0.02
) -> None:
    """`wait_for` for code outside an event loop: blocks the calling thread while it polls."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        time.sleep(interval)
