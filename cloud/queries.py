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
import itertools
import logging
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
    bindparam,
    case,
    func,
    literal_column,
    null,
    select,
    type_coerce,
)
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import NullType

from cloud.db import aggregates, batches, gateway_stats
from cloud.noise import LAPLACE_VARIANCE_PER_INV_EPS_SQ, mean_noise_sd, sensitivity

log = logging.getLogger(__name__)

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
# gc=False: a point holds numbers only (no cycle possible), so thousands of them per request
# neither count towards nor lengthen the collector's full passes (one of those, over the
# whole process, was the p95 of the 24-hour view).
class Point(msgspec.Struct, frozen=True, gc=False):
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
    """Run `stmt` (from `series_select` for `q`) and build its series.

    On PostgreSQL the points' values are computed in the database and come back as one row
    per series with an array per field (`series_arrays_select`): a few hundred rows instead
    of thousands, and the points are built from the arrays without a Python step per value.
    SQLite gets one row per point and `series_from_rows` (the same answer: a test compares
    the two)."""
    async with engine.connect() as conn:
        if conn.dialect.name != "postgresql":
            rows = (await conn.execute(stmt)).all()
            return series_from_rows(q, rows)
        rows = (await conn.execute(series_arrays_select(q, stmt))).all()
    return series_from_arrays(q, rows)


POINT_FIELDS = (
    "t",
    "count",
    "sum",
    "mean",
    "min",
    "max",
    "std",
    "windows",
    "p50",
    "p95",
    "noise_sd",
)


def series_arrays_select(q: SeriesQuery, stmt: Any) -> Any:
    """`stmt`'s points (PostgreSQL), one row per series: its key, an array per field of
    `Point`, and whether any point is noised. The values are those `series_from_rows`
    computes, with the same floating-point operations in the same order.

    The arrays are built in the order `stmt` returns its rows (series key, then time): its
    ORDER BY and LIMIT make it a subquery the planner cannot flatten, whose sorted output the
    aggregation reads in sequence. An ``ORDER BY`` inside each of the eleven aggregates would
    say so explicitly but costs a sort per field and series (+50 % server time on a 24-hour
    view); `series_from_arrays` checks the order instead. The LIMIT also stops an answer past
    `q.max_points` there."""
    inner = stmt.subquery("grouped")
    c = inner.c
    n = c.n
    mean = case((n > 0, c.weighted / n), else_=null())
    std = case(
        (
            and_(n > 0, c.without_std == 0, c.sumsq.is_not(None)),
            func.sqrt(func.greatest(c.sumsq / n - mean * mean, 0.0)),
        ),
        else_=null(),
    )
    single = c.windows == 1
    s = sensitivity(q.metric)
    noise: ColumnElement[Any] = null()
    if s is not None:
        level = func.coalesce(mean, 0.0)
        inv = func.coalesce(c.inv_eps_sq, 0.0)
        variance = (
            bindparam("laplace", LAPLACE_VARIANCE_PER_INV_EPS_SQ, type_=Float)
            * inv
            * (bindparam("s_sq", s * s, type_=Float) + level * level)
        )
        noise = case((and_(inv > 0, n > 0), func.sqrt(variance) / n), else_=null())
    values: list[ColumnElement[Any]] = [
        c.bucket_start,
        n,
        c.total,
        mean,
        c.lo,
        c.hi,
        std,
        c.windows,
        case((single, c.p50), else_=null()),
        case((single, c.p95), else_=null()),
        noise,
    ]
    keys = [c[name].collate("C") for name in (*q.group_by, "unit")]
    return (
        select(
            *keys,
            # type_coerce: the driver's lists as they come, no per-element result processing.
            *(
                type_coerce(func.array_agg(value), NullType()).label(name)
                for value, name in zip(values, POINT_FIELDS, strict=True)
            ),
            func.bool_or(noise.is_not(None)).label("noised"),
        )
        .group_by(*keys)
        .order_by(*keys)
    )


def series_from_arrays(q: SeriesQuery, rows: Sequence[Any]) -> list[Series]:
    """Series from the rows of `series_arrays_select`."""
    width = len(q.group_by) + 1
    if sum(len(row[width]) for row in rows) > q.max_points:
        raise TooManyPoints(f"more than {q.max_points} points: narrow the range or bucket coarser")
    key_names = (*q.group_by, "unit")
    result = []
    for row in rows:
        fields = row[width:-1]
        times = fields[0]
        if any(a >= b for a, b in zip(times, itertools.islice(times, 1, None), strict=False)):
            # Not seen: the aggregation reads the sorted subquery in order. Should a plan ever
            # reorder it, the answer is still right, only slower.
            log.warning("series %s of %s came out of time order; sorted", row[:width], q.metric)
            order = sorted(range(len(times)), key=times.__getitem__)
            fields = [[column[i] for i in order] for column in fields]
        result.append(
            Series(
                key=dict(zip(key_names, row[:width], strict=True)),
                points=list(map(Point, *fields)),
                noised=bool(row[-1]),
            )
        )
    return result


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
    """Every configured or uploading gateway's health. The totals come from `gateway_stats`
    (one row per gateway, kept at ingest); only the gateways missing some seq numbers have
    their batches read, for the gaps (what a healthy fleet's answer reads does not grow with
    history)."""
    now = time.time() if now is None else now
    s = gateway_stats.c
    totals = select(
        s.gateway,
        s.batches,
        s.seqs,
        s.last_seq,
        s.last_batch_at,
        s.last_created_at,
        s.window_end_max,
    ).order_by(s.gateway)
    async with engine.connect() as conn:
        total_rows = (await conn.execute(totals)).all()
        gapped = [row.gateway for row in total_rows if row.last_seq != row.seqs]
        gap_rows = (await conn.execute(_gaps_select(gapped))).all() if gapped else []
    gaps: dict[str, list[tuple[int, int]]] = {}
    missing: dict[str, int] = {}
    for row in gap_rows:
        lo, hi = int(row.lo), int(row.hi)
        missing[row.gateway] = missing.get(row.gateway, 0) + hi - lo + 1
        listed = gaps.setdefault(row.gateway, [])
        if len(listed) < MAX_GAPS_LISTED:
            listed.append((lo, hi))
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
                batches=int(row.batches),
                last_seq=int(row.last_seq),
                last_batch_at=row.last_batch_at,
                last_created_at=row.last_created_at,
                missing=missing.get(gateway, 0),
                gaps=gaps.get(gateway, []),
                lag_s=None if row.window_end_max is None else now - row.window_end_max,
            )
        )
    return result


def _gaps_select(gateways: Sequence[str]) -> Any:
    """The inclusive ranges of seq numbers in 1..last_seq never received, of `gateways`."""
    b = batches.c
    seqs = select(b.gateway, b.seq).where(b.gateway.in_(gateways)).distinct().subquery()
    with_prev = select(
        seqs.c.gateway,
        seqs.c.seq,
        func.lag(seqs.c.seq).over(partition_by=seqs.c.gateway, order_by=seqs.c.seq).label("prev"),
    ).subquery()
    prev = func.coalesce(with_prev.c.prev, 0)
    return (
        select(with_prev.c.gateway, (prev + 1).label("lo"), (with_prev.c.seq - 1).label("hi"))
        .where(with_prev.c.seq - prev > 1)
        .order_by(with_prev.c.gateway, with_prev.c.seq)
    )
