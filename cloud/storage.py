"""Storage upkeep: the time partitions of PostgreSQL and the retention of both databases.

On PostgreSQL `aggregates` (daily) and `rollups` (weekly) are RANGE-partitioned on their time
column (`cloud.db.PARTITIONED`). `maintain` keeps them:

- creates the partitions from one width before now to `partitions_ahead_days` after it, so
  ingest (COPY into the parent) routes every current row into a partition of its own;
- sweeps the DEFAULT partition, where rows land that no partition covers (a gateway replaying
  history, a clock far ahead): each time range found there gets its partition, the rows moved
  into it (a DELETE ... RETURNING of the default's rows of that range, then ATTACH), or, when
  the range is older than the retention, the rows are deleted; so the default stays small;
- drops the partitions that end before the retention cutoff: one DROP TABLE, no DELETE scan.

Every step is its own short transaction under `lock_timeout`: a step that cannot get its lock
(ingest holds the table) gives up and is retried at the next run, rather than queueing ingest
behind an ACCESS EXCLUSIVE lock. A session advisory lock lets only one worker process run the
upkeep at a time; the others skip it.

New partitions are created standalone (``LIKE`` the parent) and then ATTACHed: ATTACH takes only
SHARE UPDATE EXCLUSIVE on the parent (PostgreSQL >= 12), which ingest's inserts do not conflict
with, where ``CREATE TABLE ... PARTITION OF`` would take ACCESS EXCLUSIVE. Dropping a partition
takes ACCESS EXCLUSIVE on the parent for a moment; that is what the lock timeout bounds.

SQLite has no partitions: the same retention there is a DELETE by time in chunks of
`SQLITE_DELETE_CHUNK` rows, each its own transaction, through the time indexes (SQLite is the
single-home default install; its tables stay small enough for that).

Cutoffs are on partition edges on both databases (`retention_cutoff`), so PostgreSQL and SQLite
keep exactly the same rows: at least the retention period, at most one partition width more.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web
from sqlalchemy import Connection, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from cloud.config import RetentionConfig
from cloud.db import PARTITIONED
from cloud.tasks import raise_if_cancelling
from cloud.web import CONFIG_KEY, ENGINE_KEY

log = logging.getLogger(__name__)

# A different constant from the schema upgrade's lock: upkeep and upgrades do not exclude each
# other (the upgrade holds its transaction-level lock only while migrating).
MAINTENANCE_LOCK_KEY = 0x686F6D6565646767
SQLITE_DELETE_CHUNK = 5000
LOCK_TIMEOUT = "2s"
DAY_S = 86400


def partition_start(table: str, t: float) -> int:
    """The start (unix seconds) of the partition of `table` that holds time `t`."""
    _, width = PARTITIONED[table]
    return int(t // width) * width


def partition_name(table: str, start: int) -> str:
    """``<table>_pYYYYMMDD``, the UTC date of the partition's start."""
    day = datetime.datetime.fromtimestamp(start, tz=datetime.UTC)
    return f"{table}_p{day:%Y%m%d}"


def default_partition(table: str) -> str:
    return f"{table}_default"


def retention_cutoff(table: str, now: float, days: int) -> int:
    """Rows of `table` with a time before this are expired (a partition edge), for a retention
    of `days` days at `now`."""
    return partition_start(table, now - days * DAY_S)


def partitions(connection: Connection, table: str) -> dict[str, int]:
    """The range partitions of `table` (not the default): name -> start, from the catalogue's
    bounds (not the names, which only look like them)."""
    rows = connection.execute(
        text(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = CAST(:parent AS regclass)"
        ),
        {"parent": table},
    ).all()
    found = {}
    for name, bound in rows:
        # "FOR VALUES FROM ('1764374400') TO ('1764460800')", or "DEFAULT".
        if bound.startswith("FOR VALUES FROM"):
            start = bound.split("(", 1)[1].split(")", 1)[0].strip("'")
            found[name] = int(float(start))
    return found


