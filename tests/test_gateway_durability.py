"""Nothing acknowledged is lost: the gateway killed with SIGKILL mid-stream, the broker restarted
mid-stream, and a clean SIGTERM shutdown. Real Mosquitto (persistent sessions), real SQLite."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from gateway.admin import fetch_health
from gateway.app import Gateway
from schemas.telemetry import encode_telemetry
from schemas.topics import device_topic, gateway_status_topic
from tests.conftest import MosquittoBroker
from tests.test_gateway_ingest import TS0, Publisher, gateway_config, metric_value, query
from tests.waiting import wait_for, wait_until

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


class GatewayProcess:
    """``python -m gateway`` as a child process, ready once /healthz says ok."""

    def __init__(self, tmp_path: Path, broker: MosquittoBroker, topic_root: str) -> None:
        self.db = tmp_path / "gateway.db"
        self.port_file = tmp_path / "admin.port"
        self.config = tmp_path / "gateway.toml"
        self.config.write_text(
            f'gateway_id = "gw-proc"\n[mqtt]\nurl = "{broker.url}"\n'
            f'topic_root = "{topic_root}"\nclient_id = "gw-{topic_root}"\nreconnect_min_s = 0.1\n'
            f'[storage]\npath = "{self.db}"\n[admin]\nport = 0\nport_file = "{self.port_file}"\n'
        )
        self.log = tmp_path / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.port_file.unlink(missing_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "--config", str(self.config)],
                cwd=REPO,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            health = self.health() if self.port_file.exists() else {}
            # Publishing may start only once the broker granted the subscription: before the
            # first SUBACK there is no session to queue messages in.
            if health.get("status") == "ok" and health.get("mqtt_subscribed") is True:
                return
            time.sleep(0.05)
        raise TimeoutError("gateway not healthy: " + self.log.read_text())

    def health(self) -> dict[str, object]:
        return fetch_health(self.port_file)

    def signal(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=30)
        self.proc = None
        return code

    def rows(self) -> int:
        if not self.db.exists():
            return 0
        return int(query(self.db, "SELECT count(*) FROM readings")[0][0])

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


def publish_stream(pub: Publisher, topic_root: str, total: int) -> None:
    topics = [
        device_topic("h1", "lab", f"thermostat-{d}", "telemetry", root=topic_root) for d in range(4)
    ]
    for seq in range(total):
        payload = encode_telemetry(TS0 + seq * 0.001, {"temperature": 20.0}, seq=seq)
        pub.publish(topics[seq % 4], payload)
        if seq % 500 == 499:
            time.sleep(0.002)  # a steady stream, not one burst: the kill lands in the middle


def publish_markers(pub: Publisher, topic_root: str, first_seq: int) -> None:
    """After a stream is acked: one more message on each of its four topics (seq `first_seq`
    ..+3). Each is delivered after everything sent on its topic before it (MQTT keeps one
    publisher's QoS 1 messages to a subscription in order, redeliveries of un-acked ones first),
    and the writer commits in arrival order: once the four rows are stored, nothing of the
    stream, duplicate or extra, is still on its way."""
    for d in range(4):
        seq = first_seq + d
        topic = device_topic("h1", "lab", f"thermostat-{d}", "telemetry", root=topic_root)
        # A ts away from the stream's (TS0 + seq * 0.001): the unique index is on ts.
        pub.publish(topic, encode_telemetry(TS0 + 1000.0 + d, {"temperature": 20.0}, seq=seq))


def markers(db: Path, first_seq: int) -> int:
    return int(query(db, "SELECT count(*) FROM readings WHERE seq >= ?", first_seq)[0][0])


def test_kill_9_mid_stream_loses_nothing(
    tmp_path: Path, mosquitto: MosquittoBroker, topic_root: str
) -> None:
    total = 20_000
    gw = GatewayProcess(tmp_path, mosquitto, topic_root)
    pub = Publisher(mosquitto.port)
    try:
        gw.start()
        sender = threading.Thread(target=publish_stream, args=(pub, topic_root, total))
        sender.start()
        deadline = time.monotonic() + 60
        while gw.rows() < 3000:
            assert time.monotonic() < deadline, "the gateway stored nothing"
            time.sleep(0.01)
        assert gw.signal(signal.SIGKILL) == -signal.SIGKILL
        at_kill = gw.rows()
        sender.join(60)
        pub.wait_acked(60)
        assert at_kill < total, "the stream ended before the kill: the test proves nothing"
        gw.start()
        publish_markers(pub, topic_root, total)
        wait_until(lambda: markers(gw.db, total) == 4, within=60, what="the four markers")
        count, distinct = query(
            gw.db, "SELECT count(*), count(DISTINCT device || ':' || seq) FROM readings"
        )[0]
        assert (count, distinct) == (total + 4, total + 4)
        seqs = sorted(s for (s,) in query(gw.db, "SELECT seq FROM readings"))
        assert seqs == list(range(total + 4))
        assert gw.signal(signal.SIGTERM) == 0
    finally:
        gw.close()
        pub.close()


def test_sigterm_flushes_acks_and_says_offline(
    tmp_path: Path, mosquitto: MosquittoBroker, topic_root: str
) -> None:
    gw = GatewayProcess(tmp_path, mosquitto, topic_root)
    pub = Publisher(mosquitto.port)
    try:
        gw.start()
        for seq in range(2000):
            pub.publish(
                device_topic("h1", "lab", "plug-1", "telemetry", root=topic_root),
                encode_telemetry(TS0 + seq, {"power": float(seq)}, seq=seq),
            )
        pub.wait_acked(30)
        assert gw.signal(signal.SIGTERM) == 0
        stored = gw.rows()
        status = subprocess.run(
            [
                "mosquitto_sub",
                "-p",
                str(mosquitto.port),
                "-C",
                "1",
                "-W",
                "5",
                "-t",
                gateway_status_topic("gw-proc", root=topic_root),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert status.stdout.strip() == "offline"
        # Whatever was stored was acked: a restart adds only what was still missing, once.
        gw.start()
        wait_until(lambda: gw.rows() >= 2000, within=30, what="the 2000 rows after the restart")
        assert gw.rows() == 2000 and stored <= 2000
        assert "Traceback" not in gw.log.read_text()
    finally:
        gw.close()
        pub.close()


async def test_broker_restart_mid_stream_loses_nothing(
    tmp_path: Path, mosquitto: MosquittoBroker, topic_root: str
) -> None:
    total = 8000
    pub = Publisher(mosquitto.port, client_id=f"pub-{topic_root}", persistent=True)
    try:
        async with Gateway(gateway_config(tmp_path, mosquitto, topic_root)) as gw:
            assert await asyncio.to_thread(gw.mqtt.subscribed.wait, 10), "never subscribed"
            db = gw.config.storage.path

            def rows() -> int:
                return int(query(db, "SELECT count(*) FROM readings")[0][0])

            sender = asyncio.create_task(asyncio.to_thread(publish_stream, pub, topic_root, total))
            await wait_for(lambda: rows() >= 1500, what="the first rows")
            await asyncio.to_thread(mosquitto.restart, 0.5)
            at_restart = rows()
            await sender
            assert at_restart < total, "the stream ended before the restart: proves nothing"
            await asyncio.to_thread(pub.wait_acked, 60)
            await wait_for(lambda: rows() >= total, within=60, what="all rows after restart")
            publish_markers(pub, topic_root, total)
            await wait_for(lambda: markers(db, total) == 4, within=60, what="the four markers")
            assert query(db, "SELECT count(*), count(DISTINCT device || ':' || seq) FROM readings")[
                0
            ] == (total + 4, total + 4)
            assert metric_value(gw, "homeedge_gateway_mqtt_reconnects_total") >= 1
            assert gw.health()["mqtt_connected"] is True
    finally:
        pub.close()


def _received(port_file: Path) -> float:
    """The gateway's count of telemetry messages decoded and handed to its writer."""
    port = int(port_file.read_text().strip())
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith('homeedge_gateway_messages_received_total{kind="readings"}'):
                return float(line.split()[-1])
    return 0.0


def test_kill_9_after_the_hand_off_before_the_commit_redelivers(
    tmp_path: Path, mosquitto: MosquittoBroker, topic_root: str
) -> None:
    """The MQTT thread hands messages to the writer in bursts (one queue entry per read burst);
    none is acked before its commit: with every commit held back by another connection's write
    lock, the gateway takes the whole stream in and acks nothing, so after a kill -9 the broker
    delivers all of it again to the next run, and it is stored once."""
    total = 600
    gw = GatewayProcess(tmp_path, mosquitto, topic_root)
    pub = Publisher(mosquitto.port)
    lock = None
    try:
        gw.start()
        lock = sqlite3.connect(gw.db, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # the writer's commits now wait (busy_timeout)
        publish_stream(pub, topic_root, total)
        pub.wait_acked(30)
        wait_until(
            lambda: _received(gw.port_file) >= total, within=30, what="the stream handed off"
        )
        assert gw.signal(signal.SIGKILL) == -signal.SIGKILL
        lock.rollback()
        assert gw.rows() == 0  # nothing was committed, so nothing may have been acked
        gw.start()
        wait_until(lambda: gw.rows() >= total, within=60, what="the redelivered stream")
        publish_markers(pub, topic_root, total)
        wait_until(lambda: markers(gw.db, total) == 4, within=60, what="the four markers")
        seqs = sorted(s for (s,) in query(gw.db, "SELECT seq FROM readings"))
        assert seqs == list(range(total + 4))
        assert gw.signal(signal.SIGTERM) == 0
    finally:
        if lock is not None:
            lock.close()
        gw.close()
        pub.close()
