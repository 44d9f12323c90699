"""`InferenceScheduler`: the engine's bounded queue, its batching and its single inference thread.

The event loop only queues (`put`, never blocking: a full queue drops and counts) and, in `run`,
takes what is queued up to ``batch_max`` items at a time, runs ``process(items)`` in the one
inference thread (so the per-device stream state has one owner and the models one CPU's
worth of time at most) and awaits ``handle(results)`` on the loop before the next batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from gateway.inference.stats import EngineStats
from gateway.logs import RateLimitedLog

log = logging.getLogger(__name__)

Item = tuple[str, Any]
"""``("audio", (home, room, device, frame))``, ``("reading", reading)`` or ``("sweep", None)``
(nothing to process: the batch only gives the engine a turn)."""
T = TypeVar("T")  # what `process` makes of a batch and `handle` takes (the engine's results)
R = TypeVar("R")


class InferenceScheduler(Generic[T]):
    """See the module docstring."""

    def __init__(
        self,
        *,
        queue_size: int,
        batch_max: int,
        process: Callable[[list[Item]], T],
        handle: Callable[[T], Awaitable[None]],
        stats: EngineStats,
    ) -> None:
        self._queue: asyncio.Queue[Item] = asyncio.Queue(maxsize=queue_size)
        self._batch_max = batch_max
        self._process = process
        self._handle = handle
        self._stats = stats
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._idle = asyncio.Event()
        self._idle.set()
        self._full_log = RateLimitedLog(log)
        self._error_log = RateLimitedLog(log)

    def put(self, item: Item) -> None:
        try:
            self._queue.put_nowait(item)
            self._idle.clear()
        except asyncio.QueueFull:
            self._stats.dropped += 1
            self._full_log.warning(
                "inference queue full (%d): dropped %d items so far",
                self._queue.maxsize,
                self._stats.dropped,
            )

    def room(self) -> int:
        """How many items fit in the queue now."""
        return self._queue.maxsize - self._queue.qsize()

    def try_put(self, item: Item) -> bool:
        """Queue `item` if there is room (no drop counted); False when the queue is full."""
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            return False
        self._idle.clear()
        return True

    async def put_waiting(self, item: Item) -> None:
        """Queue `item`, waiting while the queue is full (backpressure instead of a drop)."""
        await self._queue.put(item)
        self._idle.clear()

    def nudge(self) -> None:
        """Give `process` a turn soon with an empty ``sweep`` item, unless items wait anyway."""
        if self._queue.empty():
            self.put(("sweep", None))

    async def run(self) -> None:
        """Serve until cancelled. The thread is ended by `close`, not here, so a supervisor
        that restarts this task finds it still there."""
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._queue.get()]
            while len(items) < self._batch_max and not self._queue.empty():
                items.append(self._queue.get_nowait())
            try:
                results = await loop.run_in_executor(self._pool, self._process, items)
                await self._handle(results)
            except Exception:  # a task's top level: log, count, keep serving
                self._stats.errors += 1
                self._error_log.error(
                    "inference batch of %d items failed", len(items), exc_info=True
                )
            if self._queue.empty():
                self._idle.set()

    async def call(self, fn: Callable[[], R]) -> R:
        """Run `fn` in the inference thread, after the batch it may be busy with."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def drain(self) -> None:
        """Wait until everything queued so far is processed and handled (tests, shutdown)."""
        await self._idle.wait()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
