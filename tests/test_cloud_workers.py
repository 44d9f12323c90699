"""Several cloud processes on one PostgreSQL database: each batch is stored exactly once.

These start real `python -m cloud` processes, so they also cover the CLI, start-up migrations
racing each other (advisory lock), the port file, and a clean stop on SIGTERM.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import asyncpg
import msgspec

from schemas.batch import Batch, encode_batch
from tests.test_cloud_api import (
    GW1_TOKEN,
    GW2_TOKEN,
    READ,
    READ_TOKEN,
    T0,
    make_aggregate,
    make_batch,
    upload_headers,
)

START_TIMEOUT_S = 60.0


def _write_config(
    path: Path, database_url: str, port_file: Path, workers: int = 1, extra: str = ""
) -> Path:
    path.write_text(
        f"database_url = {json.dumps(database_url)}\n"
        "host = '127.0.0.1'\n"
        "port = 0\n"
        f"port_file = {json.dumps(str(port_file))}\n"
        f"read_token = {json.dumps(READ_TOKEN)}\n"
        f"workers = {workers}\n"
        "log_level = 'INFO'\n"
        f"{extra}"
        "[gateways]\n"
        f"gw-1 = {json.dumps(GW1_TOKEN)}\n"
        f"gw-2 = {json.dumps(GW2_TOKEN)}\n",
        encoding="utf-8",
    )
    return path


@contextmanager
def cloud_process(
    tmp_path: Path, name: str, database_url: str, workers: int = 1, extra: str = ""
) -> Iterator[int]:
    """Run `python -m cloud` and yield its port; SIGTERM it afterwards and expect exit 0.
    `extra`: more top-level TOML lines of the config."""
    port_file = tmp_path / f"{name}.port"
    config = _write_config(tmp_path / f"{name}.toml", database_url, port_file, workers, extra)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMEEDGE_CLOUD__")}
    with open(tmp_path / f"{name}.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cloud", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not port_file.exists():
                assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()
                assert time.monotonic() < deadline, f"{name} did not start"
                time.sleep(0.05)
            yield int(port_file.read_text())
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, (tmp_path / f"{name}.log").read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def _counts(pg_url: str) -> tuple[int, int]:
    conn = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        n_batches = await conn.fetchval("SELECT count(*) FROM batches")
        n_aggs = await conn.fetchval("SELECT count(*) FROM aggregates")
        distinct = await conn.fetchval("SELECT count(DISTINCT batch_id) FROM batches")
    finally:
        await conn.close()
    assert distinct == n_batches
    return int(n_batches), int(n_aggs)


def test_two_worker_processes_store_each_concurrent_batch_once(tmp_path: Path, pg_url: str) -> None:
    batches = [
        make_batch(seq=i + 1, aggs=[make_aggregate(T0 + 60 * (10 * i + j)) for j in range(10)])
        for i in range(50)
    ]
    bodies = [gzip.compress(encode_batch(b)) for b in batches]

    async def post_everything_to_both(ports: tuple[int, int]) -> list[list[int]]:
        async with aiohttp.ClientSession() as session:

            async def post(port: int, body: bytes) -> int:
                url = f"http://127.0.0.1:{port}/api/v1/batches"
                async with session.post(url, data=body, headers=upload_headers()) as resp:
                    await resp.read()
                    return resp.status

            async def both(body: bytes) -> list[int]:
                return sorted(await asyncio.gather(*(post(p, body) for p in ports)))

            return list(await asyncio.gather(*(both(b) for b in bodies)))

    # Both start at once, so their start-up migrations race too.
    with (
        cloud_process(tmp_path, "a", pg_url) as port_a,
        cloud_process(tmp_path, "b", pg_url) as port_b,
    ):
        statuses = asyncio.run(post_everything_to_both((port_a, port_b)))
        # Exactly one of the two answers per batch stored it; the other saw a duplicate.
        assert statuses == [[200, 201]] * len(batches)
        assert asyncio.run(_counts(pg_url)) == (50, 500)
        # Sending everything again to one worker changes nothing.
        again = asyncio.run(post_everything_to_both((port_a,)))
        assert again == [[200]] * len(batches)
    assert asyncio.run(_counts(pg_url)) == (50, 500)


def test_one_batch_id_with_two_bodies_at_two_workers_stores_one_and_refuses_the_other(
    tmp_path: Path, pg_url: str
) -> None:
    # The same id uploaded with other content to each worker at once: whichever insert wins,
    # the other worker sees another body under that id (409), never a "duplicate".
    firsts = [
        make_batch(seq=i + 1, aggs=[make_aggregate(T0 + 60 * (3 * i + j)) for j in range(2)])
        for i in range(20)
    ]
    pairs = [
        (first, msgspec.structs.replace(first, aggregates=[*first.aggregates, first.aggregates[0]]))
        for first in firsts
    ]

    async def race(ports: tuple[int, int]) -> list[dict[int, int]]:
        async with aiohttp.ClientSession() as session:

            async def post(port: int, body: bytes) -> int:
                url = f"http://127.0.0.1:{port}/api/v1/batches"
                async with session.post(url, data=body, headers=upload_headers()) as resp:
                    await resp.read()
                    return resp.status

            async def one(pair: tuple[Batch, Batch]) -> dict[int, int]:
                bodies = [gzip.compress(encode_batch(b)) for b in pair]
                sends = (post(p, b) for p, b in zip(ports, bodies, strict=True))
                statuses = await asyncio.gather(*sends)
                # status -> aggregates in the body that got it
                return {s: len(b.aggregates) for s, b in zip(statuses, pair, strict=True)}

            return list(await asyncio.gather(*(one(pair) for pair in pairs)))

    with (
        cloud_process(tmp_path, "a", pg_url) as port_a,
        cloud_process(tmp_path, "b", pg_url) as port_b,
    ):
        answers = asyncio.run(race((port_a, port_b)))
    assert all(sorted(a) == [201, 409] for a in answers), answers
    stored = asyncio.run(_aggregate_counts(pg_url))
    assert stored == {pair[0].batch_id: a[201] for pair, a in zip(pairs, answers, strict=True)}


async def _aggregate_counts(pg_url: str) -> dict[str, int]:
    conn = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await conn.fetch(
            "SELECT b.batch_id, count(a.id) FROM batches b JOIN aggregates a ON a.batch = b.id"
            " GROUP BY b.batch_id"
        )
    finally:
        await conn.close()
    return {r[0]: int(r[1]) for r in rows}


def test_workers_setting_serves_one_port_from_several_processes(
    tmp_path: Path, pg_url: str
) -> None:
    async def exercise(port: int) -> set[int]:
        base = f"http://127.0.0.1:{port}"
        pids = set()
        # A fresh connection per request, so the kernel spreads them over the workers.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            for _ in range(40):
                async with session.get(f"{base}/healthz") as resp:
                    assert resp.status == 200
                    pids.add((await resp.json())["pid"])
            body = gzip.compress(encode_batch(make_batch()))
            async with session.post(
                f"{base}/api/v1/batches", data=body, headers=upload_headers()
            ) as resp:
                assert resp.status == 201
            async with session.get(
                f"{base}/api/v1/aggregates", params={"metric": "temperature"}, headers=READ
            ) as resp:
                assert len((await resp.json())["series"][0]["points"]) == 3
        return pids

    with cloud_process(tmp_path, "pool", pg_url, workers=2) as port:
        pids = asyncio.run(exercise(port))
    assert len(pids) == 2
    for pid in pids:  # the workers stopped with their parent
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )
