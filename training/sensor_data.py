"""A seeded synthetic home for the sensor models: occupancy-driven rooms, and injected faults.

Independent of the device simulators (gateway code never imports ``devices``): CO2 follows a
one-box mass balance with people as sources, light is daylight plus lamps, motion is a Poisson
process while people are up, power is a fridge cycle, a kettle boiled a few minutes after
waking (as high as an injected power spike: only its daily timing tells it apart) and a TV.
Faults: spike, stuck, drift.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

DAY = 86400.0
START = 1_767_225_600.0  # 2026-01-01 UTC


@dataclass(frozen=True, slots=True)
class Fault:
    device: str
    metric: str
    start: float
    end: float
    kind: str


@dataclass(frozen=True, slots=True)
class Row:
    device: str
    room: str
    ts: float
    readings: dict[str, float]
    occupied: bool


DEVICES = {
    "thermostat-1": ("living", ("temperature", "humidity")),
    "air-quality-1": ("living", ("temperature", "humidity", "co2")),
    "air-quality-2": ("bedroom", ("temperature", "humidity", "co2")),
    "motion-1": ("living", ("motion", "light")),
    "motion-2": ("kitchen", ("motion", "light")),
    "plug-1": ("living", ("power",)),
    "plug-2": ("kitchen", ("power",)),
}
MAGNITUDE = {
    "temperature": (6.0, 12.0),
    "humidity": (15.0, 30.0),
    "co2": (1200.0, 3500.0),
    "light": (4000.0, 25000.0),
    "power": (1200.0, 2500.0),
}


def _schedule(rng: np.random.Generator, days: int) -> list[tuple[float, float, float, float]]:
    out = []
    for _ in range(days):
        wake = rng.uniform(6.0, 8.0)
        leave = wake + rng.uniform(0.7, 1.5) if rng.random() < 0.7 else 99.0
        back = rng.uniform(16.5, 19.0)
        sleep = rng.uniform(22.0, 24.0)
        out.append((wake, leave, back, sleep))
    return out


def home(
    seed: int, days: int, step: float = 60.0, fault_rate: float = 1.0
) -> tuple[list[Row], list[Fault]]:
    """A home's readings (time-ordered) and its faults; `fault_rate` per device per day."""
    rng = np.random.default_rng(seed)
    plan = _schedule(rng, days + 1)
    people = int(rng.integers(1, 4))
    lamp = rng.uniform(150, 400)
    win = {
        "living": rng.uniform(0.004, 0.01),
        "bedroom": rng.uniform(0.002, 0.006),
        "kitchen": rng.uniform(0.003, 0.008),
    }
    co2 = {"living": 450.0, "bedroom": 450.0, "kitchen": 450.0}
    temp = {"living": 20.0, "bedroom": 19.0, "kitchen": 20.0}
    gen_rate = rng.uniform(12, 20)
    vent = 1.0 / rng.uniform(40, 90)
    fridge = (rng.uniform(2100, 3000), rng.uniform(0.3, 0.45), rng.uniform(80, 140))
    tv = rng.uniform(60, 140)
    # Its own generator, so adding the kettle left every other draw of a seed as it was.
    kettle_rng = np.random.default_rng(seed + 104729)
    kettle_w = kettle_rng.uniform(1800, 2200)
    kettle_at = [w + kettle_rng.uniform(0.05, 0.3) for w, _, _, _ in plan]
    faults: list[Fault] = []
    for dev, (_room, metrics) in DEVICES.items():
        t = START + rng.exponential(DAY / max(fault_rate, 1e-9))
        while t < START + days * DAY:
            kind = str(rng.choice(["spike", "stuck", "drift"]))
            dur = {
                "spike": rng.uniform(60, 300),
                "stuck": rng.uniform(1800, 3 * 3600),
                "drift": rng.uniform(2 * 3600, 6 * 3600),
            }[kind]
            m = str(rng.choice([x for x in metrics if x != "motion"]))
            faults.append(Fault(dev, m, t, t + dur, kind))
            t += dur + rng.exponential(DAY / fault_rate)
    faults.sort(key=lambda f: f.start)
    fault_offsets = {
        id(f): float(rng.uniform(*MAGNITUDE[f.metric]))
        * (rng.choice([-1, 1]) if f.metric in ("temperature", "humidity") else 1)
        for f in faults
    }
    stuck_value: dict[int, float] = {}
    rows: list[Row] = []
    n = int(days * DAY / step)
    for i in range(n):
        ts = START + i * step
        d = int((ts - START) // DAY)
        hour = (ts - START) % DAY / 3600.0
        wake, leave, back, sleep = plan[d]
        home_now = not (leave <= hour < back) and hour >= 0
        asleep = hour < wake or hour >= sleep
        occ = {
            "living": home_now
            and not asleep
            and (hour >= back or hour < leave)
            and rng.random() < 0.97,
            "kitchen": home_now and not asleep and (wake <= hour < wake + 0.6 or 18 <= hour < 19.5),
            "bedroom": home_now and asleep,
        }
        daylight = (
            max(0.0, math.sin(math.pi * (hour - 7.5) / 9.5)) * 40000 if 7.5 <= hour <= 17 else 0.0
        )
        for room in co2:
            src = (people if occ[room] else 0) * gen_rate
            co2[room] += (src - vent * (co2[room] - 420.0)) * step / 60.0
            target = (21.0 if home_now else 17.5) + (1.0 if occ[room] else 0.0) + daylight / 40000.0
            temp[room] += (target - temp[room]) * step / 1800.0
        for dev, (room, metrics) in DEVICES.items():
            r: dict[str, float] = {}
            for m in metrics:
                if m == "temperature":
                    r[m] = temp[room] + rng.normal(0, 0.08)
                elif m == "humidity":
                    r[m] = (
                        45 + (co2[room] - 420) / 60 - 1.5 * (temp[room] - 21) + rng.normal(0, 0.6)
                    )
                elif m == "co2":
                    r[m] = co2[room] * (1 + rng.normal(0, 0.02))
                elif m == "light":
                    lamps = lamp if occ[room] and daylight * win[room] < 150 else 0.0
                    r[m] = max(0.0, (daylight * win[room] + lamps) * (1 + rng.normal(0, 0.03)))
                elif m == "motion":
                    rate = (1 / 90.0) if occ[room] else 0.0
                    r[m] = float(rng.random() < 1 - math.exp(-rate * step))
                elif m == "power":
                    if room == "kitchen":
                        on = (ts % fridge[0]) < fridge[1] * fridge[0]
                        watts = fridge[2] if on else 3.0
                        if home_now and 0.0 <= hour - kettle_at[d] < 4 / 60:
                            watts += kettle_w
                        r[m] = watts * (1 + rng.normal(0, 0.02))
                    else:
                        r[m] = tv * (1 + rng.normal(0, 0.02)) if occ[room] else 0.8
            for f in faults:
                if f.device == dev and f.start <= ts <= f.end:
                    off = fault_offsets[id(f)]
                    if f.kind == "spike":
                        r[f.metric] += off
                    elif f.kind == "drift":
                        r[f.metric] += off * (ts - f.start) / (f.end - f.start)
                    else:
                        r[f.metric] = stuck_value.setdefault(id(f), r[f.metric])
            r = {k: round(max(v, 0.0) if k != "temperature" else v, 2) for k, v in r.items()}
            rows.append(Row(dev, room, ts, r, bool(occ[room])))
    return rows, faults


def iter_readings(rows: list[Row]) -> Iterator[tuple[str, str, float, str, float]]:
    for row in rows:
        for m, v in row.readings.items():
            yield row.device, row.room, row.ts, m, v
