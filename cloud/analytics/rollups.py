"""Hour and day rollups: kept up to date inside the ingest transaction; hours and days read there.

Each stored batch is folded into the `rollups` table in the same transaction that stores its
aggregates, so a rollup never misses or double-counts a batch (a duplicate batch rolls back
before it gets here). The batch is first pre-combined in Python (one row per key and width),
then upserted with ON CONFLICT DO UPDATE, which both SQLite and PostgreSQL have. Rows are
upserted in key order, so two workers storing batches with overlapping keys lock them in the
same order and cannot deadlock.

The state kept per bucket is additive (count, sum, sum of count*mean, sum of squares, min, max),
so reading any coarser grouping re-adds rows and gives exactly what `cloud.queries` computes
from the raw windows. Rows of both widths the dashboard serves are stored, hours and days
(`STORED_WIDTHS`, migration 0007): a day point reads its one row, not 24 hour rows, so what a
query reads does not grow with the range's hours. (Migration 0004 had dropped the day rows to
save ingest their upsert; that made the day views the slowest queries at fleet size.)
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Float,
    Integer,
    String,
    bindparam,
    case,
    func,
    literal_column,
    select,
    text,
    true,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cloud.analytics.models import MetricSpan
from cloud.db import ROLLUP_KEY, aggregates, rollups
from cloud.queries import Series, SeriesQuery, TimeBucket, read_series, series_select
from schemas.batch import Policy, WindowAggregate

STORED_S = 3600  # the finest rollup width; other whole-hour buckets can be grouped from it
DAY_S = 86400
STORED_WIDTHS = (STORED_S, DAY_S)  # the widths ingest keeps a row of
_STATE = ("count", "sum", "weighted", "sumsq", "without_std", "windows", "inv_eps_sq")
_LOWEST = ("min", "p50", "p95")
_HIGHEST = ("max",)


@dataclass
class _Cell:
    """The rollup state of one key, while a batch is combined in memory."""

    count: float = 0.0
    sum: float = 0.0
    weighted: float = 0.0
    sumsq: float = 0.0
    without_std: int = 0
    windows: int = 0
    min: float | None = None
    max: float | None = None
    p50: float | None = None
    p95: float | None = None
    inv_eps_sq: float = 0.0


def _lower(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def _higher(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else max(a, b)


def bucket_start(window_start: float, width: int) -> float:
    """The start of the bucket a window belongs to (by its start), as SQL computes it."""
    return float(math.floor(window_start / width) * width)


def combine(gateway: str, windows: Iterable[WindowAggregate]) -> list[dict[str, Any]]:
    """The rollup rows of some windows of one gateway, one per key and width, in key order."""
    cells: dict[tuple[Any, ...], _Cell] = {}
    for a in windows:
        for width in STORED_WIDTHS:
            key = (
                width,
                a.metric,
                bucket_start(a.window_start, width),
                gateway,
                a.home,
                a.room_class,
                a.device_class,
                a.unit,
                a.policy,
            )
            cell = cells.get(key)
            if cell is None:
                cell = cells[key] = _Cell()
            _add(cell, a)
    return [
        {**dict(zip(ROLLUP_KEY, key, strict=True)), **vars(cells[key])} for key in sorted(cells)
    ]


def _add(cell: _Cell, a: WindowAggregate) -> None:
    cell.count += a.count
    cell.sum += a.sum
    cell.weighted += a.count * a.mean
    if a.std is None:
        cell.without_std += 1
    else:
        cell.sumsq += a.count * (a.std * a.std + a.mean * a.mean)
    cell.windows += 1
    cell.min = _lower(cell.min, a.min)
    cell.max = _higher(cell.max, a.max)
    cell.p50 = _lower(cell.p50, a.p50)
    cell.p95 = _lower(cell.p95, a.p95)
    if a.epsilon is not None:
        cell.inv_eps_sq += 1.0 / (a.epsilon * a.epsilon)


def _upsert(dialect: str, stmt: Any) -> Any:
    """`stmt` (an INSERT into rollups) that adds to an existing row instead of failing."""
    t = rollups.c
    new = stmt.excluded
    # least/greatest ignore NULL on PostgreSQL; SQLite's two-argument min/max do not, hence the
    # coalesce on both sides (NULL only when both are NULL).
    lowest = func.least if dialect == "postgresql" else func.min
    highest = func.greatest if dialect == "postgresql" else func.max
    updates: dict[str, ColumnElement[Any]] = {name: t[name] + new[name] for name in _STATE}
    for name in _LOWEST:
        updates[name] = lowest(func.coalesce(t[name], new[name]), func.coalesce(new[name], t[name]))
    for name in _HIGHEST:
        updates[name] = highest(
            func.coalesce(t[name], new[name]), func.coalesce(new[name], t[name])
        )
    return stmt.on_conflict_do_update(index_elements=list(ROLLUP_KEY), set_=updates)


def _insert_for(dialect: str) -> Any:
    if dialect == "postgresql":
        return postgresql.insert(rollups)
    if dialect == "sqlite":
        return sqlite.insert(rollups)
    raise NotImplementedError(f"rollups need SQLite or PostgreSQL, not {dialect}")


async def fold_batch(
    conn: AsyncConnection, gateway: str, windows: Sequence[WindowAggregate]
) -> int:
    """Fold a batch's windows into the rollups on `conn` (the ingest transaction); rows touched."""
    rows = combine(gateway, windows)
    if rows:
        dialect = conn.dialect.name
        await conn.execute(_upsert(dialect, _insert_for(dialect)), rows)
    return len(rows)


