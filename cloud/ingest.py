"""Storing an uploaded batch: one transaction for the batch row and all its aggregates.

Idempotency lives in the database, not in process memory: `batches.batch_id` is UNIQUE, so
when two workers (or one worker twice) receive the same batch, exactly one insert wins and the
other sees an IntegrityError, rolls back and reports a duplicate. The batch row is inserted
first, so a duplicate fails before any aggregate is written.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cloud.analytics.rollups import fold_batch
from cloud.db import aggregates, batches
from schemas.batch import Batch


class StoreOutcome(enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"


class BatchConflict(Exception):
    """The batch id is already stored, but for another gateway."""


@dataclass(frozen=True)
class BodySize:
    """Bytes of a request body as received and after decompression."""

    wire: int
    decoded: int


def _batch_row(batch: Batch, size: BodySize, received_at: float) -> dict[str, object]:
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
    if not records:
        return
    if conn.dialect.driver == "asyncpg":
        # COPY inside the same transaction: on PostgreSQL it is about twice as fast as
        # executemany (measured ~90k vs ~40k rows/s on 2 cores), and the server is the bottleneck.
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None  # a checked-out connection always has its driver connection
        await raw.copy_records_to_table(aggregates.name, records=records, columns=AGGREGATE_COLUMNS)
        return
    # executemany: one prepared statement for the whole batch, no per-row round trip.
    await conn.execute(
        insert(aggregates), [dict(zip(AGGREGATE_COLUMNS, r, strict=True)) for r in records]
    )


async def store_batch(
    engine: AsyncEngine, batch: Batch, size: BodySize, received_at: float | None = None
) -> StoreOutcome:
    """Store `batch` once; raise BatchConflict when its id belongs to another gateway."""
    received_at = time.time() if received_at is None else received_at
    try:
        async with engine.begin() as conn:
            result = await conn.execute(
                insert(batches).returning(batches.c.id), _batch_row(batch, size, received_at)
            )
            await _insert_aggregates(conn, _aggregate_records(batch, result.scalar_one()))
            # Same transaction: the hourly/daily rollups never miss or double-count a batch.
            await fold_batch(conn, batch.gateway, batch.aggregates)
    except IntegrityError:
        # engine.begin() has rolled back. Decide whether this was our unique key.
        async with engine.connect() as conn:
            owner = await conn.scalar(
                select(batches.c.gateway).where(batches.c.batch_id == batch.batch_id)
            )
        if owner is None:
            raise
        if owner != batch.gateway:
            raise BatchConflict(
                f"batch_id {batch.batch_id} is stored for another gateway"
            ) from None
        return StoreOutcome.DUPLICATE
    return StoreOutcome.STORED
