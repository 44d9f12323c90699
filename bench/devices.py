"""Per-device memory benchmark: how much the gateway's RSS grows when many distinct device ids
publish once each.

    .venv/bin/python bench/devices.py [--devices 100000] [--mics 1000] [--rate 4000] [--json]
        [--max-devices N] [--idle-s S] [--runs 3]

Each run, on a Mosquitto of its own (free port, persistence off) and a ``python -m gateway``
with inference on and the default configuration otherwise (temp dir; ``--max-devices`` and
``--idle-s`` set the ``[devices]`` section when given):

1. warm-up: 200 sensor ids and 5 microphone ids publish, so lazy imports (numpy for audio), the
   models' first runs and the allocator's first arenas are paid before the first figure;
2. rss_before_mb: the gateway's VmRSS once settled (median of 5 samples over 1 s);
3. ``--mics`` microphone ids publish one 0.5 s audio frame each (at 100 frames/s: the audio
   callback queue holds 64 frames and drops the oldest), then ``--devices`` sensor ids one
   telemetry message each (temperature and humidity, both sensor-model inputs) at ``--rate``;
4. once the gateway acked every message (``acks`` on /metrics) and the inference engine's
   counters stand still: rss_after_mb, and per_device_bytes = growth / ids.

Also printed: what reached inference (readings, audio frames, items its queue dropped), the
``too_many_devices`` dead letters and the ``devices_tracked`` gauge where the gateway has them.
Figures depend on what else runs on the machine: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest import start_broker  # noqa: E402
from gateway.admin import fetch_health  # noqa: E402
from schemas.audio import encode_audio_frame  # noqa: E402
from schemas.telemetry import encode_telemetry  # noqa: E402

TS0 = 1764403200.0
TOPIC_ROOT = "bench"
HOMES = 10
WARM_SENSORS = 200
WARM_MICS = 5
FRAME_SAMPLES = 8000  # 0.5 s at 16 kHz, what the device simulators send
AUDIO_RATE = 100.0


class Publisher:
    """A paced paho publisher (QoS 1) that counts the broker's acks.

    Its network loop runs in the publishing thread (no ``loop_start``): with paho's own thread
    and a publishing thread, the publisher stopped reading the broker's PUBACKs now and then
    under load (paho 2.2; the gateway had acked everything it was sent)."""

    def __init__(self, port: int) -> None:
        self.sent = 0
        self.acked = 0
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-devices")
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port)
        while not self.client.is_connected():
            self.client.loop(0.1)

    def _on_publish(self, *_args: Any) -> None:
        self.acked += 1

    def paced(self, messages: list[tuple[str, bytes]], rate: float) -> None:
        started = time.monotonic()
        for i, (topic, payload) in enumerate(messages):
            ahead = started + i / rate - time.monotonic()
            self.client.loop(max(ahead, 0.0))
            self.client.publish(topic, payload, qos=1)
            self.sent += 1
        deadline = time.monotonic() + 300
        while self.acked < self.sent:
            if time.monotonic() > deadline:
                raise TimeoutError(f"broker acked {self.acked} of {self.sent}")
            self.client.loop(0.1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop(0.1)


def sensor_messages(first: int, count: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(first, first + count):
        topic = f"{TOPIC_ROOT}/h{i % HOMES}/lab/sensor-{i}/telemetry"
        out.append(
            (topic, encode_telemetry(TS0 + i * 1e-3, {"temperature": 21.5, "humidity": 40.0}))
        )
    return out


def mic_messages(first: int, count: int) -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(first)
    noise = (rng.standard_normal(FRAME_SAMPLES) * 300).astype(np.int16)
    return [
        (
            f"{TOPIC_ROOT}/h{i % HOMES}/lab/mic-{i}/audio",
            encode_audio_frame(TS0 + i * 1e-3, 0, noise),
        )
        for i in range(first, first + count)
    ]


class Gateway:
    """``python -m gateway`` with inference on, in `workdir`."""

    def __init__(self, workdir: Path, port: int, devices: dict[str, Any]) -> None:
        self.port_file = workdir / "admin.port"
        section = "".join(f"{k} = {v}\n" for k, v in devices.items())
        cfg = workdir / "gateway.toml"
        cfg.write_text(
            f'gateway_id = "bench"\n[mqtt]\nurl = "mqtt://127.0.0.1:{port}"\n'
            f'topic_root = "{TOPIC_ROOT}"\n[storage]\npath = "{workdir / "gateway.db"}"\n'
            f'[admin]\nport = 0\nport_file = "{self.port_file}"\n'
            + (f"[devices]\n{section}" if section else "")
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--config", str(cfg), "--log-level", "WARNING"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while fetch_health(self.port_file, timeout=1).get("mqtt_subscribed") is not True:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the gateway did not become healthy")
            time.sleep(0.1)

    def rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def settled_rss(self) -> int:
        samples = []
        for _ in range(5):
            samples.append(self.rss())
            time.sleep(0.2)
        return int(statistics.median(samples))

    def metrics(self) -> dict[str, float]:
        port = self.port_file.read_text().strip()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def inference(self) -> dict[str, Any]:
        return dict(fetch_health(self.port_file, timeout=5).get("inference", {}))

    def wait_processed(self, acks: int) -> None:
        """Until `acks` messages are acked and the engine's counters stood still for 1 s."""
        deadline = time.monotonic() + 600
        while self.metrics().get("homeedge_gateway_acks_total", 0) < acks:
            if time.monotonic() > deadline:
                raise TimeoutError("the gateway did not ack every message")
            time.sleep(0.2)
        last: tuple[Any, ...] = ()
        while True:
            inf = self.inference()
            now = (inf.get("readings"), inf.get("audio_frames"), inf.get("rows_written"))
            if now == last:
                return
            last = now
            time.sleep(1.0)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def one_run(args: argparse.Namespace) -> dict[str, Any]:
    devices: dict[str, Any] = {}
    if args.max_devices is not None:
        devices["max_devices"] = args.max_devices
    if args.idle_s is not None:
        devices["idle_s"] = args.idle_s
    with tempfile.TemporaryDirectory(prefix="homeedge-bench-devices-") as tmp:
        workdir = Path(tmp)
        broker, port = start_broker(workdir)
        try:
            gw = Gateway(workdir, port, devices)
            pub = Publisher(port)
            try:
                pub.paced(mic_messages(0, WARM_MICS), AUDIO_RATE)
                pub.paced(sensor_messages(0, WARM_SENSORS), args.rate)
                gw.wait_processed(pub.sent)
                before = gw.settled_rss()
                inf0 = gw.inference()
                pub.paced(mic_messages(WARM_MICS, args.mics), AUDIO_RATE)
                pub.paced(sensor_messages(WARM_SENSORS, args.devices), args.rate)
                gw.wait_processed(pub.sent)
                after = gw.settled_rss()
                inf1 = gw.inference()
                m = gw.metrics()
            finally:
                pub.close()
                gw.stop()
        finally:
            broker.terminate()
            broker.wait(timeout=10)
    ids = args.devices + args.mics
    return {
        "ids": ids,
        "rss_before_mb": round(before / 2**20, 1),
        "rss_after_mb": round(after / 2**20, 1),
        "growth_mb": round((after - before) / 2**20, 1),
        "per_device_bytes": round((after - before) / ids),
        "inference_readings": inf1.get("readings", 0) - inf0.get("readings", 0),
        "inference_audio_frames": inf1.get("audio_frames", 0) - inf0.get("audio_frames", 0),
        "inference_dropped": inf1.get("dropped", 0) - inf0.get("dropped", 0),
        "audio_queue_dropped": m.get('homeedge_gateway_queue_dropped_total{queue="audio"}', 0),
        "too_many_devices": m.get(
            'homeedge_gateway_dead_letters_total{reason="too_many_devices"}', 0
        ),
        "devices_tracked": m.get('homeedge_gateway_devices_tracked{kind="all"}'),
        "inference_sensors": m.get('homeedge_gateway_inference_streams{kind="sensor"}'),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=100_000, help="distinct sensor ids")
    parser.add_argument("--mics", type=int, default=1000, help="distinct microphone ids")
    parser.add_argument("--rate", type=float, default=4000.0, help="telemetry msg/s")
    parser.add_argument("--max-devices", type=int, default=None, help="[devices] max_devices")
    parser.add_argument("--idle-s", type=float, default=None, help="[devices] idle_s")
    parser.add_argument("--runs", type=int, default=1, help="runs; figures are their medians")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    runs = []
    for n in range(args.runs):
        runs.append(one_run(args))
        if not args.json:
            print(f"run {n + 1}: {json.dumps(runs[-1])}", flush=True)
    keys = ("rss_before_mb", "rss_after_mb", "growth_mb", "per_device_bytes")
    result = {**runs[-1], **{k: statistics.median(r[k] for r in runs) for k in keys}}
    result["runs"] = args.runs
    result["load_avg_1m"] = round(os.getloadavg()[0], 2)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['ids']:,} ids: RSS {result['rss_before_mb']} -> {result['rss_after_mb']} MB "
            f"(+{result['growth_mb']} MB, {result['per_device_bytes']} B per id; median of "
            f"{args.runs}); load avg {result['load_avg_1m']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
