"""Benchmark of the gateway's cloud-sync path: bandwidth, catch-up after an outage, cloud ingest.

    .venv/bin/python bench/uplink.py [--json] [--drain-rate 1000] [--drain-hours 1]

1. uplink_ratio: 3 homes x 7 devices publishing at 1 Hz for one hour, 60 s windows. Ingested =
   the telemetry payload bytes the devices would have published (`encode_telemetry`); uplinked =
   the gzip batch bodies the sync path put in the outbox. Target <= 1 %.
2. drain_speedup: 1,000 msg/s for one hour while the cloud is down: the gateway keeps aggregating
   into the outbox; then a local aiohttp server comes up and the uplink (default settings, paced by
   its token bucket) drains the backlog. Speed-up = outage length / drain time. Target >= 50x.
3. cloud_rows_per_s: aggregate rows per second that ONE cloud worker process (`python -m cloud`,
   workers = 1) stores into a fresh PostgreSQL database, aggregates and rollups committed, while
   `--in-flight` gateways (default 8) upload that backlog at once, one request in flight each
   (`cloud_in_flight`); `cloud_rows_per_s_one_in_flight` is one gateway alone. Needs PostgreSQL
   at ``HOMEEDGE_TEST_PG`` (default postgresql://postgres@127.0.0.1:5432/postgres); null otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import msgspec
import numpy as np
from aiohttp import web
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, func, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.db import make_engine
from gateway.sync.metrics import SyncMetrics
from gateway.sync.pipeline import SyncPipeline, aggregate_and_enqueue
from gateway.sync.settings import (
    AggregationSettings,
    PrivacySettings,
    UplinkSettings,
)
from gateway.sync.tables import outbox
from gateway.sync.uplink import Uplink, thread_run_db
from schemas.batch import decode_batch, encode_batch
from schemas.telemetry import encode_telemetry

ROOT = Path(__file__).resolve().parent.parent
# Two days ago, on the hour: recent enough for the outbox TTL, long closed for the windows.
T0 = float((int(time.time()) // 3600 - 48) * 3600)
GATEWAY = "gw-bench"
TOKEN = "bench-gateway-token-0123456789"
READ_TOKEN = "bench-read-token-0123456789abcdef"
PG_DSN = os.environ.get("HOMEEDGE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

# room, device, metrics (name, start, step of the random walk, decimals)
HOME_LAYOUT = (
    ("living room", "thermostat-1", (("temperature", 21.0, 0.02, 2), ("humidity", 45.0, 0.1, 1))),
    ("bedroom", "thermostat-2", (("temperature", 19.0, 0.02, 2), ("humidity", 50.0, 0.1, 1))),
    ("kitchen", "air_quality-1", (("co2", 600.0, 3.0, 0), ("temperature", 22.0, 0.02, 2))),
    ("hallway", "motion-1", (("motion", 0.0, 0.0, 0),)),
    ("hallway", "door-1", (("door", 0.0, 0.0, 0),)),
    ("office", "plug-1", (("power", 80.0, 2.0, 1), ("energy", 1234.0, 0.00002, 5))),
    ("bedroom", "wearable-1", (("heart_rate", 70.0, 0.5, 0),)),
)
INSERT = (
    "INSERT INTO readings (home, room, device, metric, ts, value, seq, received_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def _walk(rng: np.random.Generator, start: float, step: float, n: int, decimals: int) -> np.ndarray:
    if step == 0.0:  # binary sensors: mostly 0, sometimes 1
        return (rng.random(n) < 0.05).astype(np.float64)
    return np.round(start + np.cumsum(rng.normal(0.0, step, n)), decimals)


def generate(
    engine: Engine, homes: int, layout: tuple, seconds: int, seed: int = 0
) -> tuple[int, int]:
    """Write `seconds` of 1 Hz telemetry for `homes` homes; return (messages, payload bytes)."""
    rng = np.random.default_rng(seed)
    messages = nbytes = 0
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        for h in range(homes):
            home = f"home-{h:04d}"
            for room, device, metrics in layout:
                series = {name: _walk(rng, a, s, seconds, d) for name, a, s, d in metrics}
                rows = []
                for i in range(seconds):
                    ts = T0 + i + 0.25
                    values = {name: float(series[name][i]) for name in series}
                    nbytes += len(encode_telemetry(ts, values, seq=i))
                    messages += 1
                    rows.extend((home, room, device, m, ts, v, i, ts) for m, v in values.items())
                cur.executemany(INSERT, rows)
        raw.commit()
    finally:
        raw.close()
    return messages, nbytes


def run_passes(engine: Engine, pipeline: SyncPipeline, seconds: int) -> None:
    """The gateway's aggregation schedule over the hour: one pass per closed window."""
    agg = pipeline.aggregation
    # one pass per window end, then one later pass that closes a last, partial group
    ends = [*range(agg.window_s, seconds + agg.window_s, agg.window_s)]
    ends.append(seconds + agg.windows_per_batch * agg.window_s)
    for end in ends:
        with engine.begin() as conn:
            aggregate_and_enqueue(conn, T0 + end + agg.grace_s, pipeline)