def _fold_select(dialect: str, conditions: Sequence[ColumnElement[bool]], seconds: int) -> Any:
    """The `seconds`-wide rollup rows of the aggregates matching `conditions`, in key order."""
    a = aggregates.c
    width = literal_column(str(seconds), Integer)
    keys = [width, a.metric, TimeBucket(a.window_start, width), a.gateway, a.home]
    keys += [a.room_class, a.device_class, a.unit, a.policy]
    grouped = (
        select(
            *(key.label(name) for key, name in zip(keys, ROLLUP_KEY, strict=True)),
            func.sum(a.count),
            func.sum(a.sum),
            func.sum(a.count * a.mean),
            func.sum(func.coalesce(a.count * (a.std * a.std + a.mean * a.mean), 0.0)),
            func.count() - func.count(a.std),
            func.min(a.min),
            func.max(a.max),
            func.min(a.p50),
            func.min(a.p95),
            func.count(),
            func.coalesce(func.sum(1.0 / (a.epsilon * a.epsilon)), 0.0),
        )
        .where(*conditions)
        # Not the constant width: a number in GROUP BY would name a column of the select list.
        .group_by(*keys[1:])
        .subquery("grouped")
    )
    order: list[ColumnElement[Any]] = [grouped.c[name] for name in ROLLUP_KEY]
    if dialect == "postgresql":
        # Byte order for the text columns: the database's linguistic collation makes every
        # comparison a strcoll call. Any fixed order serves, as long as every worker uses it.
        order = [c.collate("C") if isinstance(c.type, String) else c for c in order]
    # Grouped first (a hash table over the windows), then only the groups sorted: in key order,
    # so every worker locks rollup rows in the same order, and two folds touching the same keys
    # wait for each other instead of deadlocking. The WHERE keeps SQLite from reading ON
    # CONFLICT as a join's ON.
    return select(*grouped.c).where(true()).order_by(*order)


# Planner settings of a fold's transaction on PostgreSQL (see `fold_aggregates`).
FOLD_SETTINGS = (("enable_sort", "off"), ("jit", "off"))


def _grouped_sql(width: int) -> str:
    """The `width` rollup rows of the CTE ``fresh`` (what `_fold_select` groups), in key
    order (byte order for the text columns: see `_fold_select`)."""
    bucket = f"floor(window_start / {width}) * {width}"
    order = ", ".join(
        f'g.{name} COLLATE "C"' if isinstance(rollups.c[name].type, String) else f"g.{name}"
        for name in ROLLUP_KEY
    )
    return (
        f"SELECT * FROM (SELECT {width} AS bucket_s, metric, {bucket} AS bucket_start, gateway,"
        " home, room_class, device_class, unit, policy, sum(count) AS count, sum(sum) AS sum,"
        " sum(count * mean) AS weighted,"
        " sum(coalesce(count * (std * std + mean * mean), 0.0)) AS sumsq,"
        " count(*) - count(std) AS without_std, min(min) AS min, max(max) AS max,"
        " min(p50) AS p50, min(p95) AS p95, count(*) AS windows,"
        " coalesce(sum(1.0 / CAST(epsilon * epsilon AS FLOAT)), 0.0) AS inv_eps_sq"
        f" FROM fresh GROUP BY metric, {bucket}, gateway, home, room_class, device_class, unit,"
        f" policy) AS g ORDER BY {order}"
    )


