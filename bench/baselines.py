"""What a sensor's persisted baseline costs: bytes in memory (the `SensorStream` after a day of
windows, tracemalloc) and on disk (its snapshot, and the SQLite file's growth per device for
``sensor_baselines``), and the time to snapshot and to write one save round.

    python -m bench.baselines [--devices 500] [--json]

Prints medians over the devices; run it with the machine otherwise idle and report `uptime`.
The figures are those of the `SensorStream` this checkout has (its snapshot format decides).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from gateway.db import make_engine
from gateway.inference.baselines import SavedBaseline, write_baselines
from gateway.inference.sensors import SensorStream
from gateway.inference.settings import InferenceSettings

T0 = 1_767_225_600.0
KINDS = {
    "thermometer (temperature, humidity; every 60 s)": (("temperature", "humidity"), 60.0),
    "air sensor (5 metrics; every 30 s)": (
        ("temperature", "humidity", "co2", "light", "motion"),
        30.0,
    ),
    "plug (power; every 10 s)": (("power",), 10.0),
}


def warmed(metrics: tuple[str, ...], every: float, seed: int, s: InferenceSettings) -> SensorStream:
    """A stream after 26 h of readings (its baseline full), as the engine keeps it."""
    rng = np.random.default_rng(seed)
    stream = SensorStream(
        s.sensor_window_s,
        baseline_s=s.baseline_hours * 3600.0,
        warmup_s=s.warmup_hours * 3600.0,
        relearn_s=s.relearn_hours * 3600.0,
    )
    n = int(26 * 3600 / every)
    values = rng.normal(20.0, 1.0, (n, len(metrics)))
    for i in range(n):
        ts = T0 + i * every
        for j, m in enumerate(metrics):
            w = stream.add(m, ts, float(values[i, j]))
            if w is not None:
                stream.commit(w)
    return stream


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=200, help="devices per save-round figure")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    s = InferenceSettings()
    out: dict[str, dict[str, float]] = {}
    for name, (metrics, every) in KINDS.items():
        warmed(metrics, every, 99, s)  # first calls' one-off allocations (numpy, caches)
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        streams = [warmed(metrics, every, seed, s) for seed in range(5)]
        mem = (tracemalloc.get_traced_memory()[0] - before) / len(streams)
        tracemalloc.stop()
        snaps = [x.snapshot() for x in streams]
        t = []
        for x in streams:
            t0 = time.perf_counter()
            x.snapshot()
            t.append(time.perf_counter() - t0)
        # On disk: N rows of this kind in a fresh gateway database, one save round.
        rows = [
            SavedBaseline("home-1", f"device-{i:05d}", s.sensor_window_s, snaps[i % 5], T0)
            for i in range(args.devices)
        ]
        with tempfile.TemporaryDirectory() as d:
            db = Path(d) / "gw.db"
            engine = make_engine(db)
            with engine.begin():
                pass
            size0 = db.stat().st_size + _wal(db)
            t0 = time.perf_counter()
            with engine.begin() as conn:
                write_baselines(conn, rows)
            round_s = time.perf_counter() - t0
            with engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            size1 = db.stat().st_size + _wal(db)
            engine.dispose()
        out[name] = {
            "memory_bytes": round(mem),
            "snapshot_bytes": statistics.median(len(b) for b in snaps),
            "disk_bytes_per_device": round((size1 - size0) / args.devices),
            "snapshot_ms": round(statistics.median(t) * 1000, 3),
            f"save_round_ms_{args.devices}_devices": round(round_s * 1000, 1),
        }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for name, figures in out.items():
            print(name)
            for k, v in figures.items():
                print(f"  {k:>28}: {v}")


def _wal(db: Path) -> int:
    wal = db.with_name(db.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


if __name__ == "__main__":
    main()
