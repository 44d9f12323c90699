"""Time of one analytics run (fleet percentiles, clusters, anomalies, events) as homes grow.

    .venv/bin/python bench/analytics.py                       # 1,000 / 10,000 / 100,000 homes
    .venv/bin/python bench/analytics.py --homes 1000,10000 --days 2 --json

For each size, a fresh PostgreSQL database (``he_analytics_bench_<random>``, dropped after) is
migrated and its rollups are generated in SQL (``generate_series``, nothing crosses the wire;
the indexes are built once after the rows are in): every home reports `--days` days of
temperature, humidity, CO2, power and motion, one room each, with power and motion following
one of three daily shapes (so the clustering has groups to find) and one home in a hundred
running hot in the newest hour (so the anomaly ranking has something to flag), and alarm
events in one home-hour in fifty; each hour row has its day row, as ingest keeps them. Then
`cloud.analytics.runner.run_once` runs as the background task would, `--repeat` times; the
median is reported with the load average.

Needs PostgreSQL at ``HOMEEDGE_TEST_PG`` (default postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cloud.analytics.runner import AnalyticsSettings, run_once
from cloud.db import make_engine, upgrade_to_head

PG_DSN = os.environ.get("HOMEEDGE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
T0 = 1_764_374_400  # 2025-11-29 00:00 UTC

# metric, device class, unit, level, daily amplitude (share of level), whether shaped by group
SERIES = (
    ("temperature", "thermostat", "°C", 21.0, 0.05, False),
    ("humidity", "thermostat", "%", 45.0, 0.05, False),
    ("co2", "air_quality", "ppm", 650.0, 0.3, True),
    ("power", "plug", "W", 300.0, 1.5, True),
    ("motion", "motion", "", 0.3, 1.0, True),
    ("inference_alarm", "microphone", "", 0.0, 0.0, False),
)
# Alarms are events: a row exists only for an hour with detections (1 or 2 of them), one home-hour
# in EVENT_EVERY, as the edge sends them (`cloud.analytics.fleet`).
EVENT_EVERY = 50

# One statement per chunk of homes: the hour rows are made once (a materialized CTE), inserted,
# and grouped into the day rows ingest keeps next to them (`cloud.analytics.rollups`).
GENERATE = """
WITH hours AS MATERIALIZED (
  SELECT 3600 AS bucket_s, s.metric, $2::float8 + 3600 * hr AS bucket_start,
         'gw-' || (h / 10) AS gateway, 'h-' || left(md5(h::text), 20) AS home,
         'living' AS room_class, s.device_class, s.unit, 'aggregate' AS policy,
         CASE WHEN s.event THEN e ELSE 60 END AS count,
         CASE WHEN s.event THEN e ELSE 60 * v END AS v
  FROM generate_series($3::int, $4::int) AS h
  CROSS JOIN unnest($5::text[], $6::text[], $7::text[], $8::float8[], $9::float8[],
                    $10::bool[], $11::bool[])
       AS s(metric, device_class, unit, level, amplitude, shaped, event)
  CROSS JOIN generate_series(0, $1::int - 1) AS hr
  CROSS JOIN LATERAL (
    SELECT greatest(0, s.level * (1
             + CASE WHEN s.shaped
                    THEN s.amplitude * exp(-power(((hr % 24) - (7 + 6 * (h % 3)))::float8, 2) / 4)
                    ELSE 0 END
             + 0.03 * (random() - 0.5))
           * CASE WHEN h % 100 = 0 AND hr = $1::int - 1 AND s.metric = 'temperature'
                  THEN 1.6 ELSE 1 END) AS v,
           -- events: a count of detections, and a row only for an hour that had one
           (1 + h % 2)::float8 AS e
  ) AS value
  WHERE NOT s.event OR (h * 7 + hr) % $12::int = 0
), stored AS (
  INSERT INTO rollups (bucket_s, metric, bucket_start, gateway, home, room_class, device_class,
                       unit, policy, count, sum, weighted, sumsq, without_std, min, max, p50,
                       p95, windows)
  SELECT bucket_s, metric, bucket_start, gateway, home, room_class, device_class, unit, policy,
         count, v, v, v * v / count, 0, v / count, v / count, NULL, NULL, 60
  FROM hours
)
INSERT INTO rollups (bucket_s, metric, bucket_start, gateway, home, room_class, device_class,
                     unit, policy, count, sum, weighted, sumsq, without_std, min, max, p50, p95,
                     windows)