def _upsert_sql(width: int) -> str:
    sets = [f"{name} = rollups.{name} + EXCLUDED.{name}" for name in _STATE]
    for names, pick in ((_LOWEST, "least"), (_HIGHEST, "greatest")):
        sets += [
            f"{name} = {pick}(coalesce(rollups.{name}, EXCLUDED.{name}),"
            f" coalesce(EXCLUDED.{name}, rollups.{name}))"
            for name in names
        ]
    return (
        f"INSERT INTO rollups ({', '.join(_FOLD_COLUMNS)}) {_grouped_sql(width)}"
        f" ON CONFLICT ({', '.join(ROLLUP_KEY)}) DO UPDATE SET {', '.join(sets)}"
    )


@functools.cache
def _ingest_fold_statement() -> Any:
    """PostgreSQL's ingest fold in one statement, built once: the transaction's windows read
    back once (``fresh``, materialized), grouped into hour rows (the main INSERT) and day rows
    (a data-modifying CTE, which PostgreSQL runs to completion after the main statement: hour
    rows are locked first, then day rows, each in key order, in every transaction alike), the
    same upserts `fold_aggregates` runs as two statements. One round trip and one read of the
    rows instead of two of each."""
    assert STORED_WIDTHS == (STORED_S, DAY_S)
    sql = (
        "WITH fresh AS MATERIALIZED (SELECT metric, window_start, gateway, home, room_class,"
        " device_class, unit, policy, count, sum, mean, min, max, std, p50, p95, epsilon"
        " FROM aggregates WHERE id > :first_id AND batch = ANY(:batch_pks)"
        " AND window_start >= :t_lo AND window_start <= :t_hi),"
        f" days AS ({_upsert_sql(DAY_S)} RETURNING 1) {_upsert_sql(STORED_S)}"
    )
    return text(sql).bindparams(
        bindparam("first_id", type_=BigInteger),
        bindparam("batch_pks", type_=postgresql.ARRAY(BigInteger)),
        bindparam("t_lo", type_=Float),
        bindparam("t_hi", type_=Float),
    )


_FOLD_COLUMNS = [*ROLLUP_KEY, *_STATE[:5], "min", "max", "p50", "p95", "windows", "inv_eps_sq"]


async def fold_ingested(
    conn: AsyncConnection, first_id: int, batch_pks: Sequence[int], t_lo: float, t_hi: float
) -> None:
    """PostgreSQL's ingest fold: the aggregates of batches `batch_pks` written in this
    transaction (ids after `first_id`, windows from `t_lo` to `t_hi`: only their partitions
    are read) into the hour and day rollups, as `fold_aggregates` does. The caller has applied
    `FOLD_SETTINGS` in this transaction."""
    params = {"first_id": first_id, "batch_pks": list(batch_pks), "t_lo": t_lo, "t_hi": t_hi}
    await conn.execute(_ingest_fold_statement(), params)


async def fold_aggregates(conn: AsyncConnection, *conditions: ColumnElement[bool]) -> int:
    """Fold the stored aggregates matching `conditions` into the rollups, one statement per
    stored width (hours, days).

    The grouping happens in the database, next to the rows it has just written, and each
    key is upserted once however many windows and batches it gathers. Returns the rollup rows
    touched.
    """
    columns = _FOLD_COLUMNS
    dialect = conn.dialect.name
    if dialect == "postgresql":
        # Rows written in this very transaction are beyond the table's statistics, so the
        # planner expects a handful and groups them by sorting all of them, ~10x slower than
        # the hash table it would pick for the thousands there are (the sort of the groups
        # stays: nothing else gives the key order). Transaction-local; JIT off because the
        # disabled sort inflates the estimated cost past its threshold.
        for name, value in FOLD_SETTINGS:
            await conn.execute(text(f"SET LOCAL {name} = {value}"))
    touched = 0
    for width in STORED_WIDTHS:
        stmt = _upsert(
            dialect,
            _insert_for(dialect).from_select(columns, _fold_select(dialect, conditions, width)),
        )
        result = await conn.execute(stmt)
        touched += max(result.rowcount, 0)
    return touched


async def backfill(engine: AsyncEngine, after_id: int = 0) -> int:
    """Fold aggregates with id > `after_id` into the rollups; returns the rows touched.

    For rows loaded around the ingest path (bulk loads, the bench).
    """
    async with engine.begin() as conn:
        return await fold_aggregates(conn, aggregates.c.id > after_id)


def rollup_bucket(width: int) -> ColumnElement[float]:
    """The start of the `width` bucket (a whole number of hours) a stored hour row lies in
    (for buckets no stored width serves; the stored ones read their own rows)."""
    assert width % STORED_S == 0, f"rollups serve whole hours, not {width} s"
    r = rollups.c
    if width == STORED_S:
        return r.bucket_start
    return TimeBucket(r.bucket_start, literal_column(str(width)))


