"""Cloud sync end to end under failures, with live telemetry (timestamped now, 1 s windows):

- the cloud (``python -m cloud``, SQLite) is SIGKILLed mid-run and restarted on the same port and
  database: every batch the gateway made arrives, none twice, no gaps;
- the gateway (``python -m gateway``) is SIGKILLed after the cloud stored a batch and before the
  gateway heard so (a proxy forwards the POST, then kills the gateway before answering): the
  restarted gateway resends it, the cloud answers 200 duplicate, nothing is stored twice.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
from sqlalchemy import select

from cloud.db import batches as cloud_batches
from cloud.web import ENGINE_KEY
from gateway.app import Gateway
from gateway.sync.wiring import install_sync
from schemas.telemetry import encode_telemetry
from schemas.topics import device_topic
from tests.conftest import MosquittoBroker
from tests.test_e2e_sync import (
    GATEWAY_ID,
    GW_TOKEN,
    READ_TOKEN,
    Exchange,
    InProcessCloud,
    RecordingProxy,
    cloud_config,
    gateway_config,
    get_json,
)
from tests.test_gateway_ingest import Publisher, metric_value, query
from tests.waiting import wait_for

LIVE_SYNC: dict[str, dict[str, Any]] = {
    # Live readings: 1 s windows closed 0.5 s after their end, a pass every 0.25 s; first pass
    # starts at the newest 2 s instead of replaying an hour of empty windows.
    "aggregation": {
        "window_s": 1,
        "grace_s": 0.5,
        "interval_s": 0.25,
        "backfill_s": 2,
        "windows_per_batch": 1,
    },
    "privacy": {"min_window_count": 1},  # the cloud's floor is lowered to match (CLOUD_FLOOR)
    "uplink": {"catchup_batches_per_s": 100, "catchup_burst": 20},
}


# The cloud refuses windows under its own floor (5 by default): lowered to the gateway's here.
CLOUD_FLOOR = LIVE_SYNC["privacy"]["min_window_count"]


class LivePublisher:
    """Telemetry of two devices every `period` seconds, timestamped now, until `stop()`."""

    def __init__(self, broker: MosquittoBroker, topic_root: str, period: float = 0.05) -> None:
        self._publisher = Publisher(broker.port)
        self._topics = [
            device_topic("home-x", "kitchen", f"thermostat-{i}", "telemetry", root=topic_root)
            for i in (1, 2)
        ]
        self._period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rng = random.Random(3)
        seq = 0
        while not self._stop.wait(self._period):
            seq += 1
            for topic in self._topics:
                values = {"temperature": round(rng.uniform(18, 24), 2)}
                self._publisher.publish(topic, encode_telemetry(time.time(), values, seq=seq))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._publisher.wait_acked()
        self._publisher.close()


@dataclass
class Child:
    """A `python -m cloud|gateway` subprocess that writes its port to a file."""

    args: list[str]
    port_file: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    _log: IO[bytes] | None = None

    async def start(self) -> None:
        self.port_file.unlink(missing_ok=True)
        if self._log is not None:
            self._log.close()
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(  # noqa: ASYNC220 (returns at once; waits are polled)
            [sys.executable, *self.args], stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while not (self.port_file.exists() and self.port_file.read_text().strip().isdigit()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.args} did not start:\n{self.log_path.read_text()}")
            await asyncio.sleep(0.05)
        self.port = int(self.port_file.read_text())

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(self.proc.wait)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait)
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def cloud_child(workdir: Path, port: int = 0) -> Child:
    workdir.mkdir(exist_ok=True)
    config = workdir / "cloud.toml"
    config.write_text(
        f'database_url = "sqlite+aiosqlite:///{workdir / "cloud.db"}"\n'
        f'host = "127.0.0.1"\nport = {port}\nport_file = "{workdir / "port"}"\n'
        f'read_token = "{READ_TOKEN}"\nanalytics_interval_s = 0\n'
        f"min_window_count = {CLOUD_FLOOR}\n"
        f'[gateways]\n{GATEWAY_ID} = "{GW_TOKEN}"\n'
    )
    return Child(["-m", "cloud", "--config", str(config)], workdir / "port", workdir / "cloud.log")


def outbox_rows(db: Path) -> list[tuple[int, str, str, int, int]]:
    return [
        (int(seq), bid, status, int(n), int(attempts))
        for seq, bid, status, n, attempts in query(
            db, "SELECT seq, batch_id, status, n_aggregates, attempts FROM outbox ORDER BY seq"
        )
    ]


def synced(db: Path) -> bool:
    """Every window holding a stored reading has been aggregated (the watermark is past the
    newest reading) and no batch waits in the outbox."""
    ((watermark,),) = query(db, "SELECT watermark FROM sync_watermark WHERE id = 1") or [(None,)]
    ((newest,),) = query(db, "SELECT max(ts) FROM readings")
    ((pending,),) = query(db, "SELECT count(*) FROM outbox WHERE status = 'pending'")
    return watermark is not None and newest is not None and watermark > newest and pending == 0


async def cloud_batch_count(url: str) -> int:
    try:
        body = await get_json(url, "/api/v1/gateways")
    except aiohttp.ClientError:
        return -1
    return next(g["batches"] for g in body["gateways"] if g["gateway"] == GATEWAY_ID)


async def wait_async(check: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def assert_cloud_has_exactly_the_outbox(cloud_url: str, rows: list[Any], cloud: set) -> None:
    """Every outbox batch was acknowledged and is in the cloud once, seq 1..N without gaps."""
    assert rows and all(status == "sent" for _, _, status, _, _ in rows), rows
    assert [seq for seq, *_ in rows] == list(range(1, len(rows) + 1))
    assert cloud == {(seq, bid) for seq, bid, *_ in rows}
    body = await get_json(cloud_url, "/api/v1/gateways")
    (status,) = [g for g in body["gateways"] if g["gateway"] == GATEWAY_ID]
    assert status["batches"] == len(rows) == status["last_seq"]
    assert status["missing"] == 0 and status["gaps"] == []


async def test_cloud_killed_and_restarted_every_batch_arrives_once(
    tmp_path: Path, mosquitto: MosquittoBroker, topic_root: str
) -> None:
    cloud = cloud_child(tmp_path / "cloud")
    await cloud.start()
    config = gateway_config(tmp_path, mosquitto, topic_root, cloud.url, **LIVE_SYNC)
    gw = Gateway(config)
    sync = install_sync(gw, config)
    db = tmp_path / "gateway.db"
    live: LivePublisher | None = None
    try:
        async with gw:
            assert await asyncio.to_thread(gw.mqtt.subscribed.wait, 10), "never subscribed"
            live = LivePublisher(mosquitto, topic_root)

            async def stored_three() -> bool:
                return await cloud_batch_count(cloud.url) >= 3

            await wait_async(stored_three, 20, "3 batches in the cloud")
            await cloud.kill()
            before = await asyncio.to_thread(
                lambda: query(db, "SELECT count(*) FROM outbox WHERE status = 'sent'")[0][0]
            )
            # Down long enough for batches to pile up and sends to fail and retry.
            await wait_for(
                lambda: (
                    sync.health()["outbox_depth"] >= 4
                    and metric_value(gw, "homeedge_gateway_sync_retries_total") >= 2
                ),
                what="a backlog while the cloud is down",
            )
            assert sync.health()["uplink"] == "retrying"
            restarted = cloud_child(tmp_path / "cloud", port=cloud.port)
            await cloud.stop()
            cloud = restarted
            await cloud.start()

            async def caught_up() -> bool:
                return await cloud_batch_count(cloud.url) >= before + 6

            await wait_async(caught_up, 30, "the backlog in the cloud")
            live.stop()
            live = None
            # The last windows close (grace 0.5 s) and their batches drain.
            await wait_for(lambda: synced(db), within=30, what="the last windows sent")
            await wait_for(lambda: sync.health()["outbox_depth"] == 0, what="an empty outbox")
            assert sync.health()["uplink"] == "ok"
        rows = outbox_rows(db)
        cloud_db = tmp_path / "cloud" / "cloud.db"
        in_cloud = query(
            cloud_db, "SELECT seq, batch_id FROM batches WHERE gateway = ?", GATEWAY_ID
        )
        assert len(in_cloud) == len({bid for _, bid in in_cloud})
        await assert_cloud_has_exactly_the_outbox(cloud.url, rows, set(in_cloud))
        # Some batches waited through the outage (attempted more than once), and what they
        # carried arrived: the cloud holds as many aggregates as the batches did.
        assert max(attempts for *_, attempts in rows) > 1
        stored = query(cloud_db, "SELECT count(*) FROM aggregates")[0][0]
        assert stored == sum(n for _, _, _, n, _ in rows)
    finally:
        if live is not None:
            live.stop()
        await cloud.stop()


@dataclass
class KillOnce:
    """Proxy hook: after the cloud stored batch seq >= `at_seq`, SIGKILL the gateway before it
    gets the answer."""

    at_seq: int
    gateway: Child | None = None
    killed: str | None = None
    answers: dict[str, list[int]] = field(default_factory=dict)

    async def __call__(self, ex: Exchange) -> None:
        if ex.method != "POST" or not ex.status:
            return
        batch = ex.batch
        self.answers.setdefault(batch.batch_id, []).append(ex.status)
        if self.killed is None and ex.status == 201 and batch.seq >= self.at_seq:
            assert self.gateway is not None
            await self.gateway.kill()
            self.killed = batch.batch_id


def gateway_toml(tmp_path: Path, broker: MosquittoBroker, topic_root: str, uplink: str) -> Path:
    sync = LIVE_SYNC
    lines = [
        f'gateway_id = "{GATEWAY_ID}"',
        "[mqtt]",
        f'url = "{broker.url}"\nclient_id = "gw-{topic_root}"\ntopic_root = "{topic_root}"',
        "reconnect_min_s = 0.1\nreconnect_max_s = 1.0",
        "[storage]",
        f'path = "{tmp_path / "gateway.db"}"',
        "[admin]",
        f'port = 0\nport_file = "{tmp_path / "admin-port"}"',
        "[aggregation]",
        *(f"{k} = {v}" for k, v in sync["aggregation"].items()),
        "[privacy]",
        *(f"{k} = {v}" for k, v in sync["privacy"].items()),
        "[uplink]",
        f'url = "{uplink}"\ntoken = "{GW_TOKEN}"\nbackoff_min_s = 0.1\nbackoff_max_s = 0.5',
        *(f"{k} = {v}" for k, v in sync["uplink"].items()),
    ]
    path = tmp_path / "gateway.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def admin_health(port: int) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/healthz") as resp,
    ):
        body: dict[str, Any] = await resp.json()
        return body


async def test_gateway_killed_before_recording_a_sent_batch_resends_it_once(
    tmp_path: Path, mosquitto: MosquittoBroker, topic_root: str
) -> None:
    cloud = InProcessCloud(
        cloud_config(f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}", min_window_count=CLOUD_FLOOR)
    )
    await cloud.start()
    hook = KillOnce(at_seq=3)
    proxy = RecordingProxy(cloud.url, after_forward=hook)
    await proxy.start()
    config = gateway_toml(tmp_path, mosquitto, topic_root, proxy.url)
    args = ["-m", "gateway", "--config", str(config), "--log-level", "INFO"]
    gateway = Child(args, tmp_path / "admin-port", tmp_path / "gateway.log")
    hook.gateway = gateway
    live: LivePublisher | None = None
    try:
        await gateway.start()
        live = LivePublisher(mosquitto, topic_root)
        await wait_for(lambda: hook.killed is not None, 30, "the gateway killed mid-send")
        killed = hook.killed
        assert killed is not None and gateway.proc is not None
        assert gateway.proc.returncode == -signal.SIGKILL
        # The outbox still has it pending: the kill came before the gateway heard the 201.
        pending = query(
            tmp_path / "gateway.db", "SELECT status FROM outbox WHERE batch_id = ?", killed
        )
        assert pending == [("pending",)]
        await gateway.start()  # same config, same database, same MQTT session
        await wait_for(
            lambda: hook.answers.get(killed) == [201, 200], 30, "the resend answered 200"
        )
        await wait_for(
            lambda: sum(s == [201] for s in hook.answers.values()) >= 5, 30, "more batches"
        )
        live.stop()
        live = None
        await wait_for(lambda: synced(tmp_path / "gateway.db"), 30, "the last windows sent")

        async def drained() -> bool:
            return (await admin_health(gateway.port))["sync"]["outbox_depth"] == 0

        await wait_async(drained, 20, "an empty outbox")
        await gateway.stop()
        rows = outbox_rows(tmp_path / "gateway.db")
        assert cloud.app is not None
        async with cloud.app[ENGINE_KEY].connect() as conn:
            result = await conn.execute(
                select(cloud_batches.c.seq, cloud_batches.c.batch_id).where(
                    cloud_batches.c.gateway == GATEWAY_ID
                )
            )
            in_cloud = [(int(seq), bid) for seq, bid in result.all()]
        assert len(in_cloud) == len({bid for _, bid in in_cloud})
        await assert_cloud_has_exactly_the_outbox(cloud.url, rows, set(in_cloud))
        # Only the killed batch was sent twice; the cloud stored it the first time only.
        twice = {bid: s for bid, s in hook.answers.items() if s != [201]}
        assert twice == {killed: [201, 200]}
        assert "duplicate" in next(e.response.decode() for e in proxy.posts() if e.status == 200)
    finally:
        if live is not None:
            live.stop()
        await gateway.stop()
        await proxy.stop()
        await cloud.stop()
