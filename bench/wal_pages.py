"""What a batch commit writes, by b-tree: WAL frames per commit of the gateway's ingest path.

    .venv/bin/python bench/wal_pages.py [--commits 600] [--warm-up 3000] [--json]

In-process, no broker, no gateway process: a database made by `gateway.db.make_engine` (the
schema of the code on ``PYTHONPATH``, 1 KB pages, WAL) gets the writer's own statements
(`gateway.writer`: the readings INSERT and the ``devices`` upsert when the writer would run it)
in one transaction per commit, for the two streams of ``bench/wear.py``:

- 300 readings/s: 20 devices x 3 metrics at 5 Hz, 201 rows a commit (67 messages; the
  ``batch_rows`` 200 of ``[storage]`` rounded up to whole messages);
- 10 readings/s: 5 devices x 2 metrics at 1 Hz, one commit a second (10 rows).

After `--warm-up` commits (a database that already holds readings: leaves split, interior
pages exist) the WAL is checkpointed and truncated; then `--commits` commits run and the WAL's
frame headers (the page number of every frame) are read back and each page is named by
SQLite's ``dbstat`` (the b-tree it belongs to; page 1 is the file header). Frames per commit by
b-tree are printed; WAL bytes per reading = frames x (page + 24-byte frame header) / rows.
This counts the WAL only: what a checkpoint then writes to the database file (at least the
pages the readings fill, ``file_bytes_per_reading``), and the kernel's 4 KB page-cache
granularity, come on top (``bench/wear.py`` measures the whole process).
"""

from __future__ import annotations

import argparse
import collections
import json
import sqlite3
import struct
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.db import make_engine  # noqa: E402
from gateway.records import Reading  # noqa: E402
from gateway.writer import _INSERT_READINGS, _UPSERT_SEEN, _encode  # noqa: E402

PAGE_SIZE = 1024
METRICS = ("temperature", "humidity", "co2")
T0 = 1_780_000_000.0


@dataclass(frozen=True)
class Stream:
    devices: int
    metrics: int
    hz: float
    rows_per_commit: int

    @property
    def readings_per_s(self) -> int:
        return round(self.devices * self.metrics * self.hz)


STREAMS = (Stream(20, 3, 5.0, 201), Stream(5, 2, 1.0, 10))


class Feed:
    """The stream's messages in publish order (devices in turn), as the writer's rows."""

    def __init__(self, stream: Stream) -> None:
        self.s = stream
        self.k = 0

    def commit_rows(self) -> tuple[list[Reading], float]:
        s = self.s
        rows: list[Reading] = []
        gap = 1.0 / (s.devices * s.hz)
        at = T0
        while len(rows) < s.rows_per_commit:
            device = self.k % s.devices
            seq = self.k // s.devices
            at = T0 + self.k * gap
            for m in METRICS[: s.metrics]:
                rows.append(
                    Reading(
                        "home-1",
                        f"room-{device % 4}",
                        f"sensor-{device:02d}",
                        m,
                        at,
                        20.0 + (self.k % 7) * 0.5,
                        seq,
                        at + 0.003,
                    )
                )
            self.k += 1
        return rows, at


def wal_pages(wal: Path) -> list[int]:
    """Page numbers of the WAL's frames, in order (32-byte header, 24-byte frame headers)."""
    data = wal.read_bytes()
    page_size = struct.unpack(">I", data[8:12])[0]
    out = []
    pos = 32
    while pos + 24 + page_size <= len(data):
        out.append(struct.unpack(">I", data[pos : pos + 4])[0])
        pos += 24 + page_size
    return out


def run(stream: Stream, warm_up: int, commits: int, seen_every_s: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="homeedge-walpages-") as tmp:
        db = Path(tmp) / "gateway.db"
        make_engine(db, page_size=PAGE_SIZE).dispose()
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        feed = Feed(stream)
        last_seen_write = -1e18

        def commit() -> None:
            nonlocal last_seen_write
            rows, at = feed.commit_rows()
            conn.execute("BEGIN")
            conn.execute(_INSERT_READINGS, (_encode(rows),))
            if at - last_seen_write >= seen_every_s:
                last_seen_write = at
                seen = {(r.home, r.device): (r.home, r.device, r.room, "sensor", at) for r in rows}
                conn.executemany(_UPSERT_SEEN, list(seen.values()))
            conn.execute("COMMIT")

        for _ in range(warm_up):
            commit()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        for _ in range(commits):
            commit()
        pages = wal_pages(Path(str(db) + "-wal"))
        names = dict(conn.execute("SELECT pageno, name FROM dbstat"))
        stored = conn.execute(
            "SELECT sum(pgsize) FROM dbstat"
            " WHERE name IN (SELECT name FROM sqlite_master WHERE tbl_name = 'readings')"
        ).fetchone()[0]
        total_rows = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
        conn.close()
    by = collections.Counter(names.get(p, "page 1" if p == 1 else "other") for p in pages)
    rows = commits * stream.rows_per_commit
    return {
        "readings_per_s": stream.readings_per_s,
        "rows_per_commit": stream.rows_per_commit,
        "frames_per_commit": round(len(pages) / commits, 1),
        "wal_bytes_per_reading": round(len(pages) * (PAGE_SIZE + 24) / rows, 1),
        "by_btree": {name: round(n / commits, 2) for name, n in by.most_common()},
        # The pages readings and their indexes fill, per reading: what a checkpoint copies to
        # the database file at least once.
        "file_bytes_per_reading": round(stored / total_rows, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--commits", type=int, default=600)
    parser.add_argument("--warm-up", type=int, default=3000)
    parser.add_argument(
        "--seen-every-s",
        type=float,
        default=30.0,
        help="upsert devices.last_seen at most this often, in stream seconds (the gateway's "
        "[storage] last_seen_interval_ms default; 0: every commit, as before it)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = [run(s, args.warm_up, args.commits, args.seen_every_s) for s in STREAMS]
    if args.json:
        print(json.dumps(results))
        return 0
    for r in results:
        parts = ", ".join(f"{k} {v}" for k, v in r["by_btree"].items())  # type: ignore[attr-defined]
        print(
            f"{r['readings_per_s']} readings/s, {r['rows_per_commit']} rows a commit: "
            f"{r['frames_per_commit']} WAL frames a commit ({parts}); "
            f"{r['wal_bytes_per_reading']} WAL bytes per reading; readings and their indexes "
            f"fill {r['file_bytes_per_reading']} bytes of the file per reading"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
