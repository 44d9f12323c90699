"""`Backoff`: the gateway's one retry schedule (MQTT reconnects, uplink retries, task restarts).

Attempt n waits ``uniform(min_s, min(max_s, min_s * 2**n))``: exponential growth up to a cap,
never below the floor, with jitter so a fleet of gateways that lost the same broker or cloud
does not come back in lockstep. `reset` after a success starts the schedule again.
"""

from __future__ import annotations

import random


class Backoff:
    """Exponential backoff with jitter; see the module docstring. Not thread-safe: one owner."""

    def __init__(self, min_s: float, max_s: float, rng: random.Random | None = None) -> None:
        if not 0 < min_s <= max_s:
            raise ValueError(f"backoff needs 0 < min_s <= max_s, got {min_s}, {max_s}")
        self.min_s = min_s
        self.max_s = max_s
        self._rng = rng if rng is not None else random.Random()
        self.attempt = 0

    def cap(self, attempt: int) -> float:
        """The longest delay attempt number `attempt` (0-based) can draw."""
        return min(self.max_s, self.min_s * 2.0 ** min(attempt, 62))

    def next_delay(self) -> float:
        """The delay before the next attempt; counts the attempt."""
        delay = self._rng.uniform(self.min_s, self.cap(self.attempt))
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
