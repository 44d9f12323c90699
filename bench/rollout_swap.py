"""Gateway side of a rollout: what a live model swap costs a running ``python -m gateway``.

    .venv/bin/python bench/rollout_swap.py [--json] [--swaps 3]

A real Mosquitto, a stand-in of the cloud's rollout endpoints over a real TUF repository
(`tests.updates_cloud`), and the gateway as a child process with every model loaded. A
microphone streams audio frames (0.25 s each, at 5x real time) the whole time; the cloud
releases `--swaps` bundles one after the other, each with the whole audio model set and the
sensor model. Per swap:

- ``swap_dropped_frames``: frames sent during the run (across every swap) that the engine
  did not process once it caught up (its queue's and the ingest callback queue's drops are
  shown apart);
- ``swap_rss_delta_mb``: the process's VmRSS (median of samples over 3 s) after the swap minus
  before it (the old sessions are released, the new ones stay), and
  ``swap_peak_rss_delta_mb``: VmHWM over the run minus the VmRSS before the first swap (both
  model sets resident while the new one warms up);
- ``apply_s``: from the release to the gateway's ``applied`` report (poll_s = 1, so up to a
  second of it is the poll interval).
RSS and apply figures are medians over the swaps. Keys match bench/rollout.py's (the cloud side).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest import start_broker  # noqa: E402
from devices.clips import CLIP_DIR, read_wav  # noqa: E402
from schemas.audio import encode_audio_frame  # noqa: E402
from schemas.topics import Kind, device_topic  # noqa: E402
from tests.updates_cloud import FakeCloud, TufRepo, make_bundle, model_files  # noqa: E402

AUDIO_MODELS = ["audio_embedding", "vad", "alarm", "keyword"]


def proc_status(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def healthz(port_file: Path) -> dict[str, Any]:
    port = int(port_file.read_text())
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
        body: dict[str, Any] = json.loads(resp.read())
        return body


def queue_drops(port_file: Path) -> float:
    port = int(port_file.read_text())
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("homeedge_gateway_queue_dropped_total{")
    )


async def run(swaps: int) -> dict[str, Any]:
    import aiomqtt

    tmp = Path(tempfile.mkdtemp(prefix="bench-swap-"))
    broker, port = start_broker(tmp)
    cloud = FakeCloud(TufRepo(tmp / "repo"))
    await cloud.start()
    root = tmp / "root.json"
    root.write_bytes(cloud.repo.root_json)
    port_file = tmp / "admin.port"
    config = tmp / "gw.toml"
    config.write_text(
        f'gateway_id = "bench-swap"\n[mqtt]\nurl = "mqtt://127.0.0.1:{port}"\n'
        f'topic_root = "bench"\n[storage]\npath = "{tmp / "gw.db"}"\n'
        f'[admin]\nport = 0\nport_file = "{port_file}"\n'
        f'[uplink]\nurl = "{cloud.url}"\ntoken = "{cloud.token}"\n'
        f'[updates]\nroot_file = "{root}"\npoll_s = 1\nreport_margin_s = 10\n'
        "[inference]\ndiscovery = false\n"
    )
    gw = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", "gateway", "--config", str(config), "--log-level", "WARNING"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pcm = read_wav(CLIP_DIR / "alarm_co_t4.wav")
    sent = 0
    stop = asyncio.Event()

    async def microphone() -> None:
        nonlocal sent
        topic = device_topic("home-1", "hall", "mic-1", Kind.AUDIO, root="bench")
        async with aiomqtt.Client("127.0.0.1", port, identifier="bench-swap-mic") as mic:
            while not stop.is_set():
                at = (sent * 4000) % (len(pcm) - 4000)
                frame = encode_audio_frame(1_767_225_600 + sent / 4, sent, pcm[at : at + 4000])
                await mic.publish(topic, frame, qos=1)
                sent += 1
                await asyncio.sleep(0.05)

    async def rss_median(seconds: float = 3.0) -> float:
        samples = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            samples.append(proc_status(gw.pid)["VmRSS"])
            await asyncio.sleep(0.1)
        return statistics.median(samples)

    async def processed_all(expected: int) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while True:
            body = await asyncio.to_thread(healthz, port_file)
            got = body["inference"]["audio_frames"] + body["inference"]["dropped"]
            if got + await asyncio.to_thread(queue_drops, port_file) >= expected:
                return body
            if time.monotonic() > deadline:
                return body
            await asyncio.sleep(0.2)

    figures: list[dict[str, float]] = []
    try:
        deadline = time.monotonic() + 90
        while not port_file.exists() or not (await asyncio.to_thread(healthz, port_file)).get(
            "mqtt_subscribed"
        ):
            if gw.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the gateway did not start")
            await asyncio.sleep(0.2)
        mic = asyncio.create_task(microphone())
        await asyncio.sleep(5)  # the audio path warm
        first_rss = await rss_median()
        for version in range(1, swaps + 1):
            before_rss = await rss_median()
            models = {
                name: model_files(name, version=f"bench-{version}")
                for name in [*AUDIO_MODELS, "sensor_anomaly"]
            }
            released = time.monotonic()
            cloud.release(version, make_bundle(version, models), soak_s=2.0)
            while "applied" not in cloud.states(version):
                if time.monotonic() > released + 60:
                    raise SystemExit(f"bundle {version} never applied: {cloud.states(version)}")
                await asyncio.sleep(0.02)
            apply_s = time.monotonic() - released
            while "healthy" not in cloud.states(version):
                if "failed" in cloud.states(version) or time.monotonic() > released + 90:
                    raise SystemExit(f"bundle {version}: {cloud.reports[-1]}")
                await asyncio.sleep(0.1)
            after_rss = await rss_median()
            figures.append({"rss_delta_mb": after_rss - before_rss, "apply_s": apply_s})
        peak = proc_status(gw.pid)["VmHWM"]
        stop.set()
        await mic
        # Every frame sent is processed, or dropped somewhere, once the engine caught up.
        final = await processed_all(sent)
        queue_dropped = await asyncio.to_thread(queue_drops, port_file)
        processed = final["inference"]["audio_frames"]
        engine_dropped = final["inference"]["dropped"]
        swaps_seen = final["inference"]["swaps"]
    finally:
        gw.terminate()
        try:
            gw.wait(30)
        except subprocess.TimeoutExpired:
            gw.kill()
        await cloud.stop()
        broker.terminate()
        broker.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    def med(key: str) -> float:
        return round(statistics.median(f[key] for f in figures), 3)

    return {
        "swaps": swaps_seen,
        # over the whole run (a stream across every swap): sent, not processed by the engine
        "swap_dropped_frames": sent - processed,
        "engine_dropped_frames": engine_dropped,
        "queue_dropped_frames": queue_dropped,
        "frames_sent": sent,
        "swap_rss_delta_mb": med("rss_delta_mb"),
        "swap_peak_rss_delta_mb": round(peak - first_rss, 1),
        "rss_before_mb": round(first_rss, 1),
        "apply_s": med("apply_s"),
        "per_swap": figures,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--swaps", type=int, default=3, help="bundles applied one after another")
    args = parser.parse_args()
    if shutil.which("mosquitto") is None:
        raise SystemExit("mosquitto is needed")
    out = asyncio.run(run(args.swaps))
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            if key != "per_swap":
                print(f"{key:28} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
