"""Analytics that grow with homes: the SQL fleet standings, daily profiles and (PostgreSQL) newest
hours with their history statistics equal the in-memory ones (ties included), clustering fitted
on a bounded sample still finds the planted groups
and assigns every home, and the per-group peer statistics of large groups rank like the exact
leave-one-out ones."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest
from sqlalchemy import insert

from cloud.analytics.anomalies import (
    PEER_EXACT,
    HourValues,
    Latest,
    latest_from_cells,
    load_latest,
    rank_anomalies,
    rank_latest,
)
from cloud.analytics.clusters import (
    cluster_homes,
    daily_profiles,
    fit_sample,
    load_profile_sums,
    normalized_profiles,
)
from cloud.analytics.fleet import Cell, fleet_standings, fleet_standings_sql, load_cells
from cloud.analytics.hourly import _unpack, latest_hours, load_hours, load_sliced, profile_sums
from cloud.analytics.rollups import DAY_S, STORED_S
from cloud.db import make_engine, rollups, upgrade_to_head
from tests.test_cloud_api import T0, db_url, home_id

__all__ = ["db_url"]  # the fixture, imported for pytest

SERIES = (("temperature", "thermostat", "°C", 21.0), ("power", "plug", "W", 300.0))
STALE = (4, 11, 17, 23, 29)  # homes without their last hour in the newest-hours test


def _rollup_rows(homes: int, days: int, seed: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    rows = []
    for h in range(homes):
        home = home_id(f"scale-{h}")
        for metric, device_class, unit, level in SERIES:
            # A few homes share one exact level: ties in the ranks.
            base = level if h % 7 == 0 else level + rng.gauss(0, level / 10)
            for hour in range(days * 24):
                # Two rooms per series: the standings pool them.
                for room in ("kitchen", "living"):
                    count = float(rng.randint(6, 60))
                    mean = base if h % 7 == 0 else base + rng.gauss(0, 1)
                    rows.append(
                        {
                            "bucket_s": STORED_S,
                            "metric": metric,
                            "bucket_start": T0 + 3600 * hour,
                            "gateway": f"gw-{h % 3}",
                            "home": home,
                            "room_class": room,
                            "device_class": device_class,
                            "unit": unit,
                            "policy": "aggregate",
                            "count": count,
                            "sum": count * mean,
                            "weighted": count * mean,
                            "sumsq": count * mean * mean,
                            "without_std": 0,
                            "min": mean,
                            "max": mean,
                            "p50": None,
                            "p95": None,
                            "windows": 1,
                        }
                    )
    return rows


def _with_day_rows(hours: list[dict[str, object]]) -> list[dict[str, object]]:
    """The hour rows and the day rows ingest keeps next to them (the sums of a day's hours)."""
    days: dict[tuple[object, ...], dict[str, object]] = {}
    for row in hours:
        day_start = float(row["bucket_start"]) // DAY_S * DAY_S  # type: ignore[arg-type]
        key = (row["metric"], day_start, row["gateway"], row["home"], row["room_class"])
        day = days.get(key)
        if day is None:
            days[key] = {**row, "bucket_s": DAY_S, "bucket_start": day_start}
            continue
        for name in ("count", "sum", "weighted", "sumsq", "windows"):
            day[name] = day[name] + row[name]  # type: ignore[operator]
        day["min"] = min(day["min"], row["min"])  # type: ignore[type-var]
        day["max"] = max(day["max"], row["max"])  # type: ignore[type-var]
    return hours + list(days.values())


async def test_sql_fleet_standings_equal_the_in_memory_ones(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        await upgrade_to_head(engine)
        async with engine.begin() as conn:
            await conn.execute(
                insert(rollups), _with_day_rows(_rollup_rows(homes=40, days=2, seed=4))
            )
        since, until = T0, T0 + 2 * DAY_S
        # From the day rows; the reference groups the hour rows into days.
        stats, standings = await fleet_standings_sql(engine, since, until)
        days = await load_cells(engine, DAY_S, since, until, by_device_class=True)
        want_stats, want_standings = fleet_standings(days)
    finally:
        await engine.dispose()
    assert len(stats) == len(SERIES) and len(standings) == 40 * len(SERIES)
    for got, want in zip(stats, want_stats, strict=True):
        assert (got.metric, got.device_class, got.unit, got.homes) == (
            want.metric,
            want.device_class,
            want.unit,
            want.homes,
        )
        for name in ("p10", "p50", "p90", "mean"):
            assert getattr(got, name) == pytest.approx(getattr(want, name), rel=1e-9)
    got_by = {(s.home, s.metric): s for s in standings}
    for want in want_standings:
        got = got_by[(want.home, want.metric)]
        assert got.value == pytest.approx(want.value, rel=1e-9)
        assert got.days == want.days == 2
        assert got.rank_pct == pytest.approx(want.rank_pct, abs=1e-9)
    # The tied homes (every 7th) share one rank, counted half.
    tied = {got_by[(home_id(f"scale-{h}"), "power")].rank_pct for h in range(0, 40, 7)}
    assert len(tied) == 1


def _profile_cells(homes: int, seed: int) -> tuple[list[Cell], dict[str, int]]:
    """Hourly power of `homes` homes in three planted groups peaking at 7, 13 and 20 h."""
    rng = np.random.default_rng(seed)
    cells, group_of = [], {}
    for h in range(homes):
        home = home_id(f"profile-{h}")
        group = h % 3
        group_of[home] = group
        peak = (7, 13, 20)[group]
        for hour in range(48):
            level = 100.0 + 400.0 * np.exp(-(((hour % 24) - peak) ** 2) / 4.0)
            mean = float(level * (1 + rng.normal(0, 0.05)))
            cells.append(Cell(home, "power", "plug", "W", T0 + 3600 * hour, 10.0, 0.0, 10 * mean))
    return cells, group_of


def test_clusters_fitted_on_a_sample_find_the_groups_and_assign_every_home() -> None:
    cells, group_of = _profile_cells(homes=150, seed=2)
    report = cluster_homes(cells, k=0, k_max=5, sample=30)
    assert report.k == 3
    assert set(report.assignments) == set(group_of)  # every home, not only the sample's
    for cluster in report.clusters:
        assert len({group_of[h] for h in cluster.homes}) == 1
    assert sum(c.size for c in report.clusters) == 150


def test_the_fit_sample_is_bounded_and_the_same_each_run() -> None:
    homes = sorted(home_id(f"s-{i}") for i in range(1000))
    chosen = fit_sample(homes, 100)
    assert len(chosen) == 100 and chosen == fit_sample(list(homes), 100)
    # The homes of the smallest digests: a home's membership depends on its name, not on
    # where it sorts, so the sample is spread over the fleet.
    smallest = sorted(homes, key=lambda h: hashlib.sha256(h.encode()).digest())[:100]
    assert {homes[i] for i in chosen} == set(smallest)
    assert fit_sample(homes[:50], 100) == list(range(50))


def test_large_peer_groups_rank_like_the_exact_leave_one_out() -> None:
    rng = np.random.default_rng(5)
    n = PEER_EXACT + 100
    cells = []
    for h in range(n):
        home = home_id(f"peer-{h}")
        for hour in range(12):
            value = 20.0 + rng.normal(0, 0.5)
            if h == 17 and hour == 11:
                value = 30.0  # the planted jump, in the newest hour
            cells.append(
                Cell(home, "temperature", "thermostat", "°C", T0 + 3600 * hour, 1.0, 0, value)
            )
    found = rank_anomalies(cells, {}, threshold=3.5, top=5)
    assert found[0].home == home_id("peer-17") and found[0].flagged
    assert found[0].peers == "fleet" and found[0].z_peers is not None and found[0].z_peers > 10
    assert not any(a.flagged for a in found[1:])


async def test_database_side_profiles_and_latest_hours_equal_the_in_memory_ones(
    db_url: str,
) -> None:
    engine = make_engine(db_url)
    try:
        await upgrade_to_head(engine)
        # A few homes did not report their last hour: their newest hour is another one.
        stale = {home_id(f"scale-{h}") for h in STALE}
        rows = [
            row
            for row in _rollup_rows(homes=30, days=1, seed=9)
            if not (row["home"] in stale and row["bucket_start"] == T0 + DAY_S - 3600)
        ]
        # Stored out of time order: the one-pass read sorts each pair's hours itself.
        rows = _with_day_rows(rows)
        random.Random(3).shuffle(rows)
        async with engine.begin() as conn:
            await conn.execute(insert(rollups), rows)
        since, until = T0, T0 + DAY_S
        hours = await load_cells(engine, STORED_S, since, until, by_device_class=False)
        sums = await load_profile_sums(engine, since, until)
        postgres = engine.dialect.name == "postgresql"
        latest_sql = await load_latest(engine, since, until) if postgres else None
        # PostgreSQL's run reads the hour rows once (cloud.analytics.hourly) for both.
        packed = await load_hours(engine, since, until) if postgres else None
        # ... streamed in slices (100 pair-hours: 4 pairs of 24 hours, 15 slices of 60).
        sliced = (
            await load_sliced(engine, since, until, until, pair_hours=100) if postgres else None
        )
    finally:
        await engine.dispose()
    want = daily_profiles(hours)
    got = normalized_profiles(sums)
    assert set(got) == set(want) and len(got) == 30
    for home, families in want.items():
        assert set(got[home]) == set(families) == {"power"}
        np.testing.assert_allclose(got[home]["power"], families["power"], rtol=1e-12)
    if latest_sql is None or packed is None or sliced is None:
        return  # SQLite takes latest_from_cells itself (no percentile_cont)
    one_pass = normalized_profiles(profile_sums(packed))
    assert set(one_pass) == set(want)
    sliced_sums, *sliced_latest = sliced
    in_slices = normalized_profiles(sliced_sums)
    assert set(in_slices) == set(want)
    for home, families in want.items():
        np.testing.assert_allclose(one_pass[home]["power"], families["power"], rtol=1e-12)
        np.testing.assert_allclose(in_slices[home]["power"], families["power"], rtol=1e-12)
    want_latest, want_by_hour = latest_from_cells(hours)
    assert {w.t for w in want_latest} == {until - 3600, until - 7200}  # the stale homes' too
    for latest, by_hour in (latest_sql, latest_hours(packed, until), tuple(sliced_latest)):
        _same_latest(latest, by_hour, want_latest, want_by_hour, hours)
    # Hours at or after `until` are not the newest: those before are.
    early, _ = latest_hours(packed, until - 3600)
    assert {x.t for x in early} == {until - 7200}


def _same_latest(
    latest: list[Latest],
    by_hour: HourValues,
    want_latest: list[Latest],
    want_by_hour: HourValues,
    hours: list[Cell],
) -> None:
    # Only the hours some home's newest value lies in: the peers the ranking compares with.
    assert by_hour.keys() == {(w.metric, w.t) for w in want_latest}
    for key, values in by_hour.items():
        assert values == pytest.approx(want_by_hour[key], rel=1e-12)
    got_by = {(x.home, x.metric): x for x in latest}
    assert len(got_by) == len(want_latest) == 30 * len(SERIES)
    for w in want_latest:
        g = got_by[(w.home, w.metric)]
        assert (g.t, g.history) == (w.t, w.history) and g.value == pytest.approx(w.value)
        for name in ("history_median", "history_mad", "history_mean_ad"):
            assert getattr(g, name) == pytest.approx(getattr(w, name), rel=1e-9, abs=1e-12)
    ranked = rank_latest(latest, by_hour, {}, threshold=3.5, top=20)
    assert [(a.home, a.metric) for a in ranked] == [
        (a.home, a.metric) for a in rank_anomalies(hours, {}, threshold=3.5, top=20)
    ]


def test_the_one_pass_read_of_no_hour_rows_gives_no_profiles_nor_newest_hours() -> None:
    # A look-back period with event rows only: nothing measured to profile or rank.
    empty = _unpack([])
    assert latest_hours(empty, T0) == ([], {}) and dict(profile_sums(empty)) == {}
