"""The one thread that writes the gateway's SQLite database.

Everything that writes goes through `Writer`'s bounded queue, so SQLite sees a single writer and
transactions never contend:

- decoded MQTT messages (`put_message`, from the MQTT network thread) are grouped into a batch
  and committed in ONE transaction: readings with ``INSERT OR IGNORE`` (the unique index in
  `gateway.schema` absorbs redeliveries: a reading is identified by its ts, device, metric and
  seq if it has one), device availability upserts and ``last_seen`` (a new device at once,
  the others at most every `seen_interval`: `Writer._due_seen`), dead letters (one row per
  message, see `gateway.records.DeadLetter`).
  A batch is committed by size or by time, whichever comes first: when it holds `batch_rows`
  rows (plus, without waiting, what already waits in the queue behind them, up to 5 times
  `batch_rows`: a backlog is committed with one fsync), or when `commit_interval` has passed
  since its first message. Two more triggers end it
  early: the batch holds `inflight_window` messages waiting for their ack (the broker's window
  of un-acked QoS 1 messages is full: it sends nothing more until we ack, so waiting would only
  stall ingest; known with MQTT 5, whose Receive Maximum we announce), and a stall: no message
  for `idle_commit` and for `_STALL_GAPS` times the stream's recent gap between arrivals (an
  average over the queue's entries: a read burst the MQTT thread hands over counts as one). A
  steady stream of any pace never pauses that long, so its batches end by size or time; a
  broker that stopped because its window is full (a window the gateway cannot know with MQTT
  3.1.1: Mosquitto's ``max_inflight_messages``) pauses at once, so its batch commits after
  `idle_commit` (0 turns the stall trigger off). Few, large
  commits are what spares an SD card: each commit rewrites every page it touches (the table's
  tail, each index leaf, ``devices``) in the WAL, so a commit per message wrote ~12 KB per
  reading where a commit per second writes a few hundred bytes (``bench/wear.py``).
- only AFTER the commit are the batch's messages acknowledged (the `ack` callable, which the
  MQTT bridge provides and which skips acks of an earlier connection), and then `on_committed`
  gets the committed readings and audio frames (the app forwards them to the asyncio side).
- other components store readings with ``await writer.store(ReadingsIn(...))``: queued like a
  message without an ack token, so they go through the same batch commit (``INSERT OR IGNORE``,
  the ``last_seen`` upserts of its ``seen``, `on_committed`); it returns once that batch is
  committed and `on_committed` has been called.
- other components run their own writes with ``await writer.run(fn)``: ``fn(connection)`` runs in
  the writer thread inside its own transaction (committed when fn returns, rolled back if it
  raises) and its result or exception comes back to the awaiting coroutine.

Durability: the writer's connection runs with ``PRAGMA synchronous`` = `synchronous` (``FULL``
by default: a commit, and so an ack, means on disk even across a power cut; see `gateway.db`).

A commit that fails (disk full, I/O error) is retried with a growing delay, holding its acks, so
backpressure reaches the broker instead of anything being dropped; at shutdown an uncommitted
batch is simply not acknowledged and the broker delivers it again on the next connection.
While it fails, `Writer.failure` says why and since when (``/healthz`` shows it: the ``writer``
check, `gateway.health`) and the retries are logged at most every 10 s; the first commit that
works again clears it and logs how long it failed.

Full policy of the queue: `put_message` waits (the MQTT thread stops reading, the broker stops
sending once its in-flight window of un-acked messages is full); each time it finds the queue
full it is logged (at most every 10 s, `gateway.logs`) and counted (``queue_full{queue="writer"}``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec
from sqlalchemy import Connection, Engine

from gateway.health import Failure, failed
from gateway.ingest import AudioIn, DeviceSeen, Ingested, ReadingsIn, StateIn
from gateway.logs import RateLimitedLog
from gateway.monitoring import GatewayMetrics
from gateway.records import DeadLetter, Reading, dead_letter_digest
from schemas.metrics import infer_device_class

log = logging.getLogger(__name__)

T = TypeVar("T")

AckToken = tuple[int, int]
"""(connection generation, MQTT message id) of a message to acknowledge after its commit."""

AckFn = Callable[[Sequence[AckToken]], None]
CommittedFn = Callable[[list[Reading], list[AudioIn]], None]

# All readings of a batch go in as ONE statement whose single parameter is the batch as a JSON
# array of row arrays (msgspec encodes it in C; SQLite's json_each unpacks it in C).
# Why not executemany: sqlite3 releases the GIL around every statement step, so with one step
# per row the writer queued for the GIL behind the busy MQTT thread once per row, and commits
# took ~3x longer under load; per-size multi-row VALUES statements cost megabytes of cached
# prepared statements. Floats survive the JSON round trip exactly (shortest repr both ways).
# ``->>`` (SQLite >= 3.38) unpacks ~1.5x faster than json_extract.
_FIELDS = Reading.__struct_fields__  # home, room, device, metric, ts, value, seq, received_at
_COLUMN = (
    "value ->> {i}" if sqlite3.sqlite_version_info >= (3, 38) else "json_extract(value, '$[{i}]')"
)
_INSERT_READINGS = (
    f"INSERT OR IGNORE INTO readings ({', '.join(_FIELDS)}) SELECT "
    + ", ".join(_COLUMN.format(i=i) for i in range(len(_FIELDS)))
    + " FROM json_each(?)"
)
_encode = msgspec.json.Encoder().encode


# The rows one INSERT added (see `_inserted`).
_INSERTED_ROWS = f"SELECT {', '.join(_FIELDS)} FROM readings WHERE id > ? ORDER BY id"
_UPSERT_SEEN = (
    "INSERT INTO devices (home, device, room, device_class, last_seen) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (home, device) DO UPDATE SET room = excluded.room, "
    "last_seen = max(coalesce(devices.last_seen, 0), excluded.last_seen)"
)
_UPSERT_STATE = (
    "INSERT INTO devices (home, device, room, device_class, availability, availability_at) "
    "VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (home, device) DO UPDATE SET room = excluded.room, "
    "availability = excluded.availability, availability_at = excluded.availability_at"
)
# One row per message (its digest): a fresh copy adds 1 to the count; a replay (the last
# parameter 0) only fills a row that is missing. One statement for both keeps the batch's order.
_UPSERT_DEAD = (
    "INSERT INTO dead_letters (topic, payload, reason, detail, received_at, digest, count, "
    "last_received_at) VALUES (?, ?, ?, ?, ?, ?, 1, ?) "
    "ON CONFLICT (digest) DO UPDATE SET count = dead_letters.count + 1, "
    "last_received_at = max(dead_letters.last_received_at, excluded.last_received_at) WHERE ?"
)

_RETRY_MAX_S = 5.0
# A batch ends early after a silence of this many recent gaps between messages: a steady stream
# (even a jittery one) does not pause that long, a broker waiting for our acks does.
_STALL_GAPS = 8.0
_GAP_WEIGHT = 0.1  # of the newest gap in the moving average
_BACKLOG_BATCHES = 5  # a backlog's commit holds up to this many times batch_rows
_SEEN_ROWS_MAX = 100_000  # devices whose row `Writer._due_seen` remembers


@dataclass(frozen=True, slots=True)
class _Job:
    fn: Callable[[Connection], Any]
    future: concurrent.futures.Future[Any]


@dataclass(frozen=True, slots=True)
class _Barrier:
    """Commit what is queued before it, then resolve."""

    future: concurrent.futures.Future[None]


class _Stop:
    pass


_STOP = _Stop()
_Stored = concurrent.futures.Future[None]
"""In a message's token slot: a `Writer.store` caller waiting for the batch's commit."""
_Message = tuple["AckToken | _Stored | None", Ingested]
QueuedMessage = _Message
"""A decoded message with its ack token (None: no ack of its own), as `Writer.put_messages`
takes them."""
_Item = _Message | list[_Message] | _Job | _Barrier | _Stop


class _WeightedQueue(queue.Queue[_Item]):
    """The writer's queue: a list of messages (`Writer.put_messages`) is one entry that counts
    as its length towards ``maxsize`` and ``qsize()``; anything else counts 1. A list is let
    in while the count is below ``maxsize``, so the count may pass it by one list's length."""

    def _init(self, maxsize: int) -> None:
        super()._init(maxsize)
        self._count = 0

    def _qsize(self) -> int:
        return self._count

    def _put(self, item: _Item) -> None:
        self.queue.append(item)
        self._count += len(item) if type(item) is list else 1

    def _get(self) -> _Item:
        item: _Item = self.queue.popleft()
        self._count -= len(item) if type(item) is list else 1
        return item


