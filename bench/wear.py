"""SD-card wear benchmark: bytes the gateway writes to disk per reading, and publish->commit p99.

    .venv/bin/python bench/wear.py [--seconds 180] [--quick] [--inference] [--jobs] [--json]

Two phases, each on a fresh Mosquitto (free port, the test fixture's limits) and a fresh
``python -m gateway`` with its default storage settings (inference off unless ``--inference``),
measuring the ingest path alone: the aggregation pass is pushed out of the window
(``HOMEEDGE_GATEWAY__AGGREGATION__INTERVAL_S=3600``, unless the caller set it), and retention
has nothing old to delete:

- 300 readings/s: 20 devices x 3 metrics, 5 messages a second each;
- 10 readings/s: 5 devices x 2 metrics, 1 message a second each.

``--jobs`` adds a third phase, the 10 readings/s stream for ``--jobs-seconds`` (600: one
outbox batch of 10 one-minute windows) with the background jobs of a gateway in its steady
state: the aggregation pass at its default interval (5 s) and retention every 60 s deleting
readings received over 60 s ago once aggregated (a database full to its retention: every hour
deletes an hour of readings), plus the models with ``--inference``. ``jobs_bytes_per_hour`` is
what that phase wrote per hour beyond the ingest phase's bytes per reading x its readings.

Each phase warms up (the schema, the first pages), reads the gateway process's ``write_bytes``
from ``/proc/<pid>/io``, publishes QoS 1 at a steady pace for ``--seconds`` (``--quick``: 30 s),
waits until every reading is committed, stops the gateway (its shutdown checkpoints the WAL
into the database file) and takes the reaped process's total from the kernel (``ru_oublock``,
the same counter): every byte the process caused to be written to the block device (the
database file, its WAL, checkpoints, anything else), counted in 4 KB page-cache pages as they
are dirtied. bytes per reading = the difference / readings committed in the window.
Publish->commit latency: each payload's ``ts`` is its publish time; the bench polls the
database every 20 ms and takes (time the row is first seen - ts), so figures include up to one
poll interval.

``--json`` keys: ``bytes_per_reading_300``, ``bytes_per_reading_10``, ``commit_p99_ms_300``,
``commit_p99_ms_10``, plus ``write_bytes_*``, ``readings_*``, ``commits_per_s_*`` and
``load_avg``. Linux only (``/proc``). Figures depend on what else runs on the machine: say so.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest import GatewayProcess, start_broker  # noqa: E402
from schemas.telemetry import encode_telemetry  # noqa: E402

TOPIC_ROOT = "wear"
WARM_UP_S = 5.0
POLL_S = 0.02


@dataclass(frozen=True)
class Load:
    """One phase's stream: `devices` each sending `metrics` readings `hz` times a second."""

    devices: int
    metrics: int
    hz: float

    @property
    def readings_per_s(self) -> int:
        return round(self.devices * self.metrics * self.hz)


LOADS = (Load(devices=20, metrics=3, hz=5), Load(devices=5, metrics=2, hz=1))
METRICS = ("temperature", "humidity", "co2")


def write_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/io") as fh:
        for line in fh:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/io has no write_bytes")


def gateway_commits(port_file: Path) -> float:
    """The gateway's ``homeedge_gateway_commits_total`` counter from /metrics (0 if absent)."""
    import urllib.request

    port = int(port_file.read_text().strip())
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("homeedge_gateway_commits_total "):
                return float(line.split()[1])
    return 0.0


class Publisher:
    """Publishes the load's messages at a steady pace on one paho connection (QoS 1)."""

    def __init__(self, port: int, load: Load) -> None:
        self.load = load
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"wear-pub-{os.getpid()}")
        self.client.max_inflight_messages_set(1000)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.seq = [0] * load.devices
        self.sent = 0

    def run(self, seconds: float) -> None:
        load = self.load
        gap = 1.0 / (load.devices * load.hz)  # one message every `gap` s, devices in turn
        started = time.monotonic()
        total = int(seconds * load.devices * load.hz)
        for k in range(total):
            pause = started + k * gap - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            device = k % load.devices
            payload = encode_telemetry(
                time.time(),
                {m: 20.0 + (k % 7) * 0.5 for m in METRICS[: load.metrics]},
                seq=self.seq[device],
            )
            self.seq[device] += 1
            topic = f"{TOPIC_ROOT}/home-1/room-{device % 4}/sensor-{device:02d}/telemetry"
            self.client.publish(topic, payload, qos=1)
            self.sent += load.metrics

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class CommitWatch:
    """Polls the readings table; records (first seen - ts) of every new row."""

    def __init__(self, db: Path) -> None:
        self.conn = sqlite3.connect(db, check_same_thread=False)
        first = self.conn.execute("SELECT coalesce(max(id), 0) FROM readings").fetchone()
        self.last_id = int(first[0])
        self.delays: list[float] = []
        self.rows = 0
        self.measure = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(POLL_S):
            now = time.time()
            rows = self.conn.execute(
                "SELECT id, ts FROM readings WHERE id > ? ORDER BY id", (self.last_id,)
            ).fetchall()
            if rows:
                self.last_id = rows[-1][0]
                self.rows += len(rows)
                if self.measure:
                    self.delays.extend(now - ts for _, ts in rows)

    def wait_rows(self, rows: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.rows < rows:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.rows} of {rows} readings were committed")
            time.sleep(POLL_S)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.conn.close()


INGEST_ONLY = {"HOMEEDGE_GATEWAY__AGGREGATION__INTERVAL_S": "3600"}
JOBS = {
    "HOMEEDGE_GATEWAY__AGGREGATION__INTERVAL_S": "5",
    "HOMEEDGE_GATEWAY__STORAGE__RETENTION_S": "60",
    "HOMEEDGE_GATEWAY__STORAGE__RETENTION_INTERVAL_S": "60",
}