def create_partition(connection: Connection, table: str, start: int) -> int:
    """Create the partition of `table` from `start`, moving into it the rows of its range that
    wait in the default partition; returns the rows moved."""
    column, width = PARTITIONED[table]
    name = partition_name(table, start)
    # Rollups are updated in place by every batch: free space on the page keeps those updates
    # HOT (migration 0003 set this on the then unpartitioned table).
    storage = " WITH (fillfactor = 50)" if table == "rollups" else ""
    connection.exec_driver_sql(f"CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS){storage}")
    moved = connection.exec_driver_sql(
        f"WITH moved AS (DELETE FROM {default_partition(table)}"
        f" WHERE {column} >= {start} AND {column} < {start + width} RETURNING *)"
        f" INSERT INTO {name} SELECT * FROM moved"
    ).rowcount
    # ATTACH builds the parent's indexes on the new table and checks the default holds no row
    # of the range (just moved out).
    connection.exec_driver_sql(
        f"ALTER TABLE {table} ATTACH PARTITION {name}"
        f" FOR VALUES FROM ({start}) TO ({start + width})"
    )
    log.info("created partition %s (%d rows moved from the default partition)", name, moved)
    return max(moved, 0)


def ensure_partitions(connection: Connection, table: str, first: float, last: float) -> int:
    """Create the missing partitions of `table` covering times `first` to `last` (inclusive);
    returns how many were created."""
    _, width = PARTITIONED[table]
    have = set(partitions(connection, table).values())
    created = 0
    for start in range(partition_start(table, first), partition_start(table, last) + 1, width):
        if start not in have:
            create_partition(connection, table, start)
            created += 1
    return created


def default_ranges(connection: Connection, table: str) -> list[int]:
    """The partition starts of the rows waiting in the default partition of `table`."""
    column, width = PARTITIONED[table]
    rows = connection.exec_driver_sql(
        f"SELECT DISTINCT floor({column} / {width}) * {width} FROM {default_partition(table)}"
    ).all()
    return sorted(int(start) for (start,) in rows)


@dataclass
class UpkeepReport:
    """What one `maintain` run did."""

    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    moved_rows: int = 0
    deleted_rows: int = 0
    skipped: list[str] = field(default_factory=list)  # steps that did not get their lock


def _expiry_days(settings: RetentionConfig, table: str) -> int:
    return settings.aggregates_days if table == "aggregates" else settings.rollups_days


async def _step(
    engine: AsyncEngine, report: UpkeepReport, what: str, sql: str, **params: object
) -> int | None:
    """One statement in its own transaction under the lock timeout; None when it timed out."""
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            result = await conn.execute(text(sql), params)
            return max(result.rowcount, 0)
    except Exception as exc:
        if "lock timeout" not in str(exc):
            raise
        log.warning("storage upkeep: %s skipped (lock timeout), retried at the next run", what)
        report.skipped.append(what)
        return None


async def _create(engine: AsyncEngine, report: UpkeepReport, table: str, start: int) -> None:
    name = partition_name(table, start)
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            report.moved_rows += await conn.run_sync(create_partition, table, start)
    except Exception as exc:
        if "lock timeout" not in str(exc):
            raise
        log.warning("storage upkeep: creating %s skipped (lock timeout)", name)
        report.skipped.append(f"create {name}")
        return
    report.created.append(name)


