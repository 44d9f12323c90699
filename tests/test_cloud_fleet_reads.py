"""Dashboard reads that do not grow with history: per-gateway statistics kept at ingest
(migration 0009), series points built from arrays on PostgreSQL, the rollups report's period."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import msgspec
import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from cloud.analytics.bandwidth import bandwidth_report, overview
from cloud.analytics.models import EMPTY_SNAPSHOT
from cloud.analytics.rollups import (
    DAY_S,
    report_since,
    rollup_metrics,
    rollup_series_select,
)
from cloud.db import aggregates, batches, gateway_stats, make_engine
from cloud.ingest import BatchConflict, BatchWriter, Body, StoreOutcome
from cloud.queries import (
    Bucket,
    SeriesQuery,
    gateway_status,
    raw_series_select,
    read_series,
    series_from_rows,
)
from schemas.batch import Batch
from tests.test_analytics_rollups import random_windows
from tests.test_cloud_api import T0
from tests.test_cloud_storage import _upgrade, url  # noqa: F401


async def _migrate(engine: AsyncEngine, revision: str) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade, revision)


STAT_COLUMNS = [c.name for c in gateway_stats.columns]


def expected_stats(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What `gateway_stats` must say about these batch rows, computed here in Python."""
    out: dict[str, dict[str, Any]] = {}
    for gateway in sorted({r["gateway"] for r in rows}):
        mine = [r for r in rows if r["gateway"] == gateway]
        ends = [r["window_end_max"] for r in mine if r["window_end_max"] is not None]
        out[gateway] = {
            "gateway": gateway,
            "batches": len(mine),
            "seqs": len({r["seq"] for r in mine}),
            "last_seq": max(r["seq"] for r in mine),
            "last_batch_at": max(r["received_at"] for r in mine),
            "last_created_at": max(r["created_at"] for r in mine),
            "window_end_max": max(ends) if ends else None,
            "aggregate_rows": sum(r["aggregate_count"] for r in mine),
            "ingested_messages": sum(r["ingested_messages"] for r in mine),
            "ingested_bytes": sum(r["ingested_bytes"] for r in mine),
            "body_bytes": sum(r["body_bytes"] for r in mine),
            "wire_bytes": sum(r["wire_bytes"] for r in mine),
        }
    return out


async def stored_stats(engine: AsyncEngine) -> dict[str, dict[str, Any]]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(gateway_stats))).mappings().all()
    return {row["gateway"]: dict(row) for row in rows}


async def batch_rows(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(select(batches))).mappings().all()]


def _batch_row(gateway: str, seq: int, i: int) -> dict[str, Any]:
    return {
        "batch_id": uuid.uuid4().hex,
        "gateway": gateway,
        "seq": seq,
        "created_at": T0 + 60 * i,
        "received_at": T0 + 60 * i + 5,
        "aggregate_count": 10 + i,
        "body_bytes": 1000 + i,
        "wire_bytes": 100 + i,
        "window_start_min": T0,
        # A gateway whose batches held no windows has no window end.
        "window_end_max": None if gateway == "gw-empty" else T0 + 60 * i,
        "epsilon_spent": 0.0,
        "suppressed_windows": 0,
        "refused_noised": 0,
        "min_window_count": 5,
        "ingested_messages": 50 * i,
        "ingested_bytes": 5000 * i,
        "version": 1,
        "body_sha256": None,
    }


async def test_the_upgrade_computes_the_statistics_of_the_stored_batches(
    url: str,  # noqa: F811
) -> None:
    # A database at 0008 with batches in it: seq gaps, a seq sent twice under two ids, a gateway
    # whose batches had no windows.
    engine = make_engine(url)
    try:
        await _migrate(engine, "0008")
        seqs = {"gw-a": [1, 2, 3, 5, 5, 9], "gw-b": [1, 2], "gw-empty": [4]}
        rows = [
            _batch_row(gateway, seq, i)
            for gateway, numbers in seqs.items()
            for i, seq in enumerate(numbers)
        ]
        async with engine.begin() as conn:
            await conn.execute(insert(batches), rows)
        await _migrate(engine, "head")

        assert await stored_stats(engine) == expected_stats(rows)
        statuses = {s.gateway: s for s in await gateway_status(engine, ["gw-none"], now=T0 + 1000)}
        assert statuses["gw-a"].missing == 4 and statuses["gw-a"].gaps == [(4, 4), (6, 8)]
        assert statuses["gw-b"].missing == 0 and statuses["gw-b"].gaps == []
        assert statuses["gw-empty"].gaps == [(1, 3)] and statuses["gw-empty"].lag_s is None
        assert statuses["gw-none"].batches == 0
        band = await bandwidth_report(engine)
        assert band.fleet.batches == len(rows)
        assert band.fleet.uplink_wire_bytes == sum(r["wire_bytes"] for r in rows)

        # And ingest goes on from there: a new batch of gw-b adds to its row.
        batch = Batch(
            batch_id=uuid.uuid4().hex,
            gateway="gw-b",
            seq=3,
            created_at=T0,
            aggregates=random_windows(1, 7),
        )
        async with BatchWriter(engine) as writer:
            assert await writer.store(batch, Body.of(b"b3")) is StoreOutcome.STORED
        assert await stored_stats(engine) == expected_stats(await batch_rows(engine))
    finally:
        await engine.dispose()