SELECT 86400, metric, floor(bucket_start / 86400) * 86400, gateway, home, room_class,
       device_class, unit, policy, sum(count), sum(v), sum(v), sum(v * v / count), 0,
       min(v / count), max(v / count), NULL, NULL, 60 * count(*)
FROM hours
GROUP BY metric, floor(bucket_start / 86400), gateway, home, room_class, device_class, unit,
         policy
"""

# What the rows are generated without (a bulk load builds them once afterwards, sorted, instead
# of updating three b-trees row by row: what made 100,000 homes take over half an hour).
INDEXES = (
    "ALTER TABLE rollups DROP CONSTRAINT rollups_pkey",
    "ALTER TABLE rollups DROP CONSTRAINT rollups_key",
    "DROP INDEX ix_rollups_width_time",
)
REBUILD = (
    "ALTER TABLE rollups ADD CONSTRAINT rollups_pkey PRIMARY KEY (id, bucket_start)",
    "ALTER TABLE rollups ADD CONSTRAINT rollups_key UNIQUE (bucket_s, metric, bucket_start,"
    " gateway, home, room_class, device_class, unit, policy)",
    "CREATE INDEX ix_rollups_width_time ON rollups (bucket_s, bucket_start)",
)


async def generate(dsn: str, homes: int, hours: int) -> float:
    conn = await asyncpg.connect(dsn)
    started = time.perf_counter()
    try:
        columns = list(zip(*SERIES, strict=True))
        events = [name.startswith("inference_") for name in columns[0]]
        for statement in INDEXES:
            await conn.execute(statement)
        step = 5000  # homes per statement: a bounded transaction each
        for first in range(0, homes, step):
            await conn.execute(
                GENERATE,
                hours,
                float(T0),
                first,
                min(homes, first + step) - 1,
                *columns,
                events,
                EVENT_EVERY,
            )
        await conn.execute("SET maintenance_work_mem = '512MB'")
        for statement in REBUILD:
            await conn.execute(statement)
        await conn.execute("ANALYZE rollups")
    finally:
        await conn.close()
    return time.perf_counter() - started


async def bench(homes: int, days: int, repeat: int, sample: int) -> dict[str, Any]:
    admin = await asyncpg.connect(PG_DSN, timeout=5)
    name = f"he_analytics_bench_{uuid.uuid4().hex[:8]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = f"{PG_DSN.rsplit('/', 1)[0]}/{name}"
    engine = make_engine(dsn.replace("postgresql://", "postgresql+asyncpg://", 1))
    try:
        await upgrade_to_head(engine)
        gen_s = await generate(dsn, homes, days * 24)
        conn = await asyncpg.connect(dsn)
        try:
            rows = int(await conn.fetchval("SELECT count(*) FROM rollups"))
        finally:
            await conn.close()
        settings = AnalyticsSettings(lookback_days=days, cluster_sample_homes=sample)
        times, loads = [], []
        snapshot = None
        for _ in range(repeat):
            loads.append(os.getloadavg()[0])
            started = time.perf_counter()
            snapshot = await run_once(engine, settings)
            times.append(time.perf_counter() - started)
        assert snapshot is not None
        result = {
            "homes": homes,
            "days": days,
            "rollup_rows": rows,
            "generate_s": gen_s,
            "run_s_median": statistics.median(times),
            "run_s": times,
            "loadavg": loads,
            "homes_clustered": len(snapshot.clusters.assignments),
            "clusters": snapshot.clusters.k,
            "standings": len(snapshot.standings),
            "anomalies_flagged": sum(a.flagged for a in snapshot.anomalies),
            # of this process so far (the largest fleet's run, when sizes grow)
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        print(
            f"analytics, {homes} homes x {days} days ({rows} rollup rows, made in {gen_s:.1f}s): "
            f"run {result['run_s_median']:.2f}s median of {repeat} (load {loads[0]:.2f}); "
            f"k={snapshot.clusters.k}, {result['anomalies_flagged']} flagged",
            file=sys.stderr,
        )
        return result
    finally:
        await engine.dispose()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--homes", default="1000,10000,100000", help="fleet sizes, comma-separated")
    parser.add_argument("--days", type=int, default=2, help="days of hourly rollups per home")
    parser.add_argument("--repeat", type=int, default=3, help="runs per size (median)")
    parser.add_argument("--sample", type=int, default=2000, help="cluster_sample_homes")
    args = parser.parse_args()
    results = [
        asyncio.run(bench(int(n), args.days, args.repeat, args.sample))
        for n in args.homes.split(",")
    ]
    if args.json:
        print(json.dumps({"runs": results}))
    else:
        for r in results:
            print(r)


if __name__ == "__main__":
    main()