def run_phase(
    load: Load, seconds: float, *, inference: bool, env: dict[str, str]
) -> dict[str, float]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update({k: v for k, v in env.items() if k not in os.environ or env is JOBS})
    try:
        return _run_phase(load, seconds, inference=inference)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run_phase(load: Load, seconds: float, *, inference: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="homeedge-wear-") as tmp:
        workdir = Path(tmp)
        broker, port = start_broker(workdir)
        try:
            gw = GatewayProcess(workdir, port, TOPIC_ROOT, inference=inference)
            try:
                return _measure(gw, port, load, seconds)
            finally:
                if gw.proc.poll() is None:
                    gw.stop()
        finally:
            broker.terminate()
            broker.wait(timeout=10)


def _measure(gw: GatewayProcess, port: int, load: Load, seconds: float) -> dict[str, float]:
    pub = Publisher(port, load)
    watch: CommitWatch | None = None
    try:
        pub.run(WARM_UP_S)
        watch = CommitWatch(gw.db)
        watch.wait_rows(0, 1)
        # Settle the warm-up: its readings committed, its WAL checkpointed.
        time.sleep(2.0)
        base_rows = watch.rows
        before = write_bytes(gw.proc.pid)
        commits_before = gateway_commits(gw.port_file)
        watch.measure = True
        pub.run(seconds)
        want = base_rows + int(seconds * load.devices * load.hz) * load.metrics
        watch.wait_rows(want, timeout=60)
        commits = gateway_commits(gw.port_file) - commits_before
        readings = watch.rows - base_rows
        delays = watch.delays
        watch.close()
        watch = None
        # Stop the gateway and count what it wrote over its whole life (the kernel's rusage of
        # the reaped process: ru_oublock is write_bytes in 512-byte units). Its shutdown
        # checkpoints the WAL into the database file, so the window's WAL frames are counted
        # twice, as a periodic checkpoint would have counted them.
        after = stop_counting_writes(gw)
    finally:
        pub.close()
        if watch is not None:
            watch.close()
    return {
        "bytes_per_reading": round((after - before) / readings, 1),
        "commit_p99_ms": round(percentile(delays, 0.99) * 1000, 1),
        "commit_p50_ms": round(percentile(delays, 0.5) * 1000, 1),
        "write_bytes": after - before,
        "readings": readings,
        "commits_per_s": round(commits / seconds, 2),
        "seconds": round(seconds, 1),
    }


def stop_counting_writes(gw: GatewayProcess) -> int:
    """SIGTERM the gateway, reap it, and return the bytes it wrote in its life."""
    gw.proc.send_signal(signal.SIGTERM)
    _, status, usage = os.wait4(gw.proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"the gateway exited with wait status {status}")
    return int(usage.ru_oublock) * 512


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="length of each phase")
    parser.add_argument("--quick", action="store_true", help="30 s per phase")
    parser.add_argument("--inference", action="store_true", help="run the ONNX models too")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--jobs", action="store_true", help="also the background jobs' writes (see above)"
    )
    parser.add_argument("--jobs-seconds", type=float, default=600.0)
    parser.add_argument(
        "--only", type=int, choices=[load.readings_per_s for load in LOADS], help="one phase only"
    )
    args = parser.parse_args()
    seconds = 30.0 if args.quick else args.seconds
    result: dict[str, float | str] = {}
    loads_before = os.getloadavg()
    for load in LOADS:
        rate = load.readings_per_s
        if args.only is not None and rate != args.only:
            continue
        phase = run_phase(load, seconds, inference=args.inference, env=INGEST_ONLY)
        for key, value in phase.items():
            result[f"{key}_{rate}"] = value
        if not args.json:
            print(
                f"{rate} readings/s ({load.devices} devices x {load.metrics} metrics x "
                f"{load.hz:g}/s, {seconds:.0f} s): {phase['bytes_per_reading']:,.0f} bytes "
                f"written per reading ({phase['write_bytes'] / 2**20:.1f} MB for "
                f"{phase['readings']:,} readings, {phase['commits_per_s']} commits/s); "
                f"publish->commit p50 {phase['commit_p50_ms']} ms, p99 "
                f"{phase['commit_p99_ms']} ms (load avg {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    if args.jobs:
        load = LOADS[-1]
        if f"bytes_per_reading_{load.readings_per_s}" not in result:
            raise SystemExit("--jobs needs the 10 readings/s phase (its bytes per reading)")
        per_reading = float(result[f"bytes_per_reading_{load.readings_per_s}"])
        jobs = run_phase(load, args.jobs_seconds, inference=args.inference, env=JOBS)
        extra = jobs["write_bytes"] - per_reading * jobs["readings"]
        result["jobs_write_bytes"] = jobs["write_bytes"]
        result["jobs_seconds"] = jobs["seconds"]
        result["jobs_bytes_per_hour"] = round(extra / jobs["seconds"] * 3600)
        result["jobs_commits_per_s"] = jobs["commits_per_s"]
        if not args.json:
            print(
                f"jobs (10 readings/s, aggregation every 5 s, retention every 60 s of readings "
                f"over 60 s old, {jobs['seconds']:.0f} s): {jobs['write_bytes'] / 2**20:.1f} MB, "
                f"{extra / 2**20:.2f} MB beyond ingest: "
                f"{extra / jobs['seconds'] * 3600 / 2**20:.1f} MB an hour "
                f"({jobs['commits_per_s']} commits/s; load avg "
                f"{os.getloadavg()[0]:.1f})",
                flush=True,
            )
    loads_after = os.getloadavg()
    result["load_avg"] = f"{loads_before[0]:.2f} -> {loads_after[0]:.2f}"
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
