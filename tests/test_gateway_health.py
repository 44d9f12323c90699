"""``/healthz`` tells the truth, and repeated warnings do not flood the log: a real gateway, a
real Mosquitto, and a real full disk (a 4 MB tmpfs holding the SQLite file, filled up with a
filler file while messages arrive, then freed)."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from gateway.app import Gateway
from gateway.config import GatewayConfig, IngestConfig, StorageConfig
from gateway.ingest import AudioIn
from schemas.audio import encode_audio_frame
from schemas.telemetry import encode_telemetry
from schemas.topics import device_topic
from tests.conftest import MosquittoBroker, need
from tests.test_gateway_ingest import TS0, Publisher, gateway_config, metric_value, query
from tests.waiting import wait_for

FULL = "database or disk is full"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs of the test's own (we run as root in CI), unmounted afterwards. Room for
    the backlog's WAL once the filler is gone: with 2 MB the backlog's commits grew the WAL
    into all of the freed space before a checkpoint could move it into the database file."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None:
        need("no mount command for a small tmpfs")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        need(f"cannot mount a tmpfs for the full-disk test: {done.stderr.strip()}")
    try:
        yield disk
    finally:
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(disk: Path) -> Path:
    """Write a filler file until the file system has no page left; returns its path."""
    filler = disk / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb", buffering=0) as f:
        while len(chunk) >= 512:
            try:
                f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                chunk = chunk[: len(chunk) // 2]
    assert os.statvfs(disk).f_bavail == 0
    return filler


async def healthz(gw: Gateway) -> tuple[int, dict[str, Any]]:
    """The HTTP status and body of the gateway's /healthz (a 503's body too)."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{gw.admin_port}/healthz") as resp,
    ):
        return resp.status, await resp.json()


def stream(pub: Publisher, topic_root: str, seqs: range) -> None:
    topics = [
        device_topic("h1", "lab", f"thermostat-{d}", "telemetry", root=topic_root) for d in range(4)
    ]
    for seq in seqs:
        values = {"temperature": 20.0 + seq % 7, "humidity": 40.0 + seq % 5}
        pub.publish(topics[seq % 4], encode_telemetry(TS0 + seq * 0.01, values, seq=seq))


def stored_seqs(db: Path) -> list[int]:
    return sorted(s for (s,) in query(db, "SELECT seq FROM readings WHERE metric = 'temperature'"))


