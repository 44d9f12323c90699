"""The sensor anomaly detector's time-based baseline and the shipped model on hand-made series:
warm-up holds in hours at any cadence, a lasting level change is one ``level_change`` and then
learned, an occupancy-shaped rise is no fault, a window's result does not depend on how its
readings were batched, a snapshot restores a stream that scores exactly like the original; a
stuck plug is flagged, a plug on standby and a motion sensor's lamps are not."""

from __future__ import annotations

import math
import tracemalloc
from collections.abc import Callable

import numpy as np
import pytest

from gateway.inference.runtime import LoadedModel, ModelRuntime
from gateway.inference.sensor_scoring import SensorScorer
from gateway.inference.sensors import (
    DAILY,
    DAILY_LOCAL,
    LEVEL,
    MISSING,
    MOTION,
    OTHERS,
    STUCK_RARE,
    STUCK_RUN,
    SensorStream,
    WindowStats,
)
from gateway.inference.settings import DEFAULT_MODELS_DIR, InferenceSettings
from gateway.inference.streams import DeviceStreams
from gateway.records import Reading
from training.sensor_eval import fault_oracle, model_flag, windows

T0 = 1_767_225_600.0  # midnight UTC
WINDOW = 300.0
DAY = 86400.0
HOUR = 3600.0

Series = Callable[[float], dict[str, float]]


@pytest.fixture(scope="module")
def runtime() -> ModelRuntime:
    return ModelRuntime.load(DEFAULT_MODELS_DIR, names=["sensor_anomaly", "occupancy"])


@pytest.fixture(scope="module")
def anomaly(runtime: ModelRuntime) -> LoadedModel:
    return runtime.models["sensor_anomaly"]


def run(
    series: Series, days: float, model: LoadedModel | None = None, step: float = 60.0
) -> list[tuple[float, list[str], np.ndarray, bool, str]]:
    """Feed one reading every `step` s through the serving stream (`sensor_eval.windows`, the
    loop the bench and training use); per window after the warm-up: (start, metrics, features,
    flagged by the shipped model and thresholds, label)."""
    readings = (
        ("dev", "room", ts, metric, value)
        for ts in (T0 + i * step for i in range(int(days * DAY / step) + 1))
        for metric, value in series(ts).items()
    )
    flag = (
        model_flag(lambda x: model.probabilities(x)[:, 1], model.manifest.thresholds)
        if model is not None
        else None
    )
    scored = windows(readings, window_s=WINDOW, is_anomalous=flag)
    return [(w.window.start, w.metrics, w.anomaly, w.flagged, w.label) for w in scored]


def noise(ts: float, k: int) -> float:
    """Deterministic +-2 % jitter (a reading's noise) without a random state."""
    return 0.02 * math.sin(ts * 0.731 + k * 1.3) * math.cos(ts * 0.0917)


def room(ts: float) -> dict[str, float]:
    """A room's temperature and humidity with a daily cycle and some jitter."""
    hour = (ts - T0) % DAY / HOUR
    temp = 20.0 + 1.5 * math.sin(2 * math.pi * (hour - 9) / 24) + noise(ts, 3)
    humidity = 45.0 + 3.0 * math.sin(2 * math.pi * (hour - 3) / 24) + noise(ts, 4)
    return {"temperature": round(temp, 2), "humidity": round(humidity, 2)}


# -- time, not window counts ---------------------------------------------------------------------


@pytest.mark.parametrize("window_s", [10.0, 960.0])
def test_warm_up_and_the_baseline_span_are_hours_at_any_cadence(window_s: float) -> None:
    stream = SensorStream(window_s, warmup_s=6 * HOUR)
    first_ready = None
    ts = T0
    while ts < T0 + 8 * HOUR:
        w = stream.add("temperature", ts, 20.0 + 0.1 * math.sin(ts / 900.0))
        if w is not None:
            if stream.ready(w) and first_ready is None:
                first_ready = w.start
            stream.commit(w)
        ts += window_s
    assert first_ready is not None and first_ready - T0 == pytest.approx(6 * HOUR, abs=window_s)
    # Bounded: the same number of bins whatever the cadence (15-min bins over 24 h + 2 h).
    assert stream.metrics["temperature"].bins == {10.0: 105, 960.0: 99}[window_s]


