"""Storing an uploaded batch: one transaction for the batch row, its aggregates and its rollups.

Idempotency lives in the database, not in process memory: `batches.batch_id` is UNIQUE, so
when two workers (or one worker twice) receive the same batch, exactly one insert wins and the
other reports a duplicate. The batch row is inserted first, so a duplicate writes no aggregate.
A duplicate is a resend only when its body is the stored one (`batches.body_sha256`, the digest
of the decompressed body: a gateway retries with the bytes kept in its outbox); the same id with
another body, or of another gateway, is a `BatchConflict`, never silently dropped.

A `BatchWriter` stores them. On PostgreSQL the batches that arrive while a transaction is
running are stored together in the next one (group commit): one statement inserting their batch
rows and folding them into their gateways' statistics, one COPY of all their aggregates and one
statement folding them into the rollups (with BEGIN and COMMIT, five round trips). Most of
a store's cost is the rollup upsert, whose size is the number of distinct hour keys, and batches
of the same gateways share most keys, so a group of N batches costs far less than N
transactions. A caller still returns only once its batch is committed, rollups included. SQLite
(one writer anyway) stores each batch in its own transaction.

The writer is a resource of its owner (the app creates one per engine in a cleanup_ctx entry):
this module keeps no state, and `BatchWriter.aclose()` finishes every accepted batch before
the owner disposes of the engine.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import functools
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Float,
    Integer,
    String,
    any_,
    bindparam,
    exists,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cloud.analytics.rollups import FOLD_SETTINGS, fold_batch, fold_ingested
from cloud.backpressure import is_busy, sqlstate
from cloud.db import aggregates, batches, gateway_stats
from schemas.batch import Batch

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# Aggregates written in one group transaction at most (each batch holds at most 5,000): large
# enough to share the rollup keys of many batches, small enough to keep a transaction short.
MAX_GROUP_ROWS = 20_000
# Group transactions one process runs at once, keeping that many database backends busy while
# the event loop decodes the requests queuing meanwhile. A group's time is mostly waiting (round
# trips, the COPY, the commit's WAL flush) with the host's CPU not saturated, so a third writer
# overlaps more of it: `bench/fleet.py --saturate --workers 1`, 2026-12-04, medians of 3 at load
# 2.9-4.7: two writers 41.1k / 53.1k rows/s, three 66.7k / 75.2k, four 54.4k / 79.6k.
GROUP_WRITERS = 3


class StoreOutcome(enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"


class BatchConflict(Exception):
    """The batch id is already stored, for another gateway (`code` ``conflict``) or with
    another body (``content_conflict``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Body:
    """What is kept of an upload's request body: its bytes as received and after
    decompression, and the SHA-256 (hex) of the decompressed bytes (equal for a resend)."""

    wire: int
    decoded: int
    sha256: str

    @classmethod
    def of(cls, decoded: bytes, wire: int | None = None) -> Body:
        """The body whose decompressed bytes are `decoded` (`wire` bytes on the wire)."""
        return cls(
            wire=len(decoded) if wire is None else wire,
            decoded=len(decoded),
            sha256=hashlib.sha256(decoded).hexdigest(),
        )


def _batch_row(batch: Batch, size: Body, received_at: float) -> dict[str, object]:
    starts = [a.window_start for a in batch.aggregates]
    ends = [a.window_start + a.window_s for a in batch.aggregates]
    return {
        "batch_id": batch.batch_id,
        "gateway": batch.gateway,
        "seq": batch.seq,
        "created_at": batch.created_at,
        "received_at": received_at,
        "aggregate_count": len(batch.aggregates),
        "body_bytes": size.decoded,
        "wire_bytes": size.wire,
        "window_start_min": min(starts, default=None),
        "window_end_max": max(ends, default=None),
        "epsilon_spent": batch.privacy.epsilon_spent,
        "suppressed_windows": batch.privacy.suppressed_windows,
        "refused_noised": batch.privacy.refused_noised,
        "min_window_count": batch.privacy.min_window_count,
        "ingested_messages": batch.stats.ingested_messages,
        "ingested_bytes": batch.stats.ingested_bytes,
        "version": batch.version,
        "body_sha256": size.sha256,
    }


# Column order of the tuples below; the id is left to the database.
AGGREGATE_COLUMNS = (
    "batch",
    "gateway",
    "window_start",
    "window_s",
    "home",
    "room_class",
    "device_class",
    "metric",
    "unit",
    "policy",
    "count",
    "sum",
    "mean",
    "min",
    "max",
    "std",
    "p50",
    "p95",
    "epsilon",
)


def _aggregate_records(batch: Batch, batch_pk: int) -> list[tuple[object, ...]]:
    gateway = batch.gateway
    return [
        (
            batch_pk,
            gateway,
            a.window_start,
            a.window_s,
            a.home,
            a.room_class,
            a.device_class,
            a.metric,
            a.unit,
            a.policy,
            a.count,
            a.sum,
            a.mean,
            a.min,
            a.max,
            a.std,
            a.p50,
            a.p95,
            a.epsilon,
        )
        for a in batch.aggregates
    ]


async def _insert_aggregates(conn: AsyncConnection, records: list[tuple[object, ...]]) -> None:
    """SQLite: executemany, one prepared statement for the whole batch, no per-row round trip.
    (PostgreSQL uses COPY in `_store_group`: about twice as fast as executemany there.)"""
    if records:
        await conn.execute(
            insert(aggregates), [dict(zip(AGGREGATE_COLUMNS, r, strict=True)) for r in records]
        )


_STATS_ADDED = (
    "batches",
    "seqs",
    "aggregate_rows",
    "ingested_messages",
    "ingested_bytes",
    "body_bytes",
    "wire_bytes",
)
_STATS_NEWEST = ("last_seq", "last_batch_at", "last_created_at", "window_end_max")


@functools.cache
def _stats_upsert(dialect: str) -> Any:
    """The statement folding the batch rows `pks` (a parameter: just inserted) into
    `gateway_stats`: one row per gateway, upserted in gateway order (byte order on
    PostgreSQL), so transactions that share gateways lock their rows in the same order. Built
    once per dialect (building and compiling it per group cost as much as running it)."""
    b = batches.c
    if dialect == "postgresql":
        these = b.id == any_(bindparam("pks", type_=postgresql.ARRAY(BigInteger)))
    else:
        these = b.id.in_(bindparam("pks", expanding=True))
    older = batches.alias("older")
    # A seq counts once: when no batch of the gateway stored before (a lower id) has it.
    first_of_seq = ~exists().where(
        older.c.gateway == b.gateway, older.c.seq == b.seq, older.c.id < b.id
    )
    gateway = b.gateway.collate("C") if dialect == "postgresql" else b.gateway
    grouped = (
        select(
            b.gateway,
            func.count(),
            func.count().filter(first_of_seq),
            func.sum(b.aggregate_count),
            func.sum(b.ingested_messages),
            func.sum(b.ingested_bytes),
            func.sum(b.body_bytes),
            func.sum(b.wire_bytes),
            func.max(b.seq),
            func.max(b.received_at),
            func.max(b.created_at),
            func.max(b.window_end_max),
        )
        .where(these)
        .group_by(b.gateway)
        .order_by(gateway)
    )
    columns = ["gateway", *_STATS_ADDED, *_STATS_NEWEST]
    stmt = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(gateway_stats)
    stmt = stmt.from_select(columns, grouped)
    t, new = gateway_stats.c, stmt.excluded
    # greatest ignores NULL on PostgreSQL; SQLite's two-argument max does not (coalesce both).
    highest = func.greatest if dialect == "postgresql" else func.max
    updates: dict[str, Any] = {name: t[name] + new[name] for name in _STATS_ADDED}
    for name in _STATS_NEWEST:
        updates[name] = highest(
            func.coalesce(t[name], new[name]), func.coalesce(new[name], t[name])
        )
    return stmt.on_conflict_do_update(index_elements=[t.gateway], set_=updates)


async def fold_gateway_stats(conn: AsyncConnection, pks: Sequence[int]) -> None:
    """Fold the batches `pks` stored in this transaction into their gateways' statistics."""
    if pks:
        await conn.execute(_stats_upsert(conn.dialect.name), {"pks": list(pks)})


async def _raw_connection(conn: AsyncConnection) -> Any:
    raw = (await conn.get_raw_connection()).driver_connection
    assert raw is not None  # a checked-out connection always has its driver connection
    return raw


async def _store_one(
    engine: AsyncEngine, batch: Batch, size: Body, received_at: float
) -> StoreOutcome:
    """One batch in its own transaction (SQLite)."""
    try:
        async with engine.begin() as conn:
            result = await conn.execute(
                insert(batches).returning(batches.c.id), _batch_row(batch, size, received_at)
            )
            pk = result.scalar_one()
            await _insert_aggregates(conn, _aggregate_records(batch, pk))
            await fold_gateway_stats(conn, [pk])
            # Same transaction: the hourly rollups never miss or double-count a batch.
            await fold_batch(conn, batch.gateway, batch.aggregates)
    except IntegrityError:
        # engine.begin() has rolled back. Decide whether this was our unique key.
        async with engine.connect() as conn:
            stored = (
                await conn.execute(
                    select(batches.c.gateway, batches.c.body_sha256).where(
                        batches.c.batch_id == batch.batch_id
                    )
                )
            ).first()
        if stored is None:
            raise
        return _outcome_for_existing(batch, size, _Stored(stored.gateway, stored.body_sha256))
    return StoreOutcome.STORED


@dataclass(frozen=True)
class _Stored:
    """What decides whether a batch id stored before is this upload again."""

    gateway: str
    sha256: str | None  # None: stored before migration 0005


def _outcome_for_existing(batch: Batch, size: Body, stored: _Stored) -> StoreOutcome:
    if stored.gateway != batch.gateway:
        raise BatchConflict("conflict", f"batch_id {batch.batch_id} is stored for another gateway")
    # NULL: a batch stored before the digest was kept; its resend is taken as one (0005).
    if stored.sha256 is not None and stored.sha256 != size.sha256:
        raise BatchConflict(
            "content_conflict",
            f"batch_id {batch.batch_id} is stored with another body (sha256 "
            f"{stored.sha256[:12]}..., this one {size.sha256[:12]}...): a batch id names one "
            "batch, a new batch needs a new id",
        )
    return StoreOutcome.DUPLICATE


@dataclass(eq=False)
class _Request:
    batch: Batch
    size: Body
    received_at: float
    done: asyncio.Future[StoreOutcome] = field(repr=False)


class BatchWriter:
    """Stores the uploaded batches of one engine; one per app, from start-up until just before
    the engine is disposed (see `cloud.app`).

    On PostgreSQL the batches handed over while a group transaction runs are stored together in
    the next one. Up to GROUP_WRITERS group transactions run at a time, so the database works on
    several groups while this process decodes the next requests. Concurrent groups, here or in other
    worker processes, are safe: batch rows are inserted in batch_id order and rollup rows
    upserted in key order, so groups sharing keys wait for each other, never deadlock.
    On SQLite each batch is stored in its own transaction.

    `aclose()` refuses new batches and returns once every accepted one is committed or has
    failed (its caller told either way); nothing is cancelled on the way.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._grouped = engine.dialect.driver == "asyncpg"
        self._queue: collections.deque[_Request] = collections.deque()
        # The tasks writing to the database: group writers (PostgreSQL) or one per batch (SQLite).
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    async def __aenter__(self) -> BatchWriter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def idle(self) -> bool:
        """Nothing queued and no write running."""
        return not self._queue and all(task.done() for task in self._tasks)

    async def store(
        self, batch: Batch, size: Body, received_at: float | None = None
    ) -> StoreOutcome:
        """Store `batch` once; raise BatchConflict when its id is stored for another gateway or
        with another body (`size.sha256`).

        Returns once the batch, its aggregates and its rollups are committed (or it was a
        duplicate).
        """
        if self._closed:
            raise RuntimeError("the batch writer is closed")
        received_at = time.time() if received_at is None else received_at
        loop = asyncio.get_running_loop()
        if not self._grouped:
            # A task of its own only so that aclose() sees it; cancelling the caller cancels it.
            return await self._track(
                loop.create_task(_store_one(self._engine, batch, size, received_at))
            )
        request = _Request(batch, size, received_at, loop.create_future())
        self._queue.append(request)
        # Done tasks count as gone: their discard callback may not have run yet, and a request
        # must never wait in the queue with no writer left to take it.
        if sum(not task.done() for task in self._tasks) < GROUP_WRITERS:
            self._track(loop.create_task(self._drain(), name="homeedge-ingest-group"))
        return await request.done

    async def aclose(self) -> None:
        """Refuse new batches; return once every accepted one is committed or has failed."""
        self._closed = True
        while running := [task for task in self._tasks if not task.done()]:
            await asyncio.wait(running)
        # Requests are left only if someone cancelled the group writers themselves: fail them
        # rather than leave their callers waiting.
        while self._queue:
            _settle(self._queue.popleft(), RuntimeError("the batch writer closed before storing"))

    def _track(self, task: asyncio.Task[_T]) -> asyncio.Task[_T]:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _take_group(self) -> list[_Request]:
        # An even share of what is queued, so the other writer gets work too.
        queued = sum(len(r.batch.aggregates) for r in self._queue)
        limit = min(MAX_GROUP_ROWS, -(-queued // GROUP_WRITERS))
        group: list[_Request] = []
        rows = 0
        while self._queue and (not group or rows + len(self._queue[0].batch.aggregates) <= limit):
            request = self._queue.popleft()
            if request.done.done():  # the caller went away before we started: nothing to do
                continue
            group.append(request)
            rows += len(request.batch.aggregates)
        return group

    async def _drain(self) -> None:
        # One connection for as long as groups keep coming: a checkout per group cost its
        # pool pre-ping (three round trips) and the pool's bookkeeping each time.
        group: list[_Request] = []
        try:
            while self._queue:
                group = self._take_group()
                if not group:
                    continue
                try:
                    async with self._engine.connect() as conn:
                        while group and await _write(self._engine, conn, group):
                            group = self._take_group() if self._queue else []
                except Exception as exc:  # no connection (pool timeout, database down): each
                    # request is told (a busy database is a 503 and a resend after Retry-After)
                    for request in group:
                        _settle(request, exc)
                group = []
        finally:
            # Only reached with requests left when this task itself was cancelled; the others
            # (if any) go on with the queue.
            for request in group:
                if not request.done.done():
                    request.done.cancel()


async def _write(engine: AsyncEngine, conn: AsyncConnection, group: list[_Request]) -> bool:
    """Store `group` on `conn`, settling every request; False when the group's transaction
    failed (the caller then takes a fresh connection: this one may be broken)."""
    try:
        outcomes = await _store_group(conn, group)
    except Exception as exc:  # delivered to the waiting requests, not lost in the writer task
        if is_busy(exc) or (len(group) == 1 and not partition_attached_meanwhile(exc)):
            # A busy database (pool or statement timeout) would fail them one by one too, and
            # slower: each is answered 503 now and resent by its gateway after Retry-After.
            for request in group:
                _settle(request, exc)
            return False
        # One batch must not fail the others (nor a deadlock victim all of them), and a
        # partition attached meanwhile routes the rows anew: each alone now.
        log.warning(
            "storing a group of %d batches failed (%s); storing them one by one", len(group), exc
        )
        for request in group:
            try:
                async with engine.connect() as alone:
                    (outcome,) = await _store_group(alone, [request])
            except Exception as single:  # delivered to its request
                outcome = single
            _settle(request, outcome)
        return False
    for request, outcome in zip(group, outcomes, strict=True):
        _settle(request, outcome)
    return True


def partition_attached_meanwhile(exc: BaseException) -> bool:
    """Whether `exc` is PostgreSQL refusing a row that this transaction routed to a DEFAULT
    partition while storage upkeep attached the partition of its range (ATTACH holds the
    default's lock; once it commits, the default's constraint no longer admits the row). The
    same rows stored again go to the new partition."""
    return sqlstate(exc) == "23514" and "partition constraint" in str(exc)


def _settle(request: _Request, outcome: StoreOutcome | Exception) -> None:
    if request.done.done():  # the caller was cancelled meanwhile; the outcome stands anyway
        return
    if isinstance(outcome, Exception):
        request.done.set_exception(outcome)
    else:
        request.done.set_result(outcome)


# The batch rows' columns and their PostgreSQL array types, in `_batch_row`'s order.
_BATCH_ARRAYS = (
    ("batch_id", "TEXT"),
    ("gateway", "TEXT"),
    ("seq", "BIGINT"),
    ("created_at", "FLOAT8"),
    ("received_at", "FLOAT8"),
    ("aggregate_count", "INT"),
    ("body_bytes", "INT"),
    ("wire_bytes", "INT"),
    ("window_start_min", "FLOAT8"),
    ("window_end_max", "FLOAT8"),
    ("epsilon_spent", "FLOAT8"),
    ("suppressed_windows", "INT"),
    ("refused_noised", "INT"),
    ("min_window_count", "INT"),
    ("ingested_messages", "BIGINT"),
    ("ingested_bytes", "BIGINT"),
    ("version", "INT"),
    ("body_sha256", "TEXT"),
)


@functools.cache
def _group_head_statement() -> Any:
    """PostgreSQL: a group's batch rows, their gateways' statistics and the aggregates' first
    id in one statement (one round trip where it took three; on a busy 2-core host each round
    trip waits for the CPU PostgreSQL shares, about 5 ms apiece).

    - ``ins``: the batch rows from one array per column (one prepared statement whatever the
      group's size), in the order given (batch_id order: concurrent groups in other workers
      take the unique-key locks in the same order); ON CONFLICT DO NOTHING: a batch stored
      before is reported, not an error.
    - ``stats``: `_stats_upsert` over the rows just inserted (a data-modifying CTE sees the
      table as the statement began, so ``NOT EXISTS`` finds seqs stored before; ``DISTINCT``
      counts a seq twice in the group once), gateways in byte order.
    - ``first``: a value of the aggregates' id sequence, taken before the COPY, which bounds
      this transaction's rows from below (the batch ids pick them out), and the fold's planner
      settings for this transaction (`cloud.analytics.rollups.fold_ingested`).
    Returns (batch_id, id, first id) per batch row inserted."""
    names = [name for name, _ in _BATCH_ARRAYS]
    arrays = ", ".join(f"CAST(:{name} AS {kind}[])" for name, kind in _BATCH_ARRAYS)
    newest_pick = {
        "last_seq": "max(seq)",
        "last_batch_at": "max(received_at)",
        "last_created_at": "max(created_at)",
        "window_end_max": "max(window_end_max)",
    }
    added_pick = {
        "batches": "count(*)",
        "seqs": "count(DISTINCT seq) FILTER (WHERE NOT EXISTS (SELECT 1 FROM batches o"
        " WHERE o.gateway = ins.gateway AND o.seq = ins.seq))",
        "aggregate_rows": "sum(aggregate_count)",
        "ingested_messages": "sum(ingested_messages)",
        "ingested_bytes": "sum(ingested_bytes)",
        "body_bytes": "sum(body_bytes)",
        "wire_bytes": "sum(wire_bytes)",
    }
    stats_columns = ["gateway", *_STATS_ADDED, *_STATS_NEWEST]
    picks = ["gateway", *(added_pick[n] for n in _STATS_ADDED)]
    picks += [newest_pick[n] for n in _STATS_NEWEST]
    sets = [f"{n} = gateway_stats.{n} + EXCLUDED.{n}" for n in _STATS_ADDED]
    sets += [
        f"{n} = greatest(coalesce(gateway_stats.{n}, EXCLUDED.{n}),"
        f" coalesce(EXCLUDED.{n}, gateway_stats.{n}))"
        for n in _STATS_NEWEST
    ]
    settings = ", ".join(f"set_config('{name}', '{value}', true)" for name, value in FOLD_SETTINGS)
    sql = (
        f"WITH ins AS (INSERT INTO batches ({', '.join(names)})"
        f" SELECT * FROM unnest({arrays})"
        " ON CONFLICT (batch_id) DO NOTHING"
        " RETURNING id, batch_id, gateway, seq, created_at, received_at, aggregate_count,"
        " body_bytes, wire_bytes, window_end_max, ingested_messages, ingested_bytes),"
        f" stats AS (INSERT INTO gateway_stats ({', '.join(stats_columns)})"
        f' SELECT {", ".join(picks)} FROM ins GROUP BY gateway ORDER BY gateway COLLATE "C"'
        f" ON CONFLICT (gateway) DO UPDATE SET {', '.join(sets)} RETURNING 1),"
        " first AS MATERIALIZED (SELECT nextval(pg_get_serial_sequence('aggregates', 'id'))"
        f" AS first_id, {settings})"
        " SELECT ins.batch_id, ins.id, first.first_id FROM ins CROSS JOIN first"
    )
    types: dict[str, Any] = {
        "TEXT": String(),
        "BIGINT": BigInteger(),
        "FLOAT8": Float(),
        "INT": Integer(),
    }
    return text(sql).bindparams(
        *(bindparam(name, type_=postgresql.ARRAY(types[kind])) for name, kind in _BATCH_ARRAYS)
    )


async def _store_group(
    conn: AsyncConnection, group: Sequence[_Request]
) -> list[StoreOutcome | Exception]:
    """Store the batches of `group` in one transaction on `conn` (PostgreSQL); an outcome per
    request."""
    first: dict[str, _Request] = {}
    for request in group:
        first.setdefault(request.batch.batch_id, request)
    # Sorted by batch_id: concurrent groups in other workers take the unique-key locks in the
    # same order. ON CONFLICT DO NOTHING: a batch stored before is reported, not an error.
    rows = [
        _batch_row(r.batch, r.size, r.received_at)
        for r in sorted(first.values(), key=lambda r: r.batch.batch_id)
    ]
    columns = {name: [row[name] for row in rows] for name, _ in _BATCH_ARRAYS}
    async with conn.begin():
        head = (await conn.execute(_group_head_statement(), columns)).all()
        inserted = {bid: pk for bid, pk, _ in head}
        stored = [r.batch for bid, r in first.items() if bid in inserted]
        existing: dict[str, _Stored] = {}
        if len(inserted) < len(first):
            others = [bid for bid in first if bid not in inserted]
            b = batches.c
            result = await conn.execute(
                select(b.batch_id, b.gateway, b.body_sha256).where(b.batch_id.in_(others))
            )
            existing = {bid: _Stored(gateway, sha) for bid, gateway, sha in result.all()}
        if stored:
            pks = [inserted[batch.batch_id] for batch in stored]
            records = [
                record
                for batch, pk in zip(stored, pks, strict=True)
                for record in _aggregate_records(batch, pk)
            ]
            first_id = head[0][2]
            raw = await _raw_connection(conn)
            # COPY: about twice as fast as executemany on PostgreSQL.
            await raw.copy_records_to_table(
                aggregates.name, records=records, columns=AGGREGATE_COLUMNS
            )
            # Same transaction: the hourly rollups never miss or double-count a batch.
            # The rows are read back by id (this transaction's lie after `first_id`; rows of
            # others there are filtered out by batch) within their time range (only their
            # partitions), so the database groups them without the windows crossing the wire
            # again.
            starts = [a.window_start for batch in stored for a in batch.aggregates]
            if starts:
                await fold_ingested(conn, first_id, pks, min(starts), max(starts))
    outcomes: list[StoreOutcome | Exception] = []
    for request in group:
        bid = request.batch.batch_id
        if bid in inserted:
            if first[bid] is request:
                outcomes.append(StoreOutcome.STORED)
                continue
            # The same id twice in this group: compared with the one stored now.
            winner = first[bid]
            before: _Stored | None = _Stored(winner.batch.gateway, winner.size.sha256)
        else:
            before = existing.get(bid)
        if before is None:  # cannot happen: DO NOTHING skipped it, so a committed row has it
            outcomes.append(RuntimeError(f"batch_id {bid} neither stored nor found"))
            continue
        try:
            outcomes.append(_outcome_for_existing(request.batch, request.size, before))
        except BatchConflict as exc:
            outcomes.append(exc)
    return outcomes
