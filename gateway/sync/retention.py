"""Storage retention: keeps the gateway's SQLite file from growing without bound.

What goes, per `StorageConfig` (``[storage]``):

- readings received more than `retention_s` ago (``received_at``, this machine's clock; found by
  id, which grows with arrival: `first_id_received_since`) AND
  whose window has been aggregated (``ts`` below the sync watermark), so nothing leaves the
  database before the aggregation pass has read it; without a watermark (no pass yet) no reading
  is deleted. Late readings (below the watermark when stored) are never aggregated anyway.
  Ingest accepts no reading more than ``[ingest] max_clock_skew_s`` ahead of its receive time
  (`gateway.validation`), so the watermark passes every stored reading soon after it arrives:
  none stays above it, undeletable (a reading dated 2099 used to).
- local window aggregates (and their late-reading tallies) that ended more than `retention_s`
  before now. Batches already in the outbox carry their own copy of what they send.
- dead letters last received more than `dead_letter_retention_s` ago (``last_received_at``: a
  bad message that keeps arriving keeps its one row and its count).
- sensors' persisted baselines (``sensor_baselines``, `gateway.inference.baselines`) unchanged
  for `baseline_retention_s` (``updated_at``: a device that reports changes its state every
  window, so only devices gone that long qualify; one that returns later learns again).

``retention_s = 0`` (or ``dead_letter_retention_s``, ``baseline_retention_s``) keeps those rows
forever.

Deletes run through the gateway's writer thread (`RunDb`) in chunks of at most `CHUNK_ROWS`
rows, one transaction each, so message batches and their acks interleave with a long purge
instead of waiting for it. Deleted rows are counted on ``/metrics``
(``homeedge_gateway_retention_deleted_rows{table}``). SQLite reuses the freed pages, so the file
stops growing; it does not shrink (that would take a VACUUM). A disk that is already full cannot
be rescued this way (a delete needs WAL space too): retention is what keeps it from filling.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import Connection, delete, func, select, tuple_

from gateway.db import dead_letters, readings
from gateway.schema import sensor_baselines
from gateway.sync.tables import aggregates, late_readings, sync_watermark
from gateway.sync.uplink import RunDb

log = logging.getLogger(__name__)

CHUNK_ROWS = 10_000


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long rows are kept, in seconds; 0 = forever."""

    retention_s: float
    dead_letter_retention_s: float
    baseline_retention_s: float = 0.0
    chunk_rows: int = CHUNK_ROWS


def delete_readings(conn: Connection, *, now: float, retention_s: float, limit: int) -> int:
    """One chunk of readings past retention and below the watermark; returns how many."""
    watermark = conn.execute(
        select(sync_watermark.c.watermark).where(sync_watermark.c.id == 1)
    ).scalar()
    if watermark is None:
        return 0  # nothing aggregated yet: every reading may still be needed
    cutoff = now - retention_s
    bound = first_id_received_since(conn, cutoff)
    old = (readings.c.id < bound) & (readings.c.received_at < cutoff) & (readings.c.ts < watermark)
    ids = select(readings.c.id).where(old).order_by(readings.c.id).limit(limit).scalar_subquery()
    return int(conn.execute(delete(readings).where(readings.c.id.in_(ids))).rowcount)


def first_id_received_since(conn: Connection, cutoff: float) -> int:
    """The id below which every reading was received before `cutoff`, by bisecting the ids.

    Readings get growing ids in arrival order and ``received_at`` is the arrival time, so the
    readings received before the cutoff are the ids below the first one received after it;
    about 40 primary-key lookups find it. An index on ``received_at`` would find it too, but
    every commit rewrote its leaf (SD-card wear; schema version 6 dropped it). The caller still
    tests ``received_at < cutoff`` on each row, so a clock that stepped back never makes a
    reading go early; readings received after such a step may outlive the cutoff by the size of
    the step (they wait until the ids before them are all older than the cutoff)."""
    first = select(readings.c.id, readings.c.received_at).order_by(readings.c.id).limit(1)
    lo = conn.execute(select(func.min(readings.c.id))).scalar()
    hi = conn.execute(select(func.max(readings.c.id))).scalar()
    if lo is None or hi is None:
        return 0
    hi += 1  # invariant: rows below lo were received before the cutoff; rows from hi on were not
    while lo < hi:
        mid = (lo + hi) // 2
        row = conn.execute(first.where(readings.c.id >= mid)).first()
        if row is None or row.received_at >= cutoff:
            hi = mid
        else:
            lo = int(row.id) + 1
    return int(lo)


