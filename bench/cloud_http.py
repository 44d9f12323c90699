"""What hostile HTTP costs the cloud: gzip bombs sent to a route that never reads the body.

    .venv/bin/python bench/cloud_http.py [--json] [--bombs 4] [--inflated-mib 1024]

Starts ``python -m cloud`` (one worker, SQLite in a temp dir), then sends `--bombs` requests in
parallel, each a gzip body of `--inflated-mib` MiB of zeros (about 1 MB on the wire) to
``GET /healthz`` with ``Content-Encoding: gzip``, while a separate client asks ``/healthz`` once
the bombs are on the wire. Prints:

- bomb_wire_bytes, local_inflate_cpu_s: the bomb's size and the CPU this process needs to
  inflate one (what a server that inflates it pays);
- server_cpu_s: the server process's CPU time (psutil) from before the bombs until all answered;
- healthz_s: wall time of the /healthz request sent while the bombs were in flight;
- bombs_closed: how many bomb connections the server closed after answering.

Run it from a tree (PYTHONPATH) to measure that tree's cloud; it needs nothing but the CLI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.gzip_bombs import gzip_bomb, inflate_cpu_s  # noqa: E402  (after the path)

READ_TOKEN = "bench-read-token-0123456789"
GATEWAY_TOKEN = "bench-gateway-token-0123456789"


async def _bomb(port: int, bomb: bytes) -> tuple[bytes, bool]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        "GET /healthz HTTP/1.1\r\nHost: bench\r\nContent-Encoding: gzip\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(bomb)}\r\n\r\n"
    ).encode()
    writer.write(head + bomb)
    try:
        await writer.drain()
        status = await reader.readline()
        await reader.readuntil(b"\r\n\r\n")
        # Closed by the server, or still open (keep-alive) after 20 s.
        try:
            while await asyncio.wait_for(reader.read(65536), 20):
                pass
            closed = True
        except TimeoutError:
            closed = False
    finally:
        writer.close()
    return status.strip(), closed


async def _healthz(port: int) -> float:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
    await writer.drain()
    status = await reader.readline()
    await reader.read()
    writer.close()
    assert b" 200 " in status, status
    return time.perf_counter() - started


async def _run(port: int, pid: int, bomb: bytes, n: int) -> dict[str, object]:
    server = psutil.Process(pid)
    before = server.cpu_times()
    bombs = [asyncio.create_task(_bomb(port, bomb)) for _ in range(n)]
    await asyncio.sleep(0.05)  # the bombs are on the wire
    healthz_s = await _healthz(port)
    answers = await asyncio.gather(*bombs)
    after = server.cpu_times()
    return {
        "server_cpu_s": round(after.user + after.system - before.user - before.system, 3),
        "healthz_s": round(healthz_s, 3),
        "bomb_status": sorted({a[0].decode() for a in answers}),
        "bombs_closed": sum(closed for _, closed in answers),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--bombs", type=int, default=4)
    parser.add_argument("--inflated-mib", type=int, default=1024)
    args = parser.parse_args()
    bomb = gzip_bomb(args.inflated_mib)
    result: dict[str, object] = {
        "bomb_wire_bytes": len(bomb),
        "local_inflate_cpu_s": round(inflate_cpu_s(bomb), 3),
    }
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        config = Path(tmp) / "cloud.toml"
        config.write_text(
            f'database_url = "sqlite+aiosqlite:///{tmp}/cloud.db"\nport = 0\n'
            f'port_file = "{port_file}"\nread_token = "{READ_TOKEN}"\n'
            "analytics_interval_s = 0\nlog_level = 'WARNING'\n"
            f'[gateways]\ngw-1 = "{GATEWAY_TOKEN}"\n',
            encoding="utf-8",
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOMEEDGE_CLOUD__")}
        proc = subprocess.Popen([sys.executable, "-m", "cloud", "--config", str(config)], env=env)
        try:
            deadline = time.monotonic() + 60
            while not port_file.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the cloud did not start")
                time.sleep(0.05)
            port = int(port_file.read_text())
            result.update(asyncio.run(_run(port, proc.pid, bomb, args.bombs)))
        finally:
            proc.terminate()
            proc.wait(30)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:22} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
