"""`Writer.store`: readings of another component (the inference engine's ``inference_*``) go
through the writer's batch commit like a message without an ack: ``INSERT OR IGNORE``, the
``last_seen`` upserts of the item's ``seen`` only, `on_committed` with the new ones, and the
call returns once that batch is committed."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import msgspec
import pytest

from gateway.db import make_engine
from gateway.ingest import DeviceSeen, ReadingsIn
from gateway.monitoring import GatewayMetrics
from gateway.records import Reading
from gateway.writer import AckToken, Writer, WriterStopped

T0 = 1_767_225_600.0


async def test_store_commits_through_the_batch_path(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    acked: list[AckToken] = []
    committed: list[list[Reading]] = []

    def ack(tokens: Sequence[AckToken]) -> None:
        acked.extend(tokens)

    writer = Writer(make_engine(db), metrics=GatewayMetrics(), ack=ack)
    writer.on_committed = lambda readings, _audio: committed.append(readings)
    writer.start()
    derived = Reading("home-1", "hall", "microphone-1", "inference_alarm", T0, 1.0, None, T0 + 1)
    heard = Reading("home-1", "hall", "thermostat-1", "temperature", T0, 21.5, 7, T0 + 1)
    try:
        await writer.store(ReadingsIn([derived], seen=[]))
        # Returned after the commit and the callback: both already see the row.
        assert committed == [[derived]]
        con = sqlite3.connect(db)
        assert con.execute("SELECT metric, value, seq FROM readings").fetchall() == [
            ("inference_alarm", 1.0, None)
        ]
        assert con.execute("SELECT count(*) FROM devices").fetchone()[0] == 0  # seen=[]
        await writer.store(
            ReadingsIn([heard], seen=[DeviceSeen("home-1", "hall", "thermostat-1", T0 + 1)])
        )
        assert con.execute("SELECT device, last_seen FROM devices").fetchall() == [
            ("thermostat-1", T0 + 1)
        ]
        again = msgspec.structs.replace(derived, received_at=T0 + 2)  # same key, later
        await writer.store(ReadingsIn([again], seen=[]))  # a duplicate: ignored, not new
        assert committed == [[derived], [heard]]
        assert con.execute("SELECT count(*) FROM readings").fetchone()[0] == 2
        con.close()
        assert acked == []  # nothing to acknowledge
    finally:
        await writer.stop()
    with pytest.raises(WriterStopped):
        await writer.store(ReadingsIn([derived], seen=[]))


async def test_last_seen_is_written_at_first_then_at_most_every_interval(tmp_path: Path) -> None:
    """With ``seen_interval``: a device's first sighting (and a room change) is written with
    its batch, later ones wait in memory for the interval, and shutdown writes them."""
    db = tmp_path / "gw.db"
    writer = Writer(make_engine(db), metrics=GatewayMetrics(), seen_interval=3600.0)
    writer.start()

    def heard(at: float, room: str = "hall", seq: int = 0) -> ReadingsIn:
        r = Reading("home-1", room, "thermostat-1", "temperature", at, 21.5, seq, at)
        return ReadingsIn([r], seen=[DeviceSeen("home-1", room, "thermostat-1", at)])

    def stored() -> list[tuple[object, ...]]:
        with sqlite3.connect(db) as con:
            return con.execute("SELECT room, last_seen FROM devices").fetchall()

    try:
        await writer.store(heard(T0))  # the interval's first commit writes what it has
        await writer.store(heard(T0 + 1, seq=1))
        assert stored() == [("hall", T0)]  # held back: the row exists already
        await writer.store(heard(T0 + 2, room="attic", seq=2))
        assert stored() == [("attic", T0 + 2)]  # moved: written at once
        await writer.store(heard(T0 + 3, room="attic", seq=3))
        assert stored() == [("attic", T0 + 2)]
    finally:
        await writer.stop()
    assert stored() == [("attic", T0 + 3)]  # the last sighting, written at shutdown
