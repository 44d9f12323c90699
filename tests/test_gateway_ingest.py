"""The gateway's ingest path against a real Mosquitto and a real SQLite file, in process:
round trip, dead letters, duplicates, state, audio, adapters, Writer.run, callbacks, admin HTTP.

`Publisher` and the helpers here are also used by tests/test_gateway_durability.py.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import Connection, text

from gateway.app import Gateway
from gateway.config import AdminConfig, GatewayConfig, MqttConfig, StorageConfig
from gateway.ingest import AudioIn
from gateway.monitoring import GatewayMetrics
from gateway.records import DeadLetter, Reading
from schemas.audio import encode_audio_frame
from schemas.telemetry import encode_telemetry
from schemas.topics import device_topic
from tests.adapter_fakes import FnAdapter
from tests.conftest import MosquittoBroker
from tests.waiting import wait_for

# An hour ago, on a whole hour: inside the time range the gateway accepts ([ingest] max_age_s,
# 7 days by default) on whatever day the tests run.
TS0 = float(int(time.time()) // 3600 * 3600 - 3600)


class Publisher:
    """A paho publisher in its own thread; `wait_acked` returns once the broker acked all."""

    def __init__(self, port: int, *, client_id: str = "", persistent: bool = False) -> None:
        self.acked = 0
        self.sent = 0
        self._cond = threading.Condition()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not persistent
        )
        self.client.max_inflight_messages_set(500)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_publish(self, *_args: Any) -> None:
        with self._cond:
            self.acked += 1
            self._cond.notify_all()

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain)
        self.sent += 1

    def wait_acked(self, timeout: float = 60.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.acked >= self.sent, timeout):
                raise TimeoutError(f"broker acked {self.acked} of {self.sent}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def gateway_config(
    tmp_path: Path, broker: MosquittoBroker, topic_root: str, **mqtt: Any
) -> GatewayConfig:
    return GatewayConfig(
        gateway_id="gw-test",
        mqtt=MqttConfig(
            url=broker.url,
            topic_root=topic_root,
            client_id=f"gw-{topic_root}",
            reconnect_min_s=0.1,
            reconnect_max_s=1.0,
            **mqtt,
        ),
        storage=StorageConfig(path=tmp_path / "gateway.db"),
        admin=AdminConfig(port=0),
    )


def query(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def metric_value(gw: Gateway, name: str, labels: dict[str, str] | None = None) -> float:
    value = gw.metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


@pytest.fixture
async def gateway(
    tmp_path: Path, mosquitto: MosquittoBroker, topic_root: str
) -> AsyncIterator[Gateway]:
    async with Gateway(gateway_config(tmp_path, mosquitto, topic_root)) as gw:
        assert await asyncio.to_thread(gw.mqtt.subscribed.wait, 10), "never subscribed"
        yield gw


@pytest.fixture
def publisher(mosquitto: MosquittoBroker) -> Any:
    pub = Publisher(mosquitto.port)
    yield pub
    pub.close()


def rows(gw: Gateway) -> int:
    return int(query(gw.config.storage.path, "SELECT count(*) FROM readings")[0][0])


async def test_round_trip(gateway: Gateway, publisher: Publisher, topic_root: str) -> None:
    sent = set()
    for d in range(3):
        topic = device_topic("home-a", f"room-{d}", f"thermostat-{d}", "telemetry", root=topic_root)
        for seq in range(50):
            ts = TS0 + seq * 0.25
            values = {"temperature": 20 + seq / 8 + d, "humidity": 40.0 - seq / 3}
            publisher.publish(topic, encode_telemetry(ts, values, seq=seq))
            for metric, value in values.items():
                sent.add(("home-a", f"room-{d}", f"thermostat-{d}", metric, ts, value, seq))
    await asyncio.to_thread(publisher.wait_acked)
    await wait_for(lambda: rows(gateway) >= len(sent), what="all rows")
    stored = query(
        gateway.config.storage.path,
        "SELECT home, room, device, metric, ts, value, seq FROM readings",
    )
    assert len(stored) == len(sent) and set(stored) == sent
    devices = query(gateway.config.storage.path, "SELECT device, room, device_class FROM devices")
    assert sorted(devices) == [(f"thermostat-{d}", f"room-{d}", "thermostat") for d in range(3)]
    await wait_for(lambda: metric_value(gateway, "homeedge_gateway_acks_total") >= 150)
    assert metric_value(gateway, "homeedge_gateway_rows_stored_total") == len(sent)


async def test_bad_input_is_dead_lettered_and_ingest_goes_on(
    gateway: Gateway, publisher: Publisher, topic_root: str
) -> None:
    tele = device_topic("h1", "kitchen", "thermostat-1", "telemetry", root=topic_root)
    bad = [
        (tele, b"{not json", "invalid_json"),
        (tele, b'{"ts": "x", "readings": {"temperature": 1}}', "validation"),
        (tele, b'{"ts": 1764403200, "readings": {"temperature": 1e999}}', "validation"),
        (tele, b'{"ts": 1764403200}', "validation"),
        (
            tele,
            b'{"ts": 1764403200, "readings": {"t": 1}, "p": "' + b"x" * 20000 + b'"}',
            "oversized",
        ),
        (f"{topic_root}/h1/kitchen/telemetry", b"{}", "bad_topic"),
        (f"{topic_root}/h1/kitchen/thermostat-1/video", b"{}", "bad_topic"),
        (
            device_topic("h1", "hall", "microphone-1", "audio", root=topic_root),
            b"RIFF" * 10,
            "bad_header",
        ),
        (device_topic("h1", "hall", "door-1", "state", root=topic_root), b"ajar", "validation"),
    ]
    for topic, payload, _ in bad:
        publisher.publish(topic, payload)
    for seq in range(10):
        publisher.publish(tele, encode_telemetry(TS0 + seq, {"temperature": 21.0}, seq=seq))
    await asyncio.to_thread(publisher.wait_acked)
    db = gateway.config.storage.path
    await wait_for(lambda: rows(gateway) == 10, what="good rows after the bad ones")
    await wait_for(lambda: len(query(db, "SELECT id FROM dead_letters")) == len(bad))
    stored = query(db, "SELECT topic, payload, reason, detail FROM dead_letters ORDER BY id")
    assert [(t, r) for t, _p, r, _d in stored] == [(t, r) for t, _p, r in bad]
    assert all(detail for *_, detail in stored)
    assert stored[0][1] == b"{not json"
    assert (
        metric_value(gateway, "homeedge_gateway_dead_letters_total", {"reason": "bad_topic"}) == 2
    )
    assert (
        metric_value(gateway, "homeedge_gateway_dead_letters_total", {"reason": "validation"}) == 4
    )
    # Every message, bad or good, was acknowledged (the gateway's birth message too).
    await wait_for(lambda: metric_value(gateway, "homeedge_gateway_acks_total") >= len(bad) + 10)
    assert gateway.health()["status"] == "ok"


async def test_duplicates_are_stored_once(
    gateway: Gateway, publisher: Publisher, topic_root: str
) -> None:
    committed: list[Reading] = []

    async def on_readings(batch: Sequence[Reading]) -> None:
        committed.extend(batch)

    gateway.on_readings(on_readings)
    tele = device_topic("h1", "kitchen", "plug-1", "telemetry", root=topic_root)
    payload = encode_telemetry(TS0, {"power": 100.0, "energy": 5.0}, seq=1)
    for _ in range(3):
        publisher.publish(tele, payload)
    # The same seq with another ts is a new reading (a counter that restarted after a reboot;
    # a redelivery repeats the ts), and so is the same ts with another seq.
    publisher.publish(tele, encode_telemetry(TS0 + 1, {"power": 99.0}, seq=1))
    publisher.publish(tele, encode_telemetry(TS0, {"power": 101.0}, seq=2))
    publisher.publish(tele, encode_telemetry(TS0, {"power": 101.0}, seq=2))
    await asyncio.to_thread(publisher.wait_acked)
    await wait_for(lambda: metric_value(gateway, "homeedge_gateway_duplicate_rows_total") == 5)
    stored = query(gateway.config.storage.path, "SELECT metric, seq, value FROM readings")
    assert sorted(stored) == [
        ("energy", 1, 5.0),
        ("power", 1, 99.0),
        ("power", 1, 100.0),
        ("power", 2, 101.0),
    ]
    # Callbacks see each stored reading once, never the duplicates. A marker (seq 3) follows
    # them on the same topic and connection: the broker delivers it after them, the writer
    # commits in arrival order and the callbacks run in commit order, so once the marker is
    # seen every callback a duplicate could have caused has run.
    publisher.publish(tele, encode_telemetry(TS0 + 3, {"power": 102.0}, seq=3))
    await wait_for(lambda: any(r.seq == 3 for r in committed), what="the marker's callback")
    before_marker = [(r.metric, r.seq, r.value) for r in committed if r.seq != 3]
    assert sorted(before_marker) == sorted(stored)


async def test_state_audio_and_callbacks(
    tmp_path: Path, mosquitto: MosquittoBroker, topic_root: str, publisher: Publisher
) -> None:
    gw = Gateway(gateway_config(tmp_path, mosquitto, topic_root))
    frames: list[AudioIn] = []
    batches: list[Sequence[Reading]] = []

    async def on_audio(frame: AudioIn) -> None:
        frames.append(frame)

    async def on_readings(batch: Sequence[Reading]) -> None:
        batches.append(batch)

    gw.on_audio(on_audio)
    gw.on_readings(on_readings)
    async with gw:
        assert await asyncio.to_thread(gw.mqtt.subscribed.wait, 10), "never subscribed"
        db = gw.config.storage.path
        publisher.publish(
            device_topic("h1", "hall", "door-1", "state", root=topic_root), b"online", retain=True
        )
        samples = (np.sin(np.arange(8000) / 5) * 3000).astype(np.int16)
        mic = device_topic("h1", "hall", "microphone-1", "audio", root=topic_root)
        publisher.publish(mic, encode_audio_frame(TS0, 9, samples))
        tele = device_topic("h1", "hall", "door-1", "telemetry", root=topic_root)
        publisher.publish(tele, encode_telemetry(TS0, {"door": 1.0}, seq=1))
        await asyncio.to_thread(publisher.wait_acked)
        await wait_for(lambda: frames and batches, what="callbacks")
        assert frames[0].device == "microphone-1" and frames[0].frame.seq == 9
        assert np.array_equal(frames[0].frame.samples, samples)
        assert [(r.device, r.metric, r.value) for r in batches[0]] == [("door-1", "door", 1.0)]
        devices = query(db, "SELECT device, device_class, availability, last_seen FROM devices")
        by_name = {d[0]: d for d in devices}
        assert by_name["door-1"][1:3] == ("door", "online")
        assert by_name["microphone-1"][1] == "microphone" and by_name["microphone-1"][3] > TS0
        # Raw audio is never stored: only the two rows above and one reading exist.
        assert rows(gw) == 1 and query(db, "SELECT count(*) FROM dead_letters") == [(0,)]
        assert metric_value(gw, "homeedge_gateway_audio_frames_total") == 1
        publisher.publish(
            device_topic("h1", "hall", "door-1", "state", root=topic_root), b"offline", retain=True
        )
        await wait_for(
            lambda: (
                query(db, "SELECT availability FROM devices WHERE device = 'door-1'")
                == [("offline",)]
            )
        )


def fake_adapter(topic: str, payload: bytes, received_at: float) -> list[Reading] | DeadLetter:
    name = topic.split("/")[-2]
    return [
        Reading("h1", "lab", name, "temperature", received_at, float(payload), None, received_at)
    ]


async def test_adapter_hook_subscribes_and_stores(
    tmp_path: Path, mosquitto: MosquittoBroker, topic_root: str, publisher: Publisher
) -> None:
    gw = Gateway(gateway_config(tmp_path, mosquitto, topic_root))
    gw.add_adapter(FnAdapter(f"{topic_root}-fake/+/temp", fake_adapter))
    async with gw:
        assert await asyncio.to_thread(gw.mqtt.subscribed.wait, 10), "never subscribed"
        publisher.publish(f"{topic_root}-fake/probe-1/temp", b"19.5")
        publisher.publish(f"{topic_root}-fake/probe-2/temp", b"cold")
        await asyncio.to_thread(publisher.wait_acked)
        db = gw.config.storage.path
        await wait_for(
            lambda: rows(gw) == 1 and query(db, "SELECT count(*) FROM dead_letters")[0][0]
        )
        assert query(db, "SELECT device, value FROM readings") == [("probe-1", 19.5)]
        assert query(db, "SELECT reason FROM dead_letters") == [("adapter_error",)]


async def test_writer_run_tasks_and_lifetimes(
    tmp_path: Path, mosquitto: MosquittoBroker, topic_root: str
) -> None:
    gw = Gateway(gateway_config(tmp_path, mosquitto, topic_root))
    events: list[str] = []
    runs = 0

    async def component() -> AsyncIterator[None]:
        events.append("start")
        await gw.run_db(lambda c: c.execute(text("CREATE TABLE extra (x INTEGER)")))
        yield
        # Shutdown runs before the writer stops, so a component can still flush through it.
        await gw.run_db(lambda c: c.execute(text("INSERT INTO extra VALUES (42)")))
        events.append("stop")

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("first run fails")
        await asyncio.Event().wait()

    gw.add_lifetime(component)
    gw.add_task("flaky", flaky)
    async with gw:
        assert events == ["start"]

        def count(c: Connection) -> int:
            return int(c.execute(text("SELECT count(*) FROM readings")).scalar_one())

        assert await gw.writer.run(count) == 0

        def fails(c: Connection) -> None:
            c.execute(text("INSERT INTO extra VALUES (1)"))
            raise ValueError("rolled back")

        with pytest.raises(ValueError, match="rolled back"):
            await gw.writer.run(fails)
        await wait_for(lambda: runs == 2, within=10, what="task restart")
        assert metric_value(gw, "homeedge_gateway_task_restarts_total", {"task": "flaky"}) == 1
    assert events == ["start", "stop"]
    assert query(gw.config.storage.path, "SELECT x FROM extra") == [(42,)]


async def test_admin_http(gateway: Gateway) -> None:
    base = f"http://127.0.0.1:{gateway.admin_port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as resp:
            body = await resp.json()
            assert resp.status == 200
        assert body["status"] == "ok" and body["mqtt_connected"] and body["writer_alive"]
        assert body["mqtt_subscribed"] is True
        # Background jobs (the first aggregation and retention passes) may sit in the writer's
        # queue for a moment after start; the depth must come back to 0 on an idle gateway.
        deadline = asyncio.get_running_loop().time() + 10
        while body["queue_depth"] != 0 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            async with http.get(f"{base}/healthz") as resp:
                body = await resp.json()
        assert body["queue_depth"] == 0
        async with http.get(f"{base}/metrics") as resp:
            metrics = await resp.text()
            assert resp.status == 200 and resp.content_type == "text/plain"
    for name in (
        "homeedge_gateway_messages_received_total",
        "homeedge_gateway_rows_stored_total",
        "homeedge_gateway_commit_seconds_bucket",
        'homeedge_gateway_queue_depth{queue="writer"}',
        "homeedge_gateway_mqtt_connected 1.0",
    ):
        assert name in metrics


async def test_mqtt5_session(tmp_path: Path, mosquitto: MosquittoBroker, topic_root: str) -> None:
    cfg = gateway_config(tmp_path, mosquitto, topic_root, protocol="5")
    publisher = Publisher(mosquitto.port)
    try:
        async with Gateway(cfg) as gw:
            assert await asyncio.to_thread(gw.mqtt.subscribed.wait, 10), "never subscribed"
        # Published while the gateway is down: kept by the broker for the v5 session.
        tele = device_topic("h1", "lab", "thermostat-5", "telemetry", root=topic_root)
        for seq in range(20):
            publisher.publish(tele, encode_telemetry(TS0 + seq, {"temperature": 1.0}, seq=seq))
        await asyncio.to_thread(publisher.wait_acked)
        async with Gateway(cfg) as gw:
            await wait_for(lambda: rows(gw) == 20, what="messages queued during the downtime")
    finally:
        publisher.close()


def test_metrics_registries_are_per_gateway() -> None:
    a, b = GatewayMetrics(), GatewayMetrics()
    a.rows_stored.inc(3)
    assert a.registry.get_sample_value("homeedge_gateway_rows_stored_total") == 3
    assert b.registry.get_sample_value("homeedge_gateway_rows_stored_total") == 0


async def test_writer_acks_only_committed_messages(tmp_path: Path) -> None:
    """The ack callback runs after the commit: another connection already sees the rows."""
    from gateway.db import make_engine
    from gateway.ingest import DeviceSeen, ReadingsIn
    from gateway.writer import Writer

    db = tmp_path / "w.db"
    visible_at_ack: list[tuple[int, int]] = []  # (rows visible, messages acked so far)
    acked: list[tuple[int, int]] = []

    def ack(tokens: Sequence[tuple[int, int]]) -> None:
        acked.extend(tokens)
        visible = int(query(db, "SELECT count(*) FROM readings")[0][0])
        visible_at_ack.append((visible, len(acked)))

    writer = Writer(make_engine(db), metrics=GatewayMetrics(), ack=ack, batch_rows=10)
    writer.start()
    try:
        for seq in range(125):
            r = Reading("h", "r", "plug-1", "power", TS0 + seq, 1.0, seq, TS0)
            item = ReadingsIn([r], [DeviceSeen("h", "r", "plug-1", TS0)])
            assert writer.put_message((7, seq + 1), item, lambda: False)
        await writer.flush()
    finally:
        await writer.stop()
    assert sorted(acked) == [(7, mid) for mid in range(1, 126)]
    # Batches of at most 50 rows (10, plus a queued backlog up to 5 x 10); every acked
    # message's row was committed before its ack.
    assert len(visible_at_ack) >= 3
    assert all(visible >= acked_so_far for visible, acked_so_far in visible_at_ack)


async def test_decoder_bug_is_dead_lettered_not_fatal(
    gateway: Gateway, publisher: Publisher, topic_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.ingest as ingest

    real = ingest.decode_telemetry

    def buggy(payload: bytes, **kw: Any) -> Any:
        if payload == b"boom":
            raise RuntimeError("decoder bug")
        return real(payload, **kw)

    monkeypatch.setattr(ingest, "decode_telemetry", buggy)
    tele = device_topic("h1", "lab", "plug-9", "telemetry", root=topic_root)
    publisher.publish(tele, b"boom")
    publisher.publish(tele, encode_telemetry(TS0, {"power": 3.0}, seq=1))
    await asyncio.to_thread(publisher.wait_acked)
    db = gateway.config.storage.path
    await wait_for(lambda: rows(gateway) == 1, what="the good message after the bug")
    assert query(db, "SELECT reason, payload FROM dead_letters") == [("internal_error", b"boom")]
    assert gateway.mqtt.connected


async def test_writer_commits_with_synchronous_full_unless_told(
    tmp_path: Path, mosquitto: MosquittoBroker, topic_root: str
) -> None:
    """Acked means on disk across a power cut: the writer's connection runs synchronous=FULL
    by default; storage.synchronous = "normal" trades that for speed."""

    def mode(conn: Connection) -> int:
        return int(conn.execute(text("PRAGMA synchronous")).scalar_one())

    async with Gateway(gateway_config(tmp_path, mosquitto, topic_root)) as gw:
        assert await gw.writer.run(mode) == 2  # FULL
    cfg = gateway_config(tmp_path, mosquitto, topic_root)
    cfg = cfg.model_copy(
        update={"storage": StorageConfig(path=tmp_path / "gateway.db", synchronous="normal")}
    )
    async with Gateway(cfg) as gw:
        assert await gw.writer.run(mode) == 1  # NORMAL


async def test_a_task_failing_the_same_way_logs_its_traceback_once(
    tmp_path: Path,
    mosquitto: MosquittoBroker,
    topic_root: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A full disk fails the aggregation on every restart for hours: one traceback, then a line.
    monkeypatch.setattr("gateway.app._RESTART_MIN_S", 0.01)
    gw = Gateway(gateway_config(tmp_path, mosquitto, topic_root))
    failures = ["disk full", "disk full", "disk full", "other"]

    async def failing() -> None:
        if failures:
            raise OSError(failures.pop(0))
        await asyncio.Event().wait()

    gw.add_task("failing", failing)
    with caplog.at_level(logging.ERROR, logger="gateway.app"):
        async with gw:
            await wait_for(lambda: not failures, within=10, what="four failures")
            await wait_for(
                lambda: (
                    metric_value(gw, "homeedge_gateway_task_restarts_total", {"task": "failing"})
                    == 4
                ),
                within=10,
                what="restarts counted",
            )
    records = [r for r in caplog.records if "task failing" in r.getMessage()]
    assert [r.exc_info is not None for r in records] == [True, False, False, True]
    assert "failed again (disk full)" in records[1].getMessage()