def test_a_device_day_costs_a_few_kilobytes() -> None:
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    stream = SensorStream(WINDOW)
    for i in range(int(1.1 * DAY / 60)):
        ts = T0 + i * 60.0
        for m, v in room(ts).items():
            w = stream.add(m, ts, v)
            if w is not None:
                stream.commit(w)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    # Two metrics of 105 bins each: ~3.3 KB of arrays a metric, plus the objects around them.
    assert 4_000 < grown < 16_000
    assert len(stream.snapshot()) < 6_000


# -- no sticky flags -------------------------------------------------------------------------------


def level_rule(names: list[str], feats: np.ndarray, *_: object) -> frozenset[str]:
    """A plain rule for the mechanism: flag a metric more than 4 level scales off."""
    return frozenset(m for m, row in zip(names, feats, strict=True) if row[LEVEL] > 4.0)


def test_a_lasting_level_change_is_one_level_change_and_then_normal() -> None:
    step_at = 1.5 * DAY  # a new setpoint: +3 degC from noon on day 2, and it stays

    def series(ts: float) -> dict[str, float]:
        r = room(ts)
        return {"temperature": r["temperature"] + (3.0 if ts - T0 >= step_at else 0.0)}

    readings = (
        ("dev", "room", T0 + i * 60.0, m, v)
        for i in range(int(3 * DAY / 60))
        for m, v in series(T0 + i * 60.0).items()
    )
    scored = list(windows(readings, window_s=WINDOW, relearn_hours=4.0, is_anomalous=level_rule))
    after = [w for w in scored if w.window.start >= T0 + step_at]
    labels = [w.label for w in after]
    assert labels.count("level_change") == 1
    changed = next(w for w in after if w.label == "level_change").window.start - T0 - step_at
    # Flagged until the change is adopted (relearn_s of a steady new level), normal after.
    assert 4 * HOUR - WINDOW <= changed <= 4.5 * HOUR
    assert all(w.flagged for w in after if w.window.start - T0 - step_at < changed)
    assert not any(w.flagged for w in after if w.window.start - T0 - step_at > changed)
    assert not any(w.flagged for w in scored if w.window.start < T0 + step_at)


def test_a_drift_and_a_stuck_value_are_not_adopted_as_a_new_level() -> None:
    drift = (1.2 * DAY, 1.2 * DAY + 12 * HOUR)  # still growing when the series ends

    def series(ts: float) -> dict[str, float]:
        t = ts - T0
        r = room(ts)
        if drift[0] <= t:
            r["temperature"] += 6.0 * min(1.0, (t - drift[0]) / (drift[1] - drift[0]))
        if 1.2 * DAY <= t < 1.6 * DAY:
            r["humidity"] = 61.0  # stuck at one reading for ~10 h
        return r

    readings = (
        ("dev", "room", T0 + i * 60.0, m, v)
        for i in range(int(1.6 * DAY / 60))
        for m, v in series(T0 + i * 60.0).items()
    )
    scored = list(windows(readings, window_s=WINDOW, is_anomalous=level_rule))
    assert not any(w.label == "level_change" for w in scored)


# -- a room without a motion sensor ----------------------------------------------------------------


