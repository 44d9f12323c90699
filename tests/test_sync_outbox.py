"""The durable outbox: seq order, batch splitting, full policies, TTL, one transaction with the
aggregates."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, func, select

from gateway.sync import counters, outbox
from gateway.sync.pipeline import SyncPipeline, aggregate_and_enqueue
from gateway.sync.settings import AggregationSettings, PrivacySettings, UplinkSettings
from gateway.sync.tables import aggregates, outbox_seq, sync_watermark
from gateway.sync.tables import outbox as outbox_table
from schemas.batch import BatchPrivacy, BatchStats, WindowAggregate, decode_batch
from tests.test_sync_windows import T0, add_readings, make_db


def agg(i: int) -> WindowAggregate:
    return WindowAggregate(
        window_start=T0 + 60 * i,
        window_s=60,
        home="h-" + "abc0" * 5,  # a pseudonym: prefix + 20 hex digits
        room_class="kitchen",
        device_class="plug",
        metric="power",
        unit="W",
        policy="aggregate",
        count=60,
        sum=600.0,
        mean=10.0,
    )


def put(engine: Engine, n_batches: int, settings: UplinkSettings, now: float = T0) -> list[int]:
    seqs: list[int] = []
    for i in range(n_batches):
        with engine.begin() as conn:
            res = outbox.enqueue(
                conn,
                [agg(i)],
                now=now,
                gateway="gw-1",
                settings=settings,
                privacy=BatchPrivacy(),
                stats=BatchStats(),
            )
            seqs.extend(res.seqs)
    return seqs


def pending(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(outbox_table.c.seq)
                .where(outbox_table.c.status == "pending")
                .order_by(outbox_table.c.seq)
            ).scalars()
        )


def test_batches_split_and_numbered(tmp_path: Path) -> None:
    engine = make_db(tmp_path)
    s = UplinkSettings(batch_max_aggregates=2)
    with engine.begin() as conn:
        res = outbox.enqueue(
            conn,
            [agg(i) for i in range(5)],
            now=T0,
            gateway="gw-1",
            settings=s,
            privacy=BatchPrivacy(suppressed_windows=3, refused_noised=1, min_window_count=5),
            stats=BatchStats(ingested_messages=100, ingested_bytes=5000),
        )
    assert res.seqs == (1, 2, 3)
    with engine.connect() as conn:
        batches, expired = outbox.fetch_pending(conn, T0, 10, s)
    assert expired == 0 and [b.seq for b in batches] == [1, 2, 3]
    decoded = [decode_batch(gzip.decompress(b.body_gz)) for b in batches]
    assert [len(d.aggregates) for d in decoded] == [2, 2, 1]
    assert [d.seq for d in decoded] == [1, 2, 3]
    assert [d.batch_id for d in decoded] == [b.batch_id for b in batches]
    assert len({d.batch_id for d in decoded}) == 3
    assert all(d.gateway == "gw-1" and d.created_at == T0 for d in decoded)
    # pass-level figures travel once, so sums over batches are right
    assert [d.stats.ingested_messages for d in decoded] == [100, 0, 0]
    assert [d.privacy.suppressed_windows for d in decoded] == [3, 0, 0]
    assert all(d.privacy.min_window_count == 5 for d in decoded)
    # seq keeps counting after rows are gone
    with engine.begin() as conn:
        conn.execute(outbox_table.delete())
    assert put(engine, 1, s) == [4]


def test_drop_oldest(tmp_path: Path) -> None:
    engine = make_db(tmp_path)
    s = UplinkSettings(outbox_max_rows=3, full_policy="drop_oldest")
    assert put(engine, 5, s) == [1, 2, 3, 4, 5]
    assert pending(engine) == [3, 4, 5]
    with engine.connect() as conn:
        assert counters.read_all(conn)["outbox_dropped"] == 2
        assert outbox.depth(conn) == 3


def test_refuse_new(tmp_path: Path) -> None:
    engine = make_db(tmp_path)
    s = UplinkSettings(outbox_max_rows=3, full_policy="refuse_new")
    assert put(engine, 5, s) == [1, 2, 3]
    assert pending(engine) == [1, 2, 3]
    with engine.connect() as conn:
        assert counters.read_all(conn)["outbox_refused"] == 2
    # once drained, new batches are taken again, numbered without a gap
    with engine.begin() as conn:
        outbox.mark_sent(conn, 1, T0)
    assert put(engine, 1, s) == [4]


def test_ttl_expires_pending_and_prunes_sent(tmp_path: Path) -> None:
    engine = make_db(tmp_path)
    s = UplinkSettings(outbox_ttl_s=100, sent_retention_s=10)
    put(engine, 2, s, now=T0)
    put(engine, 1, s, now=T0 + 60)
    with engine.begin() as conn:
        outbox.mark_sent(conn, 3, T0 + 61)
        outbox.mark_rejected(conn, 2, T0 + 61, "422 invalid: nope")
    with engine.begin() as conn:
        batches, expired = outbox.fetch_pending(conn, T0 + 101, 10, s)
    assert batches == [] and expired == 1  # seq 1 expired
    with engine.connect() as conn:
        left = conn.execute(select(outbox_table.c.seq, outbox_table.c.status)).all()
        assert sorted(left) == [(2, "rejected")]  # sent one pruned, rejected one parked
        c = counters.read_all(conn)
        assert (c["outbox_expired"], c["outbox_rejected"]) == (1, 1)


def _pipeline(**uplink: object) -> SyncPipeline:
    return SyncPipeline.from_settings(
        "gw-1",
        AggregationSettings(backfill_s=1e6, windows_per_batch=1),
        PrivacySettings(secret="k" * 32),
        UplinkSettings.model_validate(uplink),
        rng=np.random.default_rng(0),
    )


def test_aggregates_and_batches_commit_together(tmp_path: Path) -> None:
    engine = make_db(tmp_path)
    with engine.begin() as conn:
        add_readings(conn, [("h1", "kitchen", "plug-1", "power", T0 + i, 5.0) for i in range(60)])
    pipeline = _pipeline()
    with pytest.raises(RuntimeError), engine.begin() as conn:
        res = aggregate_and_enqueue(conn, T0 + 100, pipeline)
        assert res.enqueued.seqs == (1,)
        raise RuntimeError("crash before commit")

    def counts() -> tuple[int, int, int]:
        with engine.connect() as conn:
            return (
                conn.execute(select(func.count()).select_from(aggregates)).scalar_one(),
                conn.execute(select(func.count()).select_from(outbox_table)).scalar_one(),
                conn.execute(select(func.count()).select_from(outbox_seq)).scalar_one(),
            )

    assert counts() == (0, 0, 0)
    with engine.begin() as conn:
        res = aggregate_and_enqueue(conn, T0 + 100, pipeline)
    assert res.enqueued.seqs == (1,) and res.outbox_depth == 1
    assert counts() == (1, 1, 1)
    with engine.connect() as conn:
        body = conn.execute(select(outbox_table.c.body_gz)).scalar_one()
        assert conn.execute(select(sync_watermark.c.watermark)).scalar_one() == T0 + 60
    batch = decode_batch(gzip.decompress(body))
    assert batch.stats.ingested_messages == 60 and batch.stats.ingested_bytes > 60 * 30
    (a,) = batch.aggregates
    assert (a.count, a.mean, a.policy, a.room_class, a.device_class) == (
        60,
        5.0,
        "aggregate",
        "kitchen",
        "plug",
    )
    # nothing new: no empty batch
    with engine.begin() as conn:
        assert aggregate_and_enqueue(conn, T0 + 110, pipeline).enqueued.seqs == ()


def test_gateway_id_must_be_a_batch_name() -> None:
    with pytest.raises(ValueError, match="gateway_id"):
        SyncPipeline.from_settings(
            "my gateway!", AggregationSettings(), PrivacySettings(secret="k" * 32), UplinkSettings()
        )


def test_aggregates_the_wire_refuses_are_dropped_not_batched(tmp_path: Path) -> None:
    # msgspec does not check Finite (|x| <= 1e15) at construction; the cloud does, and would
    # answer 422 for the whole batch, parking every other aggregate in it.
    import msgspec

    engine = make_db(tmp_path)
    huge = msgspec.structs.replace(agg(1), sum=2e15, mean=2e15 / 60)
    nan = msgspec.structs.replace(agg(3), mean=float("nan"))
    with engine.begin() as conn:
        res = outbox.enqueue(
            conn,
            [agg(0), huge, agg(2), nan],
            now=T0,
            gateway="gw-1",
            settings=UplinkSettings(),
            privacy=BatchPrivacy(),
            stats=BatchStats(),
        )
    with engine.connect() as conn:
        body = conn.execute(select(outbox_table.c.body_gz)).scalar_one()
        batch = decode_batch(gzip.decompress(body))  # what the cloud validates
        assert [a.window_start for a in batch.aggregates] == [T0, T0 + 120]
        assert counters.read_all(conn)["invalid_aggregates"] == 2
    assert res.seqs == (1,) and res.invalid == 2
    assert outbox.wire_error(huge) is not None and outbox.wire_error(agg(0)) is None


def test_aggregates_breaking_the_batch_contract_are_dropped_not_batched(tmp_path: Path) -> None:
    # A bug upstream of the outbox (a home id instead of a pseudonym, exact heart rate, a window
    # under the declared minimum count): the cloud would refuse the whole batch with a 422.
    import msgspec

    engine = make_db(tmp_path)
    broken = [
        msgspec.structs.replace(agg(1), home="smith-residence"),
        msgspec.structs.replace(agg(2), metric="heart_rate", unit="bpm"),
        msgspec.structs.replace(agg(3), count=4, sum=40.0),
        msgspec.structs.replace(agg(4), room_class="annas lounge"),
    ]
    with engine.begin() as conn:
        res = outbox.enqueue(
            conn,
            [agg(0), *broken, agg(5)],
            now=T0 + 3600,
            gateway="gw-1",
            settings=UplinkSettings(),
            privacy=BatchPrivacy(min_window_count=5),
            stats=BatchStats(),
        )
    with engine.connect() as conn:
        body = conn.execute(select(outbox_table.c.body_gz)).scalar_one()
        batch = decode_batch(gzip.decompress(body))
        assert [a.window_start for a in batch.aggregates] == [T0, T0 + 300]
        assert counters.read_all(conn)["invalid_aggregates"] == 4
    assert res.invalid == 4
