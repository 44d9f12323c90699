"""Storage retention: old readings go only once aggregated, in chunks, counted; aggregates and
dead letters by age; 0 keeps forever; the gateway runs it as a periodic task."""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client import CollectorRegistry
from sqlalchemy import Connection, Engine, delete, func, insert, select, update

from gateway.app import Gateway
from gateway.config import StorageConfig
from gateway.db import dead_letters, readings
from gateway.records import dead_letter_digest
from gateway.sync.retention import (
    Retention,
    RetentionPolicy,
    delete_readings,
    first_id_received_since,
)
from gateway.sync.settings import AggregationSettings
from gateway.sync.tables import aggregates, sync_watermark
from gateway.sync.uplink import RunDb, thread_run_db
from gateway.sync.windows import close_windows
from gateway.sync.wiring import install_sync
from tests.conftest import MosquittoBroker
from tests.test_gateway_ingest import gateway_config, metric_value
from tests.test_sync_windows import T0, add_readings, make_db
from tests.waiting import wait_for

DAY = 86400.0
NOW = T0 + 40 * DAY


def count(engine: Engine, table: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


def counting(engine: Engine) -> tuple[RunDb, list[int]]:
    """A RunDb that counts its transactions."""
    inner = thread_run_db(engine)
    calls: list[int] = []

    async def run(fn):  # type: ignore[no-untyped-def]
        calls.append(1)
        return await inner(fn)

    return run, calls


def add_dead(conn: Connection, received_at: float, last_received_at: float | None = None) -> None:
    """A dead letter (its own payload) first received at `received_at`, last at
    `last_received_at` (default: the same)."""
    payload = repr((received_at, last_received_at)).encode()
    conn.execute(
        insert(dead_letters).values(
            topic="t",
            payload=payload,
            reason="invalid_json",
            detail="",
            received_at=received_at,
            digest=dead_letter_digest("t", "invalid_json", payload),
            count=1,
            last_received_at=received_at if last_received_at is None else last_received_at,
        )
    )


async def test_readings_go_only_when_old_and_aggregated(tmp_path: Path) -> None:
    engine = make_db(tmp_path)
    old = NOW - 31 * DAY
    with engine.begin() as conn:
        # 7 old rows in aggregated windows, 2 old rows not aggregated yet, 3 recent rows
        add_readings(
            conn, [("h1", "r", "plug-1", "power", T0 + i, 1.0) for i in range(7)], received_at=old
        )
        add_readings(
            conn, [("h1", "r", "plug-1", "power", T0 + 600 + i, 1.0) for i in range(2)], old
        )
        add_readings(
            conn, [("h1", "r", "plug-1", "power", T0 + 100 + i, 1.0) for i in range(3)], NOW
        )
        add_dead(conn, NOW - 8 * DAY)
        add_dead(conn, NOW - 1 * DAY)
        add_dead(conn, NOW - 9 * DAY, NOW - 1 * DAY)  # old, but it came again recently: kept
    run_db, calls = counting(engine)
    policy = RetentionPolicy(30 * DAY, 7 * DAY, chunk_rows=3)
    registry = CollectorRegistry()
    retention = Retention(policy, run_db=run_db, registry=registry, clock=lambda: NOW)

    # no pass yet: no watermark, so no reading may go
    assert (await retention.run_once())["readings"] == 0
    assert count(engine, readings) == 12 and count(engine, dead_letters) == 2

    s = AggregationSettings(window_s=60, grace_s=0, windows_per_batch=1, backfill_s=1e9)
    with engine.begin() as conn:
        close_windows(conn, T0 + 200, s)  # aggregates [T0, T0 + 180): not the T0 + 600 rows
        assert conn.execute(select(sync_watermark.c.watermark)).scalar_one() == T0 + 180
    calls.clear()
    done = await retention.run_once()
    assert done["readings"] == 7
    assert len(calls) >= 3  # in chunks of 3: 3 + 3 + 1
    with engine.connect() as conn:
        left = sorted(conn.execute(select(readings.c.ts, readings.c.received_at)).all())
    assert [ts - T0 for ts, _ in left] == [100, 101, 102, 600, 601]
    assert (
        registry.get_sample_value(
            "homeedge_gateway_retention_deleted_rows_total", {"table": "readings"}
        )
        == 7
    )
    # the local aggregates of 40 days ago go too
    assert done["aggregates"] == 2 and count(engine, aggregates) == 0


def test_readings_are_found_by_id_and_a_clock_step_back_never_deletes_early(
    tmp_path: Path,
) -> None:
    """No index on received_at: the rows received before the cutoff are found by bisecting
    the ids (they grow with arrival). Arrival times here: 0..49 days old in id order, except
    that the clock stepped back once: ids 21..25 were received "31 days ago" among rows of 19
    days ago, and id 10 was deleted (a gap)."""
    engine = make_db(tmp_path)
    with engine.begin() as conn:
        for i in range(1, 51):
            at = NOW - (31 if 21 <= i <= 25 else 50 - i) * DAY
            add_readings(conn, [("h1", "r", "plug-1", "power", T0 + i, 1.0)], received_at=at)
        conn.execute(delete(readings).where(readings.c.id == 10))
        conn.execute(
            insert(sync_watermark).values(id=1, window_s=60, watermark=NOW, updated_at=NOW)
        )
        # Rows 1..19 (49..31 days old; 10 gone) were received before the 30-day cutoff, 20 was
        # not (30 days); 21..25 were too, but behind 20: the bisection stops at 20.
        assert first_id_received_since(conn, NOW - 30 * DAY) == 20
        n = delete_readings(conn, now=NOW, retention_s=30 * DAY, limit=100)
        left = [i for (i,) in conn.execute(select(readings.c.id).order_by(readings.c.id))]
        assert n == 18 and left[:7] == [20, 21, 22, 23, 24, 25, 26]
        # Later, once the rows before them are old too, the stepped-back rows go.
        n = delete_readings(conn, now=NOW + 12 * DAY, retention_s=30 * DAY, limit=100)
        left = [i for (i,) in conn.execute(select(readings.c.id).order_by(readings.c.id))]
        assert left[0] == 32 and n == 12
        assert first_id_received_since(conn, NOW + 99 * DAY) == 51  # all of them
        conn.execute(delete(readings))
        assert first_id_received_since(conn, NOW) == 0  # none


async def test_zero_keeps_forever(tmp_path: Path) -> None:
    engine = make_db(tmp_path)
    with engine.begin() as conn:
        add_readings(conn, [("h1", "r", "plug-1", "power", T0, 1.0)], received_at=T0)
        conn.execute(insert(sync_watermark).values(id=1, window_s=60, watermark=NOW, updated_at=0))
        add_dead(conn, T0)
    retention = Retention(
        RetentionPolicy(0, 0),
        run_db=thread_run_db(engine),
        registry=CollectorRegistry(),
        clock=lambda: NOW,
    )
    assert await retention.run_once() == {}
    assert count(engine, readings) == 1 and count(engine, dead_letters) == 1


async def test_the_gateway_runs_retention_periodically(
    tmp_path: Path, mosquitto: MosquittoBroker, topic_root: str
) -> None:
    base = gateway_config(tmp_path, mosquitto, topic_root)
    config = base.model_copy(
        update={
            "storage": StorageConfig(
                path=tmp_path / "gateway.db", retention_s=DAY, retention_interval_s=0.1
            )
        }
    )
    gw = Gateway(config)
    install_sync(gw, config)
    async with gw:
        now = time.time()

        def seed(conn: Connection) -> None:
            add_readings(
                conn,
                [("h1", "r", "plug-1", "power", now - 3 * DAY + i, 1.0) for i in range(5)],
                received_at=now - 2 * DAY,
            )
            conn.execute(update(sync_watermark).values(watermark=now - DAY))
            add_dead(conn, now - 8 * DAY)

        # the aggregation pass may not have made a watermark yet: make sure one exists
        await gw.writer.run(
            lambda c: c.execute(
                insert(sync_watermark)
                .prefix_with("OR IGNORE")
                .values(id=1, window_s=60, watermark=None, updated_at=0)
            )
        )
        await gw.writer.run(seed)
        await wait_for(
            lambda: (
                metric_value(
                    gw, "homeedge_gateway_retention_deleted_rows_total", {"table": "readings"}
                )
                == 5
                and metric_value(
                    gw, "homeedge_gateway_retention_deleted_rows_total", {"table": "dead_letters"}
                )
                == 1
            ),
            what="the retention task deleting old rows",
        )
        assert (
            await gw.writer.run(
                lambda c: c.execute(select(func.count()).select_from(readings)).scalar_one()
            )
            == 0
        )
