"""Rollups: what ingest folds in equals a direct computation from the windows, on SQLite and
PostgreSQL, under concurrent ingest from two engines (as two worker processes would), and the
bulk backfill gives the same rows as the incremental path."""

from __future__ import annotations

import asyncio
import math
import random
import sqlite3
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgspec
import pytest
from alembic import command
from sqlalchemy import delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from cloud.analytics.rollups import backfill, rollup_series
from cloud.db import (
    ROLLUP_KEY,
    aggregates,
    alembic_config,
    make_engine,
    rollups,
    upgrade_to_head,
)
from cloud.db import batches as batches_table
from cloud.ingest import BatchConflict, BatchWriter, Body, StoreOutcome
from cloud.queries import Bucket, SeriesQuery, query_series
from schemas.batch import Batch, WindowAggregate, encode_batch
from tests.test_cloud_api import T0, home_id, make_aggregate

SIZE = Body(wire=100, decoded=1000, sha256="0" * 64)


def random_windows(seed: int, n: int) -> list[WindowAggregate]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        count = rng.randint(1, 40)
        mean = rng.uniform(-5, 30)
        noised = rng.random() < 0.1
        out.append(
            make_aggregate(
                T0 + rng.randrange(0, 3 * 86400, 300),
                window_s=300,
                home=rng.choice([home_id("a"), home_id("b"), home_id("c")]),
                room_class=rng.choice(["kitchen", "bedroom"]),
                metric=rng.choice(["temperature", "co2"]),
                unit="x",
                policy="noised" if noised else "aggregate",
                count=count,
                sum=count * mean,
                mean=mean,
                min=None if noised else mean - rng.uniform(0, 3),
                max=None if noised else mean + rng.uniform(0, 3),
                std=None if noised or rng.random() < 0.1 else rng.uniform(0, 2),
                p50=None if noised else mean,
                p95=None if noised else mean + 1,
                epsilon=rng.choice([0.5, 1.0, 2.0]) if noised else None,
            )
        )
    return out


def direct_rollups(
    gateway_windows: list[tuple[str, WindowAggregate]], widths: tuple[int, ...] = (3600, 86400)
) -> dict[tuple[Any, ...], Any]:
    """What the rollup table must hold, computed from the windows in Python (hour and day rows:
    0004 dropped the day rows, 0007 keeps them again)."""
    groups: dict[tuple[Any, ...], list[WindowAggregate]] = defaultdict(list)
    for gateway, a in gateway_windows:
        for width in widths:
            start = float(math.floor(a.window_start / width) * width)
            key = (width, a.metric, start, gateway, a.home, a.room_class, a.device_class)
            groups[(*key, a.unit, a.policy)].append(a)
    expected = {}
    for key, ws in groups.items():
        with_std = [a for a in ws if a.std is not None]
        mins = [a.min for a in ws if a.min is not None]
        maxs = [a.max for a in ws if a.max is not None]
        expected[key] = {
            "count": sum(a.count for a in ws),
            "sum": sum(a.sum for a in ws),
            "weighted": sum(a.count * a.mean for a in ws),
            "sumsq": sum(a.count * (a.std**2 + a.mean**2) for a in with_std if a.std is not None),
            "without_std": len(ws) - len(with_std),
            "min": min(mins) if mins else None,
            "max": max(maxs) if maxs else None,
            "windows": len(ws),
            "inv_eps_sq": sum(1 / a.epsilon**2 for a in ws if a.epsilon is not None),
        }
    return expected


async def table_rows(engine: AsyncEngine) -> dict[tuple[Any, ...], dict[str, Any]]:
    async with engine.connect() as conn:
        # Every column the table has at its revision (a downgrade drops some of today's).
        rows = (await conn.execute(text("SELECT * FROM rollups"))).mappings().all()
    # Ids differ between the incremental and the bulk path; everything else must not.
    return {
        tuple(r[k] for k in ROLLUP_KEY): {k: v for k, v in r.items() if k != "id"} for r in rows
    }