def make_pipeline(uplink: UplinkSettings) -> SyncPipeline:
    return SyncPipeline.from_settings(
        GATEWAY,
        AggregationSettings(backfill_s=1e7),
        PrivacySettings(secret="bench-secret-0123456789abcdef"),
        uplink,
        rng=np.random.default_rng(1),
    )


def outbox_totals(engine: Engine) -> tuple[int, int, int]:
    with engine.connect() as conn:
        row = conn.execute(
            select(
                func.count(),
                func.sum(func.length(outbox.c.body_gz)),
                func.sum(outbox.c.n_aggregates),
            )
        ).one()
    return int(row[0]), int(row[1] or 0), int(row[2] or 0)


def bench_ratio(workdir: Path) -> dict[str, float]:
    engine = make_engine(workdir / "ratio.db")
    messages, ingested = generate(engine, 3, HOME_LAYOUT, 3600)
    run_passes(engine, make_pipeline(UplinkSettings()), 3600)
    batches, uplinked, aggs = outbox_totals(engine)
    engine.dispose()
    print(
        f"ratio: {messages} messages, {ingested} B ingested -> {batches} batches, "
        f"{aggs} aggregates, {uplinked} B gzip = {100 * uplinked / ingested:.3f} %",
        file=sys.stderr,
    )
    return {
        "uplink_ratio": uplinked / ingested,
        "ingested_bytes": ingested,
        "uplinked_bytes": uplinked,
    }


def _fleet_layout(devices_per_home: int) -> tuple:
    cycle = [entry for entry in HOME_LAYOUT if len(entry[2]) == 1] + [HOME_LAYOUT[5]]
    return tuple(
        (room, f"{device.rsplit('-', 1)[0]}-{k}", metrics)
        for k, (room, device, metrics) in zip(range(devices_per_home), _cycle(cycle), strict=False)
    )


def _cycle(items: list) -> Iterator:
    while True:
        yield from items


