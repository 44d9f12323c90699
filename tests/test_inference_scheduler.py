"""`InferenceScheduler` (pure, no models): batches, and survives its task being restarted, as the
gateway's supervisor restarts a task that ended."""

from __future__ import annotations

import asyncio

from gateway.inference.results import InferenceResult
from gateway.inference.scheduler import InferenceScheduler, Item
from gateway.inference.stats import EngineStats


async def test_a_restarted_run_still_serves() -> None:
    seen: list[list[Item]] = []

    def process(items: list[Item]) -> list[InferenceResult]:
        seen.append(items)
        return []

    async def handle(_results: list[InferenceResult]) -> None:
        return None

    stats = EngineStats()
    scheduler = InferenceScheduler(
        queue_size=10, batch_max=4, process=process, handle=handle, stats=stats
    )
    try:
        for round_ in range(2):
            task = asyncio.create_task(scheduler.run())
            for i in range(3):
                scheduler.put(("reading", (round_, i)))
            await asyncio.wait_for(scheduler.drain(), 10)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert [len(batch) for batch in seen] == [3, 3]
        assert stats.errors == 0  # the second run found its thread still there
    finally:
        scheduler.close()
