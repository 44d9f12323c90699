"""How long the gateway's latest schema migration takes on a large database, and the file growth.

    .venv/bin/python bench/migrate.py [--readings 1000000] [--json]

Builds a database at the schema version before the newest (version 0's tables, then the
migrations up to ``SCHEMA_VERSION - 1``, 1 KB pages, WAL), fills it with `--readings` readings
of 20 devices x 3 metrics at 300 readings/s with seqs (the stream of ``bench/wear.py``), then
times `gateway.db.make_engine` on it: the upgrade a gateway runs at its first start after an
update, before it subscribes. Prints the seconds and the file's size before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.db import make_engine  # noqa: E402
from gateway.schema import _V1_DDL, MIGRATIONS, SCHEMA_VERSION, upgrade  # noqa: E402

METRICS = ("temperature", "humidity", "co2")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="homeedge-migrate-") as tmp:
        path = Path(tmp) / "gateway.db"
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA page_size=1024")
            db.execute("PRAGMA journal_mode=WAL")
            for ddl in _V1_DDL:
                db.execute(ddl)
        db.close()
        engine = create_engine(f"sqlite:///{path}")
        upgrade(engine, MIGRATIONS[: SCHEMA_VERSION - 1])
        engine.dispose()
        n = args.readings
        with sqlite3.connect(path) as db:
            db.executemany(
                "INSERT INTO readings (home, room, device, metric, ts, value, seq, received_at)"
                " VALUES ('home-1', ?, ?, ?, ?, 21.5, ?, ?)",
                (
                    (
                        f"room-{i // 3 % 20 % 4}",
                        f"sensor-{i // 3 % 20:02d}",
                        METRICS[i % 3],
                        1.75e9 + i / 300,
                        i // 60,
                        1.75e9 + i / 300 + 0.003,
                    )
                    for i in range(n)
                ),
            )
        db.close()
        before = path.stat().st_size
        started = time.perf_counter()
        make_engine(path).dispose()
        seconds = time.perf_counter() - started
        after = path.stat().st_size
    result = {
        "readings": n,
        "from_version": SCHEMA_VERSION - 1,
        "to_version": SCHEMA_VERSION,
        "seconds": round(seconds, 2),
        "file_mb_before": round(before / 2**20, 1),
        "file_mb_after": round(after / 2**20, 1),
        "load_avg": round(os.getloadavg()[0], 2),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{n:,} readings: migration {SCHEMA_VERSION - 1} -> {SCHEMA_VERSION} took "
            f"{seconds:.1f} s; file {before / 2**20:.0f} MB -> {after / 2**20:.0f} MB "
            f"(load avg {os.getloadavg()[0]:.1f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
