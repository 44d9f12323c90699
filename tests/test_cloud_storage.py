"""Storage at fleet scale: the partitioning migration with rows present, the partition upkeep and
retention, rollups under duplicate batches, and the plans of the dashboard's heavy queries."""

from __future__ import annotations

import asyncio
import importlib
import json
import math
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
from alembic import command
from sqlalchemy import Connection, func, insert, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import asyncpg as pg_asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from cloud import storage
from cloud.analytics.bandwidth import bandwidth_select, liveness_select, recent_batches_select
from cloud.analytics.rollups import (
    backfill,
    newest_window_end,
    report_since,
    rollup_metrics,
    rollup_metrics_select,
    rollup_series,
    rollup_series_select,
)
from cloud.config import RetentionConfig
from cloud.db import (
    ROLLUP_KEY,
    aggregates,
    alembic_config,
    batches,
    dispose,
    make_engine,
    rollups,
    upgrade_to_head,
)
from cloud.ingest import BatchWriter, Body, StoreOutcome
from cloud.queries import (
    Bucket,
    SeriesQuery,
    query_series,
    raw_series_select,
    series_arrays_select,
)
from schemas.batch import Batch, WindowAggregate
from tests.synthetic_rows import Fleet, fleet_statements
from tests.test_analytics_rollups import (
    assert_matches,
    direct_rollups,
    random_windows,
    table_rows,
)
from tests.test_cloud_api import T0

DAY = 86400


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}"
    return str(request.getfixturevalue("pg_url"))


def _upgrade(connection: Connection, revision: str) -> None:
    command.upgrade(alembic_config(connection=connection), revision)


def _downgrade(connection: Connection, revision: str) -> None:
    command.downgrade(alembic_config(connection=connection), revision)


async def _migrate(engine: AsyncEngine, revision: str, *, down: bool = False) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_downgrade if down else _upgrade, revision)


def _aggregate_row(batch_pk: int, gateway: str, a: WindowAggregate) -> dict[str, Any]:
    row = {c.name: getattr(a, c.name, None) for c in aggregates.columns if c.name != "id"}
    return {**row, "batch": batch_pk, "gateway": gateway}


def _rollup_rows_before_0008(hours: dict[tuple[Any, ...], Any]) -> list[dict[str, Any]]:
    """Rollup rows as a release before migration 0008 kept them (no `inv_eps_sq`: 0008 adds
    it and computes it from the stored aggregates)."""
    return [
        {
            **dict(zip(ROLLUP_KEY, key, strict=True)),
            **{k: v for k, v in state.items() if k != "inv_eps_sq"},
        }
        for key, state in hours.items()
    ]


def _batch_row(gateway: str, seq: int, n: int) -> dict[str, Any]:
    """A batch row; its id is the sequence's (1 in a fresh database)."""
    zero = dict.fromkeys(
        ("created_at", "received_at", "epsilon_spent", "suppressed_windows", "refused_noised"), 0
    )
    return {
        **zero,
        "batch_id": uuid.uuid4().hex,
        "gateway": gateway,
        "seq": seq,
        "aggregate_count": n,
        "body_bytes": 0,
        "wire_bytes": 0,
        "min_window_count": 5,
        "ingested_messages": 0,
        "ingested_bytes": 0,
        "version": 1,
    }


def _spread_over_days(windows: list[WindowAggregate], days: int) -> list[WindowAggregate]:
    """The same windows, moved onto `days` consecutive days (so they span several partitions)."""
    import msgspec

    return [
        msgspec.structs.replace(a, window_start=a.window_start + (i % days) * DAY)
        for i, a in enumerate(windows)
    ]