def served_by_rollups(q: SeriesQuery) -> bool:
    """Whether the rollups answer `q` exactly: an hour/day bucket and a range on its edges."""
    width = q.bucket.seconds
    if width is None:
        return False
    return all(edge is None or edge % width == 0 for edge in (q.start, q.end))


def _width_is(width: int) -> ColumnElement[bool]:
    """`bucket_s = <width>` with the width in the SQL text, not a parameter: a prepared
    statement's generic plan then still knows it selects one width (of two) and reads the
    index, where `bucket_s = $1` is costed as any width and read with a sequential scan."""
    return rollups.c.bucket_s == literal_column(str(int(width)), Integer)


def rollup_series_select(q: SeriesQuery) -> Any:
    """The statement `rollup_series` runs for `q`."""
    assert served_by_rollups(q), "the caller checks served_by_rollups first"
    r = rollups.c
    measures = [
        func.sum(r.count).label("n"),
        func.sum(r.sum).label("total"),
        func.sum(r.weighted).label("weighted"),
        func.min(r.min).label("lo"),
        func.max(r.max).label("hi"),
        func.sum(r.sumsq).label("sumsq"),
        func.sum(r.without_std).label("without_std"),
        func.sum(r.windows).label("windows"),
        func.min(r.p50).label("p50"),
        func.min(r.p95).label("p95"),
        func.sum(r.inv_eps_sq).label("inv_eps_sq"),
    ]
    # The range's edges lie on bucket edges (served_by_rollups), so filtering the rows by their
    # own start keeps exactly the buckets in range. Every width the API serves is stored: one
    # row per point and series, read through the unique key's index (width, metric, start).
    width = q.bucket.seconds
    assert width in STORED_WIDTHS, f"no rollup rows of {width} s"
    return series_select(q, rollups, r.bucket_start, r.bucket_start, measures, _width_is(width))


async def rollup_series(engine: AsyncEngine, q: SeriesQuery) -> list[Series]:
    """The answer of `cloud.queries.query_series` for `q`, read from the rollups."""
    return await read_series(engine, q, rollup_series_select(q))


def rollup_metrics_select(since: float | None = None) -> Any:
    """The statement `rollup_metrics` runs: per metric and unit over the day rows from
    `since` (all of them for None)."""
    r = rollups.c
    period = [] if since is None else [r.bucket_start >= since]
    return (
        select(
            r.metric,
            r.unit,
            func.min(r.bucket_start),
            func.max(r.bucket_start),
            func.count(func.distinct(r.home)),
            func.sum(r.windows),
            func.max(case((r.policy == Policy.NOISED.value, 1), else_=0)),
        )
        .where(_width_is(DAY_S), *period)
        .group_by(r.metric, r.unit)
        .order_by(r.metric, r.unit)
    )


def report_since(data_end: float | None, lookback_days: int) -> float | None:
    """Where the rollups report's period starts: `lookback_days` whole days before the end of
    the day `data_end` lies in (the analytics' period, `cloud.analytics.runner`)."""
    if data_end is None:
        return None
    return math.ceil(data_end / DAY_S) * DAY_S - lookback_days * DAY_S


async def rollup_metrics(engine: AsyncEngine, since: float | None = None) -> list[MetricSpan]:
    """Per metric and unit: the days covered, homes and windows from the day `since` on (the
    day rollups: one row per series and day, 24x fewer than the hours; a period, so what is
    read is bounded by the series x its days, not by the retained history)."""
    async with engine.connect() as conn:
        rows = (await conn.execute(rollup_metrics_select(since))).all()
    return [
        MetricSpan(
            m,
            u,
            bucket_start(first, DAY_S),
            bucket_start(last, DAY_S),
            int(homes),
            int(w),
            bool(noised),
        )
        for m, u, first, last, homes, w, noised in rows
    ]


async def newest_window_end(engine: AsyncEngine, *, now: float | None = None) -> float | None:
    """End of the newest hour bucket with data that has begun by `now` (default: the clock):
    where the analytics' look-back and the dashboard's time ranges end.

    Anchored on the data, so a fleet replaying history is still analysed, but never past the
    clock: one gateway's windows dated in the future (ingest refuses those now, but older rows
    may hold them) cannot move the period away from every other gateway's data. A gateway can
    only move this towards `now`, where a live fleet's data ends anyway. One index range read
    (bucket_s, bucket_start).
    """
    now = time.time() if now is None else now
    r = rollups.c
    async with engine.connect() as conn:
        newest = await conn.scalar(
            select(func.max(r.bucket_start)).where(_width_is(STORED_S), r.bucket_start <= now)
        )
    return None if newest is None else float(newest) + STORED_S
