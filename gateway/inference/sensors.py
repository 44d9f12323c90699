"""Per-device sensor windows, the time-based online baseline (a home's own normal) and the
models' inputs.

Readings of one device fall into tumbling windows of `window_s`. A closed window is compared
with the device's baseline, which spans TIME, not a count of windows, so "the last 24 h" and
"this hour yesterday" mean the same at a 10 s or a 16 min cadence:

- per metric a ring of time bins (`bin_s` = max(window_s, 15 min)) over the last
  `baseline_s` + 2 h, each holding the mean of the windows that began in it twice: over every
  window ("all": the same-time-yesterday reference, so a routine flagged on its first day is
  yesterday's normal on the second) and over the windows whose metric was not flagged ("ok":
  the level reference, median and 2.5-97.5 % range, so a daily cycle counts as normal);
- exponentially weighted scales of the step between windows and of the spread inside one, with
  a 6 h time constant (a per-window weight from window_s, so they too are cadence-free).

State is bounded: `bins` slots per metric whatever the cadence (104 at the defaults), plus a
level-change run of at most relearn_s / window_s + 1 window means while one is open.

Warm-up is time: a metric is scored once the device has reported it for `warmup_s`.

No sticky flags. A metric flagged without a break for `relearn_s` whose values are steady
(the two halves of that span agree, they are not one repeated value) is a LEVEL CHANGE (people
in a room, a new setpoint, the season): its whole history is shifted by the step, so the next
window is normal against the new level, and the window is labelled ``level_change`` once
instead of a day of anomalies. A drift (its halves differ) or a stuck value (one repeated
value) is not adopted.

All state changes happen in `commit` (never when a window closes), so a device's window is
scored only on its earlier windows: live, burst and replay give the same results.

`snapshot`/`restore`: the learned state (not the open window's readings), version byte 1 +
zlib(JSON), deterministic for equal states.

The offline-trained anomaly model scores each metric's row; `flagged_metrics` applies the
manifest's thresholds (one per metric where it names one). The occupancy model reads
CO2/light/motion/humidity. Pure numpy: training builds its inputs with this code.
"""

from __future__ import annotations

import json
import math
import zlib
from array import array
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]

ANOMALY_METRICS = ("temperature", "humidity", "co2", "light", "power")
OCCUPANCY_METRICS = ("co2", "light", "motion", "humidity")
MODEL_METRICS = frozenset(ANOMALY_METRICS + OCCUPANCY_METRICS)
# Smallest meaningful change per metric: the scale never falls below it (a flat signal must not
# turn sensor noise into huge z-scores).
SCALE_FLOOR = {"temperature": 0.3, "humidity": 1.5, "co2": 40.0, "light": 20.0, "power": 10.0}
STD_FLOOR = {"temperature": 0.05, "humidity": 0.3, "co2": 5.0, "light": 2.0, "power": 1.0}
Z_CLIP = 50.0
PER_METRIC = 12
# Named columns of a metric's row (`anomaly_features`), for training labels and tests.
LEVEL, EXTREME, STEP, SPREAD = 0, 1, 2, 3
STUCK_RUN, DAILY, STUCK_RARE, DAILY_LOCAL, OTHERS, MOTION, MAD_Z, MISSING = range(4, 12)
# A repeated window mean counts as a stuck sensor only when the home rarely saw that exact value
# (a plug on standby or a dark room's 0 lx repeat one value for hours, normally).
RARE_VALUE_SHARE = 0.05
DAY_S = 86400.0
HOUR_S = 3600.0
ROUTINE_SPAN_S = 3600.0
MIN_BIN_S = 900.0
SCALE_TAU_S = 6 * HOUR_S
# A metric is expected in every window when it was in this share of the device's recent bins
# (a dropout is then a window without it).
PRESENT_SHARE = 0.9
MISSING_CLIP_H = 6.0
N_ANOMALY_FEATURES = PER_METRIC
SMALL_WINDOW = 32  # readings; up to this a window's statistics are computed on plain floats
N_OCCUPANCY_FEATURES = 9
SNAPSHOT_VERSION = 1
# Level change: the halves of the run's last relearn_s agree within this share of the step, and
# the step is at least this many level scales.
STEADY_SHARE = 0.2
LEVEL_STEP_Z = 2.0


