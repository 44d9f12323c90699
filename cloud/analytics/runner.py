"""Running the analytics: one snapshot from the rollups, stored for every worker, on a schedule.

A run reads the rollups of the look-back period (which ends at the newest data, not at the
wall clock, so a fleet that uploads late is still analysed; but never later than the clock, so
one gateway's future-dated windows cannot move it off the fleet), computes fleet standings,
clusters, anomalies and event statistics, and upserts the result as JSON into
`analytics_results`. Every worker process serves the stored snapshot, so all of them answer
alike; a worker skips its run when another stored a fresh snapshot less than an interval ago.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import msgspec
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from cloud.analytics.anomalies import HourValues, Latest, latest_from_cells, rank_latest
from cloud.analytics.clusters import (
    DEFAULT_SAMPLE,
    ProfileSums,
    cluster_profiles,
    load_profile_sums,
    normalized_profiles,
)
from cloud.analytics.fleet import (
    EVENT_METRICS,
    TIMELINE_METRICS,
    Cell,
    event_report,
    fleet_standings_sql,
    load_cells,
)
from cloud.analytics.hourly import SLICE_PAIR_HOURS, load_sliced
from cloud.analytics.models import EMPTY_SNAPSHOT, FleetStat, HomeStanding, Snapshot
from cloud.analytics.rollups import DAY_S, STORED_S, newest_window_end
from cloud.db import analytics_results
from cloud.tasks import raise_if_cancelling

log = logging.getLogger(__name__)

SNAPSHOT = "snapshot"

Standings = tuple[list[FleetStat], list[HomeStanding]]


@dataclass(frozen=True)
class AnalyticsSettings:
    lookback_days: int = 14
    cluster_k: int = 0
    cluster_k_max: int = 6
    anomaly_threshold: float = 3.5
    anomaly_top: int = 50
    cluster_sample_homes: int = DEFAULT_SAMPLE
    # The hour rows are read in slices of homes of about this many (home, metric) pairs x
    # look-back hours each (`cloud.analytics.hourly.load_sliced`): the memory bound.
    slice_pair_hours: int = SLICE_PAIR_HOURS


async def compute_snapshot(
    engine: AsyncEngine, settings: AnalyticsSettings, *, now: float | None = None
) -> Snapshot:
    """Analyse the rollups of the look-back period that ends with the newest data."""
    started = time.perf_counter()
    computed_at = time.time() if now is None else now
    until = await newest_window_end(engine, now=computed_at)
    if until is None:
        return msgspec.structs.replace(EMPTY_SNAPSHOT, computed_at=computed_at)
    # Whole days, so every home's daily means cover the same days.
    until_day = math.ceil(until / DAY_S) * DAY_S
    since = until_day - settings.lookback_days * DAY_S
    # Anomalies rank complete hours only, the ones the clock has passed: the hour still
    # filling would be re-ranked, and its flag flip, with every run.
    complete = min(until_day, math.floor(computed_at / STORED_S) * STORED_S)
    profile_sums: ProfileSums = {}
    latest: list[Latest] = []
    by_hour: HourValues = {}

    async def day_and_event_rows() -> tuple[Standings, list[Cell], list[Cell]]:
        # Fleet percentiles and ranks: computed in the database from the day rows, one row per
        # home and metric back. The events read only the event metrics' rows (through the
        # unique key's index: width, metric, time).
        standings = await fleet_standings_sql(engine, since, until_day)
        days = await load_cells(
            engine, DAY_S, since, until_day, by_device_class=False, metrics=EVENT_METRICS
        )
        event_hours = await load_cells(
            engine, STORED_S, since, until_day, by_device_class=False, metrics=TIMELINE_METRICS
        )
        return standings, days, event_hours

    if engine.dialect.name == "postgresql":
        # The clusters' profiles and the anomalies' newest hours come from one read of the
        # measured metrics' hour rows, one packed row per home and metric, slice of homes by
        # slice (`cloud.analytics.hourly`), on a second connection while the first reads the
        # day and event rows: two backends (and this process's thread) work at once, not one.
        async with asyncio.TaskGroup() as group:
            other = group.create_task(day_and_event_rows())
            hours_read = group.create_task(
                load_sliced(
                    engine, since, until_day, complete, pair_hours=settings.slice_pair_hours
                )
            )
        (stats, standings), days, event_hours = other.result()
        profile_sums, latest, by_hour = hours_read.result()
    else:
        # SQLite (small fleets, no percentile_cont): one row per home, family and hour of the
        # day for the clusters; every hour row read into Python for the anomalies.
        (stats, standings), days, event_hours = await day_and_event_rows()
        profile_sums = await load_profile_sums(engine, since, until_day)
        hours = await load_cells(engine, STORED_S, since, complete, by_device_class=False)
        latest, by_hour = latest_from_cells(hours)
        del hours

    def analyse() -> Snapshot:
        # CPU work (array sums, KMeans restarts) off the event loop.
        clusters = cluster_profiles(
            normalized_profiles(profile_sums),
            k=settings.cluster_k,
            k_max=settings.cluster_k_max,
            sample=settings.cluster_sample_homes,
        )
        anomalies = rank_latest(
            latest,
            by_hour,
            clusters.assignments,
            threshold=settings.anomaly_threshold,
            top=settings.anomaly_top,
        )
        return Snapshot(
            computed_at=computed_at,
            since=float(since),
            until=float(until_day),
            duration_s=time.perf_counter() - started,
            fleet=stats,
            standings=standings,
            clusters=clusters,
            anomalies=anomalies,
            events=event_report(days, event_hours),
        )

    snapshot = await asyncio.to_thread(analyse)
    return msgspec.structs.replace(snapshot, duration_s=time.perf_counter() - started)


def _upsert(dialect: str) -> Any:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(analytics_results)
    return stmt.on_conflict_do_update(
        index_elements=["name"],
        set_={"computed_at": stmt.excluded.computed_at, "payload": stmt.excluded.payload},
    )


async def store_snapshot(engine: AsyncEngine, snapshot: Snapshot) -> None:
    payload = msgspec.json.encode(snapshot).decode()
    async with engine.begin() as conn:
        await conn.execute(
            _upsert(conn.dialect.name),
            {"name": SNAPSHOT, "computed_at": snapshot.computed_at, "payload": payload},
        )


class SnapshotCache:
    """The stored snapshot, decoded once per change (the handlers poll it every few seconds)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._snapshot = EMPTY_SNAPSHOT
        self._decoder = msgspec.json.Decoder(Snapshot)

    async def computed_at(self) -> float | None:
        t = analytics_results.c
        async with self._engine.connect() as conn:
            value = await conn.scalar(select(t.computed_at).where(t.name == SNAPSHOT))
        return None if value is None else float(value)

    async def get(self) -> Snapshot:
        stored_at = await self.computed_at()
        if stored_at is None or stored_at == self._snapshot.computed_at:
            return self._snapshot
        t = analytics_results.c
        async with self._engine.connect() as conn:
            payload = await conn.scalar(select(t.payload).where(t.name == SNAPSHOT))
        if payload is not None:
            self._snapshot = self._decoder.decode(payload)
        return self._snapshot


async def run_once(engine: AsyncEngine, settings: AnalyticsSettings) -> Snapshot:
    snapshot = await compute_snapshot(engine, settings)
    await store_snapshot(engine, snapshot)
    log.info(
        "analytics: %d homes, %d clusters, %d anomalies flagged in %.2f s",
        len(snapshot.clusters.assignments),
        snapshot.clusters.k,
        sum(a.flagged for a in snapshot.anomalies),
        snapshot.duration_s,
    )
    return snapshot


async def run_periodically(
    engine: AsyncEngine, settings: AnalyticsSettings, interval_s: float, cache: SnapshotCache
) -> None:
    """Run now, then every `interval_s`, until cancelled; a failed run is logged and retried."""
    while True:
        try:
            stored_at = await cache.computed_at()
            # Another worker ran recently enough: its snapshot serves this one too.
            if stored_at is None or time.time() - stored_at >= 0.9 * interval_s:
                await run_once(engine, settings)
        except asyncio.CancelledError:
            raise
        except Exception:  # the task's top level: log and try again next interval
            raise_if_cancelling()
            log.exception("analytics run failed; retrying in %.0f s", interval_s)
        await asyncio.sleep(interval_s)
