"""Tumbling-window aggregation of the committed readings, durable across crashes.

Windows align to Unix time (``[k * window_s, (k + 1) * window_s)``) and are grouped by home, room,
device class and metric. A window is aggregated once ``window_end + grace_s <= now``, from the
rows already committed to ``readings``, in the caller's transaction: the ``aggregates`` rows and
the advanced watermark commit together, so a killed gateway resumes exactly where the last
committed pass ended, never aggregating a window twice or skipping one.

A pass works one window at a time: count, sum, sum of squares, min and max come from SQL
``GROUP BY``; only the values themselves are fetched (as one float array per window, for the
percentiles, the std and the privacy filter). At most `max_rows_per_pass` rows are read per pass
(always at least one window): the watermark then stops after the last window done and the next
pass goes on from there, so a backlog after an outage is worked off in short writer-thread
transactions instead of one long stall with every reading in Python lists.

A reading stored after its window was aggregated is *late*: it is counted (``late_readings``
table, ``late_readings`` durable counter) and not re-aggregated, since the window's figures may
already have left the home. Late rows are found by ``readings.id``, which SQLite assigns in
increasing order: every row above the last pass's highest id with ``ts`` below the watermark
arrived late. Ingest accepts readings up to ``[ingest] max_age_s`` (7 days) old and at most
``max_clock_skew_s`` ahead (`gateway.validation`): an old one lands in an aggregated window and
is counted late; none is so far ahead that its window never closes.
"""

from __future__ import annotations

import logging
import math
from array import array
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass

from sqlalchemy import Connection, Integer, cast, func, select, update
from sqlalchemy.dialects.sqlite import insert

from gateway.db import devices, readings
from gateway.sync import counters
from gateway.sync import stats as wstats
from gateway.sync.settings import AggregationSettings
from gateway.sync.tables import aggregates, late_readings, sync_watermark
from schemas.metrics import infer_device_class

log = logging.getLogger(__name__)

# Size of a telemetry message besides its readings ({"ts":...,"seq":...,"readings":{}}), and of
# one reading besides its name; used to estimate ingested bytes from stored rows.
_MESSAGE_OVERHEAD_BYTES = 44
_READING_OVERHEAD_BYTES = 10


def window_floor(ts: float, window_s: int) -> float:
    """Start of the window that holds `ts`."""
    return float(math.floor(ts / window_s) * window_s)


@dataclass(frozen=True, slots=True)
class WindowStats:
    """Exact statistics of one window's values (population std, linear-interpolated percentiles)."""

    count: int
    sum: float
    sum_sq: float
    min: float
    max: float
    mean: float
    std: float
    p50: float
    p95: float

    @classmethod
    def from_sums(
        cls,
        count: int,
        total: float,
        sum_sq: float,
        lo: float,
        hi: float,
        values: Collection[float],
    ) -> WindowStats:
        """From SQL's count/sum/sum of squares/min/max plus the values (percentiles, and a
        two-pass std, which cancels less than one derived from the sum of squares)."""
        vals = wstats.as_float_array(values)
        if count == 0 or len(vals) != count:
            raise ValueError(f"{len(vals)} values for a window of {count} readings")
        ordered = sorted(vals)
        return cls(
            count=count,
            sum=total,
            sum_sq=sum_sq,
            min=lo,
            max=hi,
            mean=total / count,
            std=wstats.population_std(vals),
            p50=wstats.percentile(ordered, 50.0),
            p95=wstats.percentile(ordered, 95.0),
        )

    @classmethod
    def of(cls, values: Collection[float]) -> WindowStats:
        vals = wstats.as_float_array(values)
        if len(vals) == 0:
            raise ValueError("a window without values has no statistics")
        ordered = sorted(vals)
        return cls(
            count=len(vals),
            sum=wstats.exact_sum(vals),
            sum_sq=wstats.exact_sum(v * v for v in vals),
            min=ordered[0],
            max=ordered[-1],
            mean=wstats.mean(vals),
            std=wstats.population_std(vals),
            p50=wstats.percentile(ordered, 50.0),
            p95=wstats.percentile(ordered, 95.0),
        )


@dataclass(frozen=True, slots=True, eq=False)
class WindowGroup:
    """The values of one closed window of one (home, room, device class, metric)."""

    home: str
    room: str
    device_class: str
    metric: str
    window_start: float
    window_s: int
    values: Collection[float]  # an array('d') from close_windows
    stats: WindowStats


@dataclass(frozen=True, slots=True)
class ClosedWindows:
    """What one aggregation pass closed."""

    groups: tuple[WindowGroup, ...]
    start: float | None  # first window start aggregated (None: nothing closed)
    end: float | None  # new watermark
    late: int
    rows: int
    messages: int
    estimated_bytes: int


