"""Footprint benchmark of a gateway install: venv size, start-up time and whole-process memory.

    .venv/bin/python bench/startup.py [--runs 5] [--rate 1000] [--seconds 30] [--no-venvs]
        [--legs startup,off,models] [--json]

1. venv_mb_gateway / venv_mb_full: ``du -sm`` of a fresh virtual environment (``python -m venv``
   in a temporary directory) holding ``pip install <repo>[gateway]``, and one holding every
   runtime role, ``<repo>[gateway,cloud,devices]`` (what a plain ``pip install`` pulled before the
   extras: scikit-learn, SciPy, plotly, alembic, asyncpg...). pip resolves from the configured
   index, as any install does; `--no-venvs` skips this part (a minute or two each).
2. startup_s_median: seconds from ``python -m gateway`` being started (just before the fork) to
   its ``/healthz`` saying ``"mqtt_subscribed": true`` (the broker granted the subscriptions),
   polled every 5 ms, on a fresh data directory each run (schema created), median of `--runs`;
   with the default configuration (inference on: every model session is created at start) and
   with ``[inference] enabled = false`` (startup_s_median_inference_off).
3. rss_mb_inference_off / rss_mb_all_models_uplink (+ ``_peak``): the whole gateway process
   under a modest load: `--rate` telemetry messages per second (QoS 1; 50 devices, three metrics
   each: temperature, humidity, CO2) for `--seconds`. "steady" is the median VmRSS sampled
   every 0.5 s over the stream's last third, "peak" the kernel's VmHWM at the end. The second
   run has inference on and first plays keyword clips and a T3 smoke alarm on a microphone until
   their inferences are stored (so the lazily loaded speech embedding is in too: every model),
   and uploads to a real ``python -m cloud`` (SQLite) with 10 s windows sent as they close, so
   the uplink really posts batches. Both check that every reading sent was committed.

`--legs` picks which of the gateway runs happen (default all three: ``startup`` for 2,
``off`` and ``models`` for the two runs of 3), e.g. ``--no-venvs --legs models`` for the memory
with every model and the uplink alone.

Each gateway runs on a Mosquitto of the bench's own (bench/ingest.py's). Figures depend on
what else runs on the machine: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as paho  # noqa: E402

from bench.ingest import fixed5, start_broker  # noqa: E402
from devices.clips import CLIP_DIR, read_wav  # noqa: E402
from gateway.admin import fetch_health  # noqa: E402
from schemas.audio import encode_audio_frame  # noqa: E402
from schemas.topics import Kind, device_topic  # noqa: E402

ROOT_TOPIC = "bench"
GATEWAY_ID = "bench-startup"
TOKEN = "bench-startup-token"
DEVICES = 50


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def venv_mb(extras: str) -> float:
    """Size of a fresh venv with ``pip install <repo>[extras]`` (du -sm, MB)."""
    with tempfile.TemporaryDirectory(prefix="homeedge-venv-") as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        # Installed from a copy: pip builds the wheel in the source tree's build/ otherwise.
        src = Path(tmp) / "src"
        shutil.copytree(
            ROOT,
            src,
            ignore=shutil.ignore_patterns(
                ".venv", ".git", "*.egg-info", "build", "demo-data", "__pycache__", ".*_cache"
            ),
        )
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{src}[{extras}]"],
            check=True,
        )
        out = subprocess.run(
            ["du", "-sm", str(venv)], check=True, capture_output=True, text=True
        ).stdout
        return float(out.split()[0])


def gateway_config(
    workdir: Path, port: int, *, inference: bool, cloud_port: int | None = None
) -> Path:
    cfg = workdir / "gateway.toml"
    text = (
        f'gateway_id = "{GATEWAY_ID}"\n[mqtt]\nurl = "mqtt://127.0.0.1:{port}"\n'
        f'topic_root = "{ROOT_TOPIC}"\n[storage]\npath = "{workdir / "gateway.db"}"\n'
        f'[admin]\nport = 0\nport_file = "{workdir / "admin.port"}"\n'
        f"[inference]\nenabled = {'true' if inference else 'false'}\n"
        # Windows short enough to close (and upload) within the stream.
        "[aggregation]\nwindow_s = 10\ngrace_s = 2\ninterval_s = 2\nwindows_per_batch = 1\n"
    )
    if cloud_port is not None:
        text += f'[uplink]\nurl = "http://127.0.0.1:{cloud_port}"\ntoken = "{TOKEN}"\n'
    cfg.write_text(text, encoding="utf-8")
    return cfg


def start_gateway(cfg: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "--config", str(cfg), "--log-level", "WARNING"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )


def wait_subscribed(proc: subprocess.Popen[bytes], port_file: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while fetch_health(port_file, timeout=1).get("mqtt_subscribed") is not True:
        if proc.poll() is not None:
            raise SystemExit(f"the gateway exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit("the gateway did not subscribe")
        time.sleep(0.005)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def startup_seconds(port: int, *, inference: bool, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="homeedge-startup-") as tmp:
            workdir = Path(tmp)
            cfg = gateway_config(workdir, port, inference=inference)
            started = time.perf_counter()
            proc = start_gateway(cfg)
            try:
                wait_subscribed(proc, workdir / "admin.port")
                times.append(time.perf_counter() - started)
            finally:
                stop(proc)
    return times


def proc_status(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def count(db: Path, sql: str, *args: object) -> int:
    with sqlite3.connect(db, timeout=10) as con:
        try:
            return int(con.execute(sql, args).fetchone()[0])
        except sqlite3.OperationalError:
            return 0


def mqtt_client(port: int, name: str) -> paho.Client:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=name)
    client.max_inflight_messages_set(100)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def play_clips(port: int, db: Path, utterances: int = 4) -> None:
    """Keyword utterances and a T3 smoke alarm on one microphone, until their inferences are
    stored: every model, the lazily loaded speech embedding included, has run."""
    client = mqtt_client(port, "bench-startup-mic")
    topic = device_topic("home-1", "kitchen", "microphone-1", Kind.AUDIO, root=ROOT_TOPIC)
    clips = [f"keyword_{k}_0.wav" for k in ("lights_on", "lights_off", "stop")]
    plays = [clips[i % len(clips)] for i in range(utterances)] + ["alarm_smoke_t3.wav"]
    seq, ts = 0, time.time() - 600
    try:
        for name in plays:
            pcm = read_wav(CLIP_DIR / name)
            for i in range(0, len(pcm), 8000):
                client.publish(topic, encode_audio_frame(ts, seq, pcm[i : i + 8000]), qos=1)
                seq, ts = seq + 1, ts + 0.5
                time.sleep(0.02)
    finally:
        client.loop_stop()
        client.disconnect()
    sql = "SELECT count(*) FROM inferences WHERE model = ?"
    deadline = time.monotonic() + 60
    while count(db, sql, "alarm") < 1 or count(db, sql, "keyword") < utterances:
        if time.monotonic() > deadline:
            raise SystemExit(
                f"stored {count(db, sql, 'keyword')} keyword, {count(db, sql, 'alarm')} alarm "
                "inferences"
            )
        time.sleep(0.2)


def stream(port: int, db: Path, pid: int, rate: int, seconds: float) -> tuple[list[float], int]:
    """`rate` messages/s over `DEVICES` devices for `seconds`; VmRSS samples (MB) of the last
    third, and the readings sent. Waits until all of them are committed."""
    base = count(db, "SELECT count(*) FROM readings")
    client = mqtt_client(port, "bench-startup-devices")
    topics = [
        device_topic(f"home-{d % 5}", f"room-{d % 10}", f"air-{d}", Kind.TELEMETRY, root=ROOT_TOPIC)
        for d in range(DEVICES)
    ]
    rng = random.Random(17)
    samples: list[float] = []
    total = int(rate * seconds)
    tick = 0.01
    per_tick = max(1, round(rate * tick))
    last_units = [0] * DEVICES
    started = time.monotonic()
    next_sample = started
    sent = 0
    try:
        while sent < total:
            pause = started + (sent // per_tick) * tick - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            units = int(time.time() * 100_000)
            for _ in range(min(per_tick, total - sent)):
                d = sent % DEVICES
                # ts in 10 us units, strictly increasing per device (readings are unique per
                # device, metric and ts).
                last_units[d] = max(units, last_units[d] + 1)
                payload = (
                    f'{{"ts":{fixed5(last_units[d])},"seq":{sent // DEVICES},"readings":'
                    f'{{"temperature":{21 + rng.gauss(0, 0.2):.2f},'
                    f'"humidity":{45 + rng.gauss(0, 1):.1f},"co2":{600 + rng.gauss(0, 20):.0f}}}}}'
                )
                client.publish(topics[d], payload, qos=1)
                sent += 1
            now = time.monotonic()
            if now >= next_sample:
                next_sample = now + 0.5
                if now - started >= seconds * 2 / 3:
                    samples.append(proc_status(pid)["VmRSS"])
    finally:
        client.loop_stop()
        client.disconnect()
    want = base + 3 * total
    deadline = time.monotonic() + 120
    while (got := count(db, "SELECT count(*) FROM readings")) < want:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {got - base} of {3 * total} readings were committed")
        time.sleep(0.2)
    return samples, 3 * total


def start_cloud(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port_file = workdir / "cloud.port"
    cfg = workdir / "cloud.toml"
    cfg.write_text(
        f'database_url = "sqlite+aiosqlite:///{workdir / "cloud.db"}"\nport = 0\n'
        f'port_file = "{port_file}"\nworkers = 1\nread_token = "bench-startup-read-token"\n'
        'analytics_interval_s = 0\nlog_level = "WARNING"\n'
        f'[gateways]\n"{GATEWAY_ID}" = "{TOKEN}"\n',
        encoding="utf-8",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloud", "--config", str(cfg)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not port_file.exists() or not port_file.read_text().strip():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the cloud process did not start")
        time.sleep(0.05)
    return proc, int(port_file.read_text())


def rss_run(port: int, *, all_models: bool, rate: int, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="homeedge-rss-") as tmp:
        workdir = Path(tmp)
        cloud: subprocess.Popen[bytes] | None = None
        cloud_port = None
        if all_models:
            cloud, cloud_port = start_cloud(workdir)
        try:
            cfg = gateway_config(workdir, port, inference=all_models, cloud_port=cloud_port)
            proc = start_gateway(cfg)
            db = workdir / "gateway.db"
            try:
                wait_subscribed(proc, workdir / "admin.port")
                idle = proc_status(proc.pid)["VmRSS"]
                if all_models:
                    play_clips(port, db)
                samples, readings = stream(port, db, proc.pid, rate, seconds)
                result: dict[str, Any] = {
                    "idle_mb": round(idle, 1),
                    "steady_mb": round(statistics.median(samples), 1),
                    "peak_mb": round(proc_status(proc.pid)["VmHWM"], 1),
                    "readings": readings,
                }
                if all_models:
                    sql = "SELECT count(*) FROM outbox WHERE status = 'sent'"
                    result["batches_uploaded"] = count(db, sql)
                    result["inference_rows"] = count(db, "SELECT count(*) FROM inferences")
            finally:
                stop(proc)
        finally:
            if cloud is not None:
                stop(cloud)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="start-ups to take the median of")
    parser.add_argument("--rate", type=int, default=1000, help="telemetry msg/s of the RSS runs")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each RSS run")
    parser.add_argument("--no-venvs", action="store_true", help="skip the venv sizes")
    parser.add_argument(
        "--legs",
        default="startup,off,models",
        help="comma-separated gateway runs: startup, off (RSS inference off), models (RSS with "
        "every model and the uplink)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    legs = {leg.strip() for leg in args.legs.split(",") if leg.strip()}
    if not legs or legs - {"startup", "off", "models"}:
        parser.error(f"--legs: choose from startup, off, models (got {args.legs!r})")
    result: dict[str, Any] = {}
    if not args.no_venvs:
        log("venv with homeedge[gateway] ...")
        result["venv_mb_gateway"] = venv_mb("gateway")
        log("venv with homeedge[gateway,cloud,devices] ...")
        result["venv_mb_full"] = venv_mb("gateway,cloud,devices")
    with tempfile.TemporaryDirectory(prefix="homeedge-broker-") as tmp:
        broker, port = start_broker(Path(tmp))
        try:
            if "startup" in legs:
                log("start-up to subscribed ...")
                on = startup_seconds(port, inference=True, runs=args.runs)
                off = startup_seconds(port, inference=False, runs=args.runs)
                result["startup_s_median"] = round(statistics.median(on), 3)
                result["startup_s_median_inference_off"] = round(statistics.median(off), 3)
                result["startup_s_runs"] = [round(t, 3) for t in on]
            if "off" in legs:
                log("RSS, inference off ...")
                off_rss = rss_run(port, all_models=False, rate=args.rate, seconds=args.seconds)
                result["rss_mb_inference_off"] = off_rss["steady_mb"]
                result["rss_mb_inference_off_peak"] = off_rss["peak_mb"]
                result["rss_inference_off"] = off_rss
            if "models" in legs:
                log("RSS, every model loaded, uplink on ...")
                on_rss = rss_run(port, all_models=True, rate=args.rate, seconds=args.seconds)
                result["rss_mb_all_models_uplink"] = on_rss["steady_mb"]
                result["rss_mb_all_models_uplink_peak"] = on_rss["peak_mb"]
                result["rss_all_models_uplink"] = on_rss
        finally:
            broker.terminate()
            broker.wait(timeout=10)
    result["loadavg"] = os.getloadavg()
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
