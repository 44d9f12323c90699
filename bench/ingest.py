"""Ingest benchmark: the gateway's throughput, latency and memory against Mosquitto's own rate.

    .venv/bin/python bench/ingest.py [--messages 100000] [--rate 5000] [--seconds 10] [--json]

One run, on a Mosquitto of its own (free port, persistence off, the test fixture's limits):

1. broker_rate: Mosquitto delivering QoS 1 to a bare ``mosquitto_sub`` (msg/s, publish start
   to the subscriber's last message);
2. gateway_rate: the same messages through ``python -m gateway`` (publish start to the last
   row committed, seen by polling the SQLite file), and ratio = gateway_rate / broker_rate;
3. p50_ms/p99_ms: publish-to-commit latency at a fixed rate (default 5,000 msg/s): each payload's
   ``ts`` is its publish time; the bench polls the database every 2 ms and takes
   (time the row is first seen - ts), so figures include up to one poll interval;
4. rss_mb: the gateway process's peak resident memory until it is told to stop (the kernel's
   VmHWM on Linux; elsewhere psutil's RSS sampled every 50 ms, which can miss short peaks).

Publishers are ``mosquitto_pub -l`` processes, each sending under 65,535 messages (its QoS 1
message ids wrap there). Figures depend on what else runs on the machine: say so with them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from gateway.admin import fetch_health

CHUNK = 50_000
# An hour ago, on a whole hour: the gateway dead-letters a reading timed more than [ingest]
# max_age_s (7 days by default) before it arrives, so a fixed date stops working a week later.
TS0 = float(int(time.time()) // 3600 * 3600 - 3600)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def start_broker(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_inflight_messages 1000\nmax_queued_messages 0\nmax_queued_bytes 0\n"
        f"log_dest file {workdir}/mosquitto.log\n"
    )
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def fixed5(units: int) -> str:
    """`units` of 10 us as decimal seconds, formatted exactly (float formatting may round two
    neighbours to one value, and the readings table keeps one row per device, metric, ts)."""
    return f"{units // 100_000}.{units % 100_000:05d}"


def payload_lines(start_seq: int, count: int) -> bytes:
    base = int(TS0) * 100_000
    return "".join(
        f'{{"ts":{fixed5(base + i * 100)},"seq":{i},"readings":{{"temperature":21.5}}}}\n'
        for i in range(start_seq, start_seq + count)
    ).encode()


def publish_all(port: int, root: str, total: int) -> list[subprocess.Popen[bytes]]:
    """Start one mosquitto_pub -l per chunk (in parallel), each on its own device topic."""
    procs = []
    for n, first in enumerate(range(0, total, CHUNK)):
        count = min(CHUNK, total - first)
        topic = f"{root}/h1/lab/thermostat-{n}/telemetry"
        p = subprocess.Popen(
            ["mosquitto_pub", "-p", str(port), "-q", "1", "-t", topic, "-l"],
            stdin=subprocess.PIPE,
        )
        assert p.stdin is not None
        threading.Thread(target=_feed, args=(p, payload_lines(first, count)), daemon=True).start()
        procs.append(p)
    return procs


def _feed(p: subprocess.Popen[bytes], data: bytes) -> None:
    assert p.stdin is not None
    p.stdin.write(data)
    p.stdin.close()


def broker_rate(port: int, root: str, total: int) -> float:
    sub = subprocess.Popen(
        ["mosquitto_sub", "-p", str(port), "-q", "1", "-t", f"{root}/#", "-C", str(total)],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.5)  # let it subscribe
    started = time.perf_counter()
    pubs = publish_all(port, root, total)
    sub.wait(timeout=300)
    elapsed = time.perf_counter() - started
    for p in pubs:
        p.wait(timeout=60)
    return total / elapsed


class GatewayProcess:
    def __init__(self, workdir: Path, port: int, root: str, *, inference: bool = False) -> None:
        self.db = workdir / "gateway.db"
        self.port_file = workdir / "admin.port"
        cfg = workdir / "gateway.toml"
        cfg.write_text(
            f'gateway_id = "bench"\n[mqtt]\nurl = "mqtt://127.0.0.1:{port}"\n'
            f'topic_root = "{root}"\n[storage]\npath = "{self.db}"\n'
            f'[admin]\nport = 0\nport_file = "{self.port_file}"\n'
            # The ingest path alone by default: bench/inference.py measures the models' cost.
            f"[inference]\nenabled = {'true' if inference else 'false'}\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--config", str(cfg), "--log-level", "WARNING"],
            cwd=Path(__file__).resolve().parent.parent,
            stdout=subprocess.DEVNULL,
        )
        self.peak_rss = 0
        self._ps = psutil.Process(self.proc.pid)
        self._done = threading.Event()
        threading.Thread(target=self._watch_rss, daemon=True).start()
        self._wait_healthy()

    def _watch_rss(self) -> None:
        while not self._done.wait(0.05):
            if not self._sample_rss():
                return

    def _sample_rss(self) -> bool:
        # The kernel's high-water mark (VmHWM) where there is one: the current RSS sampled every
        # 50 ms can miss a short peak (1.5 MB of a sync pass in one run; most runs agree).
        try:
            with open(f"/proc/{self.proc.pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        self.peak_rss = max(self.peak_rss, int(line.split()[1]) * 1024)
                        return True
        except OSError:
            pass
        try:
            self.peak_rss = max(self.peak_rss, self._ps.memory_info().rss)
        except psutil.Error:
            return False
        return True

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            # Publishing starts once the broker granted the subscription (its SUBACK), not on
            # the CONNACK: before it there is no session to queue messages in.
            if fetch_health(self.port_file, timeout=1).get("mqtt_subscribed") is True:
                return
            time.sleep(0.05)
        raise TimeoutError("the gateway did not become healthy")

    def rows(self, conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT count(*) FROM readings").fetchone()[0])

    def stop(self) -> None:
        self._done.set()
        self._sample_rss()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


def gateway_rate(gw: GatewayProcess, port: int, root: str, total: int) -> float:
    conn = sqlite3.connect(gw.db)
    base = gw.rows(conn)
    started = time.perf_counter()
    pubs = publish_all(port, root, total)
    deadline = time.monotonic() + 300
    while gw.rows(conn) < base + total:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {gw.rows(conn) - base} of {total} rows committed")
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    for p in pubs:
        p.wait(timeout=60)
    conn.close()
    return total / elapsed


def latency(gw: GatewayProcess, port: int, root: str, rate: int, seconds: float) -> list[float]:
    """Publish at `rate` msg/s with ts = publish time; return publish-to-commit delays (s)."""
    conn = sqlite3.connect(gw.db)
    last_id = int(conn.execute("SELECT coalesce(max(id), 0) FROM readings").fetchone()[0])
    topic = f"{root}/h1/lab/thermostat-latency/telemetry"
    pub = subprocess.Popen(
        ["mosquitto_pub", "-p", str(port), "-q", "1", "-t", topic, "-l"], stdin=subprocess.PIPE
    )
    assert pub.stdin is not None
    total = int(rate * seconds)
    tick = 0.01
    per_tick = max(1, int(rate * tick))
    delays: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        nonlocal last_id
        while True:
            now = time.time()
            rows = conn.execute(
                "SELECT id, ts FROM readings WHERE id > ? ORDER BY id", (last_id,)
            ).fetchall()
            for row_id, ts in rows:
                delays.append(now - ts)
                last_id = row_id
            if stop.is_set() and len(delays) >= total:
                return
            time.sleep(0.002)

    conn.close()
    conn = sqlite3.connect(gw.db, check_same_thread=False)
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    started = time.monotonic()
    seq = 0
    last_units = 0
    while seq < total:
        target = started + (seq // per_tick) * tick
        pause = target - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        # ts = publish time in 10 us units, strictly increasing (the readings table is unique
        # on device, metric, ts), also when this loop falls behind and writes ticks back to back.
        units = max(int(time.time() * 100_000), last_units + 1)
        n = min(per_tick, total - seq)
        lines = "".join(
            f'{{"ts":{fixed5(units + k)},"seq":{seq + k},"readings":{{"temperature":20.0}}}}\n'
            for k in range(n)
        )
        last_units = units + n
        pub.stdin.write(lines.encode())
        pub.stdin.flush()
        seq += n
    pub.stdin.close()
    pub.wait(timeout=60)
    stop.set()
    poller.join(timeout=60)
    if poller.is_alive():
        raise TimeoutError(f"only {len(delays)} of {total} latency rows were committed")
    conn.close()
    return delays


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=5000, help="msg/s of the latency phase")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the latency phase")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--inference", action="store_true", help="load the ONNX models too (RSS includes them)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="homeedge-bench-") as tmp:
        workdir = Path(tmp)
        broker, port = start_broker(workdir)
        try:
            b_rate = broker_rate(port, "bench-broker", args.messages)
            if not args.json:
                print(f"broker QoS 1 -> mosquitto_sub: {b_rate:,.0f} msg/s", flush=True)
            gw = GatewayProcess(workdir, port, "bench", inference=args.inference)
            try:
                g_rate = gateway_rate(gw, port, "bench", args.messages)
                if not args.json:
                    print(f"gateway published -> committed: {g_rate:,.0f} msg/s", flush=True)
                delays = latency(gw, port, "bench", args.rate, args.seconds)
            finally:
                gw.stop()
        finally:
            broker.terminate()
            broker.wait(timeout=10)
    result = {
        "broker_rate": round(b_rate, 1),
        "gateway_rate": round(g_rate, 1),
        "ratio": round(g_rate / b_rate, 3),
        "p50_ms": round(percentile(delays, 0.5) * 1000, 2),
        "p99_ms": round(percentile(delays, 0.99) * 1000, 2),
        "rss_mb": round(gw.peak_rss / 2**20, 1),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"ratio {result['ratio']:.2f}; publish->commit at {args.rate} msg/s: "
            f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms; "
            f"gateway peak RSS {result['rss_mb']} MB (load avg {os.getloadavg()[0]:.1f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
