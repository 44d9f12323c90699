"""Sensor baselines persisted in SQLite and windows closed by time, with the engine as the
gateway runs it: a real `Writer` on a real SQLite file (results, baseline rows), the read-only
`BaselineReader`, the shipped models; fake clocks (wall and idle), so no test waits.

- determinism: one multi-day series of several devices (cadences from 30 s to 16 min, a
  dropout, faults) paced in small batches as live, in one burst as after an outage, and
  replayed through a restart in the middle give the same result for every window;
- eviction: an evicted sensor comes back and resumes from its stored baseline;
- the last window of a silent device closes by time; a late reading joins the next window;
- a stored state that does not restore, or was learned with other windows, is discarded;
- retention deletes the baselines of devices gone for long.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from gateway.db import make_engine
from gateway.inference.baselines import BaselineReader
from gateway.inference.engine import InferenceEngine
from gateway.inference.runtime import ModelRuntime
from gateway.inference.sensors import SensorStream
from gateway.inference.settings import DEFAULT_MODELS_DIR, InferenceSettings
from gateway.inference.streams import DeviceLimits
from gateway.monitoring import GatewayMetrics
from gateway.records import Reading
from gateway.sync.retention import Retention, RetentionPolicy
from gateway.writer import Writer

T0 = 1_767_225_600.0  # midnight UTC
WINDOW = 300.0
GRACE = 60.0
DAY = 86400.0
SETTINGS = InferenceSettings(
    models=["sensor_anomaly", "occupancy"],
    sensor_window_s=WINDOW,
    warmup_hours=4.0,
    sensor_grace_s=GRACE,
    baseline_save_s=3600.0,
    queue_size=100_000,  # paced runs put without waiting (`on_readings`): never full here
    discovery=False,
    publish_events=False,
)


class Clocks:
    """The engine's wall clock (results, windows closed by time) and idle clock, driven by the
    test: live, the wall clock is a little past the newest reading."""

    def __init__(self, now: float = T0) -> None:
        self.wall = now
        self.idle = 0.0

    def advance_to(self, wall: float) -> None:
        if wall > self.wall:
            self.idle += wall - self.wall
            self.wall = wall


@pytest.fixture(scope="module")
def runtime() -> ModelRuntime:
    return ModelRuntime.load(DEFAULT_MODELS_DIR, names=SETTINGS.models)


@asynccontextmanager
async def gateway_engine(
    db: Path,
    runtime: ModelRuntime,
    clocks: Clocks,
    *,
    settings: InferenceSettings = SETTINGS,
    limits: DeviceLimits | None = None,
    clean: bool = True,
) -> AsyncIterator[InferenceEngine]:
    """The engine wired as `gateway.inference.wiring` does, on the SQLite file `db`; at exit a
    clean stop (the last baselines saved, as the gateway's shutdown does) or, `clean=False`,
    none (a kill: whatever the last save round wrote is what a restart finds)."""
    sql = make_engine(db)
    # synchronous=normal: no fsync per commit (a test's speed; the order of writes is the same)
    writer = Writer(sql, metrics=GatewayMetrics(), synchronous="normal")
    writer.start()
    reader = BaselineReader(db)
    engine = InferenceEngine(
        settings,
        runtime,
        write=writer.run,
        store=writer.store,
        limits=limits,
        clock=lambda: clocks.wall,
        idle_clock=lambda: clocks.idle,
        load=reader,
    )
    task = asyncio.create_task(engine.run())
    try:
        yield engine
        await engine.drain()
        if clean:
            await engine.save_baselines()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        engine.close()
        reader.close()
        await writer.stop()
        sql.dispose()


# -- the series -------------------------------------------------------------------------------


def series(days: float = 2.0) -> list[Reading]:
    """Four devices, time-ordered: an air sensor every 60 s (daily cycles; a spike and a stuck
    stretch on day 2), a plug every 30 s (a drift), a CO2 sensor every 16 min (a window holds
    one reading) and a thermometer every 120 s with a 2-hour dropout (its windows close by
    time while it is silent)."""
    rng = np.random.default_rng(11)
    end = T0 + days * DAY
    out: list[Reading] = []

    def add(device: str, room: str, ts: float, values: dict[str, float]) -> None:
        for metric, value in values.items():
            out.append(Reading("h", room, device, metric, ts, round(value, 3), None, ts))

    def daily(ts: float) -> float:
        return math.sin(2 * math.pi * (ts - T0) / DAY)

    ts = T0 + 7.0
    stuck: dict[str, float] | None = None
    while ts < end:
        v = {
            "temperature": 21 + 1.5 * daily(ts) + rng.normal(0, 0.05),
            "humidity": 45 - 5 * daily(ts) + rng.normal(0, 0.3),
        }
        if abs(ts - (T0 + 1.4 * DAY)) < 30:
            v["temperature"] += 14.0  # a spike
        if T0 + 1.6 * DAY <= ts < T0 + 1.7 * DAY:  # stuck: the same reading for 2.4 h
            stuck = stuck or v
            v = stuck
        add("air-1", "living", ts, v)
        ts += 60.0
    ts = T0 + 3.0
    while ts < end:
        drift = max(0.0, (ts - (T0 + 1.3 * DAY)) / 3600.0) * 40.0 if ts < T0 + 1.5 * DAY else 0.0
        add("plug-1", "kitchen", ts, {"power": 80 + 30 * daily(ts) + rng.normal(0, 2) + drift})
        ts += 30.0
    ts = T0 + 11.0
    while ts < end:
        add("co2-1", "office", ts, {"co2": 500 + 150 * max(daily(ts), 0) + rng.normal(0, 8)})
        ts += 960.0
    ts = T0 + 13.0
    while ts < end:
        if not T0 + 1.1 * DAY <= ts < T0 + 1.1 * DAY + 7200:
            add("therm-1", "hall", ts, {"temperature": 19 + daily(ts) + rng.normal(0, 0.05)})
        ts += 120.0
    out.sort(key=lambda r: (r.ts, r.device, r.metric))
    return out


def batches(readings: list[Reading], span_s: float) -> Iterator[tuple[float, list[Reading]]]:
    """The readings in batches of `span_s` of their time, each with the wall clock at which
    it arrives live (a few seconds after its newest reading)."""
    batch: list[Reading] = []
    edge = readings[0].ts + span_s
    for r in readings:
        if r.ts >= edge:
            yield batch[-1].ts + 2.0, batch
            batch, edge = [], edge + span_s * max(1, math.ceil((r.ts - edge) / span_s))
        batch.append(r)
    if batch:
        yield batch[-1].ts + 2.0, batch


async def close_last_windows(engine: InferenceEngine, clocks: Clocks) -> None:
    """The series is over: the wall clock moves past every open window's end + grace."""
    clocks.advance_to(clocks.wall + WINDOW + GRACE + 20.0)
    engine.sweep()
    await engine.drain()


async def feed_live(
    engine: InferenceEngine, clocks: Clocks, readings: list[Reading], span_s: float = 300.0
) -> None:
    """As live: `span_s` of readings at a time, each batch processed before the next one
    arrives; the wall clock moves on with them (and, in gaps, the sweep gives the engine its
    turn), so windows close by time where no reading closes them."""
    for arrives, batch in batches(readings, span_s):
        if arrives - clocks.wall > span_s + 10.0:  # a gap: the sweep's turn in it
            clocks.advance_to(arrives - span_s)
            engine.sweep()
            await engine.drain()
        clocks.advance_to(arrives)
        engine.on_readings(batch)
        await engine.drain()


def results(db: Path) -> list[tuple[object, ...]]:
    """Every stored result: model, device, window, label, score, and the 0/1 reading."""
    con = sqlite3.connect(db)
    try:
        rows = con.execute(
            "SELECT i.model, i.device, i.window_start, i.window_end, i.label, i.score, r.value"
            " FROM inferences i JOIN readings r ON r.device = i.device AND r.ts = i.window_end"
            " AND r.metric = 'inference_' || CASE i.model WHEN 'sensor_anomaly' THEN 'anomaly'"
            " ELSE i.model END"
            " ORDER BY i.model, i.device, i.window_start"
        ).fetchall()
    finally:
        con.close()
    return rows


def stored_states(db: Path) -> dict[tuple[str, str], bytes]:
    con = sqlite3.connect(db)
    try:
        return {
            (h, d): bytes(s)
            for h, d, s in con.execute("SELECT home, device, state FROM sensor_baselines")
        }
    finally:
        con.close()


# -- determinism ------------------------------------------------------------------------------


@pytest.mark.timeout(360)  # three runs over two days of four devices: ~30 s idle, ~70 s loaded
async def test_paced_burst_and_replay_through_a_restart_give_the_same_windows(
    runtime: ModelRuntime, tmp_path: Path
) -> None:
    readings = series()
    restart_at = T0 + 1.25 * DAY  # a window boundary after the warm-up, before most faults
    assert restart_at % WINDOW == 0

    paced_db, clocks = tmp_path / "paced.db", Clocks()
    async with gateway_engine(paced_db, runtime, clocks) as engine:
        await feed_live(engine, clocks, readings)
        await close_last_windows(engine, clocks)
        paced_closed_by_time = engine.stats.windows_closed_by_time
        assert engine.stats.errors == 0 and engine.stats.dropped == 0
    paced = results(paced_db)

    # After an outage: the whole series in one go (as the gateway's readings callback hands
    # it over: waiting while the engine's queue of 4,000 is full), in batches of batch_max
    # items, the wall clock at its end (the devices are busy: no window closes by time).
    burst_db, clocks = tmp_path / "burst.db", Clocks(readings[-1].ts + 2.0)
    burst_settings = SETTINGS.model_copy(update={"queue_size": 4000})
    async with gateway_engine(burst_db, runtime, clocks, settings=burst_settings) as engine:
        await engine.readings_in(readings)
        await engine.drain()
        assert engine.stats.errors == 0 and engine.stats.dropped == 0
        assert engine.stats.windows_closed_by_time == 0
        await close_last_windows(engine, clocks)
    burst = results(burst_db)

    # A replay, stopped after `restart_at` (the devices fall silent, their windows close by
    # time, the gateway stops cleanly) and resumed by a new engine on the same database.
    replay_db, clocks = tmp_path / "replay.db", Clocks()
    before = [r for r in readings if r.ts < restart_at]
    after = [r for r in readings if r.ts >= restart_at]
    async with gateway_engine(replay_db, runtime, clocks) as engine:
        await feed_live(engine, clocks, before)
        clocks.advance_to(restart_at + GRACE + 10.0)
        engine.sweep()
    saved = stored_states(replay_db)
    assert set(saved) == {("h", d) for d in ("air-1", "plug-1", "co2-1", "therm-1")}
    async with gateway_engine(replay_db, runtime, clocks) as engine:
        await feed_live(engine, clocks, after)
        await close_last_windows(engine, clocks)
        assert engine.stats.baselines_restored == 4 and engine.stats.baselines_discarded == 0
    replay = results(replay_db)

    labels = {row[4] for row in paced}
    assert {"normal", "anomaly"} <= labels  # the faults were found: the comparison has teeth
    assert paced_closed_by_time > 0  # the slow sensor and the dropout closed windows by time
    assert len(paced) > 1500
    assert len(readings) > 3 * burst_settings.queue_size  # the burst waited for queue room
    assert burst == paced
    assert replay == paced


# -- restart, eviction, time ------------------------------------------------------------------


async def test_a_killed_engine_resumes_from_the_last_save_round(
    runtime: ModelRuntime, tmp_path: Path
) -> None:
    db, clocks = tmp_path / "gw.db", Clocks()
    warm = [r for r in series(0.5) if r.device == "air-1"]  # 12 h: warmed up (4 h)
    async with gateway_engine(db, runtime, clocks, clean=False) as engine:
        await feed_live(engine, clocks, warm)
        rounds = engine.stats.baselines_written
    assert rounds > 0  # a save round every hour of the (fake) clock
    # Killed: no save at the end; the row is the last round's (at most baseline_save_s old).
    [(key, state)] = stored_states(db).items()
    restored = SensorStream.restore(state)
    assert key == ("h", "air-1") and restored is not None
    nxt = [
        Reading("h", "living", "air-1", "temperature", T0 + 0.5 * DAY + 30 + i * 60, 21.0, None, 0)
        for i in range(6)
    ]
    async with gateway_engine(db, runtime, clocks) as engine:
        await feed_live(engine, clocks, nxt)
        assert engine.stats.baselines_restored == 1
    # The first window after the restart is scored at once: no new warm-up.
    anomaly = [r for r in results(db) if r[0] == "sensor_anomaly" and r[2] >= nxt[0].ts - 30]
    assert [r[2] for r in anomaly] == [T0 + 0.5 * DAY]


async def test_an_evicted_sensor_resumes_from_sqlite(runtime: ModelRuntime, tmp_path: Path) -> None:
    db, clocks = tmp_path / "gw.db", Clocks()
    warm = [r for r in series(0.5) if r.device == "plug-1"]
    limits = DeviceLimits(idle_s=3600.0, max_devices=10, max_microphones=1)
    async with gateway_engine(db, runtime, clocks, limits=limits) as engine:
        await feed_live(engine, clocks, warm)
        clocks.advance_to(clocks.wall + 3601.0)
        engine.sweep()
        await engine.drain()
        assert engine.streams.sensors == {} and engine.stats.evicted_sensors == 1
        # Its state is written by the next save round (at most baseline_save_s later).
        clocks.advance_to(clocks.wall + 3600.0)
        engine.sweep()
        await engine.drain()
        assert ("h", "plug-1") in stored_states(db)
        assert engine.stats.baselines_persisted == 1
        back = T0 + 0.5 * DAY + 2 * 3600.0
        clocks.advance_to(back)
        engine.on_readings(
            [
                Reading("h", "kitchen", "plug-1", "power", back + i * 30, 80.0, None, 0)
                for i in range(20)
            ]
        )
        await engine.drain()
        assert engine.stats.baselines_restored == 1
    # Scored right away again (a fresh stream would need 4 h of windows first).
    new = [r for r in results(db) if r[0] == "sensor_anomaly" and r[2] >= back - WINDOW]
    assert len(new) >= 1


async def test_the_last_window_closes_by_time_and_a_late_reading_joins_the_next(
    runtime: ModelRuntime, tmp_path: Path
) -> None:
    db, clocks = tmp_path / "gw.db", Clocks()
    warm = [r for r in series(0.5) if r.device == "therm-1"]
    async with gateway_engine(db, runtime, clocks) as engine:
        await feed_live(engine, clocks, warm)
        last = warm[-1].ts
        end = last - last % WINDOW + WINDOW
        ends = lambda: [r[3] for r in results(db) if r[0] == "sensor_anomaly"]  # noqa: E731
        assert end not in ends()
        clocks.advance_to(end + GRACE - 1.0)  # not yet due
        engine.sweep()
        await engine.drain()
        assert end not in ends()
        before = engine.stats.windows_closed_by_time
        clocks.advance_to(end + GRACE + 11.0)
        engine.sweep()
        await engine.drain()
        assert ends()[-1] == end and engine.stats.windows_closed_by_time == before + 1
        # A reading of the closed window arriving late is not lost: it is scored in a window
        # after it, and the closed window's result stays as it was.
        first = results(db)
        n = len(ends())
        late = Reading("h", "hall", "therm-1", "temperature", end - 5.0, 19.0, None, 0)
        engine.on_readings([late])
        await engine.drain()
        clocks.advance_to(clocks.wall + WINDOW + GRACE + 20.0)
        engine.sweep()
        await engine.drain()
        assert len(ends()) == n + 1
        assert all(row in results(db) for row in first)


async def test_a_stored_state_that_does_not_fit_is_discarded_with_a_log_line(
    runtime: ModelRuntime, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db, clocks = tmp_path / "gw.db", Clocks()
    other = SensorStream(60.0, warmup_s=SETTINGS.warmup_hours * 3600.0)
    other.add("temperature", T0, 21.0)
    # Right windows, but learned with another warm-up than [inference] now says.
    spans = SensorStream(WINDOW, warmup_s=3600.0)
    spans.add("temperature", T0, 21.0)
    sql = make_engine(db)
    with sql.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO sensor_baselines VALUES ('h', 'bad', 300.0, x'ff00', 0), "
            "('h', 'other', 60.0, ?, 0), ('h', 'spans', 300.0, ?, 0)",
            (other.snapshot(), spans.snapshot()),
        )
    sql.dispose()
    caplog.set_level(logging.WARNING, "gateway.inference.baselines")
    async with gateway_engine(db, runtime, clocks) as engine:
        engine.on_readings(
            [
                Reading("h", "r", d, "temperature", T0 + 1, 21.0, None, 0)
                for d in ("bad", "other", "spans")
            ]
        )
        await engine.drain()
        assert engine.stats.baselines_discarded == 3 and engine.stats.errors == 0
        assert set(engine.streams.sensors) == {("h", "bad"), ("h", "other"), ("h", "spans")}
    text = caplog.text
    assert "h/bad discarded: an unknown format (first byte ff)" in text
    assert "h/other discarded: learned with 60s windows, inference.sensor_window_s is 300s" in text
    assert "h/spans discarded: learned with baseline/warm-up/relearn spans" in text


async def test_retention_deletes_the_baselines_of_devices_gone_for_long(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    sql = make_engine(db)
    with sql.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO sensor_baselines VALUES ('h', 'gone', 300.0, x'01', ?), "
            "('h', 'here', 300.0, x'01', ?)",
            (T0 - 31 * DAY, T0 - 1 * DAY),
        )
    writer = Writer(sql, metrics=GatewayMetrics())
    writer.start()
    try:
        retention = Retention(
            RetentionPolicy(0.0, 0.0, baseline_retention_s=30 * DAY, chunk_rows=1),
            run_db=writer.run,
            registry=CollectorRegistry(),
            clock=lambda: T0,
        )
        assert await retention.run_once() == {"sensor_baselines": 1}
    finally:
        await writer.stop()
        sql.dispose()
    assert set(stored_states(db)) == {("h", "here")}


def test_a_save_round_is_spread_over_batches_and_skips_unchanged_states(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pure unit test of `Baselines` (no database): a round snapshots ROUND_DEVICES sensors per
    batch, writes each changed one once, and the next round writes only what changed since."""
    from gateway.inference import baselines as mod
    from gateway.inference.stats import EngineStats
    from gateway.inference.streams import Sensor

    monkeypatch.setattr(mod, "ROUND_DEVICES", 2)
    clocks = Clocks()
    sensors: dict[tuple[str, str], Sensor] = {}
    b = mod.Baselines(
        SETTINGS,
        sensors,
        load=lambda _h, _d: None,
        stats=EngineStats(),
        clock=lambda: clocks.wall,
        idle_clock=lambda: clocks.idle,
    )
    for i in range(5):
        stream = SensorStream(WINDOW, warmup_s=4 * 3600.0)
        stream.add("temperature", T0 + i, 20.0 + i)
        w = stream.add("temperature", T0 + WINDOW + i, 20.0)
        assert w is not None
        stream.commit(w)
        sensors[("h", f"d{i}")] = Sensor("h", "r", f"d{i}", stream, used=clocks.idle)
    assert b.round() == []  # not due before baseline_save_s
    clocks.advance_to(clocks.wall + SETTINGS.baseline_save_s)
    chunks = []
    while rows := b.round():
        chunks.append([r.device for r in rows])
        b.saved(rows)
    assert chunks == [["d0", "d1"], ["d2", "d3"], ["d4"]]
    clocks.advance_to(clocks.wall + SETTINGS.baseline_save_s)
    sensors[("h", "d3")].used = clocks.idle
    stream = sensors[("h", "d3")].stream
    w = stream.add("temperature", T0 + 3 * WINDOW, 21.0)
    assert w is not None
    stream.commit(w)
    sensors[("h", "d1")].used = clocks.idle  # input, but its learned state did not change
    assert [r.device for r in b.round()] == ["d3"]
