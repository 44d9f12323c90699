"""A staged rollout to 100 simulated gateways in 4 waves, and what an idle poll costs the cloud.

    .venv/bin/python bench/rollout.py            # SQLite, 100 gateways
    .venv/bin/python bench/rollout.py --json     # one JSON object on stdout
    .venv/bin/python bench/rollout.py --pg postgresql://postgres@127.0.0.1:5432/postgres

Builds a signed repository (`cloud.release`: bundles 1 and 2), runs the real cloud
(``python -m cloud``, its own process, so its CPU time is its own) and `--gateways` simulated
gateways (`tests.fleet_sim`: poll /api/v1/gateway/desired with their ETag over HTTP, apply,
soak, report healthy), creates a rollout (canary 10 %, factor 2: 10, 20, 40, 30 for 100) and
times it until completed. Then, with the gateways stopped, it measures an idle poll: the bytes
of one request and its 304 answer on the wire (HTTP/1.1 on loopback, no TLS), and the cloud
process's CPU time per idle poll over `--polls` polls (one database read each).

The model swap figures (`swap_dropped_frames`, `swap_rss_delta_mb`) are the gateway's, from
`bench/rollout_swap.py` run after the rollout (a real ``python -m gateway`` swapping three
bundles' models while audio streams in; needs mosquitto); ``--no-swap`` skips it (null).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cloud.release import add_bundle, init_repository  # noqa: E402
from tests.fleet_sim import SimGateway  # noqa: E402

READ_TOKEN = "bench-read-token-0123456789"
OPERATOR_TOKEN = "bench-operator-token-0123456789"
MODELS_DIR = ROOT / "gateway" / "models"


def token_of(name: str) -> str:
    return f"{name}-bench-token-0123456789"


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_config(work: Path, url: str, names: list[str], repo: Path) -> Path:
    lines = [
        f"database_url = {json.dumps(url)}",
        "host = '127.0.0.1'",
        "port = 0",
        f"port_file = {json.dumps(str(work / 'port'))}",
        f"read_token = {json.dumps(READ_TOKEN)}",
        "analytics_interval_s = 0",
        "log_level = 'WARNING'",
        "[updates]",
        f"repository_dir = {json.dumps(str(repo))}",
        f"operator_token = {json.dumps(OPERATOR_TOKEN)}",
        "scheduler_interval_s = 0.2",
        "report_grace_s = 60",
        "[gateways]",
        *(f"{name} = {json.dumps(token_of(name))}" for name in names),
    ]
    path = work / "cloud.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def idle_poll_bytes(port: int, token: str, etag: str) -> tuple[int, int]:
    """(request bytes, answer bytes) of one conditional poll answered 304, on the wire."""
    request = (
        "GET /api/v1/gateway/desired HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\n"
        f"If-None-Match: {etag}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 304"), answer[:80]
    # "Connection: close" is a header the keep-alive poller does not send or get back.
    return len(request) - len(b"Connection: close\r\n"), len(answer) - len(b"Connection: close\r\n")


async def _pg(dsn: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def start_cloud(work: Path, config: Path) -> tuple[subprocess.Popen[bytes], int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMEEDGE_CLOUD__")}
    env["PYTHONPATH"] = str(ROOT)
    with open(work / "cloud.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cloud", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    deadline = time.monotonic() + 60
    while not (work / "port").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError((work / "cloud.log").read_text())
        time.sleep(0.05)
    return proc, int((work / "port").read_text())


async def run(
    args: argparse.Namespace, proc: subprocess.Popen[bytes], port: int, names: list[str]
) -> dict[str, Any]:
    sims: list[SimGateway] = []
    try:
        base_url = f"http://127.0.0.1:{port}"
        connector = aiohttp.TCPConnector(limit=200)
        async with aiohttp.ClientSession(connector=connector) as http:
            sims = [
                SimGateway(n, token_of(n), base_url, running=1, poll_s=args.poll_s) for n in names
            ]
            await asyncio.gather(*(s.report(http, None, "healthy") for s in sims))
            for sim in sims:
                sim.start()
            operator = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
            spec = {
                "version": 2,
                "gateways": names,
                "canary_share": 0.1,
                "wave_factor": 2,
                "soak_s": args.soak_s,
            }
            started = time.monotonic()
            async with http.post(f"{base_url}/api/v1/rollouts", json=spec, headers=operator) as r:
                assert r.status == 201, await r.text()
                rollout = (await r.json())["id"]
            detail: dict[str, Any] = {}
            while detail.get("state") not in ("completed", "halted"):
                await asyncio.sleep(0.1)
                async with http.get(f"{base_url}/api/v1/rollouts/{rollout}", headers=operator) as r:
                    detail = await r.json()
                if time.monotonic() - started > args.timeout_s:
                    raise RuntimeError(f"rollout not completed in {args.timeout_s}s: {detail}")
            rollout_s = time.monotonic() - started
            for sim in sims:
                await sim.stop()
            reached = sum(1 for s in sims if s.running == 2)

            # Idle polls: every gateway up to date, each poll a conditional GET.
            sim = sims[0]
            async with http.get(f"{base_url}/api/v1/gateway/desired", headers=sim.headers) as r:
                etag = r.headers["ETag"]
            request_bytes, answer_bytes = idle_poll_bytes(port, sim.token, etag)

            async def poll(i: int) -> None:
                target = sims[i % len(sims)]
                h = {**target.headers, "If-None-Match": etags[target.name]}
                async with http.get(f"{base_url}/api/v1/gateway/desired", headers=h) as r:
                    assert r.status == 304
                    await r.read()

            etags = {}
            for target in sims:
                async with http.get(
                    f"{base_url}/api/v1/gateway/desired", headers=target.headers
                ) as r:
                    etags[target.name] = r.headers["ETag"]
            rounds = []
            for _ in range(args.rounds):
                before, t0 = cpu_s(proc.pid), time.monotonic()
                for start in range(0, args.polls, args.concurrency):
                    await asyncio.gather(
                        *(poll(i) for i in range(start, min(start + args.concurrency, args.polls)))
                    )
                rounds.append(
                    ((cpu_s(proc.pid) - before) / args.polls, args.polls / (time.monotonic() - t0))
                )
        return {
            "database": "postgresql" if args.pg else "sqlite",
            "gateways": args.gateways,
            "waves": len(detail["waves"]),
            "wave_sizes": [w["size"] for w in detail["waves"]],
            "state": detail["state"],
            "soak_s": args.soak_s,
            "poll_s": args.poll_s,
            "rollout_s": round(rollout_s, 2),
            "reached": reached,
            "busy_answers": sum(s.busy for s in sims),
            "bytes_per_idle_poll": request_bytes + answer_bytes,
            "idle_poll_request_bytes": request_bytes,
            "idle_poll_response_bytes": answer_bytes,
            "cloud_cpu_ms_per_idle_poll": round(1000 * statistics.median(r[0] for r in rounds), 3),
            "idle_polls_per_s": round(statistics.median(r[1] for r in rounds), 1),
            "swap_dropped_frames": None,
            "swap_rss_delta_mb": None,
            "load_avg": [round(x, 2) for x in os.getloadavg()],
        }
    finally:
        for sim in sims:
            await sim.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateways", type=int, default=100)
    parser.add_argument("--soak-s", type=float, default=1.0, help="the rollout's soak_s")
    parser.add_argument("--poll-s", type=float, default=1.0, help="simulated gateways' poll")
    parser.add_argument("--polls", type=int, default=2000, help="idle polls per CPU round")
    parser.add_argument("--rounds", type=int, default=3, help="CPU rounds (median reported)")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--timeout-s", type=float, default=300)
    parser.add_argument("--pg", default=None, help="PostgreSQL server DSN (default: SQLite)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--no-swap", action="store_true", help="skip the gateway's swap figures")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    repo = work / "repo"
    init_repository(repo, work / "offline")
    for version in (1, 2):
        add_bundle(repo, version, models_dir=MODELS_DIR, models=["vad"])
    names = [f"gw-{i:03d}" for i in range(args.gateways)]
    url = f"sqlite+aiosqlite:///{work / 'cloud.db'}"
    pg_db = None
    if args.pg:
        pg_db = f"bench_rollout_{uuid.uuid4().hex[:8]}"
        asyncio.run(_pg(args.pg, f'CREATE DATABASE "{pg_db}"'))
        base = args.pg.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
        url = f"{base}/{pg_db}"
    try:
        proc, port = start_cloud(work, write_config(work, url, names, repo))
        try:
            result = asyncio.run(run(args, proc, port, names))
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        if pg_db is not None:
            asyncio.run(_pg(args.pg, f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)'))
        shutil.rmtree(work, ignore_errors=True)
    if not args.no_swap and shutil.which("mosquitto") is not None:
        from bench.rollout_swap import run as swap_run

        swap = asyncio.run(swap_run(3))
        result["swap_dropped_frames"] = swap["swap_dropped_frames"]
        result["swap_rss_delta_mb"] = swap["swap_rss_delta_mb"]
        result["swap"] = {k: v for k, v in swap.items() if k != "per_swap"}
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>28}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