def fill_backlog(workdir: Path, rate: int, seconds: int) -> Path:
    """An outbox holding the batches of `seconds` at `rate` msg/s (10 devices per home)."""
    path = workdir / "backlog.db"
    engine = make_engine(path)
    t = time.perf_counter()
    messages, _ = generate(engine, max(1, rate // 10), _fleet_layout(10), seconds, seed=2)
    run_passes(engine, make_pipeline(UplinkSettings(outbox_max_rows=100000)), seconds)
    batches, nbytes, aggs = outbox_totals(engine)
    engine.dispose()
    print(
        f"backlog: {messages} messages -> {batches} batches, {aggs} aggregates, {nbytes} B "
        f"(built in {time.perf_counter() - t:.1f}s)",
        file=sys.stderr,
    )
    return path


async def _drain(db: Path, url: str, uplink: UplinkSettings) -> tuple[float, int]:
    engine = make_engine(db)
    up = Uplink(
        uplink,
        run_db=thread_run_db(engine),
        metrics=SyncMetrics(CollectorRegistry()),
        rng=random.Random(0),
    )
    try:
        start = time.perf_counter()
        async with aiohttp.ClientSession() as session:
            sent = await up.drain(session)
        return time.perf_counter() - start, sent
    finally:
        engine.dispose()


async def bench_drain(db: Path, seconds: int) -> float:
    """Drain the backlog in `db` (a copy) to a local aiohttp server; speed-up over real time."""
    received: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        received.append(1)
        return web.json_response({"status": "stored"}, status=201)

    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_post("/api/v1/batches", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        elapsed, sent = await _drain(
            db,
            f"http://127.0.0.1:{port}",
            UplinkSettings(url=f"http://127.0.0.1:{port}", token=TOKEN),
        )
    finally:
        await runner.cleanup()
    speedup = seconds / elapsed
    print(
        f"drain: {sent} batches in {elapsed:.2f}s (paced, defaults) = {speedup:.0f}x real time",
        file=sys.stderr,
    )
    return speedup


def cloud_streams(db: Path, gateways: int) -> list[list[tuple[bytes, int]]]:
    """The backlog's batch bodies as `gateways` gateways would send them: (gzip body, rows).

    Each copy gets its own gateway id and batch ids (re-encoded and re-gzipped here, before any
    timing), so the cloud stores every copy: many homes' gateways catching up at once.
    """
    engine = make_engine(db)
    with engine.connect() as conn:
        bodies = [
            (bytes(row[0]), int(row[1]))
            for row in conn.execute(
                select(outbox.c.body_gz, outbox.c.n_aggregates).order_by(outbox.c.seq)
            )
        ]
    engine.dispose()
    streams = []
    for g in range(gateways):
        stream = []
        for body, rows in bodies:
            batch = decode_batch(gzip.decompress(body))
            copy = msgspec.structs.replace(
                batch, gateway=f"{GATEWAY}-{g}", batch_id=uuid.uuid4().hex
            )
            stream.append((gzip.compress(encode_batch(copy), compresslevel=6), rows))
        streams.append(stream)
    return streams


def _write_cloud_config(path: Path, url: str, gateways: int, port_file: Path) -> None:
    tokens = "\n".join(f'"{GATEWAY}-{g}" = "{TOKEN}-{g}"' for g in range(gateways))
    path.write_text(
        f'database_url = "{url}"\nport = 0\nport_file = "{port_file}"\nworkers = 1\n'
        f'read_token = "{READ_TOKEN}"\nanalytics_interval_s = 0\nlog_level = "WARNING"\n'
        f"[gateways]\n{tokens}\n",
        encoding="utf-8",
    )


async def _send_streams(port: int, streams: list[list[tuple[bytes, int]]], first: int) -> float:
    """POST every stream's batches in order, one request in flight per stream; seconds taken."""

    async def send(session: aiohttp.ClientSession, g: int, stream: list[tuple[bytes, int]]) -> None:
        headers = {
            "Authorization": f"Bearer {TOKEN}-{g}",
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        }
        for body, _ in stream:
            async with session.post("/api/v1/batches", data=body, headers=headers) as resp:
                assert resp.status == 201, (resp.status, await resp.text())

    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
        started = time.perf_counter()
        await asyncio.gather(
            *(send(session, first + i, stream) for i, stream in enumerate(streams))
        )
        return time.perf_counter() - started


async def bench_cloud(db: Path, in_flight: int) -> dict[str, float] | None:
    """Rows/s ONE cloud worker process (`python -m cloud`, workers = 1) stores on a fresh
    PostgreSQL database: first one gateway alone (one request in flight), then `in_flight`
    gateways catching up at once (one request in flight each). Every request returns once its
    batch is committed with its aggregates and rollups, so the time covers all of it."""
    try:
        import asyncpg
    except ImportError as exc:
        print(f"cloud: skipped ({exc})", file=sys.stderr)
        return None
    name = f"homeedge_bench_{uuid.uuid4().hex[:10]}"
    try:
        admin = await asyncpg.connect(PG_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"cloud: skipped, PostgreSQL unreachable ({exc})", file=sys.stderr)
        return None
    streams = cloud_streams(db, 1 + in_flight)
    workdir = db.parent
    port_file = workdir / "cloud.port"
    config = workdir / "cloud.toml"
    proc: asyncio.subprocess.Process | None = None
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        base = PG_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
        _write_cloud_config(config, f"{base}/{name}", 1 + in_flight, port_file)
        port_file.unlink(missing_ok=True)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cloud", "--config", str(config), cwd=ROOT
        )
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError("the cloud process did not start")
            await asyncio.sleep(0.05)
        port = int(port_file.read_text())
        single_s = await _send_streams(port, streams[:1], 0)
        single_rows = sum(rows for _, rows in streams[0])
        many_s = await _send_streams(port, streams[1:], 1)
        many_rows = sum(rows for stream in streams[1:] for _, rows in stream)
        print(
            f"cloud, one worker process: {single_rows} rows in {single_s:.2f}s = "
            f"{single_rows / single_s:.0f} rows/s with 1 request in flight; {many_rows} rows "
            f"in {many_s:.2f}s = {many_rows / many_s:.0f} rows/s with {in_flight} in flight "
            f"({in_flight} gateways catching up at once; batches of "
            f"{streams[0][0][1]} aggregates, rollups included)",
            file=sys.stderr,
        )
        return {
            "cloud_rows_per_s": many_rows / many_s,
            "cloud_in_flight": in_flight,
            "cloud_rows_per_s_one_in_flight": single_rows / single_s,
        }
    finally:
        if proc is not None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), timeout=30)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--drain-rate", type=int, default=1000, help="msg/s during the outage")
    parser.add_argument("--drain-hours", type=float, default=1.0, help="length of the outage")
    parser.add_argument("--no-cloud", action="store_true", help="skip the PostgreSQL cloud run")
    parser.add_argument(
        "--in-flight", type=int, default=8, help="gateways uploading to the cloud worker at once"
    )
    args = parser.parse_args()
    seconds = int(args.drain_hours * 3600)
    with tempfile.TemporaryDirectory(prefix="homeedge-bench-") as tmp:
        workdir = Path(tmp)
        result: dict[str, float | None] = dict(bench_ratio(workdir))
        backlog = fill_backlog(workdir, args.drain_rate, seconds)
        shutil.copy(backlog, workdir / "drain.db")
        result["drain_speedup"] = asyncio.run(bench_drain(workdir / "drain.db", seconds))
        cloud = None if args.no_cloud else asyncio.run(bench_cloud(backlog, args.in_flight))
        result.update(cloud or {"cloud_rows_per_s": None})
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
