"""Fleet priors: how a new home's first day of sensor anomaly alarms changes when its sensors'
baselines start from the fleet's levels (`gateway.inference.priors`).

    .venv/bin/python bench/priors.py [--json] [--fleet-homes 6] [--new-homes 4]

The fleet: the device simulators' world (seed 31, no faults) for 3 days; its priors are made
as the cloud would from uploaded window aggregates only (per room class, metric and UTC hour:
quantiles of the 5-minute window means; the typical step between windows and spread inside
one). New homes: other households (seed 37) on their first day, run through the serving
window/baseline code and the shipped anomaly model (`training.sensor_eval`), three ways:

- ``no_priors``: the default warm-up (24 h): nothing is scored on the first day;
- ``no_priors_short_warmup``: scored after 2 h of the home's own windows;
- ``priors``: scored from the first window against the seeded baseline;
- ``fleet_wide_priors``: the same from one mean and std per metric over the whole fleet (the
  form `cloud.fleet.priors` writes from its hour rollups: no room classes, no daily profile).

Without faults every flagged run is a false alarm (``false_alarms``, and per device-day over
the scored part); with faults (anomaly_rate 1 per device-day) the first day's event recall.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devices.world import World  # noqa: E402
from gateway.inference.priors import QUANTILES, FleetPriors, seed  # noqa: E402
from gateway.inference.runtime import ModelRuntime  # noqa: E402
from gateway.inference.sensors import (  # noqa: E402
    ANOMALY_METRICS,
    HOUR_S,
    SensorStream,
    window_label,
)
from gateway.inference.settings import DEFAULT_MODELS_DIR, InferenceSettings  # noqa: E402
from gateway.sync.privacy import room_class  # noqa: E402
from training.sensor_eval import ScoredWindow, event_scores, model_flag  # noqa: E402

T0 = 1_767_225_600.0
Reading = tuple[str, str, float, str, float]


def world_readings(
    homes: int, seed_: int, days: float, anomaly_rate: float
) -> tuple[list[Reading], list[tuple[str, float, float]]]:
    world = World(homes=homes, seed=seed_, anomaly_rate=anomaly_rate)
    readings: list[Reading] = []
    faults = []
    for em in world.run(start=T0, step=60.0, steps=int(days * 1440)):
        dev = f"{em.spec.home}/{em.spec.device}"
        for t in em.truth:
            if t.metric != "audio":
                faults.append((dev, t.start, t.end))
        if em.readings:
            readings += [(dev, em.spec.room, em.ts, m, v) for m, v in em.readings.items()]
    return readings, faults


def fleet_priors(readings: list[Reading], window_s: float) -> dict[str, Any]:
    """priors.json from window aggregates (mean, std per device window) alone."""
    acc: dict[tuple[str, str, float], list[float]] = defaultdict(list)
    rooms: dict[str, str] = {}
    for dev, room, ts, metric, value in readings:
        if metric in ANOMALY_METRICS:
            acc[(dev, metric, ts - ts % window_s)].append(value)
            rooms[dev] = room
    levels: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    spreads: dict[tuple[str, str], list[float]] = defaultdict(list)
    series: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for (dev, metric, start), values in acc.items():
        cls = room_class(rooms[dev]).value
        mean = float(np.mean(values))
        levels[(cls, metric, int(start // 3600) % 24)].append(mean)
        spreads[(cls, metric)].append(float(np.std(values)))
        series[(dev, metric)].append((start, mean))
    steps: dict[tuple[str, str], list[float]] = defaultdict(list)
    for (dev, metric), points in series.items():
        points.sort()
        cls = room_class(rooms[dev]).value
        steps[(cls, metric)] += [abs(b - a) for (_, a), (_, b) in itertools.pairwise(points)]
    qs = np.linspace(0.1, 0.9, QUANTILES)
    classes: dict[str, dict[str, Any]] = defaultdict(dict)
    for cls, metric in spreads:
        hourly = []
        for hour in range(24):
            vals = levels.get((cls, metric, hour)) or [
                v for (c, m, _), vs in levels.items() if c == cls and m == metric for v in vs
            ]
            hourly.append([round(float(q), 3) for q in np.quantile(vals, qs)])
        classes[cls][metric] = {
            "hourly": hourly,
            "step": round(float(np.median(steps[(cls, metric)] or [0.0])), 4),
            "spread": round(float(np.median(spreads[(cls, metric)])), 4),
        }  # fmt: skip
    return {"format": 1, "classes": dict(classes)}


def scored(
    readings: list[Reading],
    s: InferenceSettings,
    warmup_h: float,
    priors: FleetPriors | None,
    flag: Any,
) -> Iterator[ScoredWindow]:
    """As `training.sensor_eval.windows`, with the engine's seeding from priors."""
    streams: dict[str, SensorStream] = {}
    seeds: dict[str, Any] = {}
    for device, room, ts, metric, value in readings:
        st = streams.get(device)
        if st is None:
            st = streams[device] = SensorStream(
                s.sensor_window_s,
                s.baseline_hours * HOUR_S,
                warmup_h * HOUR_S,
                s.relearn_hours * HOUR_S,
            )
            seeds[device] = priors.of_class(room_class(room).value) if priors else None
        sp = seeds[device]
        if sp and metric in sp:
            seed(st, metric, sp[metric], ts)
        w = st.add(metric, ts, value)
        if w is None:
            continue
        if not st.ready(w):
            st.commit(w)
            continue
        names, feats = st.anomaly_features(w)
        flagged = frozenset(flag(names, feats, device, w.start, w.end)) if names else frozenset()
        label = window_label(flagged, st.commit(w, flagged))
        yield ScoredWindow(device, room, w, names, feats, None, label == "anomaly", label)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--fleet-homes", type=int, default=6)
    parser.add_argument("--new-homes", type=int, default=4)
    args = parser.parse_args()
    s = InferenceSettings()
    anomaly = ModelRuntime.load(DEFAULT_MODELS_DIR, names=["sensor_anomaly"]).models[
        "sensor_anomaly"
    ]
    flag = model_flag(lambda x: anomaly.probabilities(x)[:, 1], anomaly.manifest.thresholds)
    fleet, _ = world_readings(args.fleet_homes, 31, 3.0, 0.0)
    priors_json = fleet_priors(fleet, s.sensor_window_s)
    priors = FleetPriors.parse(priors_json)
    # What the cloud's `cloud.fleet.priors` makes: one mean and std per metric, fleet-wide.
    flat: dict[str, list[float]] = defaultdict(list)
    for _dev, _room, _ts, metric, value in fleet:
        if metric in ANOMALY_METRICS:
            flat[metric].append(value)
    fleet_wide = FleetPriors.parse(
        {"format": 1,
         "metrics": {m: {"mean": float(np.mean(v)), "std": float(np.std(v))}
                     for m, v in flat.items()}}
    )  # fmt: skip
    out: dict[str, Any] = {
        "fleet_homes": args.fleet_homes,
        "new_homes": args.new_homes,
        "priors_bytes": len(json.dumps(priors_json)),
        "room_classes": sorted(priors.classes),
    }
    for faults_rate, key in ((0.0, "clean"), (1.0, "faults")):
        readings, faults = world_readings(args.new_homes, 37, 1.0, faults_rate)
        devices = len({r[0] for r in readings})
        for name, warmup, pr in (
            ("no_priors", s.warmup_hours, None),
            ("no_priors_short_warmup", 2.0, None),
            ("priors", s.warmup_hours, priors),
            ("fleet_wide_priors", s.warmup_hours, fleet_wide),
        ):
            ws = list(scored(readings, s, warmup, pr, flag))
            sc = event_scores(ws, faults) if ws else {}
            entry = {
                "scored_windows": len(ws),
                "scored_device_hours": round(len(ws) * s.sensor_window_s / 3600, 1),
                "false_alarms": sc.get("false_positive_runs", 0),
                "false_alarms_per_device_day": round(sc.get("false_alarms_per_device_day", 0.0), 3),
                "level_changes": sc.get("level_changes", 0),
            }  # fmt: skip
            if key == "faults":
                entry = {
                    "scored_windows": len(ws),
                    "faults": sc.get("faults", 0),
                    "recall": round(sc.get("recall", 0.0), 3),
                    "false_alarms": sc.get("false_positive_runs", 0),
                }
            out[f"{key}_{name}"] = entry
        out[f"{key}_devices"] = devices
    out["first_day_false_alarms_without_priors"] = out["clean_no_priors_short_warmup"][
        "false_alarms"
    ]
    out["first_day_false_alarms_with_priors"] = out["clean_priors"]["false_alarms"]
    out["first_day_false_alarms_with_fleet_wide_priors"] = out["clean_fleet_wide_priors"][
        "false_alarms"
    ]
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:42} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
