"""`StateLimiter`: which entity states to publish when, at most one per entity per interval.

The gateway calls `offer` with every committed reading of an announced entity (event loop,
O(1), never waits); the publishing task asks `take_due` for the states whose time has come and
sleeps until `next_due`. Per entity:

- a value offered when the entity's last state went out at least ``interval_s`` ago (or never)
  is due at once;
- one offered sooner waits until ``interval_s`` after the last state, and a newer value offered
  meanwhile replaces it (by the reading's own timestamp: a late, older reading does not), so
  the latest value of a burst is published when the quiet period ends, never lost;
- at most ``max_pending`` entities wait; a new one beyond that drops the oldest waiting value
  (counted in `dropped`: its entity shows an older state until its next reading).

Times come from `clock` (monotonic by default); a heap orders the due times, entries made
stale by a newer value are skipped when popped.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)


@dataclass(slots=True)
class _Pending:
    value: float
    ts: float
    due: float


class StateLimiter(Generic[Key]):
    """See the module docstring. Not thread-safe: the event loop owns it."""

    def __init__(
        self,
        *,
        interval_s: float,
        max_pending: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = interval_s
        self.max_pending = max_pending
        self._clock = clock
        self._pending: OrderedDict[Key, _Pending] = OrderedDict()
        # key -> (when its last state went out, that reading's ts); least recently sent first,
        # bounded: a forgotten entry only lets that entity's next state out at once.
        self._sent: OrderedDict[Key, tuple[float, float]] = OrderedDict()
        self._heap: list[tuple[float, int, Key]] = []
        self._seq = itertools.count()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._pending)

    def offer(self, key: Key, value: float, ts: float) -> bool:
        """Remember `value` (a reading at `ts`) as the entity's newest; True when the schedule
        changed (a new waiting state: the publishing task must look at `next_due` again)."""
        now = self._clock()
        waiting = self._pending.get(key)
        if waiting is not None:
            if ts >= waiting.ts:
                waiting.value, waiting.ts = value, ts
            return False
        sent = self._sent.get(key)
        if sent is not None and ts < sent[1]:
            return False  # older than the state HA already has
        due = now if sent is None else max(now, sent[0] + self.interval_s)
        if len(self._pending) >= self.max_pending:
            self._pending.popitem(last=False)
            self.dropped += 1
        self._pending[key] = _Pending(value, ts, due)
        heapq.heappush(self._heap, (due, next(self._seq), key))
        return True

    def next_due(self) -> float | None:
        """The clock time of the earliest waiting state, None when nothing waits."""
        heap = self._heap
        while heap:
            due, _, key = heap[0]
            waiting = self._pending.get(key)
            if waiting is not None and waiting.due == due:
                return due
            heapq.heappop(heap)  # replaced or dropped
        return None

    def take_due(self) -> list[tuple[Key, float]]:
        """The states to publish now (each entity's newest value), marked as sent."""
        now = self._clock()
        out: list[tuple[Key, float]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, _, key = heapq.heappop(heap)
            waiting = self._pending.get(key)
            if waiting is None or waiting.due != due:
                continue
            del self._pending[key]
            out.append((key, waiting.value))
            self._sent[key] = (now, waiting.ts)
            self._sent.move_to_end(key)
        while len(self._sent) > 4 * self.max_pending:
            self._sent.popitem(last=False)
        return out

    def forget(self, match: Callable[[Key], bool]) -> None:
        """Drop the waiting and sent state of the keys `match` accepts (an evicted device)."""
        for table in (self._pending, self._sent):
            for key in [k for k in table if match(k)]:
                del table[key]
