"""Seeded fault injection into any sensor series, real or simulated: spike, stuck value, drift,
swapped channels and dropout (a metric's readings missing while the device's others arrive).

Faults are placed per device inside a time range (`lo`..`hi`, e.g. after the warm-up), one
after another with at least `MIN_GAP_S` between them, so each is its own event. A fault lasts
at least `min_readings` of the device's readings, so at a 16-minute cadence a spike is one
reading and a stuck value four. A fault that changes no reading (a light stuck at night's
0 lx) is not labelled: nothing could see it. The truth is (device, metrics, start, end, kind);
a swap's metrics are "a|b".
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

Reading = tuple[str, str, float, str, float]  # device, room, ts, metric, value
FaultSpan = tuple[str, str, float, float, str]  # device, metric(s), start, end, kind

KINDS = ("spike", "stuck", "drift", "swap", "dropout")
# Spike offsets (training/sensor_data.py's) and the offsets a drift reaches at its end (the
# device simulators' ranges: a calibration loss, not a broken sensor).
SPIKE = {
    "temperature": (6.0, 12.0),
    "humidity": (15.0, 30.0),
    "co2": (1200.0, 3500.0),
    "light": (4000.0, 25000.0),
    "power": (1200.0, 2500.0),
}
DRIFT = {
    "temperature": (3.0, 6.0),
    "humidity": (10.0, 20.0),
    "co2": (500.0, 1500.0),
    "light": (200.0, 600.0),
    "power": (100.0, 300.0),
}
SIGNED = ("temperature", "humidity")
DURATION_S = {
    "spike": (60.0, 300.0),
    "stuck": (1800.0, 3 * 3600.0),
    "drift": (2 * 3600.0, 6 * 3600.0),
    "swap": (1800.0, 3 * 3600.0),
    "dropout": (3600.0, 4 * 3600.0),
}
MIN_READINGS = {"spike": 1, "stuck": 4, "drift": 6, "swap": 3, "dropout": 3}
MIN_GAP_S = 4 * 3600.0


def inject(
    readings: list[Reading],
    seed: int,
    *,
    lo: dict[str, float] | float,
    hi: float,
    per_day: float,
    kinds: tuple[str, ...] = KINDS,
) -> tuple[list[Reading], list[FaultSpan]]:
    """`readings` (time order) with faults injected after `lo` (per device or one time) and
    ending before `hi`, about `per_day` per device per day."""
    rng = np.random.default_rng(seed)
    by_dev: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(readings):
        by_dev[r[0]].append(i)
    out = list(readings)
    drop: set[int] = set()
    faults: list[FaultSpan] = []
    for dev in sorted(by_dev):
        idx = by_dev[dev]
        times = np.asarray(sorted({readings[i][2] for i in idx}))
        cadence = float(np.median(np.diff(times))) if len(times) > 1 else 60.0
        metrics = sorted({readings[i][3] for i in idx} & set(SPIKE))
        if not metrics:
            continue
        usable = [k for k in kinds if k not in ("swap", "dropout") or len(metrics) > 1]
        if not usable:
            continue
        start = lo[dev] if isinstance(lo, dict) else lo
        t = start + float(rng.exponential(86400.0 / per_day)) * 0.5
        while True:
            kind = str(rng.choice(usable))
            dur = max(float(rng.uniform(*DURATION_S[kind])), MIN_READINGS[kind] * cadence)
            end = t + dur
            if end >= hi:
                break
            if kind == "swap":
                pair = [str(x) for x in rng.choice(metrics, 2, replace=False)]
                lookup = {
                    (readings[i][2], readings[i][3]): readings[i][4]
                    for i in idx
                    if t <= readings[i][2] <= t + dur
                }
                label = "|".join(sorted(pair))
            else:
                pair = []
                label = str(rng.choice(metrics))
            m = label.split("|")[0]
            sign = -1.0 if m in SIGNED and rng.random() < 0.5 else 1.0
            offset = sign * float(
                rng.uniform(*(SPIKE if kind == "spike" else DRIFT).get(m, (1, 2)))
            )
            held: dict[str, float] = {}
            hit = False
            for i in idx:
                d, room, ts, metric, v = out[i]
                if not t <= ts <= end:
                    continue
                if kind == "swap":
                    if metric in pair:
                        other = pair[1] if metric == pair[0] else pair[0]
                        v = lookup.get((ts, other), v)
                elif metric == m:
                    if kind == "spike":
                        v += offset
                    elif kind == "drift":
                        v += offset * (ts - t) / dur
                    elif kind == "stuck":
                        v = held.setdefault(m, v)
                    else:
                        drop.add(i)
                        hit = True
                if metric != "temperature":
                    v = max(v, 0.0)
                # A fault that leaves every reading as it was (stuck at night's 0 lx, a swap
                # of two equal values) is no fault anyone could see: it is not labelled.
                faulty = metric in pair if kind == "swap" else metric == m
                hit = hit or (faulty and v != out[i][4])
                out[i] = (d, room, ts, metric, v)
            if hit:
                faults.append((dev, label, t - 1.0, end + 1.0, kind))
            t = end + MIN_GAP_S + float(rng.exponential(86400.0 / per_day))
    return [r for i, r in enumerate(out) if i not in drop], faults