def assert_matches(got: dict[tuple[Any, ...], Any], expected: dict[tuple[Any, ...], Any]) -> None:
    assert got.keys() == expected.keys()
    for key, want in expected.items():
        for stat, value in want.items():
            if value is None or isinstance(value, str):
                assert got[key][stat] == value, (key, stat)
            else:
                assert got[key][stat] == pytest.approx(value, rel=1e-9, abs=1e-9), (key, stat)


def batch_of(gateway: str, seq: int, windows: list[WindowAggregate]) -> Batch:
    return Batch(
        batch_id=uuid.uuid4().hex, gateway=gateway, seq=seq, created_at=T0, aggregates=windows
    )


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}"
    return str(request.getfixturevalue("pg_url"))


async def test_ingest_keeps_rollups_equal_to_a_direct_computation(url: str) -> None:
    engine = make_engine(url)
    try:
        await upgrade_to_head(engine)
        windows = random_windows(1, 600)
        stored: list[tuple[str, WindowAggregate]] = []
        async with BatchWriter(engine) as writer:
            for seq, start in enumerate(range(0, 600, 100), start=1):
                gateway = ("gw-1", "gw-2")[seq % 2]
                batch = batch_of(gateway, seq, windows[start : start + 100])
                assert await writer.store(batch, SIZE) is StoreOutcome.STORED
                stored += [(gateway, a) for a in batch.aggregates]
                # A resent batch changes nothing.
                assert await writer.store(batch, SIZE) is StoreOutcome.DUPLICATE
        incremental = await table_rows(engine)
        assert_matches(incremental, direct_rollups(stored))

        # The bulk path (INSERT ... SELECT ... ON CONFLICT) builds the same rows from scratch.
        async with engine.begin() as conn:
            await conn.execute(delete(rollups))
        assert await backfill(engine) == len(incremental)
        assert_matches(await table_rows(engine), incremental)

        # Rollup reads answer like the raw query, including filters and a range.
        for bucket in (Bucket.HOUR, Bucket.DAY):
            q = SeriesQuery(
                metric="co2",
                bucket=bucket,
                group_by=("home", "policy"),
                filters={"room_class": "kitchen"},
                start=T0 + 86400,
                end=T0 + 3 * 86400,
            )
            raw, rolled = await query_series(engine, q), await rollup_series(engine, q)
            assert [s.key for s in rolled] == [s.key for s in raw]
            for a, b in zip(raw, rolled, strict=True):
                assert [(p.t, p.windows, p.min, p.max, p.p50) for p in a.points] == [
                    (p.t, p.windows, p.min, p.max, p.p50) for p in b.points
                ]
                for pa, pb in zip(a.points, b.points, strict=True):
                    assert pb.mean == pytest.approx(pa.mean, rel=1e-9)
                    assert (pb.std is None) == (pa.std is None)
                    if pa.std is not None:
                        assert pb.std == pytest.approx(pa.std, rel=1e-6, abs=1e-9)
    finally:
        await engine.dispose()


async def test_two_workers_ingesting_the_same_keys_concurrently_lose_nothing(
    pg_url: str,
) -> None:
    # Two engines = two worker processes' pools; every batch touches the same hour rows.
    engines = [make_engine(pg_url) for _ in range(2)]
    try:
        await upgrade_to_head(engines[0])
        windows = random_windows(2, 1200)
        batches = [batch_of("gw-1", i + 1, windows[i * 30 : (i + 1) * 30]) for i in range(40)]
        async with BatchWriter(engines[0]) as first, BatchWriter(engines[1]) as second:
            writers = (first, second)
            outcomes = await asyncio.gather(
                *(writers[i % 2].store(b, SIZE) for i, b in enumerate(batches))
            )
        assert set(outcomes) == {StoreOutcome.STORED}
        stored = [("gw-1", a) for b in batches for a in b.aggregates]
        assert_matches(await table_rows(engines[0]), direct_rollups(stored))
    finally:
        for engine in engines:
            await engine.dispose()


def body_of(batch: Batch) -> Body:
    return Body.of(encode_batch(batch))