async def test_ingest_keeps_the_statistics_exact_through_resends_and_repeated_seqs(
    url: str,  # noqa: F811
) -> None:
    engine = make_engine(url)
    try:
        await _migrate(engine, "head")
        batches_sent = [
            Batch(
                batch_id=uuid.uuid4().hex,
                gateway=f"gw-{g}",
                seq=seq,
                created_at=T0 + seq,
                aggregates=random_windows(seq * 10 + g, 5 + seq),
            )
            for g in range(3)
            for seq in (1, 2, 4)
        ]
        # The same seq again under a new id (a gateway that lost its outbox): counted as a
        # batch, not as a new seq.
        again = Batch(
            batch_id=uuid.uuid4().hex,
            gateway="gw-0",
            seq=2,
            created_at=T0,
            aggregates=random_windows(99, 3),
        )
        async with BatchWriter(engine) as writer:
            # Concurrently: on PostgreSQL they are stored as groups of several batches.
            outcomes = await asyncio.gather(
                *(writer.store(b, Body.of(msgspec.json.encode(b))) for b in batches_sent)
            )
            assert set(outcomes) == {StoreOutcome.STORED}
            # After them: two batches with one seq committed by two transactions at the same
            # instant may both count as new seqs (the documented off-by-one of cloud.ingest).
            assert await writer.store(again, Body.of(b"again")) is StoreOutcome.STORED
            # Resends change nothing; a conflicting body is refused and changes nothing.
            resent = await asyncio.gather(
                *(writer.store(b, Body.of(msgspec.json.encode(b))) for b in batches_sent[:4])
            )
            assert set(resent) == {StoreOutcome.DUPLICATE}
            with pytest.raises(BatchConflict):
                await writer.store(batches_sent[0], Body.of(b"another body"))
        rows = await batch_rows(engine)
        assert len(rows) == len(batches_sent) + 1
        assert await stored_stats(engine) == expected_stats(rows)
        statuses = {s.gateway: s for s in await gateway_status(engine, [], now=T0 + 1000)}
        assert {g: s.missing for g, s in statuses.items()} == {"gw-0": 1, "gw-1": 1, "gw-2": 1}
        assert statuses["gw-0"].batches == 4
        async with engine.connect() as conn:
            stored_rows = await conn.scalar(select(func.count()).select_from(aggregates))
        view = await overview(
            engine, ["gw-0"], EMPTY_SNAPSHOT, now=T0 + 10, online_after_s=1e12, poll_s=5
        )
        assert view.aggregate_rows == stored_rows
        assert view.gateways_online == 3
        assert {g.gateway: g.missing for g in view.gateways} == {"gw-0": 1, "gw-1": 1, "gw-2": 1}
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_series_from_arrays_equal_the_points_built_row_by_row(pg_url: str) -> None:
    """PostgreSQL builds the points' values and returns them as arrays per series; the answer
    is the one `series_from_rows` builds from one row per point (what SQLite serves), to the
    last bit, noise and missing stds included."""
    engine = make_engine(pg_url)
    try:
        await _migrate(engine, "head")
        windows = random_windows(7, 600)
        batch = Batch(
            batch_id=uuid.uuid4().hex, gateway="gw-1", seq=1, created_at=T0, aggregates=windows
        )
        async with BatchWriter(engine) as writer:
            await writer.store(batch, Body.of(b"x"))
        queries = [
            (SeriesQuery("temperature", Bucket.RAW, ("home", "room_class")), raw_series_select),
            # An hour bucket off the hour edges: grouped from the raw windows.
            (
                SeriesQuery("co2", Bucket.HOUR, ("home",), {}, T0 + 60, T0 + DAY_S),
                raw_series_select,
            ),
            (SeriesQuery("temperature", Bucket.HOUR, ("home",)), rollup_series_select),
            (SeriesQuery("co2", Bucket.DAY, ()), rollup_series_select),
            (SeriesQuery("co2", Bucket.DAY, ("policy",), {"home": "x"}), rollup_series_select),
        ]
        noised = 0
        for q, select_for in queries:
            stmt = select_for(q)
            async with engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
            by_rows = series_from_rows(q, rows)
            by_arrays = await read_series(engine, q, stmt)
            assert by_arrays == by_rows, q
            assert msgspec.json.encode(by_arrays) == msgspec.json.encode(by_rows)
            noised += sum(s.noised for s in by_arrays)
            if q.filters:
                assert by_arrays == []
            else:
                assert by_arrays
        assert noised > 0  # the comparison covered noised points
        # The point limit holds on this path too.
        small = SeriesQuery("temperature", Bucket.RAW, ("home",), max_points=10)
        with pytest.raises(Exception, match="more than 10 points"):
            await read_series(engine, small, raw_series_select(small))
    finally:
        await engine.dispose()


async def test_the_rollups_report_covers_the_look_back_period(url: str) -> None:  # noqa: F811
    engine = make_engine(url)
    try:
        await _migrate(engine, "head")
        # Two days of temperature long ago, a day of co2 at the end of the data.
        old = [
            msgspec.structs.replace(a, metric="temperature", window_start=T0 + i * 3600)
            for i, a in enumerate(random_windows(3, 48))
        ]
        recent = [
            msgspec.structs.replace(a, metric="co2", window_start=T0 + 30 * DAY_S + i * 600)
            for i, a in enumerate(random_windows(4, 100))
        ]
        batch = Batch(
            batch_id=uuid.uuid4().hex,
            gateway="gw-1",
            seq=1,
            created_at=T0,
            aggregates=[*old, *recent],
        )
        async with BatchWriter(engine) as writer:
            await writer.store(batch, Body.of(b"x"))
        data_end = T0 + 30 * DAY_S + 100 * 600
        since = report_since(data_end, 14)
        assert since == T0 + 31 * DAY_S - 14 * DAY_S
        everything = {m.metric: m for m in await rollup_metrics(engine)}
        assert set(everything) == {"temperature", "co2"}
        period = {m.metric: m for m in await rollup_metrics(engine, since)}
        assert set(period) == {"co2"}
        assert period["co2"] == everything["co2"]
        assert period["co2"].windows == len(recent)
    finally:
        await engine.dispose()