async def test_the_upgrade_moves_existing_rows_into_the_new_schema(url: str) -> None:
    # A database at 0006 with rows in it: aggregates over 4 days and their hour rollups, as
    # the previous release kept them.
    engine = make_engine(url)
    try:
        await _migrate(engine, "0006")
        windows = _spread_over_days(random_windows(3, 400), 4)
        stored = [("gw-1", a) for a in windows]
        hours = direct_rollups(stored, (3600,))
        async with engine.begin() as conn:
            await conn.execute(insert(batches), [_batch_row("gw-1", 1, len(windows))])
            await conn.execute(insert(aggregates), [_aggregate_row(1, "gw-1", a) for a in windows])
            await conn.execute(insert(rollups), _rollup_rows_before_0008(hours))
            before_ids = (await conn.execute(select(func.max(aggregates.c.id)))).scalar_one()
        day_query = SeriesQuery(metric=windows[0].metric, bucket=Bucket.DAY, group_by=("home",))
        raw_days = await query_series(engine, day_query)

        await upgrade_to_head(engine)

        async with engine.connect() as conn:
            assert await conn.scalar(select(func.count()).select_from(aggregates)) == len(windows)
            ids = (await conn.execute(select(aggregates.c.id))).scalars().all()
        assert sorted(ids) == list(range(1, len(windows) + 1))
        # Hour rows kept, day rows built from them: exactly what the windows give.
        assert_matches(await table_rows(engine), direct_rollups(stored))
        # The day view is read from the day rows now, and says what the windows say.
        rolled = await rollup_series(engine, day_query)
        assert [s.key for s in rolled] == [s.key for s in raw_days]
        for mine, theirs in zip(rolled, raw_days, strict=True):
            assert [p.t for p in mine.points] == [p.t for p in theirs.points]
            assert [p.sum for p in mine.points] == pytest.approx([p.sum for p in theirs.points])

        if engine.dialect.name == "postgresql":
            async with engine.connect() as conn:
                kinds = dict(
                    (
                        await conn.execute(
                            text(
                                "SELECT relname, relkind::text FROM pg_class"
                                " WHERE relname IN ('aggregates', 'rollups')"
                            )
                        )
                    ).all()
                )
                assert kinds == {"aggregates": "p", "rollups": "p"}
                # Every row is in a daily partition of its own day, none in the default.
                placed = (
                    await conn.execute(
                        text(
                            "SELECT tableoid::regclass::text, min(window_start), max(window_start)"
                            " FROM aggregates GROUP BY 1"
                        )
                    )
                ).all()
            days = {storage.partition_start("aggregates", a.window_start) for a in windows}
            assert {name for name, _, _ in placed} == {
                storage.partition_name("aggregates", d) for d in days
            }
            for name, lo, hi in placed:
                start = storage.partition_start("aggregates", lo)
                assert name == storage.partition_name("aggregates", start)
                assert hi < start + DAY

        # New batches go on with new ids (the id sequence survived the table swap).
        fresh = Batch(
            batch_id=uuid.uuid4().hex,
            gateway="gw-1",
            seq=2,
            created_at=T0,
            aggregates=random_windows(9, 20),
        )
        async with BatchWriter(engine) as writer:
            assert await writer.store(fresh, Body.of(b"fresh")) is StoreOutcome.STORED
        async with engine.connect() as conn:
            new_ids = (
                (await conn.execute(select(aggregates.c.id).where(aggregates.c.batch != 1)))
                .scalars()
                .all()
            )
        assert len(new_ids) == 20 and min(new_ids) > before_ids

        # And back: 0006's schema with the same rows (hour rollups only).
        await _migrate(engine, "0006", down=True)
        async with engine.connect() as conn:
            assert (
                await conn.scalar(select(func.count()).select_from(aggregates)) == len(windows) + 20
            )
            widths = (await conn.execute(text("SELECT DISTINCT bucket_s FROM rollups"))).all()
        assert widths == [(3600,)]
        await upgrade_to_head(engine)
        async with engine.connect() as conn:
            assert (
                await conn.scalar(select(func.count()).select_from(aggregates)) == len(windows) + 20
            )
    finally:
        await engine.dispose()


async def _store_windows(engine: AsyncEngine, windows: list[WindowAggregate]) -> None:
    batch = Batch(
        batch_id=uuid.uuid4().hex, gateway="gw-1", seq=1, created_at=T0, aggregates=windows
    )
    async with BatchWriter(engine) as writer:
        assert await writer.store(batch, Body.of(b"x")) is StoreOutcome.STORED


async def _kept_starts(engine: AsyncEngine) -> tuple[list[float], list[float]]:
    async with engine.connect() as conn:
        kept = (await conn.execute(select(aggregates.c.window_start))).scalars().all()
        kept_rollups = (await conn.execute(select(rollups.c.bucket_start))).scalars().all()
    return sorted(kept), sorted(kept_rollups)