async def test_full_disk_degrades_healthz_loses_nothing_and_recovers(
    tmp_path: Path,
    small_disk: Path,
    mosquitto: MosquittoBroker,
    topic_root: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    base = gateway_config(tmp_path, mosquitto, topic_root)
    db = small_disk / "gateway.db"
    # Checkpoints every 100 ms: dozens of failed ones while the disk is full.
    config = base.model_copy(update={"storage": StorageConfig(path=db, checkpoint_interval_ms=100)})
    before, during = range(0, 200), range(200, 1200)
    pub = Publisher(mosquitto.port)
    try:
        async with Gateway(config) as gw:
            assert await asyncio.to_thread(gw.mqtt.subscribed.wait, 10), "never subscribed"
            status, body = await healthz(gw)
            assert status == 200 and body["status"] == "ok", body
            first, second = before[:100], before[100:]
            stream(pub, topic_root, first)
            # Polled every 0.2 s: each poll is a reader, which keeps the WAL from restarting.
            await wait_for(
                lambda: len(stored_seqs(db)) == len(first), what="the first rows", interval=0.2
            )
            # A reader holds its snapshot while the second rows commit, so their WAL frames are
            # still to be checkpointed when the disk fills (else a checkpoint that ran just
            # before the fill has nothing left to write, and succeeds on a full disk).
            reader = sqlite3.connect(db)
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM readings").fetchone()
            stream(pub, topic_root, second)
            await wait_for(
                lambda: len(stored_seqs(db)) == len(before), what="the second rows", interval=0.2
            )

            full_at = time.time()
            filler = await asyncio.to_thread(fill, small_disk)
            reader.rollback()
            reader.close()
            stream(pub, topic_root, during)
            await asyncio.to_thread(pub.wait_acked)  # the broker holds all of them now
            await wait_for(
                lambda: gw.health()["status"] != "ok", within=30, what="/healthz not saying ok"
            )
            status, body = await healthz(gw)
            assert status == 503 and body["status"] == "degraded", body
            writer = body["checks"]["writer"]
            assert writer["ok"] is False and writer["reason"] == FULL, writer
            assert full_at <= writer["since"] <= time.time() and writer["failures"] >= 1
            assert body["writer_alive"] is True and body["mqtt_connected"] is True
            # The checkpoint task keeps running and failing (counted), and says so in /healthz.
            await wait_for(
                lambda: metric_value(gw, "homeedge_gateway_wal_checkpoint_failures_total") >= 5,
                what="failed checkpoints",
            )
            checkpoint = (await healthz(gw))[1]["checks"]["wal_checkpoint"]
            assert checkpoint["ok"] is False and checkpoint["reason"] == FULL, checkpoint
            # Stuck: what is not committed is not acked (the broker keeps it for us).
            acked_while_full = metric_value(gw, "homeedge_gateway_acks_total")
            stored_while_full = len(stored_seqs(db))
            assert stored_while_full < len(before) + len(during)
            assert acked_while_full < len(before) + len(during)

            await asyncio.to_thread(filler.unlink)
            await wait_for(
                lambda: len(stored_seqs(db)) == len(before) + len(during),
                within=60,
                interval=0.2,
                what="the backlog committed",
            )
            await wait_for(lambda: gw.writer.failure is None, what="the writer check clearing")
            await wait_for(
                lambda: gw.health()["status"] == "ok", what="/healthz back to ok", within=10
            )
            status, body = await healthz(gw)
            assert status == 200 and body["status"] == "ok", body
            assert body["checks"] == {
                "mqtt": {"ok": True},
                "writer": {"ok": True},
                "wal_checkpoint": {"ok": True},
            }
            checkpoint_failures = metric_value(gw, "homeedge_gateway_wal_checkpoint_failures_total")
    finally:
        pub.close()

    # Every message exactly once, those published while the disk was full included.
    assert stored_seqs(db) == list(range(len(before) + len(during)))
    count, distinct = query(
        db, "SELECT count(*), count(DISTINCT device || metric || seq) FROM readings"
    )[0]
    assert count == distinct == 2 * (len(before) + len(during))
    ours = [r for r in caplog.records if r.name.startswith("gateway")]
    assert not [r for r in ours if r.exc_info], "a traceback was logged"
    checkpoint_lines = [r for r in ours if r.getMessage().startswith("WAL checkpoint of")]
    assert checkpoint_lines and FULL in checkpoint_lines[0].getMessage()
    # Rate-limited: one line per 10 s, not one per failed checkpoint.
    assert len(checkpoint_lines) < checkpoint_failures
    assert any("WAL checkpoints work again" in r.getMessage() for r in ours)
    commit_lines = [r for r in ours if r.getMessage().startswith("commit of")]
    assert commit_lines and all(FULL in r.getMessage() for r in commit_lines)
    assert any("commits work again" in r.getMessage() for r in ours)


async def test_broker_down_degrades_healthz_with_since(
    tmp_path: Path, mosquitto: MosquittoBroker, topic_root: str
) -> None:
    async with Gateway(gateway_config(tmp_path, mosquitto, topic_root)) as gw:
        assert await asyncio.to_thread(gw.mqtt.subscribed.wait, 10), "never subscribed"
        assert (await healthz(gw))[1]["checks"]["mqtt"] == {"ok": True}
        stopped_at = time.time()
        await asyncio.to_thread(mosquitto.stop)
        await wait_for(lambda: not gw.mqtt.connected, what="the disconnect")
        status, body = await healthz(gw)
        assert status == 503 and body["status"] == "degraded"
        mqtt = body["checks"]["mqtt"]
        assert mqtt["ok"] is False and mqtt["reason"] == "not connected to the broker"
        assert stopped_at <= mqtt["since"] <= time.time()
        assert body["checks"]["writer"] == {"ok": True}
        await asyncio.to_thread(mosquitto.start)
        await wait_for(lambda: gw.health()["status"] == "ok", within=30, what="reconnect")
        assert (await healthz(gw))[0] == 200


async def test_dropped_audio_frames_log_one_line_not_one_each(
    tmp_path: Path, mosquitto: MosquittoBroker, topic_root: str, caplog: pytest.LogCaptureFixture
) -> None:
    base = gateway_config(tmp_path, mosquitto, topic_root)
    config: GatewayConfig = base.model_copy(update={"ingest": IngestConfig(audio_queue_frames=2)})
    gw = Gateway(config)
    release = asyncio.Event()

    async def slow_consumer(_frame: AudioIn) -> None:
        await release.wait()  # holds the dispatcher: the queue behind it fills and drops

    gw.on_audio(slow_consumer)
    pub = Publisher(mosquitto.port)
    try:
        async with gw:
            assert await asyncio.to_thread(gw.mqtt.subscribed.wait, 10), "never subscribed"
            mic = device_topic("h1", "hall", "microphone-1", "audio", root=topic_root)
            samples = np.zeros(1600, np.int16)
            for seq in range(60):
                pub.publish(mic, encode_audio_frame(TS0 + seq * 0.1, seq, samples))
            await asyncio.to_thread(pub.wait_acked)
            dropped = {"queue": "audio"}
            await wait_for(
                lambda: metric_value(gw, "homeedge_gateway_queue_dropped_total", dropped) >= 50,
                what="dropped frames",
            )
            release.set()
    finally:
        pub.close()
    lines = [r.getMessage() for r in caplog.records if "callback queue full" in r.getMessage()]
    assert lines == ["audio callback queue full (2): dropped the oldest item"]
