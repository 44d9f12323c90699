"""Persisted sensor baselines: each sensor's learned state (`SensorStream.snapshot`) in the
``sensor_baselines`` table, so a restart or an eviction resumes learning instead of warming up
again.

- Restore (inference thread): lazily, when the engine first sees a device (`DeviceStreams`
  calls `Baselines.restore`): one primary-key read on a read-only connection of its own
  (`BaselineReader`; WAL lets it read beside the writer), never per reading. A state that
  `SensorStream.restore` refuses (an unknown version, corrupt bytes) or that was learned with
  another ``sensor_window_s`` is discarded with a log line and the device starts fresh.
- Save (writes only through the writer thread): a save round starts every
  ``baseline_save_s`` (and at a clean shutdown, `InferenceEngine.save_baselines`): the
  sensors that had input or a window closed by time since the last complete round are
  snapshotted on the inference thread, `ROUND_DEVICES` after each batch, those whose bytes
  differ from what was last written (a CRC) become rows, and each batch's rows go in ONE
  writer transaction (an upsert per device) after its results. So a device's row is written
  at most once per round, and an SD card sees a few commits per ``baseline_save_s``, never
  one per reading. A kill -9 or a power cut loses at most
  ``baseline_save_s`` of learning (never readings: they are committed by the ingest path).
- Eviction: an evicted sensor's snapshot waits in memory (`Baselines.evicted`) until the next
  round has written it; a device that comes back before that resumes from that copy, not from
  the older row.
- Retention: ``updated_at`` is when a device's state last changed (the save round's wall
  clock); the storage retention job deletes rows older than ``storage.baseline_retention_s``
  (`gateway.sync.retention`).

What the snapshot holds is `SensorStream`'s business (notes: its learned state, not the open
window's readings, so the window open at a restart starts over with the readings after it).
"""

from __future__ import annotations

import logging
import sqlite3
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, func, select
from sqlalchemy.dialects.sqlite import insert

from gateway.inference.sensors import SensorStream
from gateway.inference.settings import InferenceSettings
from gateway.inference.stats import EngineStats
from gateway.inference.streams import Sensor
from gateway.inference.tables import sensor_baselines
from gateway.logs import RateLimitedLog

log = logging.getLogger(__name__)

LoadFn = Callable[[str, str], tuple[float, bytes] | None]
"""``(home, device) -> (window_s, state)`` of the stored row, or None (inference thread)."""

_BUSY_TIMEOUT_S = 5.0
ROUND_DEVICES = 32  # sensors snapshotted per batch during a save round (bounds the pause)


@dataclass(frozen=True, slots=True)
class SavedBaseline:
    """One row of ``sensor_baselines``."""

    home: str
    device: str
    window_s: float
    state: bytes
    updated_at: float


class BaselineReader:
    """`LoadFn` over a read-only SQLite connection, opened at its first use in the inference
    thread (the only thread that calls it; `close` comes after that thread has ended)."""

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._conn: sqlite3.Connection | None = None

    def __call__(self, home: str, device: str) -> tuple[float, bytes] | None:
        if self._conn is None:
            self._conn = sqlite3.connect(
                f"{self._path.resolve().as_uri()}?mode=ro",
                uri=True,
                timeout=_BUSY_TIMEOUT_S,
                check_same_thread=False,
            )
        row = self._conn.execute(
            "SELECT window_s, state FROM sensor_baselines WHERE home = ? AND device = ?",
            (home, device),
        ).fetchone()
        self._conn.rollback()  # end the read: a held snapshot would pin the WAL
        return None if row is None else (float(row[0]), bytes(row[1]))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def write_baselines(conn: Connection, rows: Iterable[SavedBaseline]) -> int:
    """Writer job: upsert `rows`; returns how many baselines the table holds now."""
    values = [
        {
            "home": r.home,
            "device": r.device,
            "window_s": r.window_s,
            "state": r.state,
            "updated_at": r.updated_at,
        }
        for r in rows
    ]
    if values:
        stmt = insert(sensor_baselines)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["home", "device"],
                set_={
                    "window_s": stmt.excluded.window_s,
                    "state": stmt.excluded.state,
                    "updated_at": stmt.excluded.updated_at,
                },
            ),
            values,
        )
    return count_baselines(conn)


def count_baselines(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(sensor_baselines)).scalar_one())


