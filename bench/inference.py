"""Edge inference benchmark: model latency, audio cost, quality on held-out data, alarm e2e, RSS.

    .venv/bin/python bench/inference.py [--json] [--trials 60] [--regenerate] [--sensors-only]

- per model p50/p99 latency of one window, one thread, and per-row cost in a batch of 64;
- the audio pipeline's cost per second of audio (front end + embedding + heads, one mic);
- keyword false commands per hour of held-out household talk (> 2 h by held-out voices reading
  held-out sentences, training/talk_data.py; re-made, seeded, and cached in --talk-cache) through
  the serving stream and decision rule, and the keyword's CPU per utterance;
- VAD: music called speech (music alone) and speech recall on held-out talk
  (`training.vad_eval`, re-made; needs espeak-ng and sox);
- quality: audio figures from the held-out set (re-made with --regenerate, which needs
  espeak-ng and sox; otherwise read from gateway/models/audio_metrics.json); sensor anomaly
  event/window F1 and false alarms per device-day, beside a rolling median/MAD z-score baseline
  on the same windows (`sensor_anomaly_by_dataset`), and occupancy accuracy, on the device
  simulators' world (its injected faults and true occupancy) and on the held-out part of the
  UCI Occupancy subset bundled with river (when installed), at the default settings;
- end-to-end alarm latency: the frame completing a T3 pattern published to a real Mosquitto ->
  ingest subscriber -> engine -> event publisher -> the event received by a subscriber;
- RSS of a process with every model loaded (the keyword's speech embedding included), and of
  a whole ``python -m gateway`` process (ingest, writer, sync, admin, engine) after it heard
  keyword utterances and an alarm through a real Mosquitto (VmRSS and the VmHWM peak).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devices.clips import CLIP_DIR, read_wav  # noqa: E402
from gateway.admin import fetch_health  # noqa: E402
from gateway.inference.engine import InferenceEngine  # noqa: E402
from gateway.inference.runtime import ModelRuntime  # noqa: E402
from gateway.inference.settings import DEFAULT_MODELS_DIR, InferenceSettings  # noqa: E402
from gateway.inference.speech_embedding import KW_SAMPLES  # noqa: E402
from schemas.audio import AudioFrame  # noqa: E402

T0 = 1_767_225_600.0


async def discard(_: object) -> None:
    """The engine's `write` and `store` where a figure runs the models only (`_process`)."""


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def model_latency(n: int = 2000) -> dict[str, Any]:
    runtime = ModelRuntime.load(DEFAULT_MODELS_DIR, intra_op_threads=1)
    out = {}
    rng = np.random.default_rng(0)
    for name, model in sorted(runtime.models.items()):
        x1 = rng.standard_normal((1, model.manifest.n_features)).astype(np.float32)
        x64 = rng.standard_normal((64, model.manifest.n_features)).astype(np.float32)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            model.run(x1)
            times.append((time.perf_counter() - t) * 1e6)
        t = time.perf_counter()
        for _ in range(n // 20):
            model.run(x64)
        batch_us = (time.perf_counter() - t) * 1e6 / (n // 20) / 64
        out[name] = {
            "p50_us": round(pct(times, 50), 1),
            "p99_us": round(pct(times, 99), 1),
            "batched64_us_per_row": round(batch_us, 1),
        }
    return out


def audio_cost(seconds: float = 60.0, frame_s: float = 0.5, repeats: int = 5) -> dict[str, float]:
    """Steady-state cost of the whole audio pipeline (front end, embedding, endpointer, heads,
    speech embedding of every utterance) per second of the demo clips, on one thread.

    Each repeat is a fresh engine whose speech embedding has been loaded and run once before the
    clock starts (a one-off in service). The median over the repeats is the figure; the minimum
    and the thread's CPU time are beside it, since on a shared machine the spread is other
    work's."""
    clips = [read_wav(p) for p in sorted(CLIP_DIR.glob("*.wav"))]
    pcm = np.concatenate(clips * 20)[: int(seconds * 16000)]
    step = int(frame_s * 16000)

    def run(mics: int, length: int) -> float:
        engine = InferenceEngine.create(InferenceSettings(), write=discard, store=discard)
        engine._audio.speech.embed(np.zeros((1, KW_SAMPLES), np.float32))
        t, cpu = time.perf_counter(), time.thread_time()
        for i in range(0, length, step):
            frame = AudioFrame(T0 + i / 16000, i, 16000, pcm[i : i + step])
            engine._process([("audio", ("h", "r", f"mic-{k}", frame)) for k in range(mics)])
        elapsed, used = time.perf_counter() - t, time.thread_time() - cpu
        engine.close()
        per_s = 1000 / (length / 16000) / mics
        return elapsed * per_s, used * per_s

    single = [run(1, len(pcm)) for _ in range(repeats)]
    # Eight microphones in one batch: one frame-embedding call per round instead of eight (the
    # speech embedding still runs once per utterance).
    batched = [run(8, len(pcm) // 4) for _ in range(repeats)]
    return {
        "audio_ms_per_s": round(float(np.median([w for w, _ in single])), 3),
        "audio_ms_per_s_min": round(min(w for w, _ in single), 3),
        "audio_cpu_ms_per_s": round(float(np.median([c for _, c in single])), 3),
        "audio_ms_per_s_per_mic_8_batched": round(float(np.median([w for w, _ in batched])), 3),
    }


def audio_quality(regenerate: bool) -> dict[str, Any]:
    if regenerate:
        import onnxruntime as ort

        from training import audio_data, train_audio

        audio_data.require_tools()
        test = train_audio.make_clips("test", 1.0, 8)
        sessions = {
            n: ort.InferenceSession(
                str(DEFAULT_MODELS_DIR / f"{n}.onnx"), providers=["CPUExecutionProvider"]
            )
            for n in ("audio_embedding", "vad", "keyword", "alarm")
        }
        negatives = train_audio.make_clips("test", 1.0, 9, negatives=train_audio.NEGATIVE_CLIPS)
        threshold = json.loads((DEFAULT_MODELS_DIR / "alarm.json").read_text())["thresholds"]
        m = train_audio.evaluate(test + negatives, sessions, alarm_threshold=threshold["threshold"])
        m["source"] = "re-made held-out set"
        return m
    m = json.loads((DEFAULT_MODELS_DIR / "audio_metrics.json").read_text())
    m["source"] = "gateway/models/audio_metrics.json (training run's held-out set)"
    return m


def alarm_noise_keys() -> dict[str, Any]:
    """Alarm recall under household beds and the false-alarm bound, from the held-out part of
    bench/alarm_noise.py (its last run, committed as gateway/models/alarm_noise_metrics.json;
    re-run that script to re-measure: it takes ~20 min)."""
    path = DEFAULT_MODELS_DIR / "alarm_noise_metrics.json"
    if not path.exists():
        return {}
    m = json.loads(path.read_text())
    recall = m["after"]["recall"]
    neg = m.get("after_negatives_long", m["after"])  # the longest negative set measured
    return {
        "alarm_recall_brown_minus20db": recall["target/brown_-20db"]["recall"],
        "alarm_recall_pink_minus10db": recall["target/pink_-10db"]["recall"],
        "alarm_recall_noise_beds": recall["noise_beds/all"]["recall"],
        "false_alarm_upper_bound_per_hour": neg["false_alarm_upper_bound_per_hour"],
        "alarm_noise_negative_hours": round(sum(neg["long_form_hours"].values()), 2),
    }


def vad_quality() -> dict[str, Any]:
    """Music called speech and speech recall of the committed VAD on held-out clips
    (`training.vad_eval`: the generator's music alone, held-out talk over six beds), re-made;
    without espeak-ng / sox, the figures last written to gateway/models/vad_metrics.json."""
    path = DEFAULT_MODELS_DIR / "vad_metrics.json"
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        m = json.loads(path.read_text()) if path.exists() else {}
        m["source"] = "gateway/models/vad_metrics.json (espeak-ng / sox missing)"
        return m
    from training import vad_eval

    m = vad_eval.evaluate(DEFAULT_MODELS_DIR)
    m["source"] = "re-made held-out clips, committed VAD"
    return m


def keyword_talk_quality(cache: Path | None, minutes: int | None = None) -> dict[str, Any]:
    """False commands per hour of the held-out talk (training/talk_data.py: held-out voices and
    sentences, seeded as in the training run, cached in `cache`) through the serving stream and
    decision rule with the committed keyword model, and the keyword's cost per utterance (speech
    embedding + head, one thread, median). Without espeak-ng / sox: the training run's figures
    from gateway/models/keyword_metrics.json."""
    metrics_file = DEFAULT_MODELS_DIR / "keyword_metrics.json"
    stored = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        talk = dict(stored.get("held_out_talk", {}))
        talk["source"] = "gateway/models/keyword_metrics.json (espeak-ng / sox missing)"
        return talk
    import onnxruntime as ort

    from gateway.inference.speech_embedding import SpeechEmbedder
    from training import train_keyword

    threshold = json.loads((DEFAULT_MODELS_DIR / "keyword.json").read_text())["thresholds"]
    session = ort.InferenceSession(
        str(DEFAULT_MODELS_DIR / "keyword.onnx"), providers=["CPUExecutionProvider"]
    )
    speech = SpeechEmbedder(intra_op_threads=1)
    seed = int(stored.get("seed", train_keyword.DEFAULT_SEED))
    clips = train_keyword.held_out_talk(seed, cache, minutes or train_keyword.TEST_TALK)
    talk = train_keyword.talk_figures(train_keyword.talk_rows(clips, speech), session, threshold)
    windows = [h for c in clips[:20] for h in train_keyword.keyword_inputs(c.audio)][:100]
    costs = []
    for h in windows:
        assert h.audio is not None
        t = time.perf_counter()
        row = train_keyword.rows(speech, [h.audio], [float(h.features[0])])
        train_keyword.probabilities(session, row)
        costs.append((time.perf_counter() - t) * 1000)
    talk["keyword_ms_per_utterance"] = round(float(np.median(costs)), 2) if costs else None
    talk["source"] = f"re-made held-out talk (seed {seed}), committed keyword model"
    return talk


def sensor_quality(days: int = 3, homes: int = 2) -> dict[str, Any]:
    """The shipped anomaly model and the rolling median/MAD z-score baseline (last 24 h, |z| > 4)
    on the same windows, at the gateway's default settings: the simulators' world (seed 5, never
    used in training, with swaps and dropouts added) and the real UCI Occupancy rows' held-out
    part (faults injected after day 3 by seeds 100..119)."""
    from devices.world import World
    from training.sensor_eval import event_scores, mad_baseline, model_flag, windows
    from training.train_sensors import with_extra

    runtime = ModelRuntime.load(DEFAULT_MODELS_DIR)
    anomaly, occ = runtime.models["sensor_anomaly"], runtime.models["occupancy"]
    world = World(homes=homes, seed=5, anomaly_rate=1.0)
    readings, spans = [], []
    for em in world.run(start=T0, step=60.0, steps=int(days * 1440)):
        home, room, device = em.spec.home, em.spec.room, em.spec.device
        for t in em.truth:
            if t.metric != "audio":
                spans.append((f"{home}/{device}", t.metric, t.start, t.end, t.kind))
        if em.readings:
            readings += [(f"{home}/{device}", room, em.ts, m, v) for m, v in em.readings.items()]
    readings, spans = with_extra(readings, spans, 5)
    faults = [(d, s, e) for d, _m, s, e, _k in spans]
    settings = InferenceSettings()
    thresholds = anomaly.manifest.thresholds
    flag = model_flag(lambda x: anomaly.probabilities(x)[:, 1], thresholds)
    scored = list(
        windows(
            readings,
            window_s=settings.sensor_window_s,
            baseline_hours=settings.baseline_hours,
            warmup_hours=settings.warmup_hours,
            relearn_hours=settings.relearn_hours,
            is_anomalous=flag,
        )
    )
    out: dict[str, Any] = {
        "world": event_scores(scored, faults),
        "world_mad_baseline": event_scores(mad_baseline(scored), faults),
    }
    ok = n = 0
    for w in scored:
        if w.occupancy is None:
            continue
        home = w.device.split("/")[0]
        truth = world.household(home).occupants(w.room, (w.window.start + w.window.end) / 2) > 0
        ok += int((occ.probabilities(w.occupancy[None, :])[0, 1] >= 0.5) == truth)
        n += 1
    out["world"]["occupancy_accuracy"] = ok / max(n, 1)
    out["world"]["days"], out["world"]["homes"] = days, homes
    try:
        from training.train_sensors import uci_heldout

        out["uci_river_injected"] = uci_heldout(flag)
    except ImportError:
        out["uci_river_injected"] = "river not installed (train extra)"
    return out


def sensor_state_cost(window_s: float = 300.0) -> dict[str, Any]:
    """One air-quality device (temperature, humidity, CO2, light) after 25 h of windows: its
    learned state's snapshot bytes, the Python heap it holds (tracemalloc, in a first pass), and
    the median wall time of scoring inputs + learning one window (no ONNX call; a second pass,
    untraced)."""
    import math
    import tracemalloc

    from gateway.inference.sensors import SensorStream

    n = int(25 * 3600 / window_s)

    def feed(costs: list[float] | None) -> SensorStream:
        stream = SensorStream(window_s)
        for i in range(n):
            t = T0 + i * window_s
            for k, m in enumerate(("temperature", "humidity", "co2", "light")):
                stream.add(m, t + 1.0, 20.0 + 10 * k + math.sin(i / 7.0 + k))
            w = stream.flush()
            assert w is not None
            t0 = time.perf_counter()
            ready = stream.ready(w)
            if ready:
                stream.anomaly_features(w)
            stream.commit(w)
            if ready and costs is not None:
                costs.append(time.perf_counter() - t0)
        return stream

    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    stream = feed(None)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    heap = sum(d.size_diff for d in after.compare_to(before, "filename"))
    costs: list[float] = []
    feed(costs)
    return {
        "snapshot_bytes": len(stream.snapshot()),
        "heap_bytes": heap,
        "us_per_window_median": round(float(np.median(costs)) * 1e6, 1),
        "note": "wall time of a scored window's inputs and learning (the last hour of the 25), "
        "no ONNX call",
        "metrics": 4,
        "window_s": window_s,
    }


def sensor_keys(sq: dict[str, Any]) -> dict[str, Any]:
    """Per data set: the model's and the MAD baseline's figures (held-out data only)."""
    warmup = InferenceSettings().warmup_hours

    def keys(model: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
        return {
            "anomaly_event_f1": model["f1"],
            "anomaly_false_alarms_per_device_day": model["false_alarms_per_device_day"],
            "anomaly_window_f1": model["window_f1"],
            "anomaly_level_changes": model["level_changes"],
            "baseline_event_f1": base["f1"],
            "baseline_false_alarms_per_device_day": base["false_alarms_per_device_day"],
            "baseline_window_f1": base["window_f1"],
            "faults": model["faults"],
            "device_days": model["device_days"],
            "warmup_hours": warmup,
        }

    out = {"world_seed5": keys(sq["world"], sq["world_mad_baseline"])}
    uci = sq["uci_river_injected"]
    if isinstance(uci, dict):
        out["uci_river_heldout"] = keys(uci["model"], uci["mad_baseline"])
    synth = json.loads((DEFAULT_MODELS_DIR / "sensor_metrics.json").read_text())
    out["synthetic_heldout (training run)"] = keys(
        synth["synthetic_heldout"], synth["synthetic_heldout_mad_baseline"]
    )
    return out


def start_broker(purpose: str) -> tuple[Path, int, subprocess.Popen[bytes]]:
    """A Mosquitto of our own on a free loopback port (bench/ingest.py's: persistence off,
    1,000 messages in flight, ready once it listens), with its temporary directory."""
    from bench.ingest import start_broker as start_mosquitto

    if shutil.which("mosquitto") is None:
        raise SystemExit(f"mosquitto is needed for {purpose}")
    tmp = Path(tempfile.mkdtemp())
    broker, port = start_mosquitto(tmp)
    return tmp, port, broker


async def alarm_e2e(trials: int, frame_s: float = 0.5) -> list[float]:
    """Per trial, a fresh microphone plays a T3 clip up to the frame that completes the first
    pattern; after a pause, that frame is published and timed until the alarm event arrives,
    through the real gateway (ingest, writer, callbacks, engine, event publisher)."""
    import aiomqtt

    from gateway.app import create_gateway
    from gateway.config import load_config
    from schemas.audio import encode_audio_frame
    from schemas.topics import Kind, device_topic, gateway_events_topic

    tmp, port, broker = start_broker("the end-to-end figure")
    await asyncio.sleep(0.5)
    root = "bench"
    frame = int(frame_s * 16000)
    pcm = read_wav(CLIP_DIR / "alarm_smoke_t3.wav")
    # The frame that completes the first pattern: where a fresh engine first fires.
    probe = InferenceEngine.create(InferenceSettings(), write=discard, store=discard)
    trigger = next(
        i
        for i in range(0, len(pcm), frame)
        if any(
            r.model == "alarm"
            for r in probe._process(
                [
                    (
                        "audio",
                        ("h", "k", "m", AudioFrame(T0 + i / 16000, i, 16000, pcm[i : i + frame])),
                    )
                ]
            )
        )
    )
    probe.close()
    (tmp / "gw.toml").write_text(
        f'gateway_id = "bench"\n[mqtt]\nurl = "mqtt://127.0.0.1:{port}"\n'
        f'topic_root = "{root}"\n[storage]\npath = "{tmp / "gw.db"}"\n[admin]\nport = 0\n'
    )
    config = load_config(tmp / "gw.toml")
    gw = create_gateway(config)
    latencies: list[float] = []
    try:
        async with gw:
            await asyncio.to_thread(gw.mqtt.subscribed.wait, 20)
            async with (
                aiomqtt.Client("127.0.0.1", port, identifier="bench-listener") as listener,
                aiomqtt.Client("127.0.0.1", port, identifier="bench-mic") as mic,
            ):
                await listener.subscribe(gateway_events_topic("home-1", "alarm", root=root), qos=1)
                for k in range(trials):
                    topic = device_topic(
                        "home-1", "kitchen", f"microphone-{k}", Kind.AUDIO, root=root
                    )
                    for i in range(0, trigger, frame):
                        payload = encode_audio_frame(T0 + i / 16000, i // frame, pcm[i : i + frame])
                        await mic.publish(topic, payload, qos=1)
                    await asyncio.sleep(0.5)
                    last = encode_audio_frame(
                        T0 + trigger / 16000, trigger // frame, pcm[trigger : trigger + frame]
                    )
                    t = time.perf_counter()
                    await mic.publish(topic, last, qos=1)
                    await asyncio.wait_for(anext(listener.messages), 10)
                    latencies.append((time.perf_counter() - t) * 1000)
    finally:
        broker.terminate()
        broker.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return latencies


async def gateway_process_rss(utterances: int = 4, uplink: bool = False) -> dict[str, float]:
    """``python -m gateway`` (every section, inference on) as a child process: a microphone
    plays keyword clips and the T3 clip through a real Mosquitto; once the gateway has stored
    their inferences, its VmRSS and VmHWM (peak) are read from /proc.

    Without `uplink` the ``[uplink]`` URL is empty (batches wait in the outbox), as in a
    local-only install; with it the uplink task runs against a closed local port (it retries
    with backoff), which adds its HTTP client (aiohttp) to the process."""
    import sqlite3

    import aiomqtt

    from schemas.audio import encode_audio_frame
    from schemas.topics import Kind, device_topic

    tmp, port, broker = start_broker("the gateway process figure")
    port_file, db = tmp / "admin.port", tmp / "gw.db"
    (tmp / "gw.toml").write_text(
        f'gateway_id = "bench-rss"\n[mqtt]\nurl = "mqtt://127.0.0.1:{port}"\n'
        f'topic_root = "bench"\n[storage]\npath = "{db}"\n'
        f'[admin]\nport = 0\nport_file = "{port_file}"\n'
        + ('[uplink]\nurl = "http://127.0.0.1:9"\ntoken = "bench"\n' if uplink else "")
    )
    gw = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", "gateway", "--config", str(tmp / "gw.toml")],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def stored(model: str) -> int:
        if not db.exists():
            return 0
        with sqlite3.connect(db) as con:
            try:
                sql = "SELECT count(*) FROM inferences WHERE model = ?"
                return int(con.execute(sql, (model,)).fetchone()[0])
            except sqlite3.OperationalError:
                return 0

    def status() -> dict[str, float]:
        fields = {}
        for line in Path(f"/proc/{gw.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = round(int(value.split()[0]) / 1024, 1)
        return fields

    try:
        deadline = time.monotonic() + 60
        while fetch_health(port_file).get("mqtt_subscribed") is not True:
            if gw.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the gateway did not become healthy")
            await asyncio.sleep(0.1)
        idle = status()
        clips = [f"keyword_{k}_0.wav" for k in ("lights_on", "lights_off", "stop")]
        plays = [clips[i % len(clips)] for i in range(utterances)] + ["alarm_smoke_t3.wav"]
        async with aiomqtt.Client("127.0.0.1", port, identifier="bench-rss-mic") as mic:
            topic = device_topic("home-1", "kitchen", "microphone-1", Kind.AUDIO, root="bench")
            seq, ts = 0, T0
            for name in plays:
                pcm = read_wav(CLIP_DIR / name)
                for i in range(0, len(pcm), 8000):
                    await mic.publish(topic, encode_audio_frame(ts, seq, pcm[i : i + 8000]), qos=1)
                    seq, ts = seq + 1, ts + 0.5
                    await asyncio.sleep(0.02)
        deadline = time.monotonic() + 60
        while stored("alarm") < 1 or stored("keyword") < utterances:
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"stored {stored('keyword')} keyword and {stored('alarm')} alarm inferences"
                )
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        after = status()
        return {
            "idle_rss_mb": idle["VmRSS"],
            "rss_mb": after["VmRSS"],
            "peak_rss_mb": after["VmHWM"],
            "keyword_inferences": stored("keyword"),
        }
    finally:
        gw.terminate()
        gw.wait(30)
        broker.terminate()
        broker.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def rss_mb() -> float:
    """RSS once every model has run a few times, as in service: onnxruntime plans a memory
    pattern from a shape's second run on, so one run of the speech embedding (the lazily loaded
    keyword front end) left out what the second utterance adds."""
    code = (
        "import psutil, gc\n"
        "from gateway.inference.engine import InferenceEngine\n"
        "from gateway.inference.settings import InferenceSettings\n"
        "async def discard(_): pass\n"
        "e = InferenceEngine.create(InferenceSettings(), write=discard, store=discard)\n"
        "assert not e.runtime.errors\n"
        "import numpy as np\n"
        "for _ in range(3):\n"
        "    e._audio.speech.embed(np.zeros((1, 32000), np.float32))\n"
        "    for m in e.runtime.models.values():\n"
        "        m.run(np.zeros((1, m.manifest.n_features), np.float32))\n"
        "gc.collect(); print(psutil.Process().memory_info().rss / 2**20)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return round(float(out.stdout.strip()), 1)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--trials", type=int, default=60, help="alarm end-to-end trials")
    parser.add_argument(
        "--regenerate", action="store_true", help="re-make the held-out audio (espeak-ng, sox)"
    )
    parser.add_argument(
        "--talk-cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "homeedge-keyword-talk",
        help="where the held-out talk (> 2 h, seeded) is cached between runs",
    )
    parser.add_argument(
        "--sensors-only",
        action="store_true",
        help="only the sensor anomaly figures (sensor_anomaly_by_dataset, the state per device)",
    )
    args = parser.parse_args()
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    if args.sensors_only:
        log("sensor quality (simulators' world, UCI) ...")
        sq = sensor_quality()
        only = {
            "sensor_anomaly_by_dataset": sensor_keys(sq),
            "sensor_state_per_device": sensor_state_cost(),
            "sensor_quality": sq,
        }
        print(json.dumps(only) if args.json else json.dumps(only, indent=1))
        return 0
    log("model latency ...")
    latency = model_latency()
    log("audio cost ...")
    cost = audio_cost()
    log("audio quality ...")
    aq = audio_quality(args.regenerate)
    log("keyword false commands on held-out talk ...")
    kq = keyword_talk_quality(args.talk_cache)
    log("VAD on held-out music and talk ...")
    vq = vad_quality()
    log("sensor quality (simulators' world, UCI) ...")
    sq = sensor_quality()
    log("alarm end to end ...")
    e2e = asyncio.run(alarm_e2e(args.trials))
    rss = rss_mb()
    log("gateway process RSS ...")
    gw_rss = asyncio.run(gateway_process_rss())
    log("gateway process RSS with the uplink on ...")
    gw_rss_uplink = asyncio.run(gateway_process_rss(uplink=True))
    result = {
        "audio_ms_per_s": cost["audio_ms_per_s"],
        "audio_ms_per_s_min": cost["audio_ms_per_s_min"],
        "audio_cpu_ms_per_s": cost["audio_cpu_ms_per_s"],
        "audio_ms_per_s_per_mic_8_batched": cost["audio_ms_per_s_per_mic_8_batched"],
        "audio_real_time_factor": round(cost["audio_ms_per_s"] / 1000, 5),
        "alarm_e2e_p50_ms": round(pct(e2e, 50), 2),
        "alarm_e2e_p99_ms": round(pct(e2e, 99), 2),
        "alarm_e2e_trials": len(e2e),
        "keyword_accuracy": aq["keyword_accuracy"],
        "false_commands_per_hour_talk": kq.get("false_commands_per_hour_talk"),
        "talk_hours": kq.get("talk_hours"),
        "keyword_ms_per_utterance": kq.get("keyword_ms_per_utterance"),
        "keyword_talk": kq,
        "alarm_recall": aq["alarm_recall"],
        "false_alarms_per_hour": aq["false_alarms_per_hour"],
        "vad_accuracy": aq["vad_accuracy"],
        "vad_music_as_speech": vq.get("vad_music_as_speech"),
        "vad_speech_recall": vq.get("vad_speech_recall"),
        "vad_heldout": vq,
        "alarm_negative_hours": aq["negative_hours"],
        **alarm_noise_keys(),
        "anomaly_f1": sq["world"]["f1"],
        "anomaly_f1_uci_river": (
            sq["uci_river_injected"]["model"]["f1"]
            if isinstance(sq["uci_river_injected"], dict)
            else None
        ),
        "anomaly_f1_synthetic_heldout": json.loads(
            (DEFAULT_MODELS_DIR / "sensor_metrics.json").read_text()
        )["synthetic_heldout"]["f1"],
        "occupancy_accuracy": sq["world"]["occupancy_accuracy"],
        "sensor_anomaly_by_dataset": sensor_keys(sq),
        "sensor_state_per_device": sensor_state_cost(),
        "rss_mb": rss,
        "gateway_process_rss_mb": gw_rss["rss_mb"],
        "gateway_process_peak_rss_mb": gw_rss["peak_rss_mb"],
        "gateway_process": gw_rss,
        "gateway_process_rss_mb_with_uplink": gw_rss_uplink["rss_mb"],
        "gateway_process_with_uplink": gw_rss_uplink,
        "model_latency": latency,
        "audio_quality": aq,
        "sensor_quality": sq,
        "e2e_path": "mic publish (0.5 s frames, QoS 1) -> mosquitto -> gateway (ingest, writer "
        "commit, audio callback, engine) -> event publisher -> mosquitto -> subscriber",
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
