"""`RateLimitedLog`: one log call site that can fire per message, written at most once per
interval.

A warning on a per-message path (a dropped audio frame, a full queue, a failing commit retried,
a broken adapter) would otherwise write a line per message: thousands a second that bury the
first, useful one and fill the disk the gateway is already short of. Each such call site owns a
`RateLimitedLog`: its first line is written at once, then at most one line per `every_s`
(`DEFAULT_EVERY_S`, 10 s); the calls in between are suppressed and counted, and the next line
that is written ends with ``[N more like this in the last Ss]``. What happened is still counted in
full by the caller's Prometheus counter; the log only says that, and since when.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

DEFAULT_EVERY_S = 10.0


class RateLimitedLog:
    """One call site's lines through `logger`, at most one per `every_s`; see the module
    docstring. Thread-safe: the MQTT thread, the writer thread and the event loop share some."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        every_s: float = DEFAULT_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if every_s < 0:
            raise ValueError(f"every_s must be >= 0, got {every_s}")
        self._logger = logger
        self.every_s = every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._next_at = float("-inf")
        self._last_at = 0.0
        self._pending = 0
        self.suppressed = 0
        """Calls suppressed since this object was made (not only since the last line)."""

    def warning(self, msg: str, *args: object, exc_info: bool = False) -> bool:
        return self._log(logging.WARNING, msg, args, exc_info)

    def error(self, msg: str, *args: object, exc_info: bool = False) -> bool:
        return self._log(logging.ERROR, msg, args, exc_info)

    def log(self, level: int, msg: str, *args: object, exc_info: bool = False) -> bool:
        """Write ``msg % args`` at `level` unless a line was written less than `every_s` ago;
        True when written. `exc_info` as for `logging.Logger.log` (the traceback goes with the
        written lines only)."""
        return self._log(level, msg, args, exc_info)

    def _log(self, level: int, msg: str, args: tuple[object, ...], exc_info: bool) -> bool:
        if not self._logger.isEnabledFor(level):
            return False
        now = self._clock()
        with self._lock:
            if now < self._next_at:
                self._pending += 1
                self.suppressed += 1
                return False
            self._next_at = now + self.every_s
            pending, self._pending = self._pending, 0
            since, self._last_at = self._last_at, now
        if pending:
            msg += " [%d more like this in the last %.0fs]"
            args = (*args, pending, now - since)
        # stacklevel 3: the record names the caller of warning()/error()/log(), not this file.
        self._logger.log(level, msg, *args, exc_info=exc_info, stacklevel=3)
        return True
