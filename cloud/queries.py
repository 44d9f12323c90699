"""Read-side queries: time series of aggregates (raw or rolled up) and per-gateway health.

Roll-ups combine windows exactly where the statistics allow it: counts and sums add, the mean is
count-weighted, min and max take the extremes, and the standard deviation is rebuilt from each
window's sum of squares, n * (std^2 + mean^2), which treats `std` as the population standard
deviation of the window. Percentiles cannot be combined and are only returned for raw points.
Bucketing is integer-second arithmetic in SQL with one expression per dialect, so SQLite and
PostgreSQL return the same buckets.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from sqlalchemy import (
    ColumnElement,
    Float,
    String,
    Table,
    and_,
    distinct,
    func,
    literal_column,
    select,
)
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from cloud.db import aggregates, batches
from cloud.noise import mean_noise_sd

GROUP_COLUMNS = ("gateway", "home", "room_class", "device_class", "policy")
FILTER_COLUMNS = ("gateway", "home", "room_class", "device_class", "policy")
MAX_GAPS_LISTED = 100


class Bucket(enum.StrEnum):
    RAW = "raw"
    HOUR = "hour"
    DAY = "day"

    @property
    def seconds(self) -> int | None:
        return {"raw": None, "hour": 3600, "day": 86400}[self.value]


class TooManyPoints(Exception):
    """The query would return more points than the limit."""


class TimeBucket(FunctionElement[float]):
    """floor(seconds / width) * width, for non-negative seconds."""

    type = Float()
    inherit_cache = True


@compiles(TimeBucket)
def _time_bucket_default(element: TimeBucket, compiler: SQLCompiler, **kw: Any) -> str:
    column, width = list(element.clauses)
    return (
        f"(floor({compiler.process(column, **kw)} / {compiler.process(width, **kw)})"
        f" * {compiler.process(width, **kw)})"
    )


@compiles(TimeBucket, "sqlite")
def _time_bucket_sqlite(element: TimeBucket, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite may lack floor(); CAST truncates toward zero, which is floor for seconds >= 0.
    column, width = list(element.clauses)
    return (
        f"(CAST({compiler.process(column, **kw)} / {compiler.process(width, **kw)} AS INTEGER)"
        f" * {compiler.process(width, **kw)})"
    )


class ByteOrder(FunctionElement[str]):
    """A text column compared by its bytes: ``col COLLATE "C"`` on PostgreSQL, the column itself
    on SQLite (whose default BINARY collation is byte order already).

    Grouping and sorting a series' rows by the database's linguistic collation makes every
    comparison a strcoll() call, half the server time of a 24-hour view of a few hundred
    homes; by bytes the order is the same on both databases (and, for the ASCII names and
    UTF-8 units stored, the code point order)."""

    type = String()
    inherit_cache = True


@compiles(ByteOrder)
def _byte_order_default(element: ByteOrder, compiler: SQLCompiler, **kw: Any) -> str:
    (column,) = list(element.clauses)
    return f'({compiler.process(column, **kw)} COLLATE "C")'


@compiles(ByteOrder, "sqlite")
def _byte_order_sqlite(element: ByteOrder, compiler: SQLCompiler, **kw: Any) -> str:
    (column,) = list(element.clauses)
    return str(compiler.process(column, **kw))


@dataclass(frozen=True)
class SeriesQuery:
    metric: str
    bucket: Bucket = Bucket.RAW
    group_by: tuple[str, ...] = ("gateway", "home", "room_class", "device_class")
    filters: dict[str, str] = field(default_factory=dict)
    start: float | None = None  # window_start >= start
    end: float | None = None  # window_start < end
    max_points: int = 100_000


# A Struct, not a dataclass: a 24-hour hourly view of a few hundred homes builds thousands of
# points per request, and Struct construction is ~10x cheaper (it encodes to the same JSON).
class Point(msgspec.Struct, frozen=True):
    t: float
    count: float
    sum: float
    mean: float | None
    min: float | None
    max: float | None
    std: float | None
    windows: int
    p50: float | None = None
    p95: float | None = None
    # The privacy noise's standard deviation in `mean` (`cloud.noise`); None for exact points.
    noise_sd: float | None = None


@dataclass(frozen=True)
class Series:
    key: dict[str, str]
    points: list[Point]
    # Any point noised at the edge (policy ``noised``): its means carry privacy noise.
    noised: bool = False


def raw_series_select(q: SeriesQuery) -> Any:
    """The statement `query_series` runs for `q` (rows as `series_from_rows` reads them)."""
    a = aggregates.c
    width = q.bucket.seconds
    t: ColumnElement[float] = (
        a.window_start if width is None else TimeBucket(a.window_start, literal_column(str(width)))
    )
    measures = [
        func.sum(a.count).label("n"),
        func.sum(a.sum).label("total"),
        func.sum(a.count * a.mean).label("weighted"),
        func.min(a.min).label("lo"),
        func.max(a.max).label("hi"),
        func.sum(a.count * (a.std * a.std + a.mean * a.mean)).label("sumsq"),
        (func.count() - func.count(a.std)).label("without_std"),
        func.count().label("windows"),
        # Percentiles of a single window are exact; of several they are not returned.
        func.min(a.p50).label("p50"),
        func.min(a.p95).label("p95"),
        func.coalesce(func.sum(1.0 / (a.epsilon * a.epsilon)), 0.0).label("inv_eps_sq"),
    ]
    return series_select(q, aggregates, t, a.window_start, measures)


async def query_series(engine: AsyncEngine, q: SeriesQuery) -> list[Series]:
    """Series per group (plus unit), each with points in time order."""
    return await read_series(engine, q, raw_series_select(q))


def series_select(
    q: SeriesQuery,
    table: Table,
    t: ColumnElement[float],
    time_column: ColumnElement[float],
    measures: Sequence[ColumnElement[Any]],
    *where: ColumnElement[bool],
) -> Any:
    """The series of `q` from `table` (the aggregates or the rollups): `measures` grouped by
    `q.group_by`, unit and bucket `t`, with the range of `q` applied to `time_column` (which
    is what prunes PostgreSQL's time partitions)."""
    c = table.c
    groups: list[ColumnElement[Any]] = [
        ByteOrder(c[name]).label(name) for name in (*q.group_by, "unit")
    ]
    conditions = [c.metric == q.metric, *where]
    conditions += [c[name] == value for name, value in q.filters.items()]
    if q.start is not None:
        conditions.append(time_column >= q.start)
    if q.end is not None:
        conditions.append(time_column < q.end)
    return (
        select(*groups, t.label("bucket_start"), *measures)
        .where(and_(*conditions))
        .group_by(*groups, t)
        .order_by(*groups, t)
        .limit(q.max_points + 1)
    )


async def read_series(engine: AsyncEngine, q: SeriesQuery, stmt: Any) -> list[Series]:
    """Run `stmt` (from `series_select` for `q`) and build its series."""
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return series_from_rows(q, rows)


def series_from_rows(q: SeriesQuery, rows: Sequence[Any]) -> list[Series]:
    """Series from rows of (*group_by, unit, bucket_start, n, total, weighted, lo, hi, sumsq,
    without_std, windows, p50, p95, inv_eps_sq), as `read_series` selects them."""
    if len(rows) > q.max_points:
        raise TooManyPoints(f"more than {q.max_points} points: narrow the range or bucket coarser")
    series: dict[tuple[str, ...], Series] = {}
    key_names = (*q.group_by, "unit")
    width = len(key_names)
    sqrt = math.sqrt
    # Positional access and local names: this loop runs once per point of the answer.
    for row in rows:
        key = tuple(row[:width])
        found = series.get(key)
        if found is None:
            found = series[key] = Series(key=dict(zip(key_names, key, strict=True)), points=[])
        t, n, total, weighted, lo, hi, sumsq, without_std, windows, p50, p95, inv = row[width:]
        total_n = float(n)
        mean = weighted / total_n if total_n > 0 else None
        if mean is None or without_std != 0 or sumsq is None:
            std = None
        else:
            # Rounding can push a zero variance slightly negative.
            std = sqrt(max(sumsq / total_n - mean * mean, 0.0))
        single = windows == 1
        found.points.append(
            Point(
                float(t),
                total_n,
                float(total),
                mean,
                lo,
                hi,
                std,
                int(windows),
                p50 if single else None,
                p95 if single else None,
                mean_noise_sd(q.metric, float(inv or 0.0), total_n, mean),
            )
        )
    return [
        Series(s.key, s.points, any(p.noise_sd is not None for p in s.points))
        for s in series.values()
    ]


@dataclass(frozen=True)
class GatewayStatus:
    gateway: str
    configured: bool
    batches: int
    last_seq: int | None
    last_batch_at: float | None  # when the newest batch was received
    last_created_at: float | None
    missing: int  # seq numbers in 1..last_seq never received
    gaps: list[tuple[int, int]]  # inclusive ranges of missing seq, the first MAX_GAPS_LISTED
    lag_s: float | None  # now - end of the newest window received


async def gateway_status(
    engine: AsyncEngine, configured: Sequence[str], now: float | None = None
) -> list[GatewayStatus]:
    now = time.time() if now is None else now
    b = batches.c
    totals = select(
        b.gateway,
        func.count().label("n"),
        func.count(distinct(b.seq)).label("distinct_seq"),
        func.max(b.seq).label("last_seq"),
        func.max(b.received_at).label("last_batch_at"),
        func.max(b.created_at).label("last_created_at"),
        func.max(b.window_end_max).label("window_end"),
    ).group_by(b.gateway)
    seqs = select(b.gateway, b.seq).distinct().subquery()
    with_prev = select(
        seqs.c.gateway,
        seqs.c.seq,
        func.lag(seqs.c.seq).over(partition_by=seqs.c.gateway, order_by=seqs.c.seq).label("prev"),
    ).subquery()
    prev = func.coalesce(with_prev.c.prev, 0)
    gaps_stmt = (
        select(with_prev.c.gateway, (prev + 1).label("lo"), (with_prev.c.seq - 1).label("hi"))
        .where(with_prev.c.seq - prev > 1)
        .order_by(with_prev.c.gateway, with_prev.c.seq)
    )
    async with engine.connect() as conn:
        total_rows = (await conn.execute(totals)).all()
        gap_rows = (await conn.execute(gaps_stmt)).all()
    gaps: dict[str, list[tuple[int, int]]] = {}
    for row in gap_rows:
        listed = gaps.setdefault(row.gateway, [])
        if len(listed) < MAX_GAPS_LISTED:
            listed.append((int(row.lo), int(row.hi)))
    by_gateway = {row.gateway: row for row in total_rows}
    result = []
    for gateway in sorted(set(configured) | set(by_gateway)):
        if gateway not in by_gateway:
            result.append(GatewayStatus(gateway, True, 0, None, None, None, 0, [], None))
            continue
        row = by_gateway[gateway]
        result.append(
            GatewayStatus(
                gateway=gateway,
                configured=gateway in configured,
                batches=int(row.n),
                last_seq=int(row.last_seq),
                last_batch_at=row.last_batch_at,
                last_created_at=row.last_created_at,
                missing=int(row.last_seq) - int(row.distinct_seq),
                gaps=gaps.get(gateway, []),
                lag_s=None if row.window_end is None else now - row.window_end,
            )
        )
    return result