def _lock_and_read_watermark(
    conn: Connection, now: float, window_s: int
) -> tuple[float | None, int, int]:
    # A write first: under pysqlite a SELECT does not open the transaction, and a write opened
    # later could fail with SQLITE_BUSY_SNAPSHOT if another connection wrote in between.
    conn.execute(
        insert(sync_watermark)
        .values(id=1, window_s=window_s, watermark=None, reading_cursor=0, updated_at=now)
        .on_conflict_do_nothing()
    )
    conn.execute(update(sync_watermark).where(sync_watermark.c.id == 1).values(updated_at=now))
    row = conn.execute(
        select(
            sync_watermark.c.watermark, sync_watermark.c.reading_cursor, sync_watermark.c.window_s
        ).where(sync_watermark.c.id == 1)
    ).one()
    return row.watermark, int(row.reading_cursor), int(row.window_s)


def _count_late(
    conn: Connection, cursor: int, max_id: int, watermark: float, window_s: int, now: float
) -> int:
    # Counted per window in SQL: fetching one row per late reading cost ~400 bytes of Python
    # objects each (a replayed backlog of 100k readings: +30 MB in the writer thread).
    # floor(ts / window_s) without SQLite's optional math functions: truncate, then step down
    # when the quotient was negative and not whole; the same float division as `window_floor`.
    quotient = readings.c.ts / window_s
    truncated = cast(quotient, Integer)
    window_index = (truncated - cast(quotient < truncated, Integer)).label("window_index")
    rows = conn.execute(
        select(
            readings.c.home,
            readings.c.room,
            readings.c.device,
            readings.c.metric,
            window_index,
            func.count(),
        )
        .where(readings.c.id > cursor, readings.c.id <= max_id, readings.c.ts < watermark)
        .group_by(
            readings.c.home, readings.c.room, readings.c.device, readings.c.metric, window_index
        )
    ).all()
    if not rows:
        return 0
    late_rows = [
        {
            "home": home,
            "room": room,
            "device": device,
            "metric": metric_name,
            "window_start": float(int(index) * window_s),
            "count": int(n),
        }
        for home, room, device, metric_name, index, n in rows
    ]
    late = sum(r["count"] for r in late_rows)
    stmt = insert(late_readings)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[
                late_readings.c.home,
                late_readings.c.room,
                late_readings.c.device,
                late_readings.c.metric,
                late_readings.c.window_start,
            ],
            set_={
                "count": late_readings.c.count + stmt.excluded.count,
                "last_seen_at": stmt.excluded.last_seen_at,
            },
        ),
        [{**r, "last_seen_at": now} for r in late_rows],
    )
    log.info("%d late readings (their windows were already aggregated)", late)
    return late