@dataclass(frozen=True, slots=True)
class WindowStats:
    """A closed window of one device: per metric mean, std, the most extreme value, count."""

    start: float
    end: float
    mean: dict[str, float]
    std: dict[str, float]
    extreme: dict[str, float]
    first: dict[str, float]
    last: dict[str, float]
    count: dict[str, int]


def _window_dict(w: WindowStats) -> dict[str, Any]:
    return {
        "start": w.start,
        "end": w.end,
        "mean": w.mean,
        "std": w.std,
        "extreme": w.extreme,
        "first": w.first,
        "last": w.last,
        "count": w.count,
    }


def _window_of(d: dict[str, Any]) -> WindowStats:
    return WindowStats(
        float(d["start"]),
        float(d["end"]),
        {k: float(v) for k, v in d["mean"].items()},
        {k: float(v) for k, v in d["std"].items()},
        {k: float(v) for k, v in d["extreme"].items()},
        {k: float(v) for k, v in d["first"].items()},
        {k: float(v) for k, v in d["last"].items()},
        {k: int(v) for k, v in d["count"].items()},
    )


@dataclass(slots=True)
class MetricBaseline:
    """One metric's time-binned history and its running scales (see the module docstring)."""

    bins: int
    ids: npt.NDArray[np.int64] = field(init=False)
    all_sum: npt.NDArray[np.float64] = field(init=False)
    all_n: npt.NDArray[np.int32] = field(init=False)
    ok_sum: npt.NDArray[np.float64] = field(init=False)
    ok_n: npt.NDArray[np.int32] = field(init=False)
    first_start: float = 0.0
    last_end: float = 0.0
    last_mean: float | None = None
    stuck_since: float = 0.0
    step_scale: float = 0.0
    std_scale: float = 0.0
    scales_set: bool = False
    # The open level-change run: its first start, its last flagged window's end, its window
    # (start, mean)s within the last relearn_s.
    run_start: float | None = None
    run_last: float = 0.0
    run: list[tuple[float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ids = np.full(self.bins, -1, np.int64)
        self.all_sum = np.zeros(self.bins, np.float64)
        self.all_n = np.zeros(self.bins, np.int32)
        self.ok_sum = np.zeros(self.bins, np.float64)
        self.ok_n = np.zeros(self.bins, np.int32)

    def add(self, bin_id: int, mean: float, ok: bool) -> None:
        slot = bin_id % self.bins
        if self.ids[slot] != bin_id:
            if self.ids[slot] > bin_id:  # older than what the slot holds: out of the span
                return
            self.ids[slot] = bin_id
            self.all_sum[slot] = self.all_n[slot] = self.ok_sum[slot] = self.ok_n[slot] = 0
        self.all_sum[slot] += mean
        self.all_n[slot] += 1
        if ok:
            self.ok_sum[slot] += mean
            self.ok_n[slot] += 1

    def means(self, lo: int, hi: int, *, ok: bool) -> npt.NDArray[np.float64]:
        """Bin means of bins lo..hi (inclusive), the ok ones or all."""
        n = self.ok_n if ok else self.all_n
        keep = (self.ids >= lo) & (self.ids <= hi) & (n > 0)
        s = self.ok_sum if ok else self.all_sum
        return np.asarray(s[keep] / n[keep], np.float64)

    def shift(self, delta: float, before: int) -> None:
        """Move every bin before `before` by `delta` (a level change keeps the day's shape)."""
        old = self.ids < before
        self.all_sum[old] += delta * self.all_n[old]
        self.ok_sum[old] += delta * self.ok_n[old]

    def state(self) -> dict[str, Any]:
        return {
            "ids": self.ids.tolist(),
            "all_sum": self.all_sum.tolist(),
            "all_n": self.all_n.tolist(),
            "ok_sum": self.ok_sum.tolist(),
            "ok_n": self.ok_n.tolist(),
            "first_start": self.first_start,
            "last_end": self.last_end,
            "last_mean": self.last_mean,
            "stuck_since": self.stuck_since,
            "step_scale": self.step_scale,
            "std_scale": self.std_scale,
            "scales_set": self.scales_set,
            "run_start": self.run_start,
            "run_last": self.run_last,
            "run": [list(x) for x in self.run],
        }

    @classmethod
    def of_state(cls, bins: int, d: dict[str, Any]) -> MetricBaseline:
        b = cls(bins)
        for name, dtype in (
            ("ids", np.int64),
            ("all_sum", np.float64),
            ("all_n", np.int32),
            ("ok_sum", np.float64),
            ("ok_n", np.int32),
        ):
            arr = np.asarray(d[name], dtype)
            if arr.shape != (bins,):
                raise ValueError(f"{name}: {arr.shape} bins, expected {bins}")
            setattr(b, name, arr)
        b.first_start, b.last_end = float(d["first_start"]), float(d["last_end"])
        b.last_mean = None if d["last_mean"] is None else float(d["last_mean"])
        b.stuck_since = float(d["stuck_since"])
        b.step_scale, b.std_scale = float(d["step_scale"]), float(d["std_scale"])
        b.scales_set = bool(d["scales_set"])
        b.run_start = None if d["run_start"] is None else float(d["run_start"])
        b.run_last = float(d["run_last"])
        b.run = [(float(t), float(v)) for t, v in d["run"]]
        return b


def _q(sorted_arr: npt.NDArray[np.float64], q: float) -> float:
    """numpy's default (linear) quantile of an already sorted array, without its overhead
    (several calls a window on ~100 values)."""
    pos = q * (len(sorted_arr) - 1)
    i = int(pos)
    j = min(i + 1, len(sorted_arr) - 1)
    return float(sorted_arr[i] + (sorted_arr[j] - sorted_arr[i]) * (pos - i))


def _z(x: float) -> float:
    # Magnitudes only: a fault may push either way, and signed features split the few examples.
    return float(min(abs(x), Z_CLIP)) if math.isfinite(x) else Z_CLIP


@dataclass(slots=True)
class SensorStream:
    """Windows and time-based baseline of one device (the interface in the module docstring:
    `add`, `due`, `flush`, `snapshot`, `restore`, `window_s`; `anomaly_features`, `ready`,
    `commit` for the scorer)."""

    window_s: float
    baseline_s: float = DAY_S
    warmup_s: float = DAY_S
    relearn_s: float = 4 * HOUR_S
    start: float | None = None
    # The open window's values of the model metrics only, as packed doubles: 8 bytes a value
    # instead of a list's 32 (pointer + float object), so a busy sensor's 5-minute window costs
    # a quarter of the memory; other metrics are never read (`_close`) and are not kept.
    acc: dict[str, array[float]] = field(default_factory=dict)
    metrics: dict[str, MetricBaseline] = field(default_factory=dict)
    prev: WindowStats | None = None
    closed_end: float = -math.inf

    @property
    def bin_s(self) -> float:
        return max(self.window_s, MIN_BIN_S)

    @property
    def bins(self) -> int:
        return math.ceil((self.baseline_s + 2 * ROUTINE_SPAN_S) / self.bin_s) + 1

    # -- windows -------------------------------------------------------------------------------

    def add(self, metric: str, ts: float, value: float) -> WindowStats | None:
        """Add a reading; return the window it closed, if any (late readings join the open one;
        with none open, a reading older than the last closed window starts the next one)."""
        closed = None
        if self.start is None:
            self.start = max(ts - ts % self.window_s, self.closed_end)
        elif ts >= self.start + self.window_s:
            closed = self._close()
            self.start = max(ts - ts % self.window_s, self.closed_end)
        if metric in MODEL_METRICS:
            values = self.acc.get(metric)
            if values is None:
                values = self.acc[metric] = array("d")
            values.append(value)
        return closed

    def due(self, now: float, grace_s: float) -> WindowStats | None:
        """Close the open window once `now` (the readings' clock) is `grace_s` past its end."""
        if self.start is None or now < self.start + self.window_s + grace_s:
            return None
        return self.flush()

    def flush(self) -> WindowStats | None:
        """Close the open window now (eviction, or `due`); None when it holds no model metric."""
        if self.start is None:
            return None
        closed = self._close()
        self.start = None
        return closed

    def _close(self) -> WindowStats | None:
        """The open window's statistics; no learned state changes here (`commit` does that)."""
        assert self.start is not None
        start = self.start
        self.closed_end = max(self.closed_end, start + self.window_s)
        stats: dict[str, dict[str, float]] = {
            k: {} for k in ("mean", "std", "extreme", "first", "last")
        }
        count: dict[str, int] = {}
        for m, a in self.acc.items():
            if len(a) <= SMALL_WINDOW:
                # A few readings (most sensors): plain floats cost a tenth of numpy's calls.
                vals = a.tolist()
                mean = math.fsum(vals) / len(vals)
                std = math.sqrt(math.fsum((x - mean) ** 2 for x in vals) / len(vals))
                ordered = sorted(vals)
                med = ordered[len(vals) // 2]
                if len(vals) % 2 == 0:
                    med = (ordered[len(vals) // 2 - 1] + med) / 2.0
                far = max(vals, key=lambda x: abs(x - med)) if len(vals) > 2 else mean
            else:
                v = np.frombuffer(a, np.float64)
                mean, std = float(v.mean()), float(v.std())
                far = float(v[np.argmax(np.abs(v - _q(np.sort(v), 0.5)))])
            stats["mean"][m] = mean
            stats["std"][m] = std
            stats["extreme"][m] = far
            stats["first"][m] = float(a[0])
            stats["last"][m] = float(a[-1])
            count[m] = len(a)
        self.acc = {}
        if not count:
            return None
        return WindowStats(start, start + self.window_s, count=count, **stats)

    # -- scoring inputs ------------------------------------------------------------------------

    def _bin(self, ts: float) -> int:
        return int(ts // self.bin_s)

    def ready(self, w: WindowStats) -> bool:
        """Whether any of the window's anomaly metrics has `warmup_s` of history."""
        return bool(self._ready_metrics(w))

    def _ready_metrics(self, w: WindowStats) -> list[str]:
        out = []
        for m in ANOMALY_METRICS:
            b = self.metrics.get(m)
            if b is not None and w.start - b.first_start >= self.warmup_s:
                out.append(m)
        return out

    def level(self, metric: str, at: float) -> tuple[float, float, float]:
        """(median, range scale, MAD scale) of the metric's ok bins over the last baseline_s."""
        floor = SCALE_FLOOR.get(metric, 1.0)
        b = self.metrics.get(metric)
        if b is None:
            return 0.0, floor, floor
        hi = self._bin(at)
        lo = hi - int(self.baseline_s // self.bin_s)
        arr = b.means(lo, hi, ok=True)
        if len(arr) < 2:
            arr = b.means(lo, hi, ok=False)
        if len(arr) == 0:
            return b.last_mean or 0.0, floor, floor
        arr = np.sort(arr)
        lo_p, med, hi_p = _q(arr, 0.025), _q(arr, 0.5), _q(arr, 0.975)
        mad = _q(np.sort(np.abs(arr - med)), 0.5) * 1.4826
        return med, max((hi_p - lo_p) / 4.0, floor), max(mad, floor)

    def _expected(self, w: WindowStats) -> list[str]:
        """Ready metrics missing from `w` that the device reported in nearly every recent bin."""
        hi = self._bin(w.start)
        lo = hi - int(self.baseline_s // self.bin_s)
        counts = {
            m: int(np.count_nonzero((b.ids >= lo) & (b.ids <= hi) & (b.all_n > 0)))
            for m, b in self.metrics.items()
            if m in ANOMALY_METRICS
        }
        most = max(counts.values(), default=0)
        return [
            m
            for m in self._ready_metrics(w)
            if m not in w.mean and most > 0 and counts[m] >= PRESENT_SHARE * most
        ]

    def anomaly_features(self, w: WindowStats) -> tuple[list[str], F32]:
        """One row per ready metric, present or expected but missing:

        0 |level z| (range scale), 1 |extreme z|, 2 |step z|, 3 log spread ratio, 4 stuck time
        (hours, at most 1), 5 |z to the closest same-time-yesterday bin| (the level z without
        one), 6 stuck time at a value the device rarely held (a plug on standby repeats 0.8 W
        all night, a stuck one its last reading), 7 the same-time-yesterday distance on that
        hour's own scale (a slow drift of 300 lx is invisible against the day's daylight range,
        not at night), 8 the largest |level z| of the device's other metrics (a fault hits one
        metric; a room warming or filling with people moves several), 9 the window's motion
        share (-1 without a motion sensor), 10 |z| on the MAD scale, 11 hours the metric has
        been missing (0 when present; a dropout).

        The model scores each metric's row (one model for every metric: the z-scores make them
        comparable) and a window's score is its worst metric's.
        """
        ready = self._ready_metrics(w)
        names = [m for m in ready if m in w.mean] + self._expected(w)
        out = np.zeros((len(names), PER_METRIC), np.float32)
        motion = float(w.mean["motion"]) if "motion" in w.mean else -1.0
        for k, m in enumerate(names):
            b = self.metrics[m]
            if m not in w.mean:
                out[k, MISSING] = min((w.end - b.last_end) / HOUR_S, MISSING_CLIP_H)
                continue
            x = w.mean[m]
            med, scale, mad_scale = self.level(m, w.start)
            floor = SCALE_FLOOR.get(m, 1.0)
            step = x - b.last_mean if b.last_mean is not None else 0.0
            std_floor = STD_FLOOR.get(m, 0.1)
            spread = math.log((w.std[m] + std_floor) / (b.std_scale + std_floor))
            level = _z((x - med) / scale)
            # +-1 h: a routine (waking, cooking, lamps on) moves a little from day to day.
            at = self._bin(w.start - DAY_S)
            span = int(ROUTINE_SPAN_S // self.bin_s)
            yesterday = b.means(at - span, at + span, ok=False)
            if len(yesterday):
                daily = _z(float(np.min(np.abs(x - yesterday))) / scale)
                local = max(float(np.ptp(yesterday)) / 2.0, floor)
                daily_local = _z(float(np.min(np.abs(x - yesterday))) / local)
            else:
                daily = daily_local = level
            stuck_h = 0.0
            if b.last_mean is not None and x == b.last_mean and m != "motion":
                stuck_h = min((w.end - b.stuck_since) / HOUR_S, 1.0)
            rare = 0.0
            if stuck_h > 0.0:
                hi = self._bin(w.start)
                recent = b.means(hi - int(self.baseline_s // self.bin_s), hi, ok=True)
                if len(recent):
                    share = float(np.count_nonzero(np.isclose(recent, x, rtol=1e-9, atol=1e-9)))
                    rare = stuck_h * max(0.0, 1.0 - share / len(recent) / RARE_VALUE_SHARE)
            out[k, :8] = (
                level,
                _z((w.extreme[m] - med) / scale),
                _z(step / max(b.step_scale * 1.25, floor)),
                float(np.clip(spread, -10, 10)),
                stuck_h,
                daily,
                rare,
                daily_local,
            )
            out[k, MAD_Z] = _z((x - med) / mad_scale)
        out[:, MOTION] = motion
        if len(names) > 1:
            for k in range(len(names)):
                out[k, OTHERS] = np.delete(out[:, LEVEL], k).max()
        return names, out

    def occupancy_features(self, w: WindowStats) -> F32:
        """CO2 level vs. the device's own quiet level and its trend; light; motion; humidity
        trend (against the previous window)."""
        f = np.zeros(N_OCCUPANCY_FEATURES, np.float32)
        minutes = max((w.end - w.start) / 60.0, 1e-6)
        prev = self.prev
        if "co2" in w.mean:
            b = self.metrics.get("co2")
            arr = np.zeros(0)
            if b is not None:
                hi = self._bin(w.start)
                arr = b.means(hi - int(self.baseline_s // self.bin_s), hi, ok=False)
            quiet = _q(np.sort(arr), 0.1) if len(arr) else w.mean["co2"]
            f[0] = 1.0
            f[1] = (w.mean["co2"] - quiet) / 100.0
            f[2] = (w.last["co2"] - w.first["co2"]) / minutes / 10.0
            if prev is not None and "co2" in prev.mean:
                f[3] = (w.mean["co2"] - prev.mean["co2"]) / 100.0
        if "light" in w.mean:
            f[4] = 1.0
            f[5] = math.log1p(max(w.mean["light"], 0.0)) / 10.0
        if "motion" in w.mean:
            f[6] = 1.0
            f[7] = w.mean["motion"]
        if "humidity" in w.mean and prev is not None and "humidity" in prev.mean:
            f[8] = (w.mean["humidity"] - prev.mean["humidity"]) / 5.0
        return f

    # -- learning ------------------------------------------------------------------------------

    def commit(self, w: WindowStats, flagged: Collection[str] = ()) -> list[str]:
        """Learn from a scored window (`flagged`: its metrics the model flagged; they stay out
        of the level reference). Returns the metrics whose lasting change was adopted as the
        new level in this window (see the module docstring)."""
        changed = []
        bin_id = self._bin(w.start)
        alpha = 1.0 - math.exp(-self.window_s / SCALE_TAU_S)
        for m, x in w.mean.items():
            b = self.metrics.get(m)
            if b is None:
                b = self.metrics[m] = MetricBaseline(self.bins)
                b.first_start = w.start
            is_flagged = m in flagged
            if is_flagged and self._level_change(b, m, w):
                changed.append(m)
                is_flagged = False
            elif (
                not is_flagged
                and b.run_start is not None
                and w.start >= b.run_last + max(2 * self.window_s, 1800.0)
            ):
                b.run_start, b.run = None, []
            b.add(bin_id, x, not is_flagged)
            if b.last_mean is not None:
                step = abs(x - b.last_mean)
                if b.scales_set:
                    b.step_scale += alpha * (step - b.step_scale)
                    b.std_scale += alpha * (w.std[m] - b.std_scale)
                else:
                    b.step_scale, b.std_scale, b.scales_set = step, w.std[m], True
            if b.last_mean is None or x != b.last_mean:
                b.stuck_since = w.start
            b.last_mean = x
            b.last_end = w.end
        self.prev = w
        return changed

    def _level_change(self, b: MetricBaseline, m: str, w: WindowStats) -> bool:
        """Extend the metric's flagged run by `w`; True when the run is a lasting, steady level
        change, which is then adopted (history shifted by the step, the run's windows learned)."""
        x = w.mean[m]
        if b.run_start is None:
            b.run_start = w.start
        b.run_last = w.end
        b.run.append((w.start, x))
        cut = w.end - self.relearn_s
        b.run = [(t, v) for t, v in b.run if t >= cut]
        if w.end - b.run_start < self.relearn_s or len(b.run) < 4:
            return False
        vals = np.asarray([v for _, v in b.run], np.float64)
        half = len(vals) // 2
        first, second = float(np.median(vals[:half])), float(np.median(vals[half:]))
        med, scale, _ = self.level(m, w.start)
        delta = second - med
        # A stuck sensor repeats one value: a lasting level still varies a little.
        if np.ptp(vals[half:]) == 0.0 or abs(delta) < LEVEL_STEP_Z * scale:
            return False
        if abs(second - first) > STEADY_SHARE * abs(delta):
            return False
        run_bin = self._bin(b.run[0][0])
        b.shift(delta, run_bin)
        for t, v in b.run[:-1]:  # the current window is added by `commit`
            b.add(self._bin(t), v, True)
            # Counted twice in "all" otherwise: it entered as a flagged window already.
            slot = self._bin(t) % b.bins
            if b.ids[slot] == self._bin(t):
                b.all_sum[slot] -= v
                b.all_n[slot] -= 1
        b.run_start, b.run = None, []
        return True

    # -- persistence ---------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The learned state (not the open window's readings): version byte + zlib(JSON)."""
        state = {
            "window_s": self.window_s,
            "baseline_s": self.baseline_s,
            "warmup_s": self.warmup_s,
            "relearn_s": self.relearn_s,
            "closed_end": self.closed_end if math.isfinite(self.closed_end) else None,
            "prev": _window_dict(self.prev) if self.prev is not None else None,
            "metrics": {m: b.state() for m, b in sorted(self.metrics.items())},
        }
        body = json.dumps(state, sort_keys=True, separators=(",", ":")).encode()
        return bytes([SNAPSHOT_VERSION]) + zlib.compress(body, 6)

    @classmethod
    def restore(cls, data: bytes) -> SensorStream | None:
        """A stream from `snapshot` bytes; None for an unknown version or corrupt bytes."""
        if not data or data[0] != SNAPSHOT_VERSION:
            return None
        try:
            state = json.loads(zlib.decompress(data[1:]))
            s = cls(
                float(state["window_s"]),
                float(state["baseline_s"]),
                float(state["warmup_s"]),
                float(state["relearn_s"]),
            )
            if state["closed_end"] is not None:
                s.closed_end = float(state["closed_end"])
            s.prev = _window_of(state["prev"]) if state["prev"] is not None else None
            s.metrics = {
                str(m): MetricBaseline.of_state(s.bins, d) for m, d in state["metrics"].items()
            }
        except (zlib.error, ValueError, KeyError, TypeError, AttributeError):
            return None
        return s


def flagged_metrics(names: list[str], probs: F32, thresholds: dict[str, float]) -> frozenset[str]:
    """The metrics whose P(fault) reaches their threshold (``threshold_<metric>`` in the
    manifest, else ``threshold``); the window is anomalous when there is any."""
    default = thresholds.get("threshold", 0.5)
    return frozenset(
        m
        for m, p in zip(names, probs, strict=True)
        if float(p) >= thresholds.get(f"threshold_{m}", default)
    )


def window_flagged(names: list[str], probs: F32, thresholds: dict[str, float]) -> bool:
    return bool(flagged_metrics(names, probs, thresholds))


def occupancy_applies(w: WindowStats) -> bool:
    return any(m in w.mean for m in ("co2", "motion"))


def window_label(flagged: Collection[str], changed: Collection[str]) -> str:
    """A scored window's anomaly label: ``anomaly`` (a metric flagged whose change was not
    adopted: a level change of one metric must not hide another's fault), ``level_change`` (a
    lasting change was adopted in it) or ``normal``."""
    if set(flagged) - set(changed):
        return "anomaly"
    return "level_change" if changed else "normal"