async def test_retention_keeps_the_same_rows_on_both_databases(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small chunks on SQLite, so the chunked delete loops several times.
    monkeypatch.setattr(storage, "SQLITE_DELETE_CHUNK", 7)
    engine = make_engine(url)
    try:
        await upgrade_to_head(engine)
        now = T0 + 40 * DAY + 3600
        # Windows on 20 days spread over 40 days before `now`.
        windows = _spread_over_days(random_windows(5, 200), 20)
        windows = [
            msgspec.structs.replace(a, window_start=a.window_start + 20 * DAY * (i % 2))
            for i, a in enumerate(windows)
        ]
        await _store_windows(engine, windows)
        settings = RetentionConfig(aggregates_days=10, rollups_days=21)
        report = await storage.maintain(engine, settings, now=now)
        kept, kept_rollups = await _kept_starts(engine)
        cut = storage.retention_cutoff("aggregates", now, 10)
        cut_rollups = storage.retention_cutoff("rollups", now, 21)
        assert cut % DAY == 0 and cut_rollups % (7 * DAY) == 0
        assert kept == sorted(a.window_start for a in windows if a.window_start >= cut)
        assert kept and len(kept) < len(windows)
        assert kept_rollups and min(kept_rollups) >= cut_rollups
        expected_rollups = direct_rollups([("gw-1", a) for a in windows])
        assert kept_rollups == sorted(k[2] for k in expected_rollups if k[2] >= cut_rollups)
        if engine.dialect.name == "sqlite":
            assert report.deleted_rows == len(windows) - len(kept) + (
                len(expected_rollups) - len(kept_rollups)
            )
    finally:
        await engine.dispose()


async def _partitions(engine: AsyncEngine, table: str) -> dict[str, int]:
    async with engine.connect() as conn:
        return await conn.run_sync(storage.partitions, table)


@pytest.mark.postgres
async def test_upkeep_creates_partitions_ahead_sweeps_the_default_and_drops_expired(
    pg_url: str,
) -> None:
    engine = make_engine(pg_url)
    try:
        await upgrade_to_head(engine)
        # A clock far from the real one: the migration's partitions (around the real now) do
        # not cover it, so windows of these days land in the default partition first.
        now = T0 + 30 * DAY + 600
        days = [T0 + d * DAY for d in (0, 5, 25, 29)]
        windows = [
            WindowAggregate(
                window_start=day + 60 * i,
                window_s=60,
                home=f"h-{i:020d}",
                room_class="kitchen",
                device_class="thermostat",
                metric="temperature",
                unit="C",
                policy="aggregate",
                count=6.0,
                sum=126.0,
                mean=21.0,
            )
            for day in days
            for i in range(10)
        ]
        await _store_windows(engine, windows)
        async with engine.connect() as conn:
            waiting = await conn.scalar(text("SELECT count(*) FROM aggregates_default"))
        assert waiting == len(windows)

        # No retention: every day with rows gets its partition, the rows move there, and the
        # days from yesterday to a week ahead exist.
        report = await storage.maintain(engine, RetentionConfig(partitions_ahead_days=7), now=now)
        assert report.moved_rows >= len(windows)  # rollup rows moved too
        async with engine.connect() as conn:
            assert await conn.scalar(text("SELECT count(*) FROM aggregates_default")) == 0
            assert await conn.scalar(text("SELECT count(*) FROM rollups_default")) == 0
            assert await conn.scalar(select(func.count()).select_from(aggregates)) == len(windows)
        starts = set((await _partitions(engine, "aggregates")).values())
        for day in days:
            assert int(day) in starts
        for ahead in range(-1, 8):
            assert storage.partition_start("aggregates", now + ahead * DAY) in starts
        # A second run has nothing to do.
        again = await storage.maintain(engine, RetentionConfig(), now=now)
        assert again.created == [] and again.dropped == [] and again.moved_rows == 0

        # Ten days' retention: the partitions of days 0 and 5 are dropped whole (not emptied),
        # the others stay with their rows.
        report = await storage.maintain(
            engine, RetentionConfig(aggregates_days=10, rollups_days=10), now=now
        )
        for day in days[:2]:
            assert storage.partition_name("aggregates", int(day)) in report.dropped
        left = await _partitions(engine, "aggregates")
        assert min(left.values()) >= storage.retention_cutoff("aggregates", now, 10)
        kept, kept_rollups = await _kept_starts(engine)
        assert kept == sorted(a.window_start for a in windows if a.window_start >= days[2])
        assert min(kept_rollups) >= storage.retention_cutoff("rollups", now, 10)
        assert report.deleted_rows == 0  # nothing was in the default partition

        # A late window older than the retention lands in the default and is deleted there;
        # one within it gets its partition back.
        late = [
            WindowAggregate(**{**msgspec_dict(windows[0]), "window_start": T0 + 60.0}),
            WindowAggregate(**{**msgspec_dict(windows[0]), "window_start": days[2] + DAY}),
        ]
        await _store_windows(engine, late)
        report = await storage.maintain(
            engine, RetentionConfig(aggregates_days=10, rollups_days=10), now=now
        )
        assert report.deleted_rows == 1 + 2  # the aggregate, its hour and day rollup rows
        kept, _ = await _kept_starts(engine)
        assert T0 + 60.0 not in kept and days[2] + DAY in kept
    finally:
        await engine.dispose()


def msgspec_dict(a: WindowAggregate) -> dict[str, Any]:
    import msgspec

    return msgspec.structs.asdict(a)


@pytest.mark.postgres
async def test_only_one_process_runs_the_upkeep_at_a_time(pg_url: str) -> None:
    engines = [make_engine(pg_url) for _ in range(2)]
    try:
        await upgrade_to_head(engines[0])
        now = T0 + 100 * DAY
        reports = await asyncio.gather(
            *(storage.maintain(e, RetentionConfig(), now=now) for e in engines)
        )
        created = [name for r in reports for name in r.created]
        # Both ran, but each partition was created once (the loser found the lock taken, or
        # found the partitions there).
        assert len(created) == len(set(created)) and created
    finally:
        for engine in engines:
            await engine.dispose()


async def test_a_duplicate_batch_never_doubles_a_rollup(url: str) -> None:
    engine = make_engine(url)
    try:
        await upgrade_to_head(engine)
        windows = _spread_over_days(random_windows(11, 300), 3)
        first = Batch(
            batch_id=uuid.uuid4().hex, gateway="gw-1", seq=1, created_at=T0, aggregates=windows
        )
        other = Batch(
            batch_id=uuid.uuid4().hex,
            gateway="gw-1",
            seq=2,
            created_at=T0,
            aggregates=windows[:50],  # the same keys again, as a new batch: it must add
        )
        body = Body.of(b"first")
        async with BatchWriter(engine) as writer:
            assert await writer.store(first, body) is StoreOutcome.STORED
            # Resent one after the other, then many at once alongside a new batch (on
            # PostgreSQL these share group transactions).
            assert await writer.store(first, body) is StoreOutcome.DUPLICATE
            outcomes = await asyncio.gather(
                *(writer.store(first, body) for _ in range(5)),
                writer.store(other, Body.of(b"other")),
            )
        assert outcomes == [StoreOutcome.DUPLICATE] * 5 + [StoreOutcome.STORED]
        stored = [("gw-1", a) for a in windows + windows[:50]]
        assert_matches(await table_rows(engine), direct_rollups(stored))
        async with engine.connect() as conn:
            assert await conn.scalar(select(func.count()).select_from(aggregates)) == 350
    finally:
        await engine.dispose()


# --- query plans -----------------------------------------------------------------------------

PLAN_FLEET = Fleet(t0=T0, homes=40, gateways=4, windows=3 * 144, window_s=600)


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += _nodes(child)
    return found


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


async def _explain(engine: AsyncEngine, stmt: Any, *, generic: bool) -> dict[str, Any]:
    async with engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        if not generic:
            # The plan for these very values: partitions pruned while planning.
            sql = stmt.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
            out = await raw.fetchval(f"EXPLAIN (FORMAT JSON) {sql}")
        else:
            # The plan a prepared statement (asyncpg prepares every query) may switch to after
            # its fifth run: one plan for any values, partitions pruned when it starts.
            compiled = stmt.compile(dialect=pg_asyncpg.dialect())
            args = ", ".join(_literal(compiled.params[n]) for n in compiled.positiontup or [])
            await raw.execute(f"PREPARE dashboard_query AS {compiled}")
            await raw.execute("SET plan_cache_mode = force_generic_plan")
            call = f"dashboard_query({args})" if args else "dashboard_query"
            out = await raw.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE {call}")
            await raw.execute("DEALLOCATE dashboard_query")
            await raw.execute("RESET plan_cache_mode")
    document = json.loads(out) if isinstance(out, str) else out
    return dict(document[0]["Plan"])


def _scanned(plan: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (node["Node Type"], node["Relation Name"])
        for node in _nodes(plan)
        if "Relation Name" in node
    ]


@pytest.mark.postgres
async def test_the_dashboard_queries_read_indexes_of_the_partitions_in_range(
    pg_url: str,
) -> None:
    engine = make_engine(pg_url)
    try:
        await upgrade_to_head(engine)
        fleet = PLAN_FLEET
        first, last = fleet.t0, fleet.t0 + fleet.windows * fleet.window_s
        # The partitions a live fleet has: the upkeep's, at the end of the data, and the days
        # before it (created the days before by the same upkeep).
        await storage.maintain(engine, RetentionConfig(), now=last)
        async with engine.begin() as conn:
            await conn.run_sync(storage.ensure_partitions, "aggregates", first, last)
            await conn.run_sync(storage.ensure_partitions, "rollups", first, last)
            for sql in fleet_statements(fleet):
                await conn.exec_driver_sql(sql)
            # A history of uploads before the fleet's (one row each, as a fleet piles up: ~170
            # a second at 100,000 homes, issue 16): what the overview's upload rate must not scan.
            await conn.exec_driver_sql(
                "INSERT INTO batches (batch_id, gateway, seq, created_at, received_at,"
                " aggregate_count, body_bytes, wire_bytes, epsilon_spent, suppressed_windows,"
                " refused_noised, min_window_count, ingested_messages, ingested_bytes, version)"
                f" SELECT md5('history-' || i), 'gw-history', i, {first} - i, {first} - i,"
                " 0, 0, 0, 0, 0, 0, 5, 0, 0, 1 FROM generate_series(1, 20000) i"
            )
        await backfill(engine)
        async with engine.begin() as conn:
            await conn.exec_driver_sql("ANALYZE")
        end = await newest_window_end(engine, now=last + 1)
        assert end == last
        day_end = math.ceil(end / DAY) * DAY
        hour_24h = SeriesQuery("temperature", Bucket.HOUR, ("home",), {}, end - DAY, end)
        raw_1h = SeriesQuery("humidity", Bucket.RAW, ("home",), {}, end - 3600, end)
        queries = {
            "series_hour_24h": rollup_series_select(
                SeriesQuery("temperature", Bucket.HOUR, ("home",), {}, end - DAY, end)
            ),
            "series_day_7d_fleet": rollup_series_select(
                SeriesQuery("power", Bucket.DAY, (), {}, day_end - 7 * DAY, day_end)
            ),
            "series_day_all": rollup_series_select(SeriesQuery("co2", Bucket.DAY, ("home",))),
            "series_raw_6h_one_home": raw_series_select(
                SeriesQuery(
                    "temperature",
                    Bucket.RAW,
                    ("home",),
                    {"home": fleet.home(1)},
                    end - 6 * 3600,
                    end,
                )
            ),
            "series_raw_1h_fleet": raw_series_select(
                SeriesQuery("humidity", Bucket.RAW, ("home",), {}, end - 3600, end)
            ),
            "rollups_report": rollup_metrics_select(report_since(end, 14)),
            # What PostgreSQL runs for the series: the same statements, points as arrays.
            "series_hour_24h_arrays": series_arrays_select(
                hour_24h, rollup_series_select(hour_24h)
            ),
            "series_raw_1h_fleet_arrays": series_arrays_select(raw_1h, raw_series_select(raw_1h)),
            # The overview and the bandwidth report: one row per gateway (gateway_stats,
            # which a seq scan reads whole by design), the last minute of batches.
            "overview_rate": recent_batches_select(last),
            "overview_gateways": liveness_select(),
            "bandwidth": bandwidth_select(),
        }
        # The partitions each ranged query may touch: those overlapping its range.
        in_range = {
            "series_hour_24h": ("rollups", end - DAY, end),
            "series_day_7d_fleet": ("rollups", day_end - 7 * DAY, day_end),
            "series_raw_6h_one_home": ("aggregates", end - 6 * 3600, end),
            "series_raw_1h_fleet": ("aggregates", end - 3600, end),
            "series_hour_24h_arrays": ("rollups", end - DAY, end),
            "series_raw_1h_fleet_arrays": ("aggregates", end - 3600, end),
        }
        async with engine.connect() as conn:
            empty = {
                name
                for (name,) in (
                    await conn.execute(
                        text(
                            "SELECT relname FROM pg_class WHERE relkind = 'r'"
                            " AND relname ~ '^(aggregates|rollups)_' AND relpages = 0"
                        )
                    )
                ).all()
            }
        all_aggregates = await _partitions(engine, "aggregates")
        assert len([s for s in all_aggregates.values() if first <= s < last]) == 3
        for name, stmt in queries.items():
            for generic in (False, True):
                plan = await _explain(engine, stmt, generic=generic)
                scans = _scanned(plan)
                assert scans, (name, plan)
                # An empty partition (one ahead of the clock, the default the upkeep keeps
                # empty) may be scanned: that reads nothing. One with rows never is.
                seq = [
                    rel
                    for node, rel in scans
                    if node == "Seq Scan" and rel not in empty and rel != "gateway_stats"
                ]
                assert seq == [], (name, generic, scans)
                if name not in in_range:
                    continue
                table, lo, hi = in_range[name]
                allowed = {
                    p
                    for p, s in (await _partitions(engine, table)).items()
                    if s < hi and s + storage.PARTITIONED[table][1] > lo
                }
                touched = {rel for _, rel in scans}
                if generic:
                    # Pruned when the statement runs: the plan lists every partition and says
                    # how many it removed; what is left is the partitions in range.
                    removed = sum(n.get("Subplans Removed", 0) for n in _nodes(plan))
                    total = len(await _partitions(engine, table)) + 1  # and the default
                    assert removed >= total - len(allowed) - 1, (name, removed, scans)
                else:
                    assert touched <= allowed | {storage.default_partition(table)}, (
                        name,
                        touched,
                        allowed,
                    )
                    assert touched & allowed, (name, touched)
        async with engine.connect() as conn:
            for table in storage.PARTITIONED:
                default = storage.default_partition(table)
                assert await conn.scalar(text(f"SELECT count(*) FROM {default}")) == 0
        # The queries answer too (a plan of an empty result would prove nothing).
        metrics = await rollup_metrics(engine)
        assert {m.metric for m in metrics} >= {"temperature", "co2", "power"}
        assert all(m.homes == fleet.homes for m in metrics)
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_the_upgrade_partitions_only_recent_days_with_rows(pg_url: str) -> None:
    """review2 #3: history spanning over two years and one stray 1970 window (a gateway without
    a clock before NTP) must not make a partition per day in the migration's one transaction;
    only the recent days holding rows get theirs, the rest waits in the default partition,
    which the upkeep then sorts out."""
    import msgspec

    migration = importlib.import_module(
        "cloud.migrations.versions.0007_time_partitions_day_rollups"
    )
    engine = make_engine(pg_url)
    try:
        await _migrate(engine, "0006")
        now = time.time()
        today = storage.partition_start("aggregates", now)
        template = random_windows(5, 1)[0]
        # 1970, then one window every 9 days over 800 days, then one each of the last 3 days
        starts = [60.0] + [today - d * DAY + 120 for d in (*range(800, 3, -9), 2, 1, 0)]
        windows = [
            msgspec.structs.replace(template, window_start=t, home=f"h-{i:020d}")
            for i, t in enumerate(starts)
        ]
        stored = [("gw-1", a) for a in windows]
        async with engine.begin() as conn:
            await conn.execute(insert(batches), [_batch_row("gw-1", 1, len(windows))])
            await conn.execute(insert(aggregates), [_aggregate_row(1, "gw-1", a) for a in windows])
            hours = direct_rollups(stored, (3600,))
            await conn.execute(insert(rollups), _rollup_rows_before_0008(hours))

        await upgrade_to_head(engine)

        recent = today - migration.RECENT_DAYS * DAY
        have = await _partitions(engine, "aggregates")
        # The days around now and the recent days with rows; nothing for 1970 or the gaps.
        assert len(have) <= migration.RECENT_DAYS + migration.AHEAD_DAYS + 3
        assert min(have.values()) >= recent
        assert len(await _partitions(engine, "rollups")) <= migration.RECENT_DAYS // 7 + 4
        async with engine.connect() as conn:
            assert await conn.scalar(select(func.count()).select_from(aggregates)) == len(starts)
            waiting = (
                (await conn.execute(text("SELECT window_start FROM aggregates_default")))
                .scalars()
                .all()
            )
        assert sorted(waiting) == [t for t in starts if t < recent]
        assert_matches(await table_rows(engine), direct_rollups(stored))

        # The upkeep then expires what is past the retention and partitions the rest.
        settings = RetentionConfig(aggregates_days=400, rollups_days=400)
        await storage.maintain_postgres(engine, settings, now=now)
        cutoff = storage.retention_cutoff("aggregates", now, 400)
        async with engine.connect() as conn:
            left = await conn.scalar(text("SELECT count(*) FROM aggregates_default"))
            kept = (await conn.execute(select(aggregates.c.window_start))).scalars().all()
        assert left == 0
        assert sorted(kept) == [t for t in starts if t >= cutoff]
    finally:
        await engine.dispose()


async def test_a_cancelled_upkeep_stops_even_when_its_clean_up_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A unit test of the task's loop (the upkeep itself is faked): cancelled in the middle of a
    # run whose clean-up then raises (an unlock on a connection the cancel broke), the task must
    # end, not log the error and sleep until its next run while shutdown awaits it.
    started = asyncio.Event()

    async def run_that_breaks_on_cancel(*_: Any, **__: Any) -> storage.UpkeepReport:
        started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            raise RuntimeError("connection is closed")  # what the unlock raised
        return storage.UpkeepReport()

    monkeypatch.setattr(storage, "maintain", run_that_breaks_on_cancel)
    task = asyncio.create_task(storage.run_periodically(None, RetentionConfig(interval_s=3600)))  # type: ignore[arg-type]
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert task in done and task.cancelled()


async def test_a_batch_routed_to_the_default_while_its_partition_is_attached_is_stored(
    pg_url: str,
) -> None:
    """Storage upkeep attaches the partition of a range while a batch's COPY routes rows of that
    range to the DEFAULT partition: PostgreSQL refuses them once the ATTACH commits (the
    default's constraint changed under the COPY). The writer stores the batch again, into the
    new partition, instead of answering 500."""
    engine = make_engine(pg_url)
    try:
        await upgrade_to_head(engine)
        start = storage.partition_start("aggregates", T0 - 30 * 86400.0)  # no partition yet
        windows = [
            msgspec.structs.replace(w, window_start=start + 3600.0 * i)
            for i, w in enumerate(random_windows(5, 5))
        ]
        attach = await engine.connect()
        upkeep = await attach.begin()
        await attach.run_sync(storage.create_partition, "aggregates", start)  # not committed
        async with BatchWriter(engine) as writer:
            batch = Batch(
                batch_id=uuid.uuid4().hex, gateway="gw-1", seq=1, created_at=T0, aggregates=windows
            )
            stored = asyncio.create_task(writer.store(batch, Body.of(b"x")))
            await asyncio.sleep(1.0)  # the COPY routed its rows and waits for the default's lock
            assert not stored.done()
            await upkeep.commit()
            await attach.close()
            assert await stored is StoreOutcome.STORED
        async with engine.connect() as conn:
            name = storage.partition_name("aggregates", start)
            n = await conn.scalar(text(f"SELECT count(*) FROM {name}"))
        assert n == len(windows)
    finally:
        await dispose(engine)
