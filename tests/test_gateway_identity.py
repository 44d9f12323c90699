"""What makes a reading or a dead letter "the same one" (stored once) and what makes it new.

Readings: with a ``seq`` the identity is (ts, home, device, seq, metric) and ``ts`` may repeat
(a stuck clock, a clock stepping back, whole-second timestamps at 10 Hz), and a seq may repeat
with a new ``ts`` (a counter that restarted after a reboot); without one it is
(ts, home, device, metric). A QoS 1 redelivery repeats the message's ts and seq. Dead letters:
one row per (topic, payload) digest; a fresh identical message counts, a redelivered (DUP) or
retained copy of a stored one is ignored; a retained message never moves ``devices.last_seen``.

The writer is driven directly against a real SQLite file; the last tests go through a real
Mosquitto and the in-process gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.db import make_engine
from gateway.ingest import AudioIn, DeviceSeen, Ignored, ReadingsIn, StateIn, as_replay
from gateway.monitoring import GatewayMetrics
from gateway.records import DeadLetter, Reading, dead_letter_digest
from gateway.writer import AckToken, Writer
from schemas.state import Availability
from schemas.telemetry import encode_telemetry
from schemas.topics import device_topic
from tests.conftest import MosquittoBroker
from tests.test_gateway_ingest import TS0, Publisher, gateway_config, metric_value, query
from tests.waiting import wait_for


class Harness:
    """A started `Writer` on a temp database, recording acks and committed readings."""

    def __init__(self, db: Path, *, batch_rows: int = 1000) -> None:
        self.db = db
        self.metrics = GatewayMetrics()
        self.acked: list[AckToken] = []
        self.committed: list[Reading] = []
        self.writer = Writer(
            make_engine(db), metrics=self.metrics, ack=self.acked.extend, batch_rows=batch_rows
        )
        self.writer.on_committed = lambda readings, _audio: self.committed.extend(readings)
        self._mid = 0

    def put(self, item: ReadingsIn | DeadLetter | StateIn) -> None:
        self._mid += 1
        assert self.writer.put_message((1, self._mid), item, lambda: False)

    def rows(self, sql: str = "SELECT count(*) FROM readings") -> list[tuple[object, ...]]:
        return query(self.db, sql)

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.metrics.registry.get_sample_value(name, labels or {}) or 0.0


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path / "gateway.db")
    h.writer.start()
    yield h
    await h.writer.stop()


def telemetry(
    ts: float, seq: int | None, *, value: float = 21.0, received_at: float = TS0, device: str = "t1"
) -> ReadingsIn:
    r = Reading("h1", "lab", device, "temperature", ts, value, seq, received_at)
    return ReadingsIn([r], [DeviceSeen("h1", "lab", device, received_at)])


# -- readings: seq is the identity when present ----------------------------------------------


async def test_a_stuck_clock_keeps_every_message_that_has_a_seq(harness: Harness) -> None:
    # The measurement: 50 messages, one ts, seqs 0..49 -> 1 row and 49 "duplicates".
    for seq in range(50):
        harness.put(telemetry(TS0, seq, value=float(seq), received_at=TS0 + seq))
    await harness.writer.flush()
    assert harness.rows("SELECT seq, value FROM readings ORDER BY seq") == [
        (seq, float(seq)) for seq in range(50)
    ]
    assert sorted(r.seq or 0 for r in harness.committed) == list(range(50))
    assert harness.metric("homeedge_gateway_duplicate_rows_total") == 0
    assert len(harness.acked) == 50


async def test_a_clock_stepping_back_loses_nothing(harness: Harness) -> None:
    # 200 messages at 1 Hz; after the 100th the device clock steps back 30 s, so 30 timestamps
    # repeat (the issue measured 30 of 200 lost).
    ts = [TS0 + i if i < 100 else TS0 + i - 30 for i in range(200)]
    assert len(set(ts)) == 170
    for seq, t in enumerate(ts):
        harness.put(telemetry(t, seq, value=float(seq)))
    await harness.writer.flush()
    assert harness.rows("SELECT count(*), count(DISTINCT seq) FROM readings") == [(200, 200)]
    assert len(harness.committed) == 200


async def test_10_hz_with_whole_second_timestamps_loses_nothing(harness: Harness) -> None:
    # 10 messages per second, ts rounded to the second (the issue: 90 of 100 lost).
    for seq in range(100):
        harness.put(telemetry(TS0 + seq // 10, seq, value=float(seq)))
    await harness.writer.flush()
    assert harness.rows("SELECT count(*), count(DISTINCT ts) FROM readings") == [(100, 10)]
    assert sorted(r.value for r in harness.committed) == [float(s) for s in range(100)]


async def test_without_seq_the_timestamp_dedupes(harness: Harness) -> None:
    for i in range(50):
        harness.put(telemetry(TS0, None, value=float(i), received_at=TS0 + i))
    harness.put(telemetry(TS0 + 1, None, value=99.0))
    await harness.writer.flush()
    assert harness.rows("SELECT ts, value, seq FROM readings ORDER BY ts") == [
        (TS0, 0.0, None),
        (TS0 + 1, 99.0, None),
    ]
    assert [(r.ts, r.value) for r in harness.committed] == [(TS0, 0.0), (TS0 + 1, 99.0)]
    assert harness.metric("homeedge_gateway_duplicate_rows_total") == 49


async def test_a_redelivered_seq_is_still_stored_once(harness: Harness) -> None:
    for seq in range(50):
        harness.put(telemetry(TS0, seq, value=float(seq)))
    await harness.writer.flush()
    # The same messages again (a QoS 1 redelivery: the same bytes, so the same ts and seq).
    for seq in range(50):
        harness.put(telemetry(TS0, seq, value=float(seq), received_at=TS0 + 60))
    await harness.writer.flush()
    assert harness.rows("SELECT count(*), max(received_at) FROM readings") == [(50, TS0)]
    assert len(harness.committed) == 50  # callbacks never see a duplicate
    assert harness.metric("homeedge_gateway_duplicate_rows_total") == 50


async def test_a_seq_that_restarted_after_a_reboot_is_kept(harness: Harness) -> None:
    # Seqs 0..9, then the device reboots and counts from 0 again, its clock later: new readings
    # (the seq identity before version 6 dropped them as duplicates).
    for boot in range(2):
        for seq in range(10):
            harness.put(telemetry(TS0 + 100 * boot + seq, seq, value=float(10 * boot + seq)))
    await harness.writer.flush()
    assert harness.rows("SELECT count(*), count(DISTINCT seq) FROM readings") == [(20, 10)]
    assert sorted(r.value for r in harness.committed) == [float(v) for v in range(20)]
    assert harness.metric("homeedge_gateway_duplicate_rows_total") == 0


async def test_callbacks_get_exactly_the_new_rows_of_a_mixed_batch(tmp_path: Path) -> None:
    """A batch with duplicates of both identities: `on_committed` gets exactly what was
    inserted, with the values as stored, in batch order."""
    h = Harness(tmp_path / "gateway.db")
    h.writer.start()
    try:
        h.put(telemetry(TS0, 0, value=1.0))
        h.put(telemetry(TS0 + 5, None, value=2.0))
        await h.writer.flush()
        h.committed.clear()
        batch = [
            telemetry(TS0, 1, value=3.0, received_at=TS0 + 1),  # new: same ts as seq 0
            telemetry(TS0, 0, value=4.0, received_at=TS0 + 1),  # dup of seq 0
            telemetry(TS0 + 5, None, value=5.0, received_at=TS0 + 1),  # dup of the ts-only row
            telemetry(TS0, None, value=6.0, received_at=TS0 + 1),  # new: ts-only, ts of seq 0
            telemetry(TS0, 1, value=7.0, received_at=TS0 + 2),  # dup inside the batch
            telemetry(TS0 + 5, 5, value=8.0, received_at=TS0 + 1, device="t2"),  # new device
        ]
        # One ReadingsIn so they commit in one transaction (one INSERT, then the lookup).
        h.put(ReadingsIn([r for b in batch for r in b.readings], []))
        await h.writer.flush()
    finally:
        await h.writer.stop()
    assert [(r.device, r.seq, r.value) for r in h.committed] == [
        ("t1", 1, 3.0),
        ("t1", None, 6.0),
        ("t2", 5, 8.0),
    ]
    assert h.rows("SELECT count(*) FROM readings") == [(5,)]
    assert h.metric("homeedge_gateway_duplicate_rows_total") == 3


# -- dead letters: one row per message --------------------------------------------------------


def dead(topic: str = "t/x", payload: bytes = b"{bad", at: float = TS0, **kw: bool) -> DeadLetter:
    return DeadLetter(topic, payload, "invalid_json", "bad json", at, **kw)


async def test_a_fresh_identical_dead_letter_counts_and_a_replay_is_ignored(
    harness: Harness,
) -> None:
    harness.put(dead(at=TS0))
    harness.put(dead(at=TS0 + 5))  # the device sent the same bad message again
    harness.put(dead(at=TS0 + 9, replay=True))  # a redelivered or retained copy: already here
    harness.put(dead("t/y", at=TS0 + 1))  # another topic: another message
    harness.put(dead("t/z", at=TS0 + 2, replay=True))  # a replay never stored before: stored
    await harness.writer.flush()
    assert harness.rows(
        "SELECT topic, payload, count, received_at, last_received_at, digest FROM dead_letters"
        " ORDER BY id"
    ) == [
        ("t/x", b"{bad", 2, TS0, TS0 + 5, dead_letter_digest("t/x", "invalid_json", b"{bad")),
        ("t/y", b"{bad", 1, TS0 + 1, TS0 + 1, dead_letter_digest("t/y", "invalid_json", b"{bad")),
        ("t/z", b"{bad", 1, TS0 + 2, TS0 + 2, dead_letter_digest("t/z", "invalid_json", b"{bad")),
    ]
    # Counted as stored or counted again; the ignored replay is not.
    assert harness.metric("homeedge_gateway_dead_letters_total", {"reason": "invalid_json"}) == 4
    assert len(harness.acked) == 5  # every message acked, the ignored one too


async def test_one_message_rejected_for_two_reasons_keeps_both_rows(harness: Harness) -> None:
    # The decoder dead-letters each reason of a message's rejected readings apart (same topic
    # and payload): both are stored, and a replay of the message adds neither again.
    for replay in (False, True):
        harness.put(DeadLetter("t/x", b"{}", "out_of_range", "temperature", TS0, replay))
        harness.put(DeadLetter("t/x", b"{}", "ts_out_of_range", "ts", TS0, replay))
    await harness.writer.flush()
    assert harness.rows("SELECT reason, count FROM dead_letters ORDER BY id") == [
        ("out_of_range", 1),
        ("ts_out_of_range", 1),
    ]


def test_the_digest_is_of_topic_reason_and_payload_apart() -> None:
    d = dead_letter_digest("a/b", "r", b"c")
    assert len(d) == 16
    assert d != dead_letter_digest("a/", "r", b"bc") and d != dead_letter_digest("a/b", "r", b"c ")
    # One message's readings can fail two checks: two dead letters, two rows.
    assert d != dead_letter_digest("a/b", "s", b"c")


TOPIC = "homeedge/h1/lab/t1/telemetry"


def test_a_replayed_copy_does_not_say_the_device_was_heard() -> None:
    seen = DeviceSeen("h1", "lab", "t1", TS0)
    r = Reading("h1", "lab", "t1", "temperature", TS0, 1.0, 3, TS0)
    assert as_replay(ReadingsIn([r], [seen]), TOPIC, retained=True) == ReadingsIn([r], [])
    # A DUP redelivery is heard as usual; its readings dedupe by their identity.
    assert as_replay(ReadingsIn([r], [seen]), TOPIC, retained=False) == ReadingsIn([r], [seen])
    assert as_replay(dead(), TOPIC, retained=False) == dead(replay=True)
    assert as_replay(dead(), TOPIC, retained=True) == dead(replay=True)
    state = StateIn("h1", "lab", "t1", Availability.ONLINE, TS0)
    assert as_replay(state, TOPIC, retained=True) is state  # a retained availability is the state
    audio = AudioIn("h1", "lab", "mic-1", None, TS0)  # type: ignore[arg-type]
    assert as_replay(audio, TOPIC, retained=True) == Ignored(TOPIC)  # stale sound: dropped
    assert as_replay(audio, TOPIC, retained=False) is audio


# -- through the broker ----------------------------------------------------------------------


async def test_a_stuck_clock_through_the_broker_keeps_every_message(
    tmp_path: Path, mosquitto: MosquittoBroker, topic_root: str
) -> None:
    pub = Publisher(mosquitto.port)
    try:
        async with Gateway(gateway_config(tmp_path, mosquitto, topic_root)) as gw:
            assert await asyncio.to_thread(gw.mqtt.subscribed.wait, 10), "never subscribed"
            tele = device_topic("h1", "lab", "thermostat-1", "telemetry", root=topic_root)
            for seq in range(50):
                pub.publish(tele, encode_telemetry(TS0, {"temperature": 20.0 + seq}, seq=seq))
            await asyncio.to_thread(pub.wait_acked)
            db = gw.config.storage.path
            await wait_for(lambda: metric_value(gw, "homeedge_gateway_acks_total") >= 50)
            assert query(db, "SELECT count(*), count(DISTINCT seq) FROM readings") == [(50, 50)]
            assert metric_value(gw, "homeedge_gateway_duplicate_rows_total") == 0
    finally:
        pub.close()


async def test_retained_messages_replayed_on_each_start_are_stored_once_and_not_heard(
    tmp_path: Path, mosquitto: MosquittoBroker, topic_root: str
) -> None:
    """A retained bad message and a retained good one, then three gateway restarts (each
    subscription replays both): one dead-letter row with count 1, one reading, and
    ``last_seen`` where the live messages left it."""
    cfg = gateway_config(tmp_path, mosquitto, topic_root)
    db = cfg.storage.path
    tele = device_topic("h1", "hall", "door-1", "telemetry", root=topic_root)
    state = device_topic("h1", "hall", "door-1", "state", root=topic_root)
    marker = device_topic("h1", "hall", "marker-1", "telemetry", root=topic_root)
    pub = Publisher(mosquitto.port)

    async def marked(gw: Gateway, seq: int) -> None:
        # Published after the subscription (and its retained replay): once it is stored, the
        # replay has been committed too (one connection, delivered and committed in order).
        pub.publish(marker, encode_telemetry(TS0 + seq, {"door": 0.0}, seq=seq))
        await wait_for(
            lambda: query(db, "SELECT count(*) FROM readings WHERE seq = ?", seq) == [(1,)],
            what=f"marker {seq}",
        )

    try:
        async with Gateway(cfg) as gw:
            assert await asyncio.to_thread(gw.mqtt.subscribed.wait, 10), "never subscribed"
            pub.publish(tele, encode_telemetry(TS0, {"door": 1.0}, seq=1), retain=True)
            pub.publish(state, b"ajar", retain=True)  # invalid: a dead letter
            await marked(gw, 100)
        heard = query(db, "SELECT last_seen FROM devices WHERE device = 'door-1'")
        first = query(db, "SELECT id, received_at FROM dead_letters")
        assert len(first) == 1 and heard[0][0] is not None
        for restart in range(3):
            async with Gateway(cfg) as gw:
                assert await asyncio.to_thread(gw.mqtt.subscribed.wait, 10), "never subscribed"
                await marked(gw, 101 + restart)
                replays = metric_value(
                    gw, "homeedge_gateway_messages_received_total", {"kind": "dead_letter"}
                )
                assert replays == 1  # it was replayed to this gateway, and ignored
        assert query(db, "SELECT id, received_at FROM dead_letters") == first
        assert query(db, "SELECT last_seen FROM devices WHERE device = 'door-1'") == heard
        assert query(db, "SELECT count(*) FROM readings WHERE device = 'door-1'") == [(1,)]
        # Not counted again either: it was never sent again.
        assert query(db, "SELECT count, last_received_at FROM dead_letters") == [(1, first[0][1])]
    finally:
        pub.close()
