"""Time of one analytics run (fleet percentiles, clusters, anomalies, events) as homes grow.

    .venv/bin/python bench/analytics.py                       # 1,000 / 10,000 / 100,000 homes
    .venv/bin/python bench/analytics.py --homes 1000,10000 --days 2 --json

For each size, a fresh PostgreSQL database (``he_analytics_bench_<random>``, dropped after) is
migrated and its hourly rollups are generated in SQL (``generate_series``, nothing crosses the
wire): every home reports `--days` days of temperature, humidity, CO2, power, motion and
alarm counts, one room each, with power and motion following one of three daily shapes (so the
clustering has groups to find) and one home in a hundred running hot in the newest hour (so the
anomaly ranking has something to flag). Then `cloud.analytics.runner.run_once` runs as the
background task would, `--repeat` times; the median is reported with the load average.

Needs PostgreSQL at ``HOMEEDGE_TEST_PG`` (default postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
    ("inference_alarm", "microphone", "", 0.001, 0.0, False),
)

GENERATE = """
INSERT INTO rollups (bucket_s, metric, bucket_start, gateway, home, room_class, device_class,
                     unit, policy, count, sum, weighted, sumsq, without_std, min, max, p50, p95,
                     windows)
SELECT 3600, s.metric, $2::float8 + 3600 * hr, 'gw-' || (h / 10), 'h-' || left(md5(h::text), 20),
       'living', s.device_class, s.unit, 'aggregate', 60, 60 * v, 60 * v, 60 * v * v, 0, v, v,
       NULL, NULL, 60
FROM generate_series($3::int, $4::int) AS h
CROSS JOIN unnest($5::text[], $6::text[], $7::text[], $8::float8[], $9::float8[], $10::bool[])
     AS s(metric, device_class, unit, level, amplitude, shaped)
CROSS JOIN generate_series(0, $1::int - 1) AS hr
CROSS JOIN LATERAL (
  SELECT greatest(0, s.level * (1
           + CASE WHEN s.shaped
                  THEN s.amplitude * exp(-power(((hr % 24) - (7 + 6 * (h % 3)))::float8, 2) / 4)
                  ELSE 0 END
           + 0.03 * (random() - 0.5))
         * CASE WHEN h % 100 = 0 AND hr = $1::int - 1 AND s.metric = 'temperature'
                THEN 1.6 ELSE 1 END) AS v
) AS value
"""


async def generate(dsn: str, homes: int, hours: int) -> float:
    conn = await asyncpg.connect(dsn)
    started = time.perf_counter()
    try:
        columns = list(zip(*SERIES, strict=True))
        step = 5000  # homes per statement: a bounded transaction each
        for first in range(0, homes, step):
            await conn.execute(
                GENERATE, hours, float(T0), first, min(homes, first + step) - 1, *columns
            )
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
