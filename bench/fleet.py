"""Load bench of the cloud at fleet scale: N gateways uploading real batches over HTTP to
`python -m cloud` workers on one PostgreSQL, with an exactly-once check at the end.

    .venv/bin/python bench/fleet.py --gateways 10000 --duration 60        # the fleet run
    .venv/bin/python bench/fleet.py --saturate --workers 1,2 --repeat 5   # ingest scale-out
    .venv/bin/python bench/fleet.py ... --json                           # one JSON object

What a gateway sends is the real contract: a `schemas.batch.Batch` of `--windows` 60 s windows
of `--series` series (room class, device class, metric of the registry), each window's
statistics computed by the gateway's own `WindowStats.of` over simulated readings, the home
named by the gateway's `home_pseudonym` (HMAC under a per-gateway key), the body made by the
gateway's `compress_batch`, and every batch checked against `schemas.batch_rules` before it is
sent. Each gateway has its own id and token in the cloud's config. Batches are built before the
cloud starts, so building them does not compete with it for the CPU.

Two modes:

- fleet (default): each gateway uploads `--rounds` batches (seq 1, 2, ...), the uploads
  arriving at random instants spread evenly over `--duration` seconds (an open loop: the offered
  rate does not slow down when the cloud does). Each upload is one request in flight for its
  gateway. A 503 or 429 is retried after its Retry-After (with the gateway's jitter) and counted
  in `unavailable`, not as an error; any other failure (status, network, timeout) is an error and
  is retried too, so an upload whose answer was lost is resent, as a gateway would.
- saturate (`--saturate`): the same batches sent back to back by `--in-flight` senders, the
  fastest the workers store them; rows/s per run, `--repeat` runs, the median reported.

Uploads are spread over the workers by the kernel: `python -m cloud` with `workers = N` binds
one port N times with SO_REUSEPORT, which hashes each new connection to a worker (no load
balancer). The client keeps at most `--connections` keep-alive connections (real gateways would
hold one each; multiplexing them changes nothing the cloud stores).

The exactly-once check counts, in the database, each acknowledged batch's row and its aggregate
rows: `lost` = acknowledged batches missing or short of rows, `doubled` = batches stored with
more rows than they hold (or twice). `pg_bytes_per_million_rows` is the database's growth
(pg_database_size after minus before, so tables, indexes and rollups) per million aggregates.

Needs PostgreSQL at ``HOMEEDGE_TEST_PG`` (default postgresql://postgres@127.0.0.1:5432/postgres);
creates its own database (``he_fleet_bench_<random>``) and drops it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.sync.outbox import compress_batch
from gateway.sync.privacy import home_pseudonym
from gateway.sync.settings import PrivacySettings
from gateway.sync.uplink import BATCHES_PATH, parse_retry_after
from gateway.sync.windows import WindowStats
from schemas.batch import Batch, BatchPrivacy, BatchStats, WindowAggregate
from schemas.batch_rules import RoomClass, batch_violation
from schemas.metrics import METRICS, DeviceClass

ROOT = Path(__file__).resolve().parent.parent
PG_DSN = os.environ.get("HOMEEDGE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
READ_TOKEN = "fleet-bench-read-token-0123456789"
WINDOW_S = 60
# Per room: (device class, metric, level, step of the readings' random walk).
ROOM_SERIES = (
    (DeviceClass.THERMOSTAT, "temperature", 21.0, 0.05),
    (DeviceClass.THERMOSTAT, "humidity", 45.0, 0.2),
    (DeviceClass.AIR_QUALITY, "co2", 650.0, 5.0),
    (DeviceClass.MOTION, "motion", 0.0, 0.0),
    (DeviceClass.PLUG, "power", 120.0, 4.0),
)
ROOMS = tuple(RoomClass)
STATS_POOL = 512  # distinct windows' statistics per metric, reused across gateways
GRACE_S = 120.0  # how long after --duration uploads may still be retried


@dataclass(frozen=True)
class Upload:
    gateway: int
    batch_id: str
    rows: int
    body: bytes


@dataclass
class Tally:
    """What the senders saw."""

    latencies: list[float] = field(default_factory=list)  # answered 2xx, seconds per request
    delivered: list[float] = field(default_factory=list)  # first send -> acknowledged
    acked: dict[str, int] = field(default_factory=dict)  # batch_id -> rows
    stored: int = 0  # 201
    duplicates: int = 0  # 200: stored before (a resend whose first answer was lost)
    unavailable: int = 0  # 503/429 with Retry-After: retried, not errors
    errors: int = 0  # any other failed request (retried)
    error_kinds: dict[str, int] = field(default_factory=dict)
    unacknowledged: int = 0  # never acknowledged before the deadline


def series(n: int) -> list[tuple[str, str, str, str, float, float]]:
    """`n` series (room class, device class, metric, unit, level, step) of a home."""
    out = []
    for room in ROOMS:
        for device_class, metric, level, step in ROOM_SERIES:
            out.append((room.value, device_class.value, metric, METRICS[metric].unit, level, step))
    if n > len(out):
        raise SystemExit(f"--series is at most {len(out)}")
    return out[:n]


def stats_pools(
    chosen: Sequence[tuple[str, str, str, str, float, float]], rng: np.random.Generator
) -> dict[str, list[WindowStats]]:
    """Per metric, STATS_POOL windows of 6-60 readings (a reading every 1-10 s)."""
    pools: dict[str, list[WindowStats]] = {}
    for _room, _dc, metric, _unit, level, step in chosen:
        if metric in pools:
            continue
        pool = []
        for _ in range(STATS_POOL):
            n = int(rng.integers(6, 61))
            if step == 0.0:
                values = (rng.random(n) < 0.1).astype(float)
            else:
                start = level + rng.normal(0, 10 * step)
                values = np.round(start + np.cumsum(rng.normal(0, step, n)), 2)
            pool.append(WindowStats.of([float(v) for v in values]))
        pools[metric] = pool
    return pools


def build_uploads(
    gateways: int,
    rounds: int,
    n_series: int,
    windows: int,
    *,
    first_gateway: int = 0,
    seed: int = 0,
) -> list[list[Upload]]:
    """Per gateway, its `rounds` batches in seq order (windows ending before now)."""
    rng = np.random.default_rng(seed)
    chosen = series(n_series)
    pools = stats_pools(chosen, rng)
    privacy = PrivacySettings(secret="fleet-bench-secret-0123456789")
    now = time.time()
    span = rounds * windows * WINDOW_S
    start = (now // 3600) * 3600 - 3600 - span  # closed hours, well before the skew limit
    out: list[list[Upload]] = []
    for g in range(first_gateway, first_gateway + gateways):
        key = f"fleet-bench-key-{g}".encode()
        home = home_pseudonym(key, "home", start, privacy)
        uploads = []
        for r in range(rounds):
            aggs = []
            for w in range(windows):
                t = start + (r * windows + w) * WINDOW_S
                for s, (room, dc, metric, unit, _level, _step) in enumerate(chosen):
                    st = pools[metric][(g * 131 + s * 17 + r * windows + w) % STATS_POOL]
                    aggs.append(
                        WindowAggregate(
                            window_start=t,
                            window_s=WINDOW_S,
                            home=home,
                            room_class=room,
                            device_class=dc,
                            metric=metric,
                            unit=unit,
                            policy="aggregate",
                            count=float(st.count),
                            sum=st.sum,
                            mean=st.mean,
                            min=st.min,
                            max=st.max,
                            std=st.std,
                            p50=st.p50,
                            p95=st.p95,
                        )
                    )
            batch = Batch(
                batch_id=uuid.uuid4().hex,
                gateway=f"gw-{g}",
                seq=r + 1,
                created_at=now,
                aggregates=aggs,
                privacy=BatchPrivacy(min_window_count=5),
                stats=BatchStats(ingested_messages=sum(int(a.count) for a in aggs)),
            )
            violation = batch_violation(batch, now=now)
            if violation is not None:
                raise RuntimeError(f"the bench built a batch the contract refuses: {violation}")
            uploads.append(Upload(g, batch.batch_id, len(aggs), compress_batch(batch)))
        out.append(uploads)
    return out


def token(g: int) -> str:
    return f"fleet-bench-token-{g:06d}-0123456789"


def write_config(path: Path, url: str, gateways: range, workers: int, extra: str) -> Path:
    port_file = path.with_suffix(".port")
    lines = [
        f"database_url = {json.dumps(url)}",
        "host = '127.0.0.1'",
        "port = 0",
        f"port_file = {json.dumps(str(port_file))}",
        f"workers = {workers}",
        f"read_token = {json.dumps(READ_TOKEN)}",
        "analytics_interval_s = 0",
        "log_level = 'WARNING'",
        extra,
        "[gateways]",
        *(f'"gw-{g}" = "{token(g)}"' for g in gateways),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return port_file


async def start_cloud(config: Path, port_file: Path) -> tuple[asyncio.subprocess.Process, int]:
    await asyncio.to_thread(port_file.unlink, missing_ok=True)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cloud", "--config", str(config), cwd=ROOT
    )
    deadline = time.monotonic() + 120
    while not await asyncio.to_thread(port_file.exists):
        if proc.returncode is not None or time.monotonic() > deadline:
            raise RuntimeError("the cloud did not start")
        await asyncio.sleep(0.05)
    return proc, int(await asyncio.to_thread(port_file.read_text))


async def stop_cloud(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), timeout=60)


async def deliver(
    session: aiohttp.ClientSession, upload: Upload, tally: Tally, deadline: float
) -> None:
    """Send until acknowledged, as a gateway's uplink would (Retry-After honoured)."""
    headers = {
        "Authorization": f"Bearer {token(upload.gateway)}",
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
    }
    first = time.perf_counter()
    backoff = 0.5
    rng = random.Random(upload.batch_id)
    while time.monotonic() < deadline:
        sent = time.perf_counter()
        wait: float | None = None
        try:
            async with session.post(BATCHES_PATH, data=upload.body, headers=headers) as resp:
                await resp.read()
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as exc:
            status, retry_after = None, None
            kind = type(exc).__name__
        else:
            kind = str(status)
        done = time.perf_counter()
        if status in (200, 201):
            tally.latencies.append(done - sent)
            tally.delivered.append(done - first)
            tally.acked[upload.batch_id] = upload.rows
            if status == 201:
                tally.stored += 1
            else:
                tally.duplicates += 1
            return
        if status in (429, 503) and retry_after is not None:
            tally.unavailable += 1
            seconds = parse_retry_after(retry_after, now=time.time())
            # As the gateway's uplink: that long, plus up to half again of jitter.
            wait = max(seconds or 0.0, 0.5) * (1 + rng.uniform(0, 0.5))
        else:
            tally.errors += 1
            tally.error_kinds[kind] = tally.error_kinds.get(kind, 0) + 1
            wait = rng.uniform(0.5, backoff)
            backoff = min(backoff * 2, 30.0)
        await asyncio.sleep(wait)
    tally.unacknowledged += 1


