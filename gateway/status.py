"""The gateway's local status page: what a household wants to see without a cloud.

Served on the admin port (loopback by default, ``[admin] host``) beside ``/healthz`` and
``/metrics``:

- ``/`` and ``/status``: an HTML page (``gateway/static/status.html`` + ``status.js``, no inline
  script; the page fills its tables from the JSON below with ``textContent`` only);
- ``/api/status/devices``: the `MAX_DEVICES` most recently seen devices with their room, class,
  last seen, availability and newest battery level among the newest `BATTERY_SCAN_ROWS`
  readings of the last `BATTERY_LOOKBACK_S` (``null`` without one);
- ``/api/status/events``: the newest inference events (alarms, keywords, anomalies, level
  changes), newest first;
- ``/api/status/dead-letters``: the newest dead letters with their reason, detail, count and
  topic; never their payload (it may hold anything a device sent, credentials included).

No secret is ever in a reply: the queries name their columns, and none of them reads the
configuration. Each request opens its own read-only SQLite connection (``mode=ro``) and runs in a
worker thread (`AdminApp` hands these routes to `asyncio.to_thread`), so a slow SD card never
stalls the event loop, and the writer thread, which owns every write, is never waited on for
more than SQLite's busy timeout. Every query is bounded: by a row limit, and the scans of the
large tables by an index range.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Labels that are events a person acts on (the rest are per-window decisions: "normal",
# "empty", "occupied", "other", "none", speech shares).
EVENT_LABELS = (
    "anomaly",
    "level_change",
    "smoke_t3",
    "co_t4",
    "lights_on",
    "lights_off",
    "stop",
)
# The newest battery reading counts when it is at most this old and among the newest
# `BATTERY_SCAN_ROWS` readings (a row-id range: a busy gateway's page must not scan a week).
BATTERY_LOOKBACK_S = 7 * 86400.0
BATTERY_SCAN_ROWS = 200_000
# Most rows any one reply holds; the devices list is the most recently seen `MAX_DEVICES`
# (``total`` says how many the table holds).
MAX_LIMIT = 500
MAX_DEVICES = 2000
DEFAULT_LIMIT = 50
# The events query looks at most this many of the newest inference rows (an index range on the
# row id): events are rare among per-window decisions, and the page must not scan years of them.
EVENT_SCAN_ROWS = 200_000
BUSY_TIMEOUT_S = 2.0


class StatusReader:
    """Read-only queries behind the status page, one connection per call (thread-safe)."""

    def __init__(self, db_path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self._path = db_path
        self._clock = clock

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(
            f"{self._path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S
        )
        try:
            conn.row_factory = sqlite3.Row
            yield conn
        finally:
            conn.close()

    def devices(self) -> dict[str, Any]:
        since = self._clock() - BATTERY_LOOKBACK_S
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT home, device, room, device_class, last_seen, availability, "
                "availability_at FROM devices ORDER BY last_seen DESC LIMIT ?",
                (MAX_DEVICES,),
            ).fetchall()
            total = conn.execute("SELECT count(*) FROM devices").fetchone()[0]
            # Newest battery per device: a bounded range of the newest rows, never a scan.
            battery = {
                (r["home"], r["device"]): (r["value"], r["ts"])
                for r in conn.execute(
                    "SELECT home, device, value, max(ts) AS ts FROM readings "
                    "WHERE id > (SELECT coalesce(max(id), 0) FROM readings) - ? "
                    "AND ts >= ? AND metric = 'battery' GROUP BY home, device",
                    (BATTERY_SCAN_ROWS, since),
                )
            }
        out = []
        for r in rows:
            level = battery.get((r["home"], r["device"]))
            out.append(
                {
                    "home": r["home"],
                    "device": r["device"],
                    "room": r["room"],
                    "device_class": r["device_class"],
                    "last_seen": r["last_seen"],
                    "availability": r["availability"],
                    "availability_at": r["availability_at"],
                    "battery": level[0] if level else None,
                    "battery_at": level[1] if level else None,
                }
            )
        out.sort(key=lambda d: (d["home"], d["room"], d["device"]))
        return {"devices": out, "count": len(out), "total": total, "now": self._clock()}

    def events(self, limit: int) -> dict[str, Any]:
        marks = ",".join("?" * len(EVENT_LABELS))
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT model, home, room, device, window_start, window_end, score, label "
                "FROM inferences WHERE id > (SELECT coalesce(max(id), 0) FROM inferences) - ? "
                f"AND label IN ({marks}) ORDER BY id DESC LIMIT ?",
                (EVENT_SCAN_ROWS, *EVENT_LABELS, limit),
            ).fetchall()
        return {"events": [dict(r) for r in rows], "count": len(rows)}

    def dead_letters(self, limit: int) -> dict[str, Any]:
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT topic, reason, detail, count, received_at, last_received_at, "
                "length(payload) AS payload_bytes FROM dead_letters "
                "ORDER BY last_received_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return {"dead_letters": [dict(r) for r in rows], "count": len(rows)}


def parse_limit(query: str) -> int:
    """``limit=N`` from a query string, clamped to 1..`MAX_LIMIT`; ValueError when not a number."""
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name == "limit":
            n = int(value)  # ValueError on garbage: the caller answers 400
            return max(1, min(n, MAX_LIMIT))
    return DEFAULT_LIMIT


STATIC_DIR = Path(__file__).with_name("static")
STATIC_FILES = {
    "/status.js": ("status.js", "text/javascript; charset=utf-8"),
    "/status.css": ("status.css", "text/css; charset=utf-8"),
}
PAGE = ("status.html", "text/html; charset=utf-8")
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
