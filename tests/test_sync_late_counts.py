"""Late readings are counted per (device, metric, window) in SQL, with the same window floor as
`window_floor`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from sqlalchemy import insert, select

from gateway.db import make_engine, readings
from gateway.sync import counters
from gateway.sync.settings import AggregationSettings
from gateway.sync.tables import late_readings
from gateway.sync.windows import close_windows, window_floor

T0 = 1_700_000_400.0  # a multiple of 60 and of 7


def test_late_readings_are_counted_per_window(tmp_path: Path) -> None:
    s = AggregationSettings.model_validate({"window_s": 7, "grace_s": 1, "windows_per_batch": 1})
    engine = make_engine(tmp_path / "gateway.db")
    with engine.begin() as conn:
        # nothing stored yet: the first pass starts at now - backfill_s and closes 60 windows
        first = close_windows(conn, T0 + 3600, s)
    assert first.late == 0 and first.end is not None and first.end >= T0 + 140
    # Readings below the watermark, on window edges and in between, for two devices and
    # two metrics: all late.
    stamps = [T0 + k * 0.5 for k in range(200)] + [T0 + 7 * k for k in range(20)]
    rows = [
        {
            "home": "h1",
            "room": room,
            "device": device,
            "metric": metric,
            "ts": ts,
            "value": 1.0,
            "seq": None,
            "received_at": T0 + 3601,
        }
        for ts in stamps
        for room, device, metric in (
            ("lab", "plug-1", "power"),
            ("lab", "plug-1", "energy"),
            ("hall", "thermostat-2", "temperature"),
        )
    ]
    with engine.begin() as conn:
        conn.execute(insert(readings).prefix_with("OR IGNORE"), rows)
        stored = conn.execute(
            select(readings.c.room, readings.c.device, readings.c.metric, readings.c.ts)
        ).all()
    expected = Counter((r, d, m, window_floor(ts, 7)) for r, d, m, ts in stored)
    with engine.begin() as conn:
        assert close_windows(conn, T0 + 3602, s).late == len(stored)
    with engine.connect() as conn:
        got = {
            (r.room, r.device, r.metric, r.window_start): r.count
            for r in conn.execute(select(late_readings))
        }
        assert got == dict(expected)
        assert counters.read_all(conn)["late_readings"] == len(stored)
    # A second batch of late readings in the same windows adds to the counts.
    with engine.begin() as conn:
        conn.execute(
            insert(readings),
            [{**rows[0], "ts": T0 + 0.25}, {**rows[0], "ts": T0 + 6.999}],
        )
    with engine.begin() as conn:
        assert close_windows(conn, T0 + 3603, s).late == 2
    with engine.connect() as conn:
        count = conn.execute(
            select(late_readings.c.count).where(
                late_readings.c.device == "plug-1",
                late_readings.c.metric == "power",
                late_readings.c.window_start == T0,
            )
        ).scalar_one()
        assert count == expected[("lab", "plug-1", "power", T0)] + 2