def _session(port: int, connections: int, timeout_s: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        f"http://127.0.0.1:{port}",
        connector=aiohttp.TCPConnector(limit=connections),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    )


async def run_fleet(
    port: int, per_gateway: list[list[Upload]], duration: float, connections: int, seed: int
) -> tuple[Tally, float]:
    """Open loop: each gateway's uploads at random instants over `duration`, in seq order."""
    rng = random.Random(seed)
    tally = Tally()
    # One gateway's batches go in seq order, each after the previous was acknowledged (as the
    # uplink does): its round r starts in the r-th slice of the duration.
    rounds = max(len(u) for u in per_gateway)
    slice_s = duration / rounds

    async def gateway(uploads: list[Upload], offsets: list[float], t0: float) -> None:
        for upload, offset in zip(uploads, offsets, strict=True):
            delay = t0 + offset - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await deliver(session, upload, tally, t0 + duration + GRACE_S)

    async with _session(port, connections, 30.0) as session:
        t0 = time.monotonic() + 0.5
        tasks = [
            gateway(u, [r * slice_s + rng.uniform(0, slice_s) for r in range(len(u))], t0)
            for u in per_gateway
        ]
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - t0
    return tally, elapsed


async def run_saturate(
    port: int, uploads: list[Upload], in_flight: int, connections: int
) -> tuple[Tally, float]:
    """Closed loop: `in_flight` senders, each sending its next upload once one is answered."""
    tally = Tally()
    queue = list(reversed(uploads))

    async def sender() -> None:
        while queue:
            await deliver(session, queue.pop(), tally, time.monotonic() + 600)

    async with _session(port, max(connections, in_flight), 60.0) as session:
        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(in_flight)))
        elapsed = time.perf_counter() - started
    return tally, elapsed


