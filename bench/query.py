"""Dashboard query latency and rollup throughput on PostgreSQL with millions of aggregate rows.

    .venv/bin/python bench/query.py                 # 10 million rows (several minutes)
    .venv/bin/python bench/query.py --rows 500000   # a quick run
    .venv/bin/python bench/query.py --json          # one JSON object on stdout

Creates a fresh database on the server (default postgresql://postgres@127.0.0.1:5432), migrates
it (time partitions, `cloud.storage`), generates batches and aggregates inside PostgreSQL
(INSERT ... SELECT over generate_series, `tests.synthetic_rows`: no row crosses the wire; the
aggregates' indexes are dropped for the load and rebuilt after it, as a bulk import would),
builds the rollups with the bulk INSERT ... SELECT (rollup throughput), measures the incremental
path (BatchWriter.store, rollups folded in the ingest transaction), runs the analytics once, then
times the HTTP requests the dashboard makes (real app, real HTTP on loopback), reports the
database's size per million aggregate rows and the load average, and drops the database
(`--keep` keeps it; `--reuse NAME` then upgrades it to the newest migration and times the
requests again on the same rows: before and after a change, and the upgrade of a full database).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
from aiohttp import ClientSession, web
from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cloud import storage  # noqa: E402  (after the path)
from cloud.analytics.rollups import backfill  # noqa: E402
from cloud.app import create_app  # noqa: E402
from cloud.config import CloudConfig, RetentionConfig  # noqa: E402
from cloud.db import make_engine, upgrade_to_head  # noqa: E402
from cloud.ingest import BatchWriter, Body  # noqa: E402
from schemas.batch import Batch, WindowAggregate  # noqa: E402
from tests.synthetic_rows import METRICS, Fleet, fleet_statements  # noqa: E402

READ_TOKEN = "bench-read-token-0123456789"
HOMES_PER_GATEWAY = 10
WINDOW_S = 60
BATCH_ROWS = 5000
T0 = 1_764_374_400.0  # 2025-11-29 00:00 UTC


def plan(rows: int, homes: int) -> tuple[int, int]:
    """(homes, minutes) so that homes * metrics * minutes ~ rows."""
    minutes = max(1, rows // (homes * len(METRICS)))
    return homes, minutes


async def load(dsn: str, homes: int, minutes: int) -> tuple[int, float]:
    """Generate the fleet's batches and aggregates in the database; returns (rows, seconds).

    The aggregates' indexes are dropped first and rebuilt afterwards (one sort per index and
    partition instead of a b-tree insert per row: 5-10x faster on this machine)."""
    fleet = Fleet(
        t0=T0,
        homes=homes,
        gateways=max(1, homes // HOMES_PER_GATEWAY),
        windows=minutes,
        window_s=WINDOW_S,
    )
    conn = await asyncpg.connect(dsn)
    started = time.perf_counter()
    try:
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'aggregates'"
            " AND indexname <> 'aggregates_pkey'"
        )
        for row in indexes:
            await conn.execute(f"DROP INDEX {row['indexname']}")
        await conn.execute("ALTER TABLE aggregates DROP CONSTRAINT aggregates_pkey")
        for sql in fleet_statements(fleet):
            await conn.execute(sql)
        log(f"generated in {time.perf_counter() - started:.1f} s; building the indexes")
        await conn.execute(
            "ALTER TABLE aggregates ADD CONSTRAINT aggregates_pkey PRIMARY KEY (id, window_start)"
        )
        for row in indexes:
            # Defined on the partitioned table ("ON ONLY"); without ONLY it is built on every
            # partition too.
            await conn.execute(row["indexdef"].replace(" ON ONLY ", " ON "))
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return fleet.rows, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


async def time_requests(base: str, paths: dict[str, str], repeat: int) -> dict[str, list[float]]:
    headers = {"Authorization": f"Bearer {READ_TOKEN}"}
    timings: dict[str, list[float]] = {name: [] for name in paths}
    async with ClientSession(base) as session:
        for name, path in paths.items():  # one warm-up each
            async with session.get(path, headers=headers) as resp:
                assert resp.status == 200, (name, resp.status, await resp.text())
                await resp.read()
        for _ in range(repeat):
            for name, path in paths.items():
                started = time.perf_counter()
                async with session.get(path, headers=headers) as resp:
                    await resp.read()
                timings[name].append(1000 * (time.perf_counter() - started))
    return timings


def incremental_batches(n: int, per_batch: int, start: float) -> list[Batch]:
    out = []
    for b in range(n):
        aggs = [
            WindowAggregate(
                window_start=start + 60 * ((b * per_batch + i) // 100),
                window_s=60,
                home=f"home-{i % 100:04d}",
                room_class="living",
                device_class="thermostat",
                metric="temperature",
                unit="°C",
                policy="aggregate",
                count=6.0,
                sum=126.0,
                mean=21.0,
                min=20.0,
                max=22.0,
                std=0.5,
            )
            for i in range(per_batch)
        ]
        out.append(
            Batch(
                batch_id=uuid.uuid4().hex,
                gateway="gw-inc",
                seq=b + 1,
                created_at=start,
                aggregates=aggs,
            )
        )
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    name = args.reuse or f"homeedge_bench_{uuid.uuid4().hex[:10]}"
    admin_dsn = args.dsn.rstrip("/") + "/postgres"
    db_dsn = args.dsn.rstrip("/") + f"/{name}"
    url = db_dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    admin = await asyncpg.connect(admin_dsn)
    if not args.reuse:
        await admin.execute(f'CREATE DATABASE "{name}"')
    result: dict[str, Any] = {}
    try:
        engine = make_engine(url)
        # On a kept database this is the upgrade of one full of rows (the newer migrations').
        started = time.perf_counter()
        await upgrade_to_head(engine)
        upgrade_s = time.perf_counter() - started
        homes, minutes = plan(args.rows, args.homes)
        if args.reuse:
            result = await measure(args, url, engine, homes, minutes)
            result["upgrade_s"] = upgrade_s
            return result
        data_end = T0 + minutes * WINDOW_S
        # The partitions a live fleet has at the end of the data: the upkeep's, and the days
        # before it (which the same upkeep created on those days).
        await storage.maintain(engine, RetentionConfig(), now=data_end)
        async with engine.begin() as conn:
            for table in storage.PARTITIONED:
                await conn.run_sync(storage.ensure_partitions, table, T0, data_end)
        log(f"loading ~{args.rows:,} rows: {homes} homes x {len(METRICS)} metrics x {minutes} min")
        rows, load_s = await load(db_dsn, homes, minutes)
        log(f"loaded {rows:,} rows in {load_s:.1f} s ({rows / load_s:,.0f} rows/s, SQL)")

        started = time.perf_counter()
        touched = await backfill(engine)
        rollup_s = time.perf_counter() - started
        log(f"bulk rollup: {rows:,} rows -> {touched:,} rollup rows in {rollup_s:.1f} s")
        # In a committed transaction: statistics gathered in one that rolls back are discarded,
        # and without them the planner picks the width/time index for the per-metric range.
        async with engine.begin() as conn:
            await conn.exec_driver_sql("ANALYZE rollups")
            size = await conn.scalar(text("SELECT pg_database_size(current_database())"))
            aggregates_size = await conn.scalar(
                text(
                    "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_inherits i"
                    " JOIN pg_class c ON c.oid = i.inhrelid"
                    " WHERE i.inhparent = 'aggregates'::regclass"
                )
            )
        log(f"database {size / 1e6:,.0f} MB, aggregates {float(aggregates_size) / 1e6:,.0f} MB")

        batches = incremental_batches(40, 1000, T0 + minutes * 60)
        started = time.perf_counter()
        async with BatchWriter(engine) as writer:
            for batch in batches:
                await writer.store(batch, Body(wire=1, decoded=1, sha256="0" * 64))
        inc_s = time.perf_counter() - started
        inc_rows = sum(len(b.aggregates) for b in batches)
        log(f"incremental: {inc_rows:,} rows via BatchWriter.store in {inc_s:.2f} s")
        result = await measure(args, url, engine, homes, minutes)
        result.update(
            {
                "load_rows_per_s": rows / load_s,
                "rollup_bulk_rows_per_s": rows / rollup_s,
                "rollup_rows": touched,
                "rollup_incremental_rows_per_s": inc_rows / inc_s,
                "database_mb": size / 1e6,
                "database_mb_per_million_rows": size / 1e6 / (rows / 1e6),
                "aggregates_mb_per_million_rows": float(aggregates_size) / 1e6 / (rows / 1e6),
            }
        )
    finally:
        if args.keep or args.reuse:
            log(f"kept database {name} (--reuse {name})")
        else:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return result


async def measure(
    args: argparse.Namespace, url: str, engine: Any, homes: int, minutes: int
) -> dict[str, Any]:
    """Run the analytics once, then time the dashboard's requests over real HTTP."""
    async with engine.connect() as conn:
        rows = int(await conn.scalar(text("SELECT count(*) FROM aggregates")))
    await engine.dispose()
    config = CloudConfig.model_validate(
        {"database_url": url, "read_token": READ_TOKEN, "analytics_interval_s": 0}
    )
    app = create_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    base = f"http://127.0.0.1:{port}"
    # As `python -m cloud` does once it listens (cloud.server.serve).
    gc.freeze()
    try:
        started = time.perf_counter()
        async with (
            ClientSession(base) as session,
            session.post(
                "/api/v1/analytics/run", headers={"Authorization": f"Bearer {READ_TOKEN}"}
            ) as resp,
        ):
            assert resp.status == 200, await resp.text()
        analytics_s = time.perf_counter() - started
        log(f"analytics run: {analytics_s:.1f} s")
        end = T0 + (minutes // 60 + 1) * 3600
        day_end = (end // 86400 + 1) * 86400
        paths = {
            "overview": "/api/v1/analytics/overview",
            "rollups": "/api/v1/analytics/rollups",
            "bandwidth": "/api/v1/analytics/bandwidth",
            "series_hour_24h": (
                f"/api/v1/aggregates?metric=temperature&bucket=hour&group_by=home"
                f"&start={end - 86400:.0f}&end={end:.0f}"
            ),
            "series_day_all": "/api/v1/aggregates?metric=co2&bucket=day&group_by=home",
            "series_day_7d_fleet": (
                f"/api/v1/aggregates?metric=power&bucket=day&group_by="
                f"&start={day_end - 7 * 86400:.0f}&end={day_end:.0f}"
            ),
            "series_raw_6h_one_home": (
                f"/api/v1/aggregates?metric=temperature&bucket=raw&group_by=home"
                f"&home=home-0001&start={end - 6 * 3600:.0f}&end={end:.0f}"
            ),
            "clusters": "/api/v1/analytics/clusters",
            "anomalies": "/api/v1/analytics/anomalies",
            "events": "/api/v1/analytics/events",
            "fleet": "/api/v1/analytics/fleet",
        }
        timings = await time_requests(base, paths, args.repeat)
    finally:
        await runner.cleanup()
    every = [t for values in timings.values() for t in values]
    return {
        "rows": rows,
        "homes": homes,
        "loadavg": os.getloadavg(),
        "analytics_run_s": analytics_s,
        "query_p50_ms": percentile(every, 50),
        "query_p95_ms": percentile(every, 95),
        "queries": {
            name: {
                "p50_ms": percentile(values, 50),
                "p95_ms": percentile(values, 95),
            }
            for name, values in timings.items()
        },
    }


QUIET = False


def log(message: str) -> None:
    if not QUIET:
        print(message, file=sys.stderr, flush=True)


def main() -> int:
    global QUIET
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="aggregate rows to load")
    parser.add_argument("--homes", type=int, default=200, help="homes in the fleet")
    parser.add_argument("--repeat", type=int, default=30, help="timed rounds of every query")
    parser.add_argument(
        "--dsn", default="postgresql://postgres@127.0.0.1:5432", help="server, no database"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--keep", action="store_true", help="keep the database (for --reuse)")
    parser.add_argument(
        "--reuse",
        metavar="DATABASE",
        help="time the requests on a database kept by --keep (upgraded to head first: the"
        " same rows before and after a change); --rows must be the one it was loaded with",
    )
    args = parser.parse_args()
    QUIET = args.json
    result = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"rows {result['rows']:,} ({result['homes']} homes)")
    if "upgrade_s" in result:
        print(f"upgrade to head        {result['upgrade_s']:>12.2f} s")
        return _print_queries(result)
    print(f"load (SQL generation)  {result['load_rows_per_s']:>12,.0f} rows/s")
    print(
        f"database size          {result['database_mb_per_million_rows']:>12,.0f} MB per million"
        f" rows ({result['aggregates_mb_per_million_rows']:,.0f} of it the aggregates)"
    )
    print(f"rollup, bulk           {result['rollup_bulk_rows_per_s']:>12,.0f} rows/s")
    print(f"rollup, in ingest      {result['rollup_incremental_rows_per_s']:>12,.0f} rows/s")
    return _print_queries(result)


def _print_queries(result: dict[str, Any]) -> int:
    print(f"analytics run          {result['analytics_run_s']:>12.2f} s")
    print(
        f"dashboard queries      p50 {result['query_p50_ms']:.1f} ms, p95 "
        f"{result['query_p95_ms']:.1f} ms"
    )
    for name, q in result["queries"].items():
        print(f"  {name:<24} p50 {q['p50_ms']:7.1f} ms  p95 {q['p95_ms']:7.1f} ms")
    print("load average           " + " ".join(f"{v:.2f}" for v in result["loadavg"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
