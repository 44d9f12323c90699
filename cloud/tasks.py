"""What the cloud's periodic background tasks (analytics, storage upkeep) share."""

from __future__ import annotations

import asyncio


def raise_if_cancelling() -> None:
    """Raise CancelledError when the current task has been asked to stop.

    Call it in a periodic task's ``except Exception`` before logging and sleeping: a task
    cancelled mid-run whose clean-up then fails (an unlock on a connection the cancel broke)
    sees that error instead of its CancelledError, and would otherwise sleep until its next run
    while shutdown awaits it.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
