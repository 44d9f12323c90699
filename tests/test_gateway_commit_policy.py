"""The writer's commit policy (`gateway.writer`): a batch commits by size or by time, whichever
comes first, early when the broker's in-flight window is full or the stream stalls, and a
message is acknowledged only after the commit that holds it; and the settings behind it
(`gateway.config.StorageConfig`, `GatewayConfig.commit_policy_warnings`).

The writer runs against a real SQLite file; the ack callback reads the file on a connection of
its own, so "acked" is checked against what is on disk, not against the writer's memory."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.db import make_engine
from gateway.ingest import DeviceSeen, ReadingsIn
from gateway.monitoring import GatewayMetrics
from gateway.records import Reading
from gateway.writer import AckToken, Writer
from tests.test_gateway_ingest import TS0
from tests.waiting import wait_for


class Recorder:
    """Records each ack call with the number of readings on disk at that moment."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.acked: list[AckToken] = []
        self.rows_at_ack: list[int] = []
        self.batch_sizes: list[int] = []

    def __call__(self, tokens: Sequence[AckToken]) -> None:
        with sqlite3.connect(self.db) as conn:
            self.rows_at_ack.append(conn.execute("SELECT count(*) FROM readings").fetchone()[0])
        self.batch_sizes.append(len(tokens))
        # Last: the tests wait on `acked` (from another thread), then read the other lists.
        self.acked.extend(tokens)


def reading(seq: int) -> ReadingsIn:
    r = Reading("h1", "lab", "t1", "temperature", TS0 + seq, 21.0, seq, TS0 + seq)
    return ReadingsIn([r], [DeviceSeen("h1", "lab", "t1", TS0 + seq)])


@pytest.fixture
async def writers(tmp_path: Path) -> AsyncIterator[list[Writer]]:
    started: list[Writer] = []
    yield started
    for writer in started:
        await writer.stop()


def start(
    tmp_path: Path, started: list[Writer], **kwargs: float | int | None
) -> tuple[Writer, Recorder, GatewayMetrics]:
    db = tmp_path / f"gateway-{len(started)}.db"
    metrics = GatewayMetrics()
    recorder = Recorder(db)
    writer = Writer(make_engine(db), metrics=metrics, ack=recorder, **kwargs)  # type: ignore[arg-type]
    writer.start()
    started.append(writer)
    return writer, recorder, metrics


def put(writer: Writer, seq: int) -> None:
    assert writer.put_message((1, seq), reading(seq), lambda: False)


def commits(metrics: GatewayMetrics) -> float:
    return metrics.registry.get_sample_value("homeedge_gateway_commits_total") or 0.0


async def test_the_interval_holds_a_quiet_stream_and_acks_after_its_commit(
    tmp_path: Path, writers: list[Writer]
) -> None:
    writer, rec, metrics = start(
        tmp_path, writers, batch_rows=1000, commit_interval=1.5, idle_commit=0
    )
    put(writer, 1)
    put(writer, 2)
    # Well inside the interval nothing is committed, so nothing is acked (the broker keeps
    # both messages); a slow machine only makes this wait shorter than the interval.
    await asyncio.sleep(0.3)
    assert rec.acked == [] and commits(metrics) == 0
    await wait_for(lambda: len(rec.acked) == 2, within=10, what="the interval's commit")
    assert commits(metrics) == 1  # both in one commit
    assert rec.rows_at_ack == [2]  # acked once both rows were on disk


async def test_a_full_batch_commits_before_the_interval(
    tmp_path: Path, writers: list[Writer]
) -> None:
    writer, rec, _ = start(tmp_path, writers, batch_rows=5, commit_interval=10.0, idle_commit=0)
    for seq in range(5):
        put(writer, seq)
    # A full batch commits by size long before the 10 s interval ...
    await wait_for(lambda: len(rec.acked) == 5, within=8, what="the batch by size")
    assert rec.rows_at_ack == [5]
    # ... and a smaller one waits for it: not committed, not acked.
    put(writer, 5)
    put(writer, 6)
    await asyncio.sleep(0.3)
    assert len(rec.acked) == 5


async def test_a_full_in_flight_window_commits_at_once(
    tmp_path: Path, writers: list[Writer]
) -> None:
    writer, rec, _ = start(
        tmp_path, writers, batch_rows=1000, commit_interval=10.0, idle_commit=0, inflight_window=3
    )
    for seq in range(4):
        put(writer, seq)
    # The broker sends nothing more once 3 messages wait for their ack: commit those now.
    await wait_for(lambda: len(rec.acked) == 3, within=8, what="the window's commit")
    assert rec.rows_at_ack == [3]
    assert sorted(mid for _, mid in rec.acked) == [0, 1, 2]


