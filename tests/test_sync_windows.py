"""Window aggregation over a real SQLite file: exact statistics, grace, late readings, restarts."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, func, insert, select

from gateway.db import devices, make_engine, readings
from gateway.sync import counters
from gateway.sync.settings import AggregationSettings
from gateway.sync.tables import aggregates, late_readings, sync_watermark
from gateway.sync.windows import WindowStats, close_windows, window_floor

T0 = 1_700_000_400.0  # a multiple of 60
assert T0 % 60 == 0

Row = tuple[str, str, str, str, float, float]  # home, room, device, metric, ts, value


def make_db(tmp_path: Path) -> Engine:
    return make_engine(tmp_path / "gateway.db")


def add_readings(conn: Connection, rows: Iterable[Row], received_at: float | None = None) -> None:
    conn.execute(
        insert(readings),
        [
            {
                "home": home,
                "room": room,
                "device": device,
                "metric": metric,
                "ts": ts,
                "value": value,
                "seq": None,
                "received_at": received_at if received_at is not None else ts,
            }
            for home, room, device, metric, ts, value in rows
        ],
    )


def settings(**kw: float) -> AggregationSettings:
    return AggregationSettings.model_validate(
        {"window_s": 60, "grace_s": 10, "windows_per_batch": 1, **kw}
    )


def test_window_stats_are_exact(tmp_path: Path) -> None:
    engine = make_db(tmp_path)
    with engine.begin() as conn:
        add_readings(
            conn,
            [
                ("h1", "kitchen", "thermostat-1", "temperature", T0 + i, float(i + 1))
                for i in range(10)
            ],
        )
        # another metric in the same window, and the next window, must stay apart
        add_readings(conn, [("h1", "kitchen", "thermostat-1", "humidity", T0 + 1, 40.0)])
        add_readings(conn, [("h1", "kitchen", "thermostat-1", "temperature", T0 + 61, 99.0)])
    with engine.begin() as conn:
        closed = close_windows(conn, T0 + 70, settings(backfill_s=1e6))
    assert closed.start == T0 and closed.end == T0 + 60
    assert closed.rows == 11 and closed.messages == 10
    by_metric = {g.metric: g for g in closed.groups}
    assert set(by_metric) == {"temperature", "humidity"}
    st = by_metric["temperature"].stats
    assert (st.count, st.min, st.max, st.mean, st.sum, st.sum_sq) == (
        10,
        1.0,
        10.0,
        5.5,
        55.0,
        385.0,
    )
    assert st.std == pytest.approx(math.sqrt(8.25), rel=1e-12)
    assert st.p50 == pytest.approx(5.5)
    assert st.p95 == pytest.approx(9.55)  # linear interpolation at rank 0.95 * 9 = 8.55
    assert by_metric["temperature"].device_class == "thermostat"

    with engine.connect() as conn:
        row = conn.execute(select(aggregates).where(aggregates.c.metric == "temperature")).one()
    assert (row.home, row.room, row.window_start, row.count, row.p95) == (
        "h1",
        "kitchen",
        T0,
        10,
        pytest.approx(9.55),
    )
    assert row.sum_sq == 385.0 and row.std == pytest.approx(math.sqrt(8.25))


def test_window_stats_of_single_value() -> None:
    import numpy as np

    st = WindowStats.of(np.array([3.0]))
    assert (st.count, st.std, st.p50, st.p95) == (1, 0.0, 3.0, 3.0)
    with pytest.raises(ValueError):
        WindowStats.of(np.array([]))


def test_devices_table_overrides_inferred_class(tmp_path: Path) -> None:
    engine = make_db(tmp_path)
    with engine.begin() as conn:
        conn.execute(
            insert(devices).values(home="h1", device="sn-41", room="hall", device_class="motion")
        )
        add_readings(conn, [("h1", "hall", "sn-41", "motion", T0 + i, 1.0) for i in range(3)])
        add_readings(conn, [("h1", "hall", "plug-2", "power", T0 + 1, 5.0)])
        add_readings(conn, [("h1", "hall", "xyz", "power", T0 + 1, 5.0)])
    with engine.begin() as conn:
        closed = close_windows(conn, T0 + 100, settings(backfill_s=1e6))
    assert {(g.device_class, g.metric) for g in closed.groups} == {
        ("motion", "motion"),
        ("plug", "power"),
        ("generic", "power"),
    }


def test_grace_then_late(tmp_path: Path) -> None:
    engine = make_db(tmp_path)
    s = settings(backfill_s=1e6)
    with engine.begin() as conn:
        add_readings(conn, [("h1", "kitchen", "plug-1", "power", T0 + i, 10.0) for i in range(5)])
    with engine.begin() as conn:
        # window [T0, T0+60) is still within its grace at T0+65: nothing closes
        assert close_windows(conn, T0 + 65, s).groups == ()
    with engine.begin() as conn:
        # stored within the grace period: lands in its window
        add_readings(
            conn, [("h1", "kitchen", "plug-1", "power", T0 + 59, 20.0)], received_at=T0 + 66
        )
    with engine.begin() as conn:
        closed = close_windows(conn, T0 + 70, s)
    assert [g.stats.count for g in closed.groups] == [6] and closed.late == 0
    with engine.begin() as conn:
        # stored after the window was aggregated: late, counted, not re-aggregated
        add_readings(
            conn, [("h1", "kitchen", "plug-1", "power", T0 + 30, 30.0)], received_at=T0 + 75
        )
        add_readings(
            conn, [("h1", "kitchen", "plug-1", "power", T0 + 61, 1.0)], received_at=T0 + 75
        )
    with engine.begin() as conn:
        closed = close_windows(conn, T0 + 130, s)
    assert closed.late == 1
    assert [(g.window_start, g.stats.count) for g in closed.groups] == [(T0 + 60, 1)]
    with engine.connect() as conn:
        assert conn.execute(
            select(aggregates.c.count).where(aggregates.c.window_start == T0)
        ).scalars().all() == [6]
        late = conn.execute(select(late_readings)).one()
        assert (late.device, late.window_start, late.count) == ("plug-1", T0, 1)
        assert counters.read_all(conn)["late_readings"] == 1
    with engine.begin() as conn:
        # a pass with nothing new counts nothing again
        assert close_windows(conn, T0 + 135, s).late == 0


def test_restart_resumes_without_double_counting(tmp_path: Path) -> None:
    s = settings(backfill_s=1e6)
    engine = make_db(tmp_path)
    with engine.begin() as conn:
        add_readings(
            conn, [("h1", "office", "plug-1", "power", T0 + i, 1.0) for i in range(0, 180, 2)]
        )
    with engine.begin() as conn:
        first = close_windows(conn, T0 + 75, s)
    assert [g.window_start for g in first.groups] == [T0]
    engine.dispose()

    # a pass that dies before commit leaves nothing behind
    engine = make_db(tmp_path)
    with pytest.raises(RuntimeError), engine.begin() as conn:
        close_windows(conn, T0 + 200, s)
        raise RuntimeError("killed mid-pass")
    engine.dispose()

    engine = make_db(tmp_path)  # "restart": new engine and objects on the same file
    with engine.begin() as conn:
        again = close_windows(conn, T0 + 200, s)
    assert [g.window_start for g in again.groups] == [T0 + 60, T0 + 120]
    with engine.connect() as conn:
        starts = conn.execute(select(aggregates.c.window_start, aggregates.c.count)).all()
        wm = conn.execute(select(sync_watermark.c.watermark)).scalar_one()
    assert sorted(starts) == [(T0, 30), (T0 + 60, 30), (T0 + 120, 30)]
    assert wm == T0 + 180


def test_first_pass_backfill_and_catch_up_bound(tmp_path: Path) -> None:
    engine = make_db(tmp_path)
    with engine.begin() as conn:
        add_readings(conn, [("h1", "office", "plug-1", "power", T0 - 7200, 1.0)])  # too old
        add_readings(
            conn, [("h1", "office", "plug-1", "power", T0 + 60 * k, 1.0) for k in range(10)]
        )
    s = settings(backfill_s=3600, max_windows_per_pass=4)
    with engine.begin() as conn:
        first = close_windows(conn, T0 + 3600, s)
    # starts at the oldest reading within the backfill, closes at most 4 windows
    assert [g.window_start for g in first.groups] == [T0 + 60 * k for k in range(4)]
    with engine.begin() as conn:
        second = close_windows(conn, T0 + 3600, s)
    assert [g.window_start for g in second.groups] == [T0 + 60 * k for k in range(4, 8)]
    assert second.late == 0  # the too-old reading is history, not late
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(aggregates)).scalar_one() == 8


def test_windows_close_in_groups(tmp_path: Path) -> None:
    engine = make_db(tmp_path)
    with engine.begin() as conn:
        add_readings(
            conn, [("h1", "office", "plug-1", "power", T0 + 60 * k, 1.0) for k in range(9)]
        )
    s = settings(backfill_s=1e6, windows_per_batch=3)
    with engine.begin() as conn:
        assert close_windows(conn, T0 + 120 + 10, s).groups == ()  # 2 closed windows: wait
    with engine.begin() as conn:
        closed = close_windows(conn, T0 + 180 + 10, s)
    assert [g.window_start for g in closed.groups] == [T0, T0 + 60, T0 + 120]
    with engine.begin() as conn:
        closed = close_windows(conn, T0 + 420 + 10, s)  # 4 closable: all of them
    assert [g.window_start for g in closed.groups] == [T0 + 60 * k for k in range(3, 7)]


def test_window_floor() -> None:
    assert window_floor(T0 + 59.999, 60) == T0
    assert window_floor(T0 + 60, 60) == T0 + 60


def test_devices_of_one_class_merge_with_exact_statistics(tmp_path: Path) -> None:
    import numpy as np

    rng = np.random.default_rng(3)
    a, b = rng.normal(50, 20, 37), rng.normal(10, 5, 23)
    engine = make_db(tmp_path)
    with engine.begin() as conn:
        add_readings(
            conn, [("h1", "kitchen", "plug-1", "power", T0 + i, v) for i, v in enumerate(a)]
        )
        add_readings(
            conn, [("h1", "kitchen", "plug-2", "power", T0 + 0.5 + i, v) for i, v in enumerate(b)]
        )
    with engine.begin() as conn:
        closed = close_windows(conn, T0 + 100, settings(backfill_s=1e6))
    (g,) = closed.groups
    both = np.concatenate([a, b])
    expected = WindowStats.of(both)
    st = g.stats
    assert (st.count, st.min, st.max) == (60, expected.min, expected.max)
    for name in ("sum", "sum_sq", "mean", "std", "p50", "p95"):
        assert getattr(st, name) == pytest.approx(getattr(expected, name), rel=1e-12), name
    # ... and WindowStats itself agrees with numpy, so the comparison above is not circular.
    assert (st.sum, st.mean, st.std) == pytest.approx((both.sum(), both.mean(), both.std()))
    assert (st.p50, st.p95) == pytest.approx(tuple(np.percentile(both, [50, 95])))
    assert sorted(g.values) == sorted(both)  # the privacy filter gets every value
    assert closed.rows == 60 and closed.messages == 60


def test_a_pass_reads_at_most_max_rows_per_pass(tmp_path: Path) -> None:
    def fill(engine: Engine) -> None:
        with engine.begin() as conn:
            add_readings(
                conn,
                [
                    ("h1", "office", "plug-1", "power", T0 + 60 * k + i, float(k * 100 + i))
                    for k in range(5)
                    for i in range(10 if k != 3 else 40)  # window 3 alone is over the cap
                ],
            )

    capped = make_db(tmp_path)
    fill(capped)
    s = settings(backfill_s=1e6, max_rows_per_pass=25)
    passes = []
    for _ in range(5):
        with capped.begin() as conn:
            closed = close_windows(conn, T0 + 400, s)
        passes.append(([g.window_start for g in closed.groups], closed.rows, closed.end))
    assert passes == [
        ([T0, T0 + 60], 20, T0 + 120),  # a third window would make 30 rows > 25
        ([T0 + 120], 10, T0 + 180),  # window 3 (40 rows) waits for a pass of its own
        ([T0 + 180], 40, T0 + 240),  # ... which takes it whole: at least one window a pass
        ([T0 + 240], 10, T0 + 360),  # the empty window 5 costs nothing
        ([], 0, None),
    ]
    whole = make_engine(tmp_path / "whole.db")
    fill(whole)
    with whole.begin() as conn:
        close_windows(conn, T0 + 400, settings(backfill_s=1e6))

    def table(engine: Engine) -> list[tuple[object, ...]]:
        with engine.connect() as conn:
            cols = [c for c in aggregates.c if c.name not in ("id", "created_at")]
            return [
                tuple(r) for r in conn.execute(select(*cols).order_by(aggregates.c.window_start))
            ]

    assert table(capped) == table(whole) and len(table(whole)) == 5


def test_messages_sharing_a_timestamp_all_count(tmp_path: Path) -> None:
    # A stuck device clock: 50 messages, one ts, seqs 0..49 (all stored: seq is their identity).
    engine = make_db(tmp_path)
    with engine.begin() as conn:
        conn.execute(
            insert(readings),
            [
                {
                    "home": "h1",
                    "room": "lab",
                    "device": "thermostat-1",
                    "metric": "temperature",
                    "ts": T0 + 5,
                    "value": float(seq),
                    "seq": seq,
                    "received_at": T0 + 5 + seq,
                }
                for seq in range(50)
            ],
        )
    with engine.begin() as conn:
        closed = close_windows(conn, T0 + 70, settings(backfill_s=1e6))
    assert closed.rows == 50 and closed.messages == 50
    (group,) = closed.groups
    assert (group.stats.count, group.stats.sum) == (50, float(sum(range(50))))