def close_windows(
    conn: Connection,
    now: float,
    settings: AggregationSettings,
    *,
    policy_of: Callable[[str], str] = lambda _metric: "aggregate",
) -> ClosedWindows:
    """Aggregate every window closed at `now` since the watermark, in the caller's transaction.

    Writes ``aggregates`` rows (with `policy_of(metric)` recorded), counts late readings and
    advances the watermark; returns the groups with their values for the privacy filter.
    """
    ws = settings.window_s
    watermark, cursor, stored_ws = _lock_and_read_watermark(conn, now, ws)
    first_pass = watermark is None
    if watermark is None:
        lowest = now - settings.backfill_s
        min_ts = conn.execute(
            select(func.min(readings.c.ts)).where(readings.c.ts >= lowest)
        ).scalar()
        watermark = window_floor(min_ts if min_ts is not None else lowest, ws)
    elif stored_ws != ws:
        aligned = float(math.ceil(watermark / ws) * ws)
        log.warning(
            "window_s changed from %d to %d: resuming at %.0f, readings in [%.0f, %.0f) skipped",
            stored_ws,
            ws,
            aligned,
            watermark,
            aligned,
        )
        watermark = aligned

    max_id = conn.execute(select(func.max(readings.c.id))).scalar() or 0
    late = 0
    if not first_pass and max_id > cursor:
        late = _count_late(conn, cursor, max_id, watermark, ws, now)
        counters.bump(conn, "late_readings", late)

    target = window_floor(now - settings.grace_s, ws)
    closable = int((target - watermark) // ws)
    if closable < settings.windows_per_batch:
        closable = 0  # wait for a full group
    limit = watermark + min(closable, settings.max_windows_per_pass) * ws
    groups: list[WindowGroup] = []
    n_rows = messages = est_bytes = 0
    end = watermark
    if limit > watermark:
        classes = _device_classes(conn)
        while end < limit:
            window = _aggregate_window(
                conn,
                end,
                ws,
                classes,
                room_for=settings.max_rows_per_pass - n_rows,
                first=end == watermark,
            )
            if window is None:
                log.info(
                    "aggregation pass stops at %d rows (max_rows_per_pass); %d windows wait",
                    n_rows,
                    int((limit - end) // ws),
                )
                break
            groups.extend(window.groups)
            n_rows += window.rows
            messages += window.messages
            est_bytes += window.estimated_bytes
            end += ws
        groups.sort(key=lambda g: (g.home, g.room, g.device_class, g.metric, g.window_start))
        _insert_aggregates(conn, groups, now, policy_of)
        log.debug(
            "aggregated %d rows into %d windows in [%.0f, %.0f)",
            n_rows,
            len(groups),
            watermark,
            end,
        )
    start = watermark if end > watermark else None
    conn.execute(
        update(sync_watermark)
        .where(sync_watermark.c.id == 1)
        .values(watermark=end, reading_cursor=max(max_id, cursor), window_s=ws)
    )
    return ClosedWindows(
        groups=tuple(groups),
        start=start,
        end=end if end > watermark else None,
        late=late,
        rows=n_rows,
        messages=messages,
        estimated_bytes=est_bytes,
    )


@dataclass(frozen=True, slots=True)
class _Window:
    groups: list[WindowGroup]
    rows: int
    messages: int
    estimated_bytes: int


def _device_classes(conn: Connection) -> dict[tuple[str, str], str]:
    return {
        (home, device): device_class
        for home, device, device_class in conn.execute(
            select(devices.c.home, devices.c.device, devices.c.device_class)
        )
    }


# Partial sums per device, in the same order as the values query below, so the flat array of
# values splits into groups by the counts alone.
_KEY = (readings.c.home, readings.c.room, readings.c.device, readings.c.metric)


def _aggregate_window(
    conn: Connection,
    lo: float,
    window_s: int,
    classes: dict[tuple[str, str], str],
    *,
    room_for: int,
    first: bool,
) -> _Window | None:
    """The groups of window [lo, lo + window_s); None when its rows exceed `room_for`, the rows
    this pass may still read, unless it is the pass's `first` window (a pass does at least one
    window, or one huge window would stop aggregation for good)."""
    hi = lo + window_s
    in_window = (readings.c.ts >= lo, readings.c.ts < hi)
    parts = conn.execute(
        select(
            *_KEY,
            func.count(),
            func.sum(readings.c.value),
            func.sum(readings.c.value * readings.c.value),
            func.min(readings.c.value),
            func.max(readings.c.value),
        )
        .where(*in_window)
        .group_by(*_KEY)
        .order_by(*_KEY)
    ).all()
    rows = sum(int(p[4]) for p in parts)
    if rows > room_for and not first:
        return None
    if not parts:
        return _Window([], 0, 0, 0)
    values = array(
        "d", conn.execute(select(readings.c.value).where(*in_window).order_by(*_KEY)).scalars()
    )
    messages = int(
        conn.execute(
            select(func.count()).select_from(
                # A message's readings share its ts and seq (several messages may share a ts).
                select(readings.c.home, readings.c.device, readings.c.ts, readings.c.seq)
                .where(*in_window)
                .distinct()
                .subquery()
            )
        ).scalar_one()
    )

    # Devices of one class in one room merge into one group.
    merged: dict[tuple[str, str, str, str], list[tuple[int, float, float, float, float, int]]] = (
        defaultdict(list)
    )
    reading_bytes = 0
    offset = 0
    for home, room, device, metric_name, n, total, sum_sq, vmin, vmax in parts:
        device_class = classes.get((home, device)) or infer_device_class(device).value
        merged[(home, room, device_class, metric_name)].append(
            (int(n), float(total), float(sum_sq), float(vmin), float(vmax), offset)
        )
        reading_bytes += int(n) * (len(metric_name) + _READING_OVERHEAD_BYTES)
        offset += int(n)
    groups: list[WindowGroup] = []
    for (home, room, device_class, metric_name), pieces in merged.items():
        vals = array("d")
        for n, _total, _sum_sq, _lo, _hi, start in pieces:
            vals.extend(values[start : start + n])
        groups.append(
            WindowGroup(
                home=home,
                room=room,
                device_class=device_class,
                metric=metric_name,
                window_start=lo,
                window_s=window_s,
                values=vals,
                stats=WindowStats.from_sums(
                    sum(p[0] for p in pieces),
                    sum(p[1] for p in pieces),
                    sum(p[2] for p in pieces),
                    min(p[3] for p in pieces),
                    max(p[4] for p in pieces),
                    vals,
                ),
            )
        )
    return _Window(
        groups=groups,
        rows=rows,
        messages=messages,
        estimated_bytes=reading_bytes + _MESSAGE_OVERHEAD_BYTES * messages,
    )


def _insert_aggregates(
    conn: Connection, groups: list[WindowGroup], now: float, policy_of: Callable[[str], str]
) -> None:
    if not groups:
        return
    conn.execute(
        insert(aggregates),
        [
            {
                "home": g.home,
                "room": g.room,
                "device_class": g.device_class,
                "metric": g.metric,
                "window_start": g.window_start,
                "window_s": g.window_s,
                "count": g.stats.count,
                "sum": g.stats.sum,
                "sum_sq": g.stats.sum_sq,
                "min": g.stats.min,
                "max": g.stats.max,
                "mean": g.stats.mean,
                "std": g.stats.std,
                "p50": g.stats.p50,
                "p95": g.stats.p95,
                "policy": policy_of(g.metric),
                "created_at": now,
            }
            for g in groups
        ],
    )