def delete_aggregates(conn: Connection, *, now: float, retention_s: float, limit: int) -> int:
    """One chunk of local aggregates (and late tallies) whose window ended before the cutoff."""
    cutoff = now - retention_s
    ids = (
        select(aggregates.c.id)
        .where(aggregates.c.window_start + aggregates.c.window_s <= cutoff)
        .limit(limit)
        .scalar_subquery()
    )
    n = int(conn.execute(delete(aggregates).where(aggregates.c.id.in_(ids))).rowcount)
    # Tallies are few (one per window with late readings): no chunking needed.
    conn.execute(delete(late_readings).where(late_readings.c.window_start < cutoff))
    return n


def delete_dead_letters(conn: Connection, *, now: float, retention_s: float, limit: int) -> int:
    """One chunk of dead letters last received before the cutoff."""
    ids = (
        select(dead_letters.c.id)
        .where(dead_letters.c.last_received_at < now - retention_s)
        .limit(limit)
        .scalar_subquery()
    )
    return int(conn.execute(delete(dead_letters).where(dead_letters.c.id.in_(ids))).rowcount)


def delete_baselines(conn: Connection, *, now: float, retention_s: float, limit: int) -> int:
    """One chunk of sensor baselines unchanged since before the cutoff."""
    old = sensor_baselines.c.updated_at < now - retention_s
    keys = select(sensor_baselines.c.home, sensor_baselines.c.device).where(old).limit(limit)
    pk = tuple_(sensor_baselines.c.home, sensor_baselines.c.device)
    return int(conn.execute(delete(sensor_baselines).where(pk.in_(keys))).rowcount)


_Step = Callable[..., int]


class Retention:
    """Runs the retention policy through `run_db`; `run_once` is one full purge."""

    def __init__(
        self,
        policy: RetentionPolicy,
        *,
        run_db: RunDb,
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self._run_db = run_db
        self._clock = clock
        self.deleted = Counter(
            "homeedge_gateway_retention_deleted_rows",
            "Rows deleted by the storage retention job",
            ["table"],
            registry=registry,
        )

    async def run_once(self) -> dict[str, int]:
        """Delete everything past retention, chunk by chunk; returns rows deleted per table."""
        p = self.policy
        steps: list[tuple[str, _Step, float]] = []
        if p.retention_s > 0:
            steps += [
                ("readings", delete_readings, p.retention_s),
                ("aggregates", delete_aggregates, p.retention_s),
            ]
        if p.dead_letter_retention_s > 0:
            steps.append(("dead_letters", delete_dead_letters, p.dead_letter_retention_s))
        if p.baseline_retention_s > 0:
            steps.append(("sensor_baselines", delete_baselines, p.baseline_retention_s))
        now = self._clock()  # one cutoff for the whole purge
        done: dict[str, int] = {}
        for table, step, keep_s in steps:
            total = 0
            while True:
                n = await self._run_db(
                    functools.partial(step, now=now, retention_s=keep_s, limit=p.chunk_rows)
                )
                total += n
                self.deleted.labels(table=table).inc(n)
                if n < p.chunk_rows:
                    break
            done[table] = total
        if any(done.values()):
            log.info("retention: deleted %s", ", ".join(f"{n} {t}" for t, n in done.items() if n))
        return done