async def maintain_postgres(
    engine: AsyncEngine, settings: RetentionConfig, *, now: float | None = None
) -> UpkeepReport:
    """One upkeep run on PostgreSQL (see the module docstring); a no-op report when another
    process is running one."""
    now = time.time() if now is None else now
    report = UpkeepReport()
    async with engine.connect() as lock_conn:
        got = await lock_conn.scalar(
            text("SELECT pg_try_advisory_lock(:k)"), {"k": MAINTENANCE_LOCK_KEY}
        )
        await lock_conn.commit()
        if not got:
            log.debug("storage upkeep runs in another process")
            return report
        try:
            for table, (column, width) in PARTITIONED.items():
                days = _expiry_days(settings, table)
                cutoff = retention_cutoff(table, now, days) if days > 0 else None
                async with engine.connect() as conn:
                    have = set((await conn.run_sync(partitions, table)).values())
                    waiting = await conn.run_sync(default_ranges, table)
                ahead = partition_start(table, now + settings.partitions_ahead_days * DAY_S)
                wanted = set(range(partition_start(table, now) - width, ahead + width, width))
                for start in sorted((wanted | set(waiting)) - have):
                    if cutoff is not None and start + width <= cutoff:
                        continue  # expired already: its default rows are deleted below
                    await _create(engine, report, table, start)
                if cutoff is None:
                    continue
                deleted = await _step(
                    engine,
                    report,
                    f"expire {default_partition(table)}",
                    f"DELETE FROM {default_partition(table)} WHERE {column} < :cutoff",
                    cutoff=cutoff,
                )
                report.deleted_rows += deleted or 0
                async with engine.connect() as conn:
                    current = await conn.run_sync(partitions, table)
                for name, start in sorted(current.items(), key=lambda item: item[1]):
                    if start + width > cutoff:
                        continue
                    if (
                        await _step(engine, report, f"drop {name}", f"DROP TABLE {name}")
                        is not None
                    ):
                        report.dropped.append(name)
                        log.info("dropped partition %s (retention %d days)", name, days)
        finally:
            # The session lock also ends with its connection: an unlock that fails (the run
            # cancelled mid-statement, the connection broken) must not replace what ended it.
            with contextlib.suppress(SQLAlchemyError, OSError):
                await lock_conn.execute(
                    text("SELECT pg_advisory_unlock(:k)"), {"k": MAINTENANCE_LOCK_KEY}
                )
                await lock_conn.commit()
    return report


async def maintain_sqlite(
    engine: AsyncEngine, settings: RetentionConfig, *, now: float | None = None
) -> UpkeepReport:
    """Retention on SQLite: DELETE by time in chunks, each chunk its own transaction, so the
    write lock is never held long (ingest waits at most one chunk)."""
    now = time.time() if now is None else now
    report = UpkeepReport()
    for table, (column, _width) in PARTITIONED.items():
        days = _expiry_days(settings, table)
        if days <= 0:
            continue
        cutoff = retention_cutoff(table, now, days)
        while True:
            async with engine.begin() as conn:
                result = await conn.execute(
                    text(
                        f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table}"
                        f" WHERE {column} < :cutoff LIMIT {SQLITE_DELETE_CHUNK})"
                    ),
                    {"cutoff": cutoff},
                )
            report.deleted_rows += max(result.rowcount, 0)
            if result.rowcount < SQLITE_DELETE_CHUNK:
                break
    return report


async def maintain(
    engine: AsyncEngine, settings: RetentionConfig, *, now: float | None = None
) -> UpkeepReport:
    """One upkeep run for the engine's database."""
    if engine.dialect.name == "postgresql":
        return await maintain_postgres(engine, settings, now=now)
    return await maintain_sqlite(engine, settings, now=now)


async def run_periodically(engine: AsyncEngine, settings: RetentionConfig) -> None:
    """`maintain` now and then every `settings.interval_s`; a failed run is logged and retried."""
    while True:
        try:
            report = await maintain(engine, settings)
            if report.created or report.dropped or report.deleted_rows:
                log.info(
                    "storage upkeep: created %s, dropped %s, %d rows moved, %d deleted",
                    report.created,
                    report.dropped,
                    report.moved_rows,
                    report.deleted_rows,
                )
        except Exception:  # the next run tries again; ingest never depends on this task
            raise_if_cancelling()
            log.exception("storage upkeep failed")
        await asyncio.sleep(settings.interval_s)


def setup_storage_upkeep(app: web.Application) -> None:
    """A cleanup_ctx entry running `run_periodically` while the app runs (call after the
    database's entry is added: that one creates and migrates the engine)."""

    async def upkeep(app: web.Application) -> AsyncIterator[None]:
        settings = app[CONFIG_KEY].retention
        task = None
        if settings.interval_s > 0:
            task = asyncio.create_task(
                run_periodically(app[ENGINE_KEY], settings), name="storage-upkeep"
            )
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.cleanup_ctx.append(upkeep)