async def test_a_stalled_stream_commits_after_the_idle_time(
    tmp_path: Path, writers: list[Writer]
) -> None:
    # A burst then silence: what a broker whose (unknown, MQTT 3.1.1) window is full looks like.
    writer, rec, _ = start(
        tmp_path, writers, batch_rows=1000, commit_interval=10.0, idle_commit=0.01
    )
    for seq in range(20):
        put(writer, seq)
    await wait_for(lambda: len(rec.acked) == 20, within=8, what="the stall's commit")
    assert rec.rows_at_ack[-1] == 20


async def test_every_ack_follows_the_commit_of_its_message(
    tmp_path: Path, writers: list[Writer]
) -> None:
    writer, rec, _ = start(tmp_path, writers, batch_rows=7, commit_interval=0.05, idle_commit=0)
    for seq in range(50):
        put(writer, seq)
        if seq % 9 == 0:
            await asyncio.sleep(0.01)
    await wait_for(lambda: len(rec.acked) == 50, within=10, what="every ack")
    # At each ack, at least every message acked so far was on disk.
    assert len(rec.rows_at_ack) > 1  # several commits
    # Each ack call's messages were all on disk when it was made (one reading per message).
    acked = 0
    for size, on_disk in zip(rec.batch_sizes, rec.rows_at_ack, strict=True):
        acked += size
        assert on_disk >= acked
    assert acked == 50


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ("[storage]\ncommit_interval_ms = 0\n", "storage.commit_interval_ms"),
        ("[storage]\ncommit_interval_ms = 60000\n", "storage.commit_interval_ms"),
        ("[storage]\nidle_commit_ms = -1\n", "storage.idle_commit_ms"),
        ("[storage]\ncheckpoint_interval_ms = -5\n", "storage.checkpoint_interval_ms"),
        ("[storage]\nwal_max_pages = 10\n", "storage.wal_max_pages"),
        ("[storage]\npage_size = 1000\n", "storage.page_size"),
        ("[storage]\npage_size = 256\n", "storage.page_size"),
        ('[storage]\npage_size = "big"\n', "storage.page_size"),
    ],
)
def test_bad_storage_settings_name_the_field(tmp_path: Path, toml: str, field: str) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('gateway_id = "g"\n' + toml)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{field}: "), str(err.value)


def test_page_size_applies_to_a_new_database_only(tmp_path: Path) -> None:
    db = tmp_path / "gateway.db"
    make_engine(db, page_size=1024).dispose()
    make_engine(db, page_size=8192).dispose()  # an existing file keeps its page size
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == 1024


def test_defaults_are_consistent_and_a_small_window_is_named() -> None:
    assert GatewayConfig(gateway_id="g").commit_policy_warnings() == []
    small = GatewayConfig.model_validate(
        {"gateway_id": "g", "mqtt": {"protocol": "5", "receive_maximum": 50}}
    )
    (warning,) = small.commit_policy_warnings()
    assert "mqtt.receive_maximum = 50" in warning and "storage.batch_rows" in warning
    no_stall = GatewayConfig.model_validate({"gateway_id": "g", "storage": {"idle_commit_ms": 0}})
    (warning,) = no_stall.commit_policy_warnings()
    assert "storage.idle_commit_ms = 0" in warning
    # With MQTT 5 the window is known, so the stall trigger may be off.
    known = GatewayConfig.model_validate(
        {"gateway_id": "g", "mqtt": {"protocol": "5"}, "storage": {"idle_commit_ms": 0}}
    )
    assert known.commit_policy_warnings() == []
    assert known.mqtt.inflight_window == 1000


def test_a_hand_off_counts_its_messages_towards_the_queue_bound(tmp_path: Path) -> None:
    """`Writer.put_messages` queues a read burst as one entry that counts as its messages: the
    depth is in messages, a full queue refuses the next burst whole (the MQTT thread waits,
    then gives up at shutdown: nothing of it queued, nothing acked)."""
    writer = Writer(make_engine(tmp_path / "q.db"), metrics=GatewayMetrics(), queue_size=10)
    burst = [((1, seq), reading(seq)) for seq in range(6)]
    assert writer.put_messages(list(burst), lambda: False)
    assert writer.depth == 6
    assert writer.put_messages(list(burst), lambda: False)  # below the bound when let in
    assert writer.depth == 12
    assert not writer.put_messages(list(burst), lambda: True)
    assert writer.depth == 12
    assert writer.put_messages([], lambda: True)  # nothing to queue
