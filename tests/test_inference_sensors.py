"""The sensor anomaly detector's inputs and the shipped model on hand-made series: a stuck plug
is flagged, a plug on standby and a motion sensor's lamps are not, a slow night-time drift
shows on the hour's own scale; the training windows freeze the baseline on labelled faults."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from gateway.inference.runtime import LoadedModel, ModelRuntime
from gateway.inference.sensors import (
    DAILY,
    DAILY_LOCAL,
    MOTION,
    OTHERS,
    STUCK_RARE,
    STUCK_RUN,
    SensorStream,
    anomaly_features,
)
from gateway.inference.settings import DEFAULT_MODELS_DIR
from training.sensor_eval import fault_oracle, model_flag, windows

T0 = 1_767_225_600.0  # midnight UTC
WINDOW = 300.0
DAY = 86400.0

Series = Callable[[float], dict[str, float]]


@pytest.fixture(scope="module")
def anomaly() -> LoadedModel:
    return ModelRuntime.load(DEFAULT_MODELS_DIR).models["sensor_anomaly"]


def run(
    series: Series, days: float, model: LoadedModel | None = None
) -> list[tuple[float, list[str], np.ndarray, bool]]:
    """Feed one reading a minute through the serving stream (`sensor_eval.windows`, the loop the
    bench and training use); per window after the first day: (start, metrics, features, flagged
    by the shipped model and thresholds)."""
    readings = (
        ("dev", "room", ts, metric, value)
        for ts in (T0 + i * 60.0 for i in range(int(days * 1440) + 1))
        for metric, value in series(ts).items()
    )
    flag = (
        model_flag(lambda x: model.probabilities(x)[:, 1], model.manifest.thresholds)
        if model is not None
        else None
    )
    scored = windows(
        readings, window_s=WINDOW, baseline_windows=288, min_windows=288, is_anomalous=flag
    )
    return [(w.window.start, w.metrics, w.anomaly, w.flagged) for w in scored]


def noise(ts: float, k: int) -> float:
    """Deterministic +-2 % jitter (a reading's noise) without a random state."""
    return 0.02 * math.sin(ts * 0.731 + k * 1.3) * math.cos(ts * 0.0917)


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
    # The repeat is there (the old stuck-run feature saw it), the rare-value one is not.
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
    # Every metric's row carries the window's motion share (the minutes someone moved), the
    # signal that tells the model the lamps came with people; quiet and busy windows both occur.
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


def test_other_metrics_deviation_is_the_largest_other_level_z() -> None:
    stream = SensorStream(WINDOW, 288)
    for i in range(600):
        ts = T0 + i * 60.0
        for m, v in (("temperature", 20.0 + 0.1 * (i % 7)), ("humidity", 45.0 + 0.5 * (i % 5))):
            w = stream.add(m, ts, v)
            if w is not None:
                stream.commit(w, False)
    ts = T0 + 600 * 60.0
    for k in range(5):  # the temperature jumps for a window, the humidity stays
        stream.add("temperature", ts + k * 60.0, 35.0)
        stream.add("humidity", ts + k * 60.0, 46.0)
    w = stream.add("temperature", ts + WINDOW, 20.0)
    assert w is not None
    names, feats = anomaly_features(w, stream.baseline, stream.stuck_runs)
    assert names == ["temperature", "humidity"]
    assert feats[0][0] > 10.0 and feats[1][0] < 2.0
    assert feats[0][OTHERS] == pytest.approx(feats[1][0])
    assert feats[1][OTHERS] == pytest.approx(feats[0][0])
    assert (feats[:, MOTION] == -1.0).all()


def test_the_flag_gets_the_window_device_and_span_and_oracle_flags_freeze_the_baseline() -> None:
    """Training rows freeze the baseline where serving would: a window the oracle flags (it
    overlaps a labelled fault of its device) does not enter the device's baseline, so a stuck
    plug's stuck-rare input does not fade as the stuck value repeats."""
    start, end = DAY + 10 * 3600.0 + 600.0, DAY + 14 * 3600.0
    stuck, cycling = fridge((start, end)), fridge()
    readings = [
        (dev, "kitchen", T0 + i * 60.0, "power", series(T0 + i * 60.0)["power"])
        for i in range(int(1.75 * 1440))
        for dev, series in (("plug-stuck", stuck), ("plug-ok", cycling))
    ]
    faults = [("plug-stuck", T0 + start, T0 + end)]
    oracle = fault_oracle(faults)
    calls: list[tuple[str, float, float]] = []

    def spy(names: list[str], feats: np.ndarray, device: str, s: float, e: float) -> bool:
        calls.append((device, s, e))
        return oracle(names, feats, device, s, e)

    frozen = list(
        windows(readings, window_s=WINDOW, baseline_windows=288, min_windows=288, is_anomalous=spy)
    )
    learned = list(windows(readings, window_s=WINDOW, baseline_windows=288, min_windows=288))
    assert calls == [(w.device, w.window.start, w.window.end) for w in frozen]
    assert {w.device for w in frozen} == {"plug-ok", "plug-stuck"}
    for w in frozen:
        overlaps = (
            w.device == "plug-stuck" and T0 + start < w.window.end and T0 + end >= w.window.start
        )
        assert w.flagged == overlaps

    def rare(ws: list) -> dict[float, float]:
        return {
            w.window.start: float(w.anomaly[0][STUCK_RARE])
            for w in ws
            if w.device == "plug-stuck" and start + 1800.0 <= w.window.start - T0 <= end - WINDOW
        }

    kept, faded = rare(frozen), rare(learned)
    assert kept.keys() == faded.keys() and len(kept) > 30
    # Frozen: the stuck value never joins the baseline, so the input stays at its full run.
    assert all(v == 1.0 for t, v in kept.items() if t - T0 >= start + 3600.0)
    # Learned (the old training path): past 5 % of the baseline's windows it is no longer rare.
    assert faded[max(faded)] == 0.0


def test_a_window_keeps_only_model_metrics_packed_and_its_stats_are_numpys() -> None:
    # A busy device's open window is the engine's largest per-device state: values are kept as
    # 8-byte doubles, and metrics no model reads (battery, voltage...) are not kept at all.
    stream = SensorStream(window_s=300.0, baseline_windows=12)
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