def office(ts: float) -> dict[str, float]:
    """An office's air-quality sensor, no motion sensor: empty for two days (a weekend), then
    people from 8:00 to 18:00: CO2 climbs gradually to ~1000 ppm and humidity by ~5 % with it,
    both fall back in the evening."""
    t = ts - T0
    day, hour = int(t // DAY), t % DAY / HOUR
    people = 0.0
    if day >= 2:
        rise = min(1.0, max(0.0, (hour - 8.0) / 2.5))
        fall = min(1.0, max(0.0, (hour - 18.0) / 2.0))
        people = rise * (1.0 - fall)
    r = room(ts)
    return {
        "temperature": round(r["temperature"] + 0.8 * people, 2),
        "humidity": round(r["humidity"] + 5.0 * people, 2),
        "co2": round(430.0 * (1 + noise(ts, 5)) + 580.0 * people, 1),
    }


def test_an_occupancy_shaped_rise_is_at_most_one_event_then_learned(anomaly: LoadedModel) -> None:
    """The first occupied day after two empty ones: at most one run of flagged windows, ended by
    one level_change; the next occupied day is not flagged at all."""
    rows = run(office, 4, anomaly)
    day3 = [r for r in rows if T0 + 2 * DAY <= r[0] < T0 + 3 * DAY]
    day4 = [r for r in rows if r[0] >= T0 + 3 * DAY]
    assert day3 and max(float(r[2][r[1].index("co2")][LEVEL]) for r in day3) > 5.0
    flags = [r[3] for r in day3]
    runs = sum(1 for k, f in enumerate(flags) if f and (k == 0 or not flags[k - 1]))
    assert runs <= 1 and [r[4] for r in day3].count("level_change") == int(runs == 1)
    assert day4 and not any(r[3] or r[4] != "normal" for r in day4)


@pytest.mark.xfail(
    strict=True,
    reason="known miss: the shipped model flags the first occupied "
    "day after empty days for 4 h (until the level change), see the model card",
)
def test_an_occupancy_shaped_rise_of_co2_and_humidity_is_not_a_fault(anomaly: LoadedModel) -> None:
    rows = run(office, 3, anomaly)
    day3 = [r for r in rows if r[0] >= T0 + 2 * DAY]
    assert not any(r[3] for r in day3)


# -- deterministic ---------------------------------------------------------------------------------


def test_a_batch_scores_every_window_as_one_reading_at_a_time(runtime: ModelRuntime) -> None:
    settings = InferenceSettings(sensor_window_s=WINDOW, warmup_hours=6.0)
    readings = []
    for i in range(int(1.5 * DAY / 60)):
        ts = T0 + i * 60.0
        for device, series in (("air-1", office), ("air-2", room)):
            values = series(ts + (2 * DAY if device == "air-1" else 0.0))
            if device == "air-2" and DAY <= ts - T0 < DAY + 600:
                values["temperature"] += 9.0  # a spike, so some windows are flagged
            for m, v in values.items():
                readings.append(Reading("h", "r", device, m, ts, v, None, ts))

    def scored(batches: list[list[Reading]]) -> list[tuple[str, float, str, str, float]]:
        streams = DeviceStreams(settings, alarm=None)
        scorer = SensorScorer(settings, runtime, streams)
        out = []
        for batch in batches:
            out += [(r.device, r.start, r.model, r.label, r.score) for r in scorer.process(batch)]
        return sorted(out)

    paced = scored([[r] for r in readings])
    burst = scored([readings])
    assert paced == burst
    assert {label for *_, label, _ in paced} >= {"normal", "anomaly"}


# -- persistence -----------------------------------------------------------------------------------


def test_a_snapshot_restores_a_stream_that_scores_like_the_original() -> None:
    stream = SensorStream(WINDOW)
    for i in range(int(1.3 * DAY / 60)):
        ts = T0 + i * 60.0
        for m, v in office(ts).items():
            w = stream.add(m, ts, v)
            if w is not None:
                stream.commit(w, level_rule(*stream.anomaly_features(w)))
    stream.flush()
    data = stream.snapshot()
    restored = SensorStream.restore(data)
    assert restored is not None and restored.snapshot() == data
    assert restored.window_s == WINDOW and restored.relearn_s == stream.relearn_s
    for i in range(int(1.3 * DAY / 60), int(1.6 * DAY / 60)):
        ts = T0 + i * 60.0
        for m, v in office(ts).items():
            a, b = stream.add(m, ts, v), restored.add(m, ts, v)
            assert a == b
            if a is not None and b is not None:
                fa, fb = stream.anomaly_features(a), restored.anomaly_features(b)
                assert fa[0] == fb[0] and np.array_equal(fa[1], fb[1])
                assert np.array_equal(stream.occupancy_features(a), restored.occupancy_features(b))
                assert stream.commit(a, level_rule(*fa)) == restored.commit(b, level_rule(*fb))
    assert stream.snapshot() == restored.snapshot()
    assert SensorStream.restore(bytes([99]) + data[1:]) is None
    assert SensorStream.restore(data[:1] + b"not zlib") is None
    assert SensorStream.restore(b"") is None


def test_due_closes_the_open_window_after_its_grace_and_a_late_reading_opens_the_next() -> None:
    stream = SensorStream(WINDOW)
    stream.add("temperature", T0 + 10.0, 20.0)
    assert stream.due(T0 + WINDOW + 29.0, 30.0) is None
    w = stream.due(T0 + WINDOW + 30.0, 30.0)
    assert isinstance(w, WindowStats) and w.start == T0 and w.count == {"temperature": 1}
    assert stream.due(T0 + 10 * WINDOW, 30.0) is None  # nothing open
    stream.add("temperature", T0 + 100.0, 21.0)  # late for the closed window
    assert stream.start == T0 + WINDOW


# -- the shipped model on hand-made series ---------------------------------------------------------


def fridge(stuck: tuple[float, float] | None = None) -> Series:
    """A fridge compressor: ~110 W for 15 min, 3 W for 25 min; optionally stuck at the reading
    it had when `stuck` (start, end seconds after T0) began."""
    held: list[float] = []

    def series(ts: float) -> dict[str, float]:
        on = (ts - T0) % 2400.0 < 900.0
        watts = round((110.0 if on else 3.0) * (1.0 + noise(ts, 0)), 1)
        if stuck is not None and stuck[0] <= ts - T0 <= stuck[1]:
            if not held:
                held.append(watts)
            watts = held[0]
        return {"power": watts}

    return series


def desk_plug(ts: float) -> dict[str, float]:
    """A desk: ~100 W from 18:00 to 22:00, 0.8 W standby (the same reading) the rest of the day."""
    hour = (ts - T0) % DAY / 3600.0
    if 18.0 <= hour < 22.0:
        return {"power": round(100.0 * (1.0 + 0.5 * math.sin(ts / 700.0) + noise(ts, 1)), 1)}
    return {"power": 0.8}


def test_a_stuck_plug_is_flagged_and_the_same_plug_cycling_is_not(anomaly: LoadedModel) -> None:
    start, end = DAY + 10 * 3600.0 + 600.0, DAY + 12 * 3600.0
    stuck = run(fridge((start, end)), 2, anomaly)
    normal = run(fridge(), 2, anomaly)
    inside = [r for r in stuck if start + 1800.0 <= r[0] - T0 <= end - WINDOW]
    assert inside and all(r[2][0][STUCK_RARE] > 0.3 for r in inside[3:])
    assert any(r[3] for r in inside)
    assert not any(r[3] for r in normal if start <= r[0] - T0 <= end)


def test_a_plug_on_standby_repeating_one_reading_is_not_stuck(anomaly: LoadedModel) -> None:
    rows = run(desk_plug, 2, anomaly)
    night = [r for r in rows if 1.0 <= (r[0] - T0) % DAY / 3600.0 < 6.0]
    # The repeat is there (the stuck-time input sees it), the rare-value one is not.
    assert night and all(r[2][0][STUCK_RUN] == 1.0 for r in night)
    assert all(r[2][0][STUCK_RARE] == 0.0 for r in night)
    assert not any(r[3] for r in night)


def living_room(drift_from: float | None = None) -> Series:
    """A motion sensor's room: daylight, lamps (250 lx) with people moving about in the evening,
    at a time that changes by 40 min from day to day, dark at night; optionally the light
    reading drifting up by 400 lx over four hours from `drift_from` (seconds after T0)."""

    def series(ts: float) -> dict[str, float]:
        t = ts - T0
        day, hour = int(t // DAY), t % DAY / 3600.0
        daylight = max(0.0, math.sin(math.pi * (hour - 7.5) / 9.5)) * 300.0 if hour >= 7.5 else 0.0
        lamps_on = 17.0 + 0.66 * (day % 2) <= hour < 22.5
        light = (daylight + (250.0 if lamps_on and daylight < 150.0 else 0.0)) * (
            1.0 + noise(ts, 2)
        )
        if drift_from is not None and t >= drift_from:
            light += 400.0 * min(1.0, (t - drift_from) / (4 * 3600.0))
        moving = lamps_on and int(ts / 60.0) % 3 != 0
        return {"light": round(light, 1), "motion": 1.0 if moving else 0.0}

    return series


def test_a_motion_sensors_lamps_at_a_new_time_are_not_an_anomaly(anomaly: LoadedModel) -> None:
    series = living_room()
    rows = run(series, 3, anomaly)
    per_minute = range(int(WINDOW // 60.0))
    share = {
        r[0]: float(np.mean([series(r[0] + k * 60.0)["motion"] for k in per_minute])) for r in rows
    }
    assert all(np.allclose(r[2][:, MOTION], share[r[0]]) for r in rows)
    assert min(share.values()) == 0.0 and max(share.values()) > 0.5
    assert not any(r[3] for r in rows)


def test_a_slow_light_drift_at_night_stands_out_on_the_hours_own_scale() -> None:
    drift_from = 2 * DAY + 0.5 * 3600.0
    drifted = {r[0]: r[2][0] for r in run(living_room(drift_from), 2.2)}
    plain = {r[0]: r[2][0] for r in run(living_room(), 2.2)}
    late = [t for t in drifted if t - T0 >= drift_from + 3 * 3600.0]
    assert late
    for t in late:
        # The daylight range hides 300 lx against the level scale, the night's own does not.
        assert drifted[t][DAILY_LOCAL] > 5.0 > plain[t][DAILY_LOCAL]
        assert drifted[t][DAILY_LOCAL] > 2 * drifted[t][DAILY]


def test_other_metrics_deviation_and_a_missing_metric_have_their_own_inputs() -> None:
    stream = SensorStream(WINDOW, warmup_s=HOUR)
    for i in range(600):
        ts = T0 + i * 60.0
        for m, v in (("temperature", 20.0 + 0.1 * (i % 7)), ("humidity", 45.0 + 0.5 * (i % 5))):
            w = stream.add(m, ts, v)
            if w is not None:
                stream.commit(w)
    ts = T0 + 600 * 60.0
    for k in range(5):  # the temperature jumps for a window, the humidity stays
        stream.add("temperature", ts + k * 60.0, 35.0)
        stream.add("humidity", ts + k * 60.0, 46.0)
    w = stream.add("temperature", ts + WINDOW, 20.0)
    assert w is not None
    names, feats = stream.anomaly_features(w)
    assert names == ["temperature", "humidity"]
    assert feats[0][LEVEL] > 10.0 and feats[1][LEVEL] < 2.0
    assert feats[0][OTHERS] == pytest.approx(feats[1][LEVEL])
    assert feats[1][OTHERS] == pytest.approx(feats[0][LEVEL])
    assert (feats[:, MOTION] == -1.0).all() and (feats[:, MISSING] == 0.0).all()
    stream.commit(w)
    # The humidity stops (a dropout) while the temperature keeps coming: its row says so.
    last = w
    for k in range(1, 40):
        w = stream.add("temperature", ts + WINDOW + k * 60.0, 20.0)
        if w is not None:
            names, feats = stream.anomaly_features(w)
            stream.commit(w)
            last = w
    assert names == ["temperature", "humidity"]
    assert feats[1][MISSING] == pytest.approx((last.end - (ts + WINDOW)) / HOUR)


def test_the_oracle_flags_only_the_faulty_metric_which_stays_out_of_the_level() -> None:
    """Training rows freeze the level reference where serving would: the labelled fault's metric
    (not the device's others) is flagged, so a stuck plug's stuck-rare input does not fade."""
    start, end = DAY + 10 * 3600.0 + 600.0, DAY + 14 * 3600.0
    stuck = fridge((start, end))
    readings = [
        ("plug", "kitchen", T0 + i * 60.0, "power", stuck(T0 + i * 60.0)["power"])
        for i in range(int(1.75 * 1440))
    ]
    oracle = fault_oracle([("plug", "power", T0 + start, T0 + end)])
    assert oracle(["power", "co2"], np.zeros((2, 12)), "plug", T0 + start, T0 + start + 1) == {
        "power"
    }
    frozen = list(windows(readings, window_s=WINDOW, is_anomalous=oracle))
    learned = list(windows(readings, window_s=WINDOW))

    def rare(ws: list) -> dict[float, float]:
        return {
            w.window.start: float(w.anomaly[0][STUCK_RARE])
            for w in ws
            if start + 3600.0 <= w.window.start - T0 <= end - WINDOW
        }

    kept, faded = rare(frozen), rare(learned)
    assert kept.keys() == faded.keys() and len(kept) > 30
    assert all(v == 1.0 for v in kept.values())
    assert not any(w.label == "level_change" for w in frozen)
    # Learned: once 5 % of the recent bins hold the value, it is no longer rare.
    assert faded[max(faded)] == 0.0


def test_a_window_keeps_only_model_metrics_packed_and_its_stats_are_numpys() -> None:
    # A busy device's open window is the engine's largest per-device state: values are kept as
    # 8-byte doubles, and metrics no model reads (battery, voltage...) are not kept at all.
    stream = SensorStream(window_s=300.0)
    rng = np.random.default_rng(3)
    values = rng.normal(21.0, 0.5, 5000)
    t0 = 1_764_403_200.0
    for i, v in enumerate(values):
        assert stream.add("temperature", t0 + i * 0.05, float(v)) is None
        assert stream.add("battery", t0 + i * 0.05, 97.0) is None
    assert set(stream.acc) == {"temperature"}
    assert stream.acc["temperature"].itemsize == 8 and len(stream.acc["temperature"]) == 5000
    closed = stream.add("temperature", t0 + 300.0, 21.0)
    assert closed is not None and closed.count == {"temperature": 5000}
    assert closed.mean["temperature"] == float(values.mean())
    assert closed.std["temperature"] == float(values.std())
    assert (closed.first["temperature"], closed.last["temperature"]) == (values[0], values[-1])
    far = values[np.argmax(np.abs(values - np.median(values)))]
    assert closed.extreme["temperature"] == far


def test_a_level_change_does_not_hide_another_metrics_anomaly() -> None:
    from gateway.inference.sensors import window_label

    assert window_label({"co2"}, {"co2"}) == "level_change"
    assert window_label({"co2", "humidity"}, {"co2"}) == "anomaly"
    assert window_label({"humidity"}, ()) == "anomaly"
    assert window_label((), ()) == "normal"


def test_an_injected_fault_that_changes_no_reading_is_not_labelled() -> None:
    """A stuck light in a room dark all day, or a swap of two equal channels, changes nothing a
    detector could see: no truth for it; the same faults on varying readings are labelled."""
    from training.sensor_faults import inject

    def series(light: Series) -> list[tuple[str, str, float, str, float]]:
        return [
            ("d", "room", T0 + i * 60.0, m, v)
            for i in range(3 * 1440)
            for m, v in light(T0 + i * 60.0).items()
        ]

    def dark(ts: float) -> dict[str, float]:
        return {"light": 0.0, "co2": 0.0}

    def lit(ts: float) -> dict[str, float]:
        return {"light": 100.0 + (ts - T0) % 600.0, "co2": 400.0 + (ts - T0) % 300.0}

    for kinds in (("stuck",), ("swap",)):
        quiet, none = inject(
            series(dark), 3, lo=T0 + DAY, hi=T0 + 3 * DAY, per_day=3.0, kinds=kinds
        )
        busy, some = inject(series(lit), 3, lo=T0 + DAY, hi=T0 + 3 * DAY, per_day=3.0, kinds=kinds)
        assert none == [] and quiet == series(dark)
        assert some and all(k == kinds[0] for *_, k in some) and busy != series(lit)