async def test_uploads_stored_together_keep_duplicates_and_conflicts_apart(pg_url: str) -> None:
    # Concurrent calls on one writer are stored in shared transactions (group commit); a resend,
    # another gateway's clashing id and an id reused for other content among them must not cost
    # the other batches anything, and only the resend is a duplicate.
    engine = make_engine(pg_url)
    try:
        await upgrade_to_head(engine)
        windows = random_windows(4, 240)
        batches = [batch_of("gw-1", i + 1, windows[i * 40 : (i + 1) * 40]) for i in range(6)]
        resend = batches[0]
        clash = Batch(
            batch_id=batches[1].batch_id, gateway="gw-2", seq=1, created_at=T0, aggregates=[]
        )
        # The same id twice in one group (the empty batches queue up together), other content.
        fresh = batch_of("gw-1", 7, [])
        reused = msgspec.structs.replace(fresh, created_at=T0 + 1)
        async with BatchWriter(engine) as writer:
            outcomes = await asyncio.gather(
                *(writer.store(b, body_of(b)) for b in [*batches, resend, clash, fresh, reused]),
                return_exceptions=True,
            )
            # An id stored by an earlier transaction, other content.
            later = msgspec.structs.replace(batches[2], created_at=T0 + 1)
            with pytest.raises(BatchConflict) as raised:
                await writer.store(later, body_of(later))
            assert raised.value.code == "content_conflict"
            assert await writer.store(batches[2], body_of(batches[2])) is StoreOutcome.DUPLICATE
        assert outcomes[:6] == [StoreOutcome.STORED] * 6
        assert outcomes[6] is StoreOutcome.DUPLICATE
        assert isinstance(outcomes[7], BatchConflict) and outcomes[7].code == "conflict"
        assert outcomes[8] is StoreOutcome.STORED
        assert isinstance(outcomes[9], BatchConflict) and outcomes[9].code == "content_conflict"
        stored = [("gw-1", a) for b in batches for a in b.aggregates]
        assert_matches(await table_rows(engine), direct_rollups(stored))
        async with engine.connect() as conn:
            assert await conn.scalar(select(func.count()).select_from(aggregates)) == 240
            assert await conn.scalar(select(func.count()).select_from(batches_table)) == 7
            created = await conn.scalar(
                select(batches_table.c.created_at).where(batches_table.c.batch_id == fresh.batch_id)
            )
            assert created == T0  # the first one's content stays
    finally:
        await engine.dispose()


def test_the_migration_rolls_up_aggregates_stored_before_it(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    url = f"sqlite+aiosqlite:///{db}"
    command.upgrade(alembic_config(url), "0001")
    windows = random_windows(3, 200)
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO batches VALUES (1, 'b1', 'gw-1', 1, 0, 0, 200, 0, 0, NULL, NULL,"
            " 0, 0, 0, 0, 0, 0, 1)"
        )
        conn.executemany(
            "INSERT INTO aggregates (batch, gateway, window_start, window_s, home, room_class,"
            " device_class, metric, unit, policy, count, sum, mean, min, max, std, p50, p95,"
            " epsilon) VALUES (1, 'gw-1', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
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
                for a in windows
            ],
        )
    command.upgrade(alembic_config(url), "head")

    async def read() -> dict[tuple[Any, ...], dict[str, Any]]:
        engine = make_engine(url)
        try:
            return await table_rows(engine)
        finally:
            await engine.dispose()

    stored = [("gw-1", a) for a in windows]
    assert_matches(asyncio.run(read()), direct_rollups(stored))
    # Going back to 0003 rebuilds its day rows from the hour rows; 0004 drops them again.
    command.downgrade(alembic_config(url), "0003")
    before_0008 = {
        key: {k: v for k, v in row.items() if k != "inv_eps_sq"}
        for key, row in direct_rollups(stored, (3600, 86400)).items()
    }
    assert_matches(asyncio.run(read()), before_0008)
    command.upgrade(alembic_config(url), "head")
    assert_matches(asyncio.run(read()), direct_rollups(stored))