async def exactly_once(dsn: str, acked: dict[str, int]) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        stored = await conn.fetch(
            "SELECT b.batch_id, b.aggregate_count, coalesce(a.n, 0) AS n FROM batches b "
            "LEFT JOIN (SELECT batch, count(*) AS n FROM aggregates GROUP BY batch) a "
            "ON a.batch = b.id"
        )
    finally:
        await conn.close()
    rows = {r["batch_id"]: (int(r["aggregate_count"]), int(r["n"])) for r in stored}
    lost = doubled = 0
    for batch_id, expected in acked.items():
        found = rows.get(batch_id)
        if found is None or found[1] < expected:
            lost += 1
        elif found[1] > expected:
            doubled += 1
    doubled += len(stored) - len(rows)  # the same batch id twice (the unique key forbids it)
    return {
        "lost": lost,
        "doubled": doubled,
        "stored_batches": len(rows),
        "stored_rows": sum(n for _, n in rows.values()),
        # Stored but never acknowledged: the answer was lost and the deadline came first.
        "stored_unacknowledged": len(set(rows) - set(acked)),
    }


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) * 1000 if values else None


@dataclass
class Database:
    admin: asyncpg.Connection
    name: str

    @property
    def dsn(self) -> str:
        return f"{PG_DSN.rsplit('/', 1)[0]}/{self.name}"

    @property
    def url(self) -> str:
        return self.dsn.replace("postgresql://", "postgresql+asyncpg://", 1)

    async def size(self) -> int:
        return int(await self.admin.fetchval("SELECT pg_database_size($1)", self.name))


