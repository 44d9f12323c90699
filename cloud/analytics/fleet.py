"""Fleet comparisons from the rollups: percentiles across homes, each home's standing, and the
statistics of the edge inference results (alarms per home and day, speech-activity share).

Inputs are the rollups read per (home, metric, ...) and time bucket, pooled over rooms, devices
and gateways (count-weighted).

The fleet standings are computed by the database (`fleet_standings_sql`) from the day rows ingest
keeps: it pools them into daily means and each home's mean of them, and on PostgreSQL also the
fleet's percentiles (``percentile_cont``, the linear interpolation numpy's default uses) in the
same statement; on SQLite, which has no percentile_cont, they come from the sorted per-home
values here. Only one row per home and metric leaves the database, and ranks are found by
searching the sorted values, so a run grows as n log n with the homes, not with their hours nor
quadratically.

The edge reports inference results as ordinary aggregates named ``inference_<what>``. Alarms,
keywords and anomalies are event counts (``kind=event`` in `schemas.metrics`): an aggregate
exists only for a window with events, its `count` and `sum` are the number of events, so `sum`
counts detections. Speech (and occupancy, where a home opts in) are shares, one reading per
summary or sensor window, so `sum / count` is the share. Since a window without alarms sends
no alarm aggregate, "alarms per home and day" is taken over the home-days that reported any
edge inference result (a listening gateway), not only those with an alarm.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Integer, and_, func, literal_column, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cloud.analytics.models import (
    EventPoint,
    EventReport,
    FleetStat,
    HomeDayEvents,
    HomeStanding,
)
from cloud.analytics.rollups import DAY_S, STORED_S, rollup_bucket
from cloud.db import rollups

ALARM = "inference_alarm"
SPEECH = "inference_speech"
OCCUPANCY = "inference_occupancy"
ANOMALY = "inference_anomaly"
KEYWORD = "inference_keyword"
EVENT_METRICS = (ALARM, SPEECH, OCCUPANCY, ANOMALY, KEYWORD)
TIMELINE_METRICS = (ALARM, ANOMALY, KEYWORD)  # the event counts drawn per home and hour


@dataclass(frozen=True)
class Cell:
    """Pooled rollup state of one home, metric (and device class) in one bucket."""

    home: str
    metric: str
    device_class: str
    unit: str
    t: float
    count: float
    sum: float
    weighted: float
    inv_eps_sq: float = 0.0  # of its noised windows (`cloud.noise`)

    @property
    def mean(self) -> float | None:
        return self.weighted / self.count if self.count > 0 else None


async def load_cells(
    engine: AsyncEngine,
    width: int,
    since: float,
    until: float,
    *,
    by_device_class: bool,
    metrics: Sequence[str] | None = None,
) -> list[Cell]:
    """Rollups of `width` in [since, until), pooled per home, metric (device class) and unit;
    only those of `metrics` when given."""
    r = rollups.c
    device_class = r.device_class if by_device_class else func.min(r.device_class)
    bucket = rollup_bucket(width)  # days are grouped from the stored hour rows
    keys = [r.home, r.metric, r.unit, bucket]
    if by_device_class:
        keys.append(r.device_class)
    stmt = (
        select(
            r.home,
            r.metric,
            device_class.label("device_class"),
            r.unit,
            bucket.label("bucket_start"),
            func.sum(r.count),
            func.sum(r.sum),
            func.sum(r.weighted),
            func.sum(r.inv_eps_sq),
        )
        .where(
            r.bucket_s == STORED_S,
            r.bucket_start >= since,
            r.bucket_start < until,
            *([] if metrics is None else [r.metric.in_(metrics)]),
        )
        .group_by(*keys)
        # No ORDER BY: every consumer sorts what it keeps, and sorting every hour row of the
        # fleet by text keys was most of the query's time at 1,000 homes.
    )
    async with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            await analytics_session(conn)
        rows = (await conn.execute(stmt)).all()
    return [
        Cell(home, metric, dc, unit, float(t), float(n), float(s), float(w), float(e or 0.0))
        for home, metric, dc, unit, t, n, s, w, e in rows
    ]


def percentile_rank(values: Sequence[float], value: float) -> float:
    """Share of `values` below `value`, ties counted half, in percent (0-100)."""
    below = sum(1 for v in values if v < value)
    equal = sum(1 for v in values if v == value)
    return 100.0 * (below + 0.5 * equal) / len(values)


def _ranks(sample: Sequence[float]) -> list[float]:
    """`percentile_rank(sample, v)` for every v of `sample`, by bisection in its sorted copy."""
    ordered = sorted(sample)
    n = len(ordered)
    out = []
    for value in sample:
        below = bisect.bisect_left(ordered, value)
        equal = bisect.bisect_right(ordered, value) - below
        out.append(100.0 * (below + 0.5 * equal) / n)
    return out


async def fleet_standings_sql(
    engine: AsyncEngine, since: float, until: float
) -> tuple[list[FleetStat], list[HomeStanding]]:
    """`fleet_standings` of the day cells in [since, until) (whole days), computed in the
    database from the day rows ingest keeps (24 times fewer than the hour rows; their state is
    the sum of the day's hour rows, so the means are the same)."""
    assert since % DAY_S == 0 and until % DAY_S == 0, "the standings read whole days"
    r = rollups.c
    daily = (
        select(
            r.metric,
            r.device_class,
            r.unit,
            r.home,
            r.bucket_start.label("day"),
            (func.sum(r.weighted) / func.sum(r.count)).label("mean"),
        )
        .where(
            # the width in the SQL text, as `cloud.analytics.rollups` reads one width
            r.bucket_s == literal_column(str(DAY_S), Integer),
            r.bucket_start >= since,
            r.bucket_start < until,
            r.metric.not_in(EVENT_METRICS),
        )
        .group_by(r.metric, r.device_class, r.unit, r.home, r.bucket_start)
        .having(func.sum(r.count) > 0)
        .cte("daily")
    )
    d = daily.c
    keys = (d.metric, d.device_class, d.unit)
    homes = (
        select(*keys, d.home, func.avg(d.mean).label("value"), func.count().label("days"))
        .group_by(*keys, d.home)
        .cte("homes")
    )
    h = homes.c
    order = (h.metric, h.device_class, h.unit, h.home)
    # (metric, device class, unit) -> p10, p50, p90, mean, homes; from the database on
    # PostgreSQL, in the same statement as the per-home values (the CTE they share is
    # computed once).
    percentiles: dict[tuple[str, str, str], tuple[float, float, float, float, int]] = {}
    async with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            await analytics_session(conn)
            keys3 = (h.metric, h.device_class, h.unit)
            fleet = (
                select(
                    *keys3,
                    *(
                        func.percentile_cont(q).within_group(h.value).label(f"p{round(q * 100)}")
                        for q in (0.1, 0.5, 0.9)
                    ),
                    func.avg(h.value).label("mean"),
                    func.count().label("n"),
                )
                .group_by(*keys3)
                .cte("fleet")
            )
            f = fleet.c
            on = and_(h.metric == f.metric, h.device_class == f.device_class, h.unit == f.unit)
            stmt = (
                select(*order, h.value, h.days, f.p10, f.p50, f.p90, f.mean, f.n)
                .select_from(homes.join(fleet, on))
                # Byte order: sorting 500,000 homes' keys by the locale's rules took seconds.
                .order_by(*(column.collate("C") for column in order))
            )
            rows = []
            for metric, dc, unit, home, value, days, p10, p50, p90, mean, n in (
                await conn.execute(stmt)
            ).all():
                rows.append((metric, dc, unit, home, value, days))
                percentiles[(metric, dc, unit)] = (p10, p50, p90, mean, n)
        else:
            rows = [tuple(row) for row in (await conn.execute(select(homes).order_by(*order)))]
    # 500,000 standings at 100,000 homes: built off the event loop, which serves requests.
    return await asyncio.to_thread(_standings, rows, percentiles)


def _standings(
    rows: list[tuple[Any, ...]],
    percentiles: dict[tuple[str, str, str], tuple[float, float, float, float, int]],
) -> tuple[list[FleetStat], list[HomeStanding]]:
    """The fleet statistics and standings of the per-home rows (metric, device class, unit,
    home, value, days), sorted by their first four; `percentiles` where the database gave
    them."""
    stats: list[FleetStat] = []
    standings: list[HomeStanding] = []
    for (metric, dc, unit), group in groupby(rows, key=lambda row: row[:3]):
        members = list(group)
        sample = np.array([row[4] for row in members], dtype=np.float64)
        if (metric, dc, unit) in percentiles:
            p10, p50, p90, mean, n = percentiles[(metric, dc, unit)]
            p10, p50, p90, mean, n = float(p10), float(p50), float(p90), float(mean), int(n)
        else:  # SQLite: no percentile_cont; numpy's default is the same interpolation
            p10, p50, p90 = (float(p) for p in np.percentile(sample, [10, 50, 90]))
            mean, n = float(np.mean(sample)), len(sample)
        stats.append(FleetStat(metric, dc, unit, n, p10, p50, p90, mean))
        for row, value, rank in zip(
            members, sample.tolist(), _ranks_array(sample).tolist(), strict=True
        ):
            standings.append(HomeStanding(row[3], metric, dc, value, rank, int(row[5])))
    return stats, standings


def _ranks_array(sample: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """`_ranks` of a whole array at once (searchsorted in its sorted copy)."""
    ordered = np.sort(sample)
    below = np.searchsorted(ordered, sample, side="left")
    equal = np.searchsorted(ordered, sample, side="right") - below
    return 100.0 * (below + 0.5 * equal) / len(sample)


# Per analytics transaction: PostgreSQL's default work_mem (4 MB) made the grouping of a
# 1,000-home fleet's hour rows spill to disk and take 3.5x as long (bench/analytics.py).
ANALYTICS_WORK_MEM = "64MB"


async def analytics_session(conn: AsyncConnection) -> None:
    """An analytics run reads the whole look-back period: the serving engine's
    statement_timeout (cloud.backpressure), meant for requests, does not apply to it, and its
    groupings get the memory to stay off disk."""
    await conn.execute(text("SET LOCAL statement_timeout = 0"))
    await conn.execute(text(f"SET LOCAL work_mem = '{ANALYTICS_WORK_MEM}'"))


def fleet_standings(days: Iterable[Cell]) -> tuple[list[FleetStat], list[HomeStanding]]:
    """Per metric and device class: each home's mean of its daily means, the fleet's p10/p50/p90
    of those, and every home's percentile rank among them."""
    daily: dict[tuple[str, str, str], dict[str, list[float]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for cell in days:
        if cell.metric in EVENT_METRICS or cell.mean is None:
            continue
        daily[(cell.metric, cell.device_class, cell.unit)][cell.home].append(cell.mean)
    stats: list[FleetStat] = []
    standings: list[HomeStanding] = []
    for (metric, device_class, unit), homes in sorted(daily.items()):
        values = {home: float(np.mean(means)) for home, means in homes.items()}
        sample = list(values.values())
        p10, p50, p90 = (float(p) for p in np.percentile(sample, [10, 50, 90]))
        stats.append(
            FleetStat(
                metric, device_class, unit, len(sample), p10, p50, p90, float(np.mean(sample))
            )
        )
        for (home, value), rank in zip(
            sorted(values.items()), _ranks([v for _, v in sorted(values.items())]), strict=True
        ):
            standings.append(
                HomeStanding(home, metric, device_class, value, rank, len(homes[home]))
            )
    return stats, standings


def event_report(days: Iterable[Cell], hours: Iterable[Cell]) -> EventReport:
    """Alarms, anomalies and voice commands (keywords) per home and day, speech and occupancy
    shares, and a timeline of the hours with detections."""
    per_day: dict[tuple[str, float], dict[str, Cell]] = defaultdict(dict)
    for cell in days:
        if cell.metric in EVENT_METRICS:
            per_day[(cell.home, cell.t)][cell.metric] = cell

    def share(cells: dict[str, Cell], metric: str) -> float | None:
        cell = cells.get(metric)
        return cell.sum / cell.count if cell is not None and cell.count > 0 else None

    def detections(cells: dict[str, Cell], metric: str) -> float:
        cell = cells.get(metric)
        return cell.sum if cell is not None else 0.0

    day_rows = [
        HomeDayEvents(
            home=home,
            day=day,
            alarms=detections(cells, ALARM),
            anomalies=detections(cells, ANOMALY),
            speech_share=share(cells, SPEECH),
            occupancy_share=share(cells, OCCUPANCY),
            keywords=detections(cells, KEYWORD),
        )
        for (home, day), cells in sorted(per_day.items())
    ]
    per_hour: dict[tuple[float, str], dict[str, float]] = defaultdict(dict)
    for cell in hours:
        if cell.metric in TIMELINE_METRICS and cell.sum > 0:
            per_hour[(cell.t, cell.home)][cell.metric] = cell.sum
    timeline = [
        EventPoint(t, home, found.get(ALARM, 0.0), found.get(ANOMALY, 0.0), found.get(KEYWORD, 0.0))
        for (t, home), found in sorted(per_hour.items())
    ]
    # Every day row reported some edge result (per_day holds only EVENT_METRICS cells): a day
    # without an alarm has no alarm aggregate, and counts as 0 alarms.
    listening = day_rows
    speech = [c for cells in per_day.values() if (c := cells.get(SPEECH)) is not None]
    speech_n = sum(c.count for c in speech)
    return EventReport(
        days=day_rows,
        timeline=timeline,
        alarms_per_home_day=(
            sum(d.alarms for d in listening) / len(listening) if listening else None
        ),
        speech_share=sum(c.sum for c in speech) / speech_n if speech_n > 0 else None,
    )