class Baselines:
    """The inference thread's side: restore, eviction copies and save rounds (see the module
    docstring). Without a `load` function (an engine without a database) it does nothing."""

    def __init__(
        self,
        settings: InferenceSettings,
        sensors: Mapping[tuple[str, str], Sensor],
        *,
        load: LoadFn | None,
        stats: EngineStats,
        clock: Callable[[], float] = time.time,
        idle_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`sensors` is the engine's live table (`DeviceStreams.sensors`); `clock` stamps
        ``updated_at``, `idle_clock` (the devices' ``used`` clock) times the rounds."""
        self._settings = settings
        self._sensors = sensors
        self._load = load
        self._stats = stats
        self._clock = clock
        self._idle_clock = idle_clock
        self.enabled = load is not None
        # CRC of the bytes last written (or restored) per live sensor: an unchanged state is
        # not written again.
        self._crc: dict[tuple[str, str], int] = {}
        # Evicted sensors' snapshots not yet confirmed written.
        self._unsaved: dict[tuple[str, str], bytes] = {}
        # Sensors whose window was closed by time (no input, so `used` did not move).
        self._touched: set[tuple[str, str]] = set()
        # The current round's sensors still to snapshot.
        self._queue: deque[tuple[str, str]] = deque()
        self._unconfirmed = False  # rows handed out, not yet confirmed by `saved`
        self._failed = False  # a write of this round failed: it does not count as complete
        start = idle_clock()
        self._next_round = start + settings.baseline_save_s
        self._confirmed_from = -float("inf")  # sensors used since then may have changed
        self._round_from = start
        self._error_log = RateLimitedLog(log)

    # -- restore ---------------------------------------------------------------------------

    def restore(self, home: str, device: str) -> SensorStream | None:
        """The stored state of a device seen for the first time (since start or eviction)."""
        if not self.enabled:
            return None
        key = (home, device)
        # An evicted copy not written yet is newer than the row; the live stream carries it on.
        data = self._unsaved.pop(key, None)
        pending = data is not None
        if data is None:
            assert self._load is not None
            try:
                found = self._load(home, device)
            except sqlite3.Error as exc:
                self._error_log.error("sensor baseline of %s/%s not read: %s", home, device, exc)
                return None
            if found is None:
                return None
            data = found[1]
        stream = SensorStream.restore(data)
        if stream is None:
            self._stats.baselines_discarded += 1
            log.warning(
                "sensor baseline of %s/%s discarded: an unknown format (first byte %s); "
                "the device learns again",
                home,
                device,
                data[:1].hex() or "none",
            )
            return None
        if stream.window_s != self._settings.sensor_window_s:
            self._stats.baselines_discarded += 1
            log.warning(
                "sensor baseline of %s/%s discarded: learned with %gs windows, "
                "inference.sensor_window_s is %gs; the device learns again",
                home,
                device,
                stream.window_s,
                self._settings.sensor_window_s,
            )
            return None
        s = self._settings
        spans = (s.baseline_hours * 3600.0, s.warmup_hours * 3600.0, s.relearn_hours * 3600.0)
        if (stream.baseline_s, stream.warmup_s, stream.relearn_s) != spans:
            self._stats.baselines_discarded += 1
            log.warning(
                "sensor baseline of %s/%s discarded: learned with baseline/warm-up/relearn "
                "spans of %s s, [inference] now says %s s; the device learns again",
                home,
                device,
                (stream.baseline_s, stream.warmup_s, stream.relearn_s),
                spans,
            )
            return None
        self._stats.baselines_restored += 1
        if pending:
            self._touched.add(key)  # not written yet: the next round does
        else:
            self._crc[key] = zlib.crc32(data)
        return stream

    # -- changes ---------------------------------------------------------------------------

    def touched(self, keys: Iterable[tuple[str, str]]) -> None:
        """These sensors' state changed without input (a window closed by time)."""
        if self.enabled:
            self._touched.update(keys)

    def evicted(self, sensors: Iterable[Sensor]) -> None:
        """Keep the snapshots of evicted sensors (after their last window was scored) until
        the next round writes them."""
        if not self.enabled:
            return
        for sensor in sensors:
            key = (sensor.home, sensor.device)
            self._touched.discard(key)
            data = sensor.stream.snapshot()
            if zlib.crc32(data) != self._crc.pop(key, None):
                self._unsaved[key] = data

    # -- save rounds -----------------------------------------------------------------------

    def round(self, *, force: bool = False) -> list[SavedBaseline]:
        """The rows to write after this batch. A round starts every ``baseline_save_s``: it
        lists the sensors that may have changed, then snapshots `ROUND_DEVICES` of them per
        batch (a snapshot takes milliseconds: a round of every device at once would hold up
        inference for seconds). `force` (the clean shutdown) does all that remains at once."""
        if not self.enabled:
            return []
        now = self._idle_clock()
        rows: list[SavedBaseline] = []
        if force or (not self._queue and now >= self._next_round):
            self._failed = False  # this round covers whatever a failed write left
            self._next_round = now + self._settings.baseline_save_s
            self._round_from = now
            since = self._confirmed_from
            self._queue = deque(
                key
                for key, sensor in self._sensors.items()
                if force or sensor.used >= since or key in self._touched
            )
            self._touched.clear()
            stamp = self._clock()
            rows += [
                SavedBaseline(home, device, self._settings.sensor_window_s, data, stamp)
                for (home, device), data in self._unsaved.items()
            ]
        stamp = self._clock()
        budget = len(self._queue) if force else ROUND_DEVICES
        while self._queue and budget > 0:
            key = self._queue.popleft()
            sensor = self._sensors.get(key)
            if sensor is None:  # evicted meanwhile: its copy is in _unsaved
                continue
            budget -= 1
            data = sensor.stream.snapshot()
            if zlib.crc32(data) != self._crc.get(key):
                rows.append(SavedBaseline(key[0], key[1], sensor.stream.window_s, data, stamp))
        if self._unconfirmed:  # the last rows were never confirmed: their write failed
            self._failed = True
        self._unconfirmed = bool(rows)
        if not rows and not self._queue and not self._failed:
            self._confirmed_from = self._round_from
        return rows

    def saved(self, rows: Iterable[SavedBaseline]) -> None:
        """`rows` (from `round`) are committed (called while the inference thread waits)."""
        n = 0
        for r in rows:
            n += 1
            key = (r.home, r.device)
            if self._unsaved.get(key) is r.state:
                del self._unsaved[key]
            elif key in self._sensors:
                self._crc[key] = zlib.crc32(r.state)
        self._stats.baselines_written += n
        self._unconfirmed = False
        if not self._queue and not self._failed:  # the round is complete
            self._confirmed_from = self._round_from