async def fresh_database(admin: asyncpg.Connection) -> Database:
    db = Database(admin, f"he_fleet_bench_{uuid.uuid4().hex[:8]}")
    await admin.execute(f'CREATE DATABASE "{db.name}"')
    return db


async def drop_database(db: Database) -> None:
    await db.admin.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')


def _cloud_extra(args: argparse.Namespace) -> str:
    return (
        f"[ingest]\nmax_in_flight = {args.max_in_flight}\nretry_after_s = {args.retry_after}\n"
        f"[database]\npool_size = {args.pool_size}\nmax_overflow = {args.max_overflow}\n"
    )


async def bench_fleet(args: argparse.Namespace, workers: int) -> dict[str, Any]:
    t = time.perf_counter()
    per_gateway = build_uploads(args.gateways, args.rounds, args.series, args.windows)
    n_uploads = sum(len(u) for u in per_gateway)
    print(
        f"built {n_uploads} batches of {per_gateway[0][0].rows} aggregates for "
        f"{args.gateways} gateways in {time.perf_counter() - t:.1f}s",
        file=sys.stderr,
    )
    admin = await asyncpg.connect(PG_DSN, timeout=5)
    db = await fresh_database(admin)
    proc = None
    try:
        with tempfile.TemporaryDirectory(prefix="homeedge-fleet-") as tmp:
            config = Path(tmp) / "cloud.toml"
            port_file = write_config(
                config, db.url, range(args.gateways), workers, _cloud_extra(args)
            )
            proc, port = await start_cloud(config, port_file)
            empty = await db.size()
            load = os.getloadavg()
            tally, elapsed = await run_fleet(
                port, per_gateway, args.duration, args.connections, seed=1
            )
            load_after = os.getloadavg()
            await stop_cloud(proc)
        check = await exactly_once(db.dsn, tally.acked)
        grown = await db.size() - empty
    finally:
        if proc is not None:
            await stop_cloud(proc)
        await drop_database(db)
        await admin.close()
    rows = sum(tally.acked.values())
    result = {
        "mode": "fleet",
        "workers": workers,
        "gateways": args.gateways,
        "rows_per_batch": per_gateway[0][0].rows,
        "offered_uploads_per_s": n_uploads / args.duration,
        "uploads": len(tally.acked),
        "elapsed_s": elapsed,
        "uploads_per_s": len(tally.acked) / elapsed,
        "rows_per_s": rows / elapsed,
        "p50_ms": _pct(tally.latencies, 50),
        "p99_ms": _pct(tally.latencies, 99),
        "delivered_p99_ms": _pct(tally.delivered, 99),
        "errors": tally.errors,
        "error_kinds": tally.error_kinds,
        "unavailable_503": tally.unavailable,
        "duplicates_200": tally.duplicates,
        "unacknowledged": tally.unacknowledged,
        **check,
        "pg_bytes_per_million_rows": grown / (check["stored_rows"] / 1e6)
        if check["stored_rows"]
        else None,
        "loadavg_before": load[0],
        "loadavg_after": load_after[0],
    }
    print(
        f"fleet, {workers} worker(s): {args.gateways} gateways, {result['uploads']} uploads in "
        f"{elapsed:.1f}s = {result['uploads_per_s']:.0f} uploads/s, {result['rows_per_s']:.0f} "
        f"rows/s; p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms; errors "
        f"{tally.errors}, 503 {tally.unavailable}, lost {check['lost']}, doubled "
        f"{check['doubled']}; {result['pg_bytes_per_million_rows'] or 0:.0f} B per million rows "
        f"(load {load[0]:.2f} -> {load_after[0]:.2f})",
        file=sys.stderr,
    )
    return result