class WriterStopped(RuntimeError):
    """The writer thread is not running (not started, stopped, or crashed)."""


class Writer:
    """Owns the SQLite connection that writes; see the module docstring."""

    def __init__(
        self,
        engine: Engine,
        *,
        metrics: GatewayMetrics,
        batch_rows: int = 1000,
        commit_interval: float = 0.02,
        idle_commit: float = 0.002,
        inflight_window: int | None = None,
        queue_size: int = 2000,
        ack: AckFn | None = None,
        on_committed: CommittedFn | None = None,
        auto_checkpoint: bool = True,
        wal_autocheckpoint: int = 0,
        synchronous: Literal["full", "normal"] = "full",
        seen_interval: float = 0.0,
    ) -> None:
        self._engine = engine
        self._synchronous = synchronous
        self._metrics = metrics
        self._batch_rows = batch_rows
        self._interval = commit_interval
        self._idle = idle_commit
        # No window: never reached (the other triggers decide).
        self._window = inflight_window if inflight_window is not None else 1 << 62
        # Moving average of the time between messages (writer thread only).
        self._gap = 0.0
        self._last_at = time.monotonic()
        self._queue: _WeightedQueue = _WeightedQueue(maxsize=queue_size)
        self.ack: AckFn | None = ack
        self.on_committed: CommittedFn | None = on_committed
        self._thread: threading.Thread | None = None
        self._auto_checkpoint = auto_checkpoint
        self._wal_backstop = wal_autocheckpoint
        # devices.last_seen (writer thread only; see `_due_seen`).
        self._seen_interval = seen_interval
        self._seen_rows: dict[tuple[str, str], str] = {}  # rows this writer wrote: their room
        self._seen_pending: dict[tuple[str, str], DeviceSeen] = {}
        self._seen_written_at = -float("inf")
        self._stopping = threading.Event()
        self._full_log = RateLimitedLog(log)
        self._commit_log = RateLimitedLog(log)
        # Replaced, never mutated (a frozen value): the event loop reads it without a lock.
        self.failure: Failure | None = None
        """Set while batch commits fail (the streak: reason, since, attempts); None once one
        works again."""
        metrics.watch_queue("writer", self._queue.qsize)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("writer already started")
        self._thread = threading.Thread(target=self._main, name="homeedge-writer", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    async def stop(self) -> None:
        """Commit and acknowledge everything queued, then end the thread."""
        if self._thread is None:
            return
        if self.alive:
            await self._put_async(_STOP)
        thread = self._thread
        await asyncio.get_running_loop().run_in_executor(None, thread.join)
        self._thread = None

    # -- producers -------------------------------------------------------------------------

    def put_message(
        self, token: AckToken | None, item: Ingested, give_up: Callable[[], bool]
    ) -> bool:
        """Queue one decoded message (MQTT thread). Waits while the queue is full; returns
        False without queueing when `give_up()` turns true meanwhile (shutdown, lost
        connection: the message is then not acked and will be redelivered)."""
        return self._put_waiting((token, item), give_up)

    def put_messages(self, messages: list[QueuedMessage], give_up: Callable[[], bool]) -> bool:
        """Queue decoded messages as ONE entry (the MQTT thread's read burst: one lock and one
        wake-up of the writer for all of them), all or none, like `put_message`. They count
        one each towards the queue's size. The list is the writer's from now on."""
        if not messages:
            return True
        return self._put_waiting(messages, give_up)

    def _put_waiting(self, msg: _Message | list[_Message], give_up: Callable[[], bool]) -> bool:
        try:
            self._queue.put_nowait(msg)
            return True
        except queue.Full:
            self._metrics.queue_full.labels("writer").inc()
            self._full_log.warning(
                "writer queue full (%d): MQTT intake waits for the writer", self._queue.maxsize
            )
        while not give_up():
            try:
                self._queue.put(msg, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    async def store(self, item: ReadingsIn) -> None:
        """Store `item` in the next batch commit, like a message without an ack token, and
        return once that batch is committed (after `on_committed`, which gets its new readings).

        Raises `WriterStopped` when the writer is not running or gave up on the batch at
        shutdown (nothing of it is then stored)."""
        fut: _Stored = concurrent.futures.Future()
        await self._put_async((fut, item))
        await asyncio.wrap_future(fut)

    async def run(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn(connection)`` in the writer thread in its own transaction; return its result.

        The transaction commits when `fn` returns and rolls back when it raises (the exception
        is re-raised here). `fn` must not block on the event loop."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        await self._put_async(_Job(fn, fut))
        return await asyncio.wrap_future(fut)

    async def flush(self) -> None:
        """Return once everything queued before this call is committed (and acked)."""
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        await self._put_async(_Barrier(fut))
        await asyncio.wrap_future(fut)

    async def _put_async(self, item: _Item) -> None:
        # Never block the event loop: poll while the queue is full (backpressure on the caller).
        while True:
            if not self.alive:
                raise WriterStopped("the writer is not running")
            try:
                self._queue.put_nowait(item)
                return
            except queue.Full:
                self._metrics.queue_full.labels("writer").inc()
                await asyncio.sleep(0.005)

    # -- the thread ------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            with self._engine.connect() as conn:
                raw = conn.connection.driver_connection
                # Only this connection acknowledges messages, so only it needs FULL.
                mode = "FULL" if self._synchronous == "full" else "NORMAL"
                raw.execute(f"PRAGMA synchronous={mode}")  # type: ignore[union-attr]
                if not self._auto_checkpoint:
                    # `checkpoint_wal` runs on another connection instead (see there); a WAL
                    # grown past `wal_autocheckpoint` pages (a burst) is checkpointed by the
                    # commit that crosses it, so it cannot grow without bound meanwhile.
                    backstop = int(self._wal_backstop)
                    raw.execute(f"PRAGMA wal_autocheckpoint={backstop:d}")  # type: ignore[union-attr]
                self._loop(conn)
        except Exception:  # the thread's top level: log; /healthz then reports the writer dead
            log.exception("writer thread crashed")
            raise
        finally:
            self._fail_pending()

    def _fail_pending(self) -> None:
        """The thread is ending: whoever awaits a job, a flush or a store left in the queue gets
        `WriterStopped` instead of waiting forever (queued messages stay un-acked)."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Job | _Barrier) and item.future.set_running_or_notify_cancel():
                item.future.set_exception(WriterStopped("the writer stopped before this ran"))

    def _loop(self, conn: Connection) -> None:
        get = self._queue.get
        while True:
            item = get()
            if isinstance(item, _Stop):
                self._write_pending_seen(conn)
                return
            if isinstance(item, list):
                batch: list[_Message] = item
            elif isinstance(item, tuple):
                batch = [item]
            else:
                if self._control(conn, item):
                    return
                continue
            rows, unacked = _count(batch)
            now = time.monotonic()
            deadline = now + self._interval
            self._arrived(now)
            control: _Item | None = None
            window, batch_rows, idle = self._window, self._batch_rows, self._idle
            while rows < batch_rows and unacked < window:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    now = time.monotonic()
                    wait = deadline - now
                    if idle > 0:  # the stall trigger (module docstring)
                        silence = max(idle, _STALL_GAPS * self._gap)
                        wait = min(wait, self._last_at + silence - now)
                    if wait <= 0:
                        break
                    try:
                        nxt = get(timeout=wait)
                    except queue.Empty:
                        break
                if not isinstance(nxt, tuple | list):
                    control = nxt
                    break
                self._arrived(time.monotonic())
                more = nxt if isinstance(nxt, list) else [nxt]
                batch.extend(more)
                r, u = _count(more)
                rows += r
                unacked += u
            # Group commit: what already waits in the queue (a backlog: the disk is slower than
            # the stream) joins this commit, up to `_BACKLOG_BATCHES` batches, without waiting
            # for more. Its messages wait for a commit anyway; one fsync for all of them instead
            # of one per `batch_rows` keeps a slow SD card from throttling ingest.
            limit = batch_rows * _BACKLOG_BATCHES
            while control is None and batch_rows <= rows < limit and unacked < window:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if not isinstance(nxt, tuple | list):
                    control = nxt
                    break
                more = nxt if isinstance(nxt, list) else [nxt]
                batch.extend(more)
                r, u = _count(more)
                rows += r
                unacked += u
            self._commit_batch(conn, batch)
            if isinstance(control, _Stop):
                self._write_pending_seen(conn)
            if control is not None and self._control(conn, control):
                return

    def _arrived(self, now: float) -> None:
        """A message was taken from the queue at `now`: update the average gap (a pause longer
        than the commit interval counts as one interval, so a quiet night does not make the
        stall trigger wait for hours)."""
        gap = min(now - self._last_at, self._interval)
        self._last_at = now
        self._gap += (gap - self._gap) * _GAP_WEIGHT

    def _control(self, conn: Connection, item: _Item) -> bool:
        """Handle a non-message item; True means stop."""
        if isinstance(item, _Stop):
            return True
        if isinstance(item, _Barrier):
            if item.future.set_running_or_notify_cancel():  # the waiter may have given up
                item.future.set_result(None)
        elif isinstance(item, _Job):
            self._run_job(conn, item)
        return False

    def _run_job(self, conn: Connection, job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            with conn.begin():
                result = job.fn(conn)
        except BaseException as exc:  # handed to the caller, who decides
            self._metrics.writer_errors.inc()
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)

    def _commit_batch(self, conn: Connection, batch: list[_Message]) -> None:
        readings: list[Reading] = []
        seen: dict[tuple[str, str], DeviceSeen] = {}
        states: list[StateIn] = []
        dead: list[DeadLetter] = []
        audio: list[AudioIn] = []
        for _token, item in batch:
            if isinstance(item, ReadingsIn):
                readings.extend(item.readings)
                for s in item.seen:
                    seen[(s.home, s.device)] = s
            elif isinstance(item, DeadLetter):
                dead.append(item)
            elif isinstance(item, AudioIn):
                audio.append(item)
                s = item.seen
                seen[(s.home, s.device)] = s
            elif isinstance(item, StateIn):
                states.append(item)
        seen = self._due_seen(seen)
        delay = 0.05
        while True:
            started = time.perf_counter()
            try:
                new, dead_counted = self._write(conn, readings, seen, states, dead)
                break
            except Exception as exc:  # disk full, I/O error: keep the batch and its acks, retry
                self._metrics.writer_errors.inc()
                self.failure = failed(self.failure, exc)
                self._commit_log.error(
                    "commit of %d messages failed: %s (attempt %d); retrying in %.2fs",
                    len(batch),
                    self.failure.reason,
                    self.failure.failures,
                    delay,
                )
                if self._stopping.wait(delay):
                    log.error("shutting down: %d messages left un-acked for redelivery", len(batch))
                    _resolve(batch, WriterStopped("shut down before the batch was committed"))
                    return
                delay = min(delay * 2, _RETRY_MAX_S)
        for key, s in seen.items():
            self._seen_rows[key] = s.room
        if self.failure is not None:
            log.warning(
                "commits work again after %d failed attempts over %.1fs",
                self.failure.failures,
                time.time() - self.failure.since,
            )
            self.failure = None
        m = self._metrics
        m.commit_seconds.observe(time.perf_counter() - started)
        m.commits.inc()
        m.batch_rows.observe(len(batch))
        if new:
            m.rows_stored.inc(len(new))
        if len(readings) > len(new):
            m.duplicates.inc(len(readings) - len(new))
        for d in dead_counted:
            m.dead_letters.labels(d.reason).inc()
        tokens = [token for token, _ in batch if isinstance(token, tuple)]
        if tokens and self.ack is not None:
            self.ack(tokens)
        if (new or audio) and self.on_committed is not None:
            self.on_committed(new, audio)
        _resolve(batch, None)

    def _due_seen(
        self, seen: dict[tuple[str, str], DeviceSeen]
    ) -> dict[tuple[str, str], DeviceSeen]:
        """The sightings this commit writes to ``devices``; the others wait in memory.

        Updating ``last_seen`` on every commit rewrote the ``devices`` page every commit (one
        page of a few per commit at 10 readings/s: SD-card wear). So a device this writer has
        not written yet, or whose room changed, is written at once (the row, its room and class
        exist as soon as its first message is committed); the other sightings are written
        together at most every `seen_interval` seconds, and at shutdown. ``last_seen`` may
        therefore lag by up to that interval (and by that much after a crash: only it, never a
        reading). 0 writes every commit's."""
        if self._seen_interval <= 0:
            return seen
        pending = self._seen_pending
        pending.update(seen)
        now = time.monotonic()
        if now - self._seen_written_at >= self._seen_interval:
            self._seen_written_at = now
            due = dict(pending)
            pending.clear()
            return due
        rows = self._seen_rows
        due = {k: s for k, s in seen.items() if rows.get(k) != s.room}
        for k in due:
            del pending[k]
        if len(rows) > _SEEN_ROWS_MAX:  # a bound; forgetting only means an earlier write
            rows.clear()
        return due

    def _write_pending_seen(self, conn: Connection) -> None:
        """Write the sightings `_due_seen` held back (at shutdown), in their own transaction."""
        pending = self._seen_pending
        if not pending:
            return
        try:
            self._write(conn, [], pending, [], [])
        except Exception as exc:  # last_seen only: the readings are committed already
            log.warning("could not write the devices' last_seen at shutdown: %s", exc)
        pending.clear()

    @staticmethod
    def _write(
        conn: Connection,
        readings: list[Reading],
        seen: dict[tuple[str, str], DeviceSeen],
        states: list[StateIn],
        dead: list[DeadLetter],
    ) -> tuple[list[Reading], list[DeadLetter]]:
        """One transaction; returns the readings that were new (not stored before) and the dead
        letters stored or counted (not the replays of stored ones)."""
        # The hot path uses the DB-API cursor directly: SQLAlchemy's executemany costs ~2x more
        # per row, and the statements are fixed.
        with conn.begin():
            cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            try:
                new = readings
                if readings:
                    # A Reading encodes as its row: [home, room, ..., received_at] (_FIELDS).
                    cur.execute(_INSERT_READINGS, (_encode(readings),))
                    inserted = cur.rowcount
                    if inserted < len(readings):
                        new = _inserted(cur, inserted)
                if seen:
                    cur.executemany(
                        _UPSERT_SEEN,
                        [
                            (s.home, s.device, s.room, infer_device_class(s.device).value, s.at)
                            for s in seen.values()
                        ],
                    )
                if states:
                    cur.executemany(
                        _UPSERT_STATE,
                        [
                            (
                                s.home,
                                s.device,
                                s.room,
                                infer_device_class(s.device).value,
                                s.availability.value,
                                s.at,
                            )
                            for s in states
                        ],
                    )
                counted: list[DeadLetter] = []
                fresh: list[tuple[object, ...]] = []  # consecutive fresh ones: one executemany
                for d in dead:
                    digest = dead_letter_digest(d.topic, d.reason, d.payload)
                    at = d.received_at
                    row = (d.topic, d.payload, d.reason, d.detail, at, digest, at, not d.replay)
                    if not d.replay:  # always stored or counted
                        fresh.append(row)
                        counted.append(d)
                        continue
                    if fresh:  # in the batch's order: a replay may meet a fresh copy's row
                        cur.executemany(_UPSERT_DEAD, fresh)
                        fresh = []
                    if cur.execute(_UPSERT_DEAD, row).rowcount:  # a replay counts when new
                        counted.append(d)
                if fresh:
                    cur.executemany(_UPSERT_DEAD, fresh)
            finally:
                cur.close()
        return new, counted

    def request_stop(self) -> None:
        """Make a failing commit give up at its next retry (used at shutdown)."""
        self._stopping.set()


def _inserted(cur: sqlite3.Cursor, inserted: int) -> list[Reading]:
    """The `inserted` rows the INSERT just run on `cur` added, in batch order (the rest of the
    batch were duplicates). Only called when some were duplicates (after a redelivery).

    The new rows are exactly the ones with the highest ids: SQLite gives each inserted row the
    largest rowid + 1, this thread is the only writer, and the last one inserted has
    ``lastrowid``. So one range read on the primary key finds them whatever identity (seq or
    ts) made the others duplicates, even duplicates inside the batch."""
    if inserted == 0:
        return []
    last = cur.lastrowid
    assert last is not None
    return [Reading(*row) for row in cur.execute(_INSERTED_ROWS, (last - inserted,))]


def checkpoint_wal(path: str | Path) -> tuple[int, int, int]:
    """Copy committed WAL frames into the database file, on a connection of its own.

    SQLite's automatic checkpoint runs inside the commit that crosses 1000 WAL pages, in the
    writer thread, and its fsyncs stalled ingest for tens of ms (the p99 latency). A PASSIVE
    checkpoint on another connection runs beside the writer without blocking it. Returns
    SQLite's (busy, WAL frames, frames checkpointed)."""
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as conn:
        busy, frames, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(busy), int(frames), int(done)


def _resolve(batch: list[_Message], error: BaseException | None) -> None:
    """Tell the batch's `Writer.store` callers how it ended."""
    for token, _ in batch:
        if isinstance(token, concurrent.futures.Future) and token.set_running_or_notify_cancel():
            if error is None:
                token.set_result(None)
            else:
                token.set_exception(error)


def _count(messages: list[_Message]) -> tuple[int, int]:
    """(rows, messages waiting for an ack) of `messages`."""
    rows = unacked = 0
    for token, item in messages:
        rows += len(item.readings) if type(item) is ReadingsIn else 1
        if type(token) is tuple:
            unacked += 1
    return rows, unacked