async def bench_saturate(args: argparse.Namespace, workers: int) -> dict[str, Any]:
    runs = [
        [
            u
            for gw in build_uploads(
                args.gateways,
                args.rounds,
                args.series,
                args.windows,
                first_gateway=i * args.gateways,
                seed=i,
            )
            for u in gw
        ]
        for i in range(args.repeat)
    ]
    admin = await asyncpg.connect(PG_DSN, timeout=5)
    db = await fresh_database(admin)
    proc = None
    rates: list[float] = []
    loads: list[float] = []
    acked: dict[str, int] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="homeedge-fleet-") as tmp:
            config = Path(tmp) / "cloud.toml"
            port_file = write_config(
                config, db.url, range(args.gateways * args.repeat), workers, _cloud_extra(args)
            )
            proc, port = await start_cloud(config, port_file)
            for i, uploads in enumerate(runs):
                loads.append(os.getloadavg()[0])
                tally, elapsed = await run_saturate(port, uploads, args.in_flight, args.connections)
                rows = sum(tally.acked.values())
                rates.append(rows / elapsed)
                acked.update(tally.acked)
                print(
                    f"saturate, {workers} worker(s), run {i + 1}: {rows} rows in {elapsed:.2f}s = "
                    f"{rows / elapsed:.0f} rows/s ({args.in_flight} in flight; 503 "
                    f"{tally.unavailable}, errors {tally.errors}; load {loads[-1]:.2f})",
                    file=sys.stderr,
                )
            await stop_cloud(proc)
        check = await exactly_once(db.dsn, acked)
    finally:
        if proc is not None:
            await stop_cloud(proc)
        await drop_database(db)
        await admin.close()
    return {
        "mode": "saturate",
        "workers": workers,
        "in_flight": args.in_flight,
        "rows_per_s_median": statistics.median(rates),
        "rows_per_s_runs": rates,
        "loadavg_runs": loads,
        "lost": check["lost"],
        "doubled": check["doubled"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--gateways", type=int, default=1000, help="simulated gateways")
    parser.add_argument("--rounds", type=int, default=1, help="batches per gateway")
    parser.add_argument("--series", type=int, default=30, help="series per home (<= 45)")
    parser.add_argument("--windows", type=int, default=10, help="60 s windows per batch")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds the uploads span")
    parser.add_argument(
        "--workers", default="1", help="cloud worker processes; a list (1,2) runs each in turn"
    )
    parser.add_argument("--connections", type=int, default=256, help="client connections")
    parser.add_argument("--saturate", action="store_true", help="back-to-back ingest rate")
    parser.add_argument("--in-flight", type=int, default=16, help="senders in --saturate")
    parser.add_argument("--repeat", type=int, default=5, help="runs in --saturate (median)")
    parser.add_argument("--max-in-flight", type=int, default=64, help="cloud ingest.max_in_flight")
    parser.add_argument("--retry-after", type=int, default=1, help="cloud ingest.retry_after_s")
    parser.add_argument("--pool-size", type=int, default=5, help="cloud database.pool_size")
    parser.add_argument("--max-overflow", type=int, default=3, help="cloud database.max_overflow")
    args = parser.parse_args()
    results = []
    for workers in (int(w) for w in args.workers.split(",")):
        bench = bench_saturate if args.saturate else bench_fleet
        results.append(asyncio.run(bench(args, workers)))
    result: dict[str, Any] = results[0] if len(results) == 1 else {"runs": results}
    if args.saturate and len(results) > 1:
        one = results[0]["rows_per_s_median"]
        result["scale"] = {r["workers"]: r["rows_per_s_median"] / one for r in results}
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
