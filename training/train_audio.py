"""Train the audio models: shared embedding (PCA of log-mel context) + VAD and alarm heads (the
keyword head has its own script, training/train_keyword.py; its figures here are the committed
model's).

    nice -n 15 .venv/bin/python -m training.train_audio [--scale 1.0] [--cache D]

Seeded end to end. Writes gateway/models/{audio_embedding,vad,alarm}.onnx with their
manifests and model cards, and the demo clip set in devices/clips/. Needs the ``train`` extra
and the ``espeak-ng`` and ``sox`` programs.
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
import wave
from collections.abc import Callable, Iterator
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from gateway.inference.audio import (
    KEYWORD_LABELS,
    AlarmDebouncer,
    AudioStream,
    HeadInput,
    alarm_decision,
    keyword_decision,
    keyword_features,
)
from gateway.inference.frontend import SAMPLE_RATE, context_stack, frames_of
from gateway.inference.speech_embedding import SpeechEmbedder
from training import audio_data as data
from training import progress
from training.export import export_classifier, export_transformer, write_model

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "gateway" / "models"
CLIPS = ROOT / "devices" / "clips"
CHUNK = 1600  # 0.1 s pushes, like a microphone's frames
KW_THRESHOLD = 0.5
ALARM_THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.5)  # head score needed with a matched T3/T4 timing
NEGATIVE_CLIPS = 130  # x 30 s: > 1 h of speech, noise and music for the false-alarm rate
KW_AUGMENT = 2  # extra noisy copies of each training utterance window
KW_RESAMPLE = 2  # extra copies played 5-15 % slower or faster (one of them noisy)
KW_WEIGHT = 3.0  # loss weight of each keyword against "other" (which has 6x as many rows)
KW_ENSEMBLE = 3  # keyword heads (seeds) whose probabilities are averaged
TEST_SEEDS = (3, 4, 5)  # held-out clips: seed + each (seed + 1 made the recipe's choice set)
ALARM_COOLDOWN = 3.5


def _job(args: tuple[str, str, str, int]) -> data.Clip:
    kind, text, split, seed = args
    rng = np.random.default_rng(seed)
    if kind in ("t3", "t4", "beeps"):
        return data.alarm_clip(kind, split, rng, seed)
    if kind == "background":
        return data.background_clip(split, rng, seed)
    if kind == "negative":
        return data.negative_clip(split, rng, seed)
    return data.utterance_clip(text, kind, split, rng, seed)


def plan(split: str, scale: float, seed0: int) -> list[tuple[str, str, str, int]]:
    rng = np.random.default_rng(seed0)
    variant_rng = np.random.default_rng(seed0 + 1000)
    n = lambda k: max(4, int(k * scale))  # noqa: E731
    jobs: list[tuple[str, str, str, int]] = []
    for kind, text in data.KEYWORDS.items():
        count = n(400 if split == "train" else 80)
        if split == "train":  # own generator: the rest of the plan stays as it was
            texts = data.KEYWORD_VARIANTS[kind]
            jobs += [(kind, str(variant_rng.choice(texts)), split, 0) for _ in range(count)]
        else:
            jobs += [(kind, text, split, 0)] * count
    jobs += [
        ("speech", str(rng.choice(data.OTHER_PHRASES)), split, 0)
        for _ in range(n(600 if split == "train" else 160))
    ]
    jobs += [("background", "", split, 0)] * n(300 if split == "train" else 200)
    jobs += [("t3", "", split, 0)] * n(150 if split == "train" else 80)
    jobs += [("t4", "", split, 0)] * n(150 if split == "train" else 80)
    jobs += [("beeps", "", split, 0)] * n(150 if split == "train" else 80)
    return [(k, t, s, seed0 * 100000 + i) for i, (k, t, s, _) in enumerate(jobs)]


def make_clips(
    split: str, scale: float, seed0: int, cache: Path | None = None, *, negatives: int = 0
) -> list[data.Clip]:
    """The clips of a split (or, with `negatives`, that many long negatives); `cache` (a
    directory of pickles) skips regeneration while iterating on models."""
    name = f"negatives-{negatives}-{seed0}" if negatives else f"{split}-{scale}-{seed0}"
    path = cache / f"{name}.pkl" if cache else None
    if path is not None and path.exists():
        with path.open("rb") as f:
            clips: list[data.Clip] = pickle.load(f)
        return clips
    jobs = (
        [("negative", "", split, seed0 * 100000 + 50000 + i) for i in range(negatives)]
        if negatives
        else plan(split, scale, seed0)
    )
    with Pool(2) as pool:
        clips = pool.map(_job, jobs, chunksize=4)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            pickle.dump(clips, f)
    return clips


def stream_clip(clip: data.Clip, embed: Callable[[np.ndarray], np.ndarray]) -> Iterator[HeadInput]:
    """A clip through the serving code in 0.1 s pushes: head inputs (clip-relative times)."""
    stream = AudioStream()
    for i in range(0, len(clip.audio), CHUNK):
        ctx = stream.frames(clip.audio[i : i + CHUNK], 1_000_000_000.0 + i / SAMPLE_RATE)
        yield from stream.accept(embed(ctx) if len(ctx) else ctx)


def rel(t: float) -> float:
    return t - 1_000_000_000.0


def labelled(clips: list[data.Clip], embed: Callable[[np.ndarray], np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "vad": ([], []),
        "keyword": ([], []),
        "alarm": ([], []),
        "kw_clip": [],
        "kw_audio": [],
        "alarm_clip": [],
        "pattern_hits": [],  # (clip index, alarm-head features) where the T3/T4 timing matched
    }
    for c_idx, clip in enumerate(clips):
        utter = clip.speech_mask is not None and bool(clip.speech_mask.any())
        if utter:
            act = np.flatnonzero(np.asarray(clip.speech_mask))
            u0, u1 = act[0] / SAMPLE_RATE, act[-1] / SAMPLE_RATE
        for h in stream_clip(clip, embed):
            s, e = rel(h.start), rel(h.end)
            if h.head == "vad" and clip.speech_mask is not None:
                share = float(clip.speech_mask[int(s * SAMPLE_RATE) : int(e * SAMPLE_RATE)].mean())
                if share >= 0.5 or share <= 0.05:  # boundary blocks are ambiguous
                    out["vad"][0].append(h.features)
                    out["vad"][1].append(int(share >= 0.5))
            elif h.head == "keyword":
                label = "other"
                if (
                    utter
                    and min(e, u1) - max(s, u0) >= 0.5 * (u1 - u0)
                    and clip.kind in data.KEYWORDS
                ):
                    label = clip.kind
                out["keyword"][0].append(float(h.features[0]))
                out["keyword"][1].append(KEYWORD_LABELS.index(label))
                out["kw_clip"].append(c_idx)
                out["kw_audio"].append(h.audio)
            elif h.head == "alarm":
                if h.pattern is not None:
                    out["pattern_hits"].append((c_idx, h.features))
                y = -1
                if clip.alarm_groups:
                    for g0, g1 in clip.alarm_groups:
                        if g0 >= s - 0.05 and g1 <= e and e - g1 <= 1.5:
                            y = 1 if clip.kind == "alarm_t3" else 2
                    if y < 0 and e < clip.alarm_groups[0][0]:
                        y = 0
                else:
                    y = 0
                if y >= 0:
                    out["alarm"][0].append(h.features)
                    out["alarm"][1].append(y)
                    out["alarm_clip"].append(c_idx)
    return out


def keyword_matrix(speech: SpeechEmbedder, windows: list[np.ndarray], durs: list[float]) -> Any:
    """The keyword head's input rows for utterance windows (batched through the embedder)."""
    rows = []
    for i in range(0, len(windows), 64):
        emb = speech.embed(np.stack(windows[i : i + 64]))
        rows += [keyword_features(e, d) for e, d in zip(emb, durs[i : i + 64], strict=True)]
    return np.asarray(rows, np.float32)


def noisy_copy(window: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Training augmentation: a gain change and coloured numpy noise at 5-25 dB SNR."""
    from scipy.signal import lfilter

    noise = rng.standard_normal(len(window))
    pole = float(rng.choice([0.0, 0.9, 0.99]))  # white, pinkish, brownish (one-pole low-pass)
    if pole:
        noise = lfilter([1.0 - pole], [1.0, -pole], noise)
    sp = float(np.mean(window**2)) + 1e-9
    snr = float(rng.uniform(5.0, 25.0))
    noise = noise * np.sqrt(sp / 10 ** (snr / 10) / (float(np.mean(noise**2)) + 1e-12))
    return ((window + noise) * float(rng.uniform(0.3, 1.5))).astype(np.float32)


def resampled_copy(window: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Training augmentation: the window played 5-15 % slower or faster, its end kept in place
    (so the utterance still ends where the endpointer puts it). Pitch and formants move with the
    rate, a cheap stand-in for voices the training set lacks."""
    rate = float(rng.choice([rng.uniform(0.86, 0.95), rng.uniform(1.05, 1.15)]))
    n = len(window)
    source = (n - 1) - (n - 1 - np.arange(n)) * rate  # output sample k reads input here
    return np.interp(source, np.arange(n), window, left=0.0).astype(np.float32)


def kw_threshold() -> float:
    """The committed keyword model's threshold (training/train_keyword.py chooses it)."""
    man = json.loads((MODELS / "keyword.json").read_text())
    return float(man["thresholds"]["threshold"])


def choose_alarm_threshold(
    clips: list[data.Clip], hits: list[tuple[int, np.ndarray]], session: ort.InferenceSession
) -> float:
    """The highest head score to require with a matched timing that keeps (within 1 %) the
    training alarms' recall of the timing check alone; training clips only."""
    alarm_clips = {i for i, c in enumerate(clips) if c.alarm_groups}
    if not hits:
        return 0.0
    x = np.asarray([f for _, f in hits], np.float32)
    scores = 1.0 - np.asarray(session.run(None, {session.get_inputs()[0].name: x})[1])[:, 0]

    def recall(t: float) -> float:
        found = {i for (i, _), sc in zip(hits, scores, strict=True) if sc >= t}
        return len(found & alarm_clips) / max(len(alarm_clips), 1)

    base = recall(0.0)
    return max(t for t in ALARM_THRESHOLDS if recall(t) >= base - 0.01)


def evaluate(
    clips: list[data.Clip],
    models: dict[str, ort.InferenceSession],
    *,
    alarm_threshold: float,
    speech: SpeechEmbedder | None = None,
) -> dict[str, Any]:
    """Held-out figures through onnxruntime, with the serving decision rules."""
    speech = speech or SpeechEmbedder()
    emb_s = models["audio_embedding"]
    embed = lambda x: emb_s.run(None, {emb_s.get_inputs()[0].name: x})[0]  # noqa: E731

    def probs(name: str, x: np.ndarray) -> np.ndarray:
        session = models[name]
        return np.asarray(session.run(None, {session.get_inputs()[0].name: x[None, :]})[1][0])

    kw_ok = kw_n = vad_ok = vad_n = 0
    alarm_hit = alarm_n = false_alarms = 0
    neg_seconds = 0.0
    fa_kinds: dict[str, int] = {}
    neg_kinds: dict[str, float] = {}
    delays: list[float] = []
    confusion: dict[str, dict[str, int]] = {}
    for clip in clips:
        deb = AlarmDebouncer(alarm_threshold, ALARM_COOLDOWN)
        fired: list[float] = []
        best = ("other", 0.0)
        for h in stream_clip(clip, embed):
            s, e = rel(h.start), rel(h.end)
            if h.head == "vad" and clip.speech_mask is not None:
                share = float(clip.speech_mask[int(s * SAMPLE_RATE) : int(e * SAMPLE_RATE)].mean())
                if share >= 0.5 or share <= 0.05:
                    vad_n += 1
                    vad_ok += int((probs("vad", h.features)[1] >= 0.5) == (share >= 0.5))
            elif h.head == "keyword":
                assert h.audio is not None
                row = keyword_matrix(speech, [h.audio], [float(h.features[0])])[0]
                label, score = keyword_decision(probs("keyword", row), kw_threshold())
                if label != "other" and score > best[1]:
                    best = (label, score)
            elif h.head == "alarm":
                _label, score = alarm_decision(probs("alarm", h.features), h.pattern)
                if deb.step(score, e, h.pattern):
                    fired.append(e)
        if clip.kind in data.KEYWORDS or clip.kind == "speech":
            truth = clip.kind if clip.kind in data.KEYWORDS else "other"
            kw_n += 1
            kw_ok += int(best[0] == truth)
            confusion.setdefault(truth, {}).setdefault(best[0], 0)
            confusion[truth][best[0]] += 1
        if clip.alarm_groups:
            alarm_n += 1  # (false alarms before the first group would count against speech/noise)
            first_end = clip.alarm_groups[0][1]
            after = [t for t in fired if t >= first_end - 0.2]
            alarm_hit += int(bool(after))
            false_alarms += len([t for t in fired if t < clip.alarm_groups[0][0]])
            if after:
                delays.append(after[0] - first_end)
        else:
            fa_kinds[clip.kind] = fa_kinds.get(clip.kind, 0) + len(fired)
            neg_kinds[clip.kind] = (
                neg_kinds.get(clip.kind, 0.0) + len(clip.audio) / SAMPLE_RATE / 3600
            )
            if clip.kind != "beeps":  # the target counts speech, noise and music (+ long ones)
                neg_seconds += len(clip.audio) / SAMPLE_RATE
                false_alarms += len(fired)
    return {
        "keyword_accuracy": kw_ok / max(kw_n, 1),
        "keyword_clips": kw_n,
        "keyword_confusion": confusion,
        "vad_accuracy": vad_ok / max(vad_n, 1),
        "vad_blocks": vad_n,
        "alarm_recall": alarm_hit / max(alarm_n, 1),
        "alarm_clips": alarm_n,
        "false_alarms": false_alarms,
        "negative_hours": neg_seconds / 3600,
        "false_alarms_per_hour": false_alarms / max(neg_seconds / 3600, 1e-9),
        "alarm_detect_delay_p50_s": float(np.median(delays)) if delays else None,
        "false_alarms_by_kind": fa_kinds,
        "negative_hours_by_kind": neg_kinds,
    }


def noise_card() -> dict[str, str]:
    """The card's line on alarms under household beds: bench/alarm_noise.py's held-out part, as
    committed in gateway/models/alarm_noise_metrics.json (that script re-measures it)."""
    path = MODELS / "alarm_noise_metrics.json"
    if not path.exists():
        return {}
    m = json.loads(path.read_text())
    recall = m["after"]["recall"]
    neg = m.get("after_negatives_long", m["after"])  # the longest negative set measured
    hours = sum(neg["long_form_hours"].values())
    false = neg["false_alarms"]["talk"] + neg["false_alarms"]["household"]
    return {
        "under household noise": (
            "bench/alarm_noise.py, held-out part (other seeds, held-out voices and sentences, a "
            f"traffic bed the tuning part lacks): recall with the tone 20 dB "
            f"below a brown bed {recall['target/brown_-20db']['recall']}, 10 dB below a pink bed "
            f"{recall['target/pink_-10db']['recall']}, all noise beds and levels "
            f"{recall['noise_beds/all']['recall']} (whole-frame check alone "
            f"{m['before']['recall']['noise_beds/all']['recall']}); the original clips "
            f"{recall['original/all']['recall']}; false alarms: {false} in "
            f"{hours:.1f} h of long-form talk and household sounds (95 % upper bound "
            f"{neg['false_alarm_upper_bound_per_hour']} per hour); thresholds chosen on the "
            "tuning part; figures in alarm_noise_metrics.json"
        )
    }


def write_wav(path: Path, pcm: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.astype("<i2").tobytes())


def demo_clips(seed: int) -> None:
    """A small clip set for the simulators' microphones (held-out voices, so it is fair)."""
    CLIPS.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    made = {}
    for name, text in data.KEYWORDS.items():
        for k in range(2):
            made[f"keyword_{name}_{k}"] = data.utterance_clip(text, name, "test", rng, seed + k)
    for k, text in enumerate(["good morning", "dinner is ready", "where are my keys"]):
        made[f"speech_{k}"] = data.utterance_clip(text, "speech", "test", rng, seed + 10 + k)
    made["alarm_smoke_t3"] = data.alarm_clip("t3", "test", rng, seed + 20)
    made["alarm_co_t4"] = data.alarm_clip("t4", "test", rng, seed + 21)
    for k in range(2):
        made[f"noise_{k}"] = data.background_clip("test", rng, seed + 30 + k)
    for name, clip in made.items():
        write_wav(CLIPS / f"{name}.wav", data.to_pcm16(clip.audio))


def main(argv: list[str] | None = None) -> int:
    from sklearn.decomposition import PCA
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply clip counts")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cache", type=Path, default=None, help="directory to cache clips in")
    args = parser.parse_args(argv)
    data.require_tools()
    t0 = time.monotonic()
    train = make_clips("train", args.scale, args.seed, args.cache)
    # Seed + 1 made the held-out clips the keyword recipe was chosen on (head, features,
    # augmentation, weighting, ensemble); the figures come from fresh clips of the same held-out
    # voices, variants and noise levels.
    test = [
        c for k in TEST_SEEDS for c in make_clips("test", args.scale, args.seed + k, args.cache)
    ]
    negatives = make_clips(
        "test", args.scale, args.seed + 2, args.cache, negatives=max(4, int(NEGATIVE_CLIPS))
    )
    progress(t0, f"clips: {len(train)} train, {len(test)} test, {len(negatives)} long negatives")

    rng = np.random.default_rng(args.seed)
    sample = [train[i] for i in rng.choice(len(train), size=min(300, len(train)), replace=False)]
    ctx = np.vstack([context_stack(frames_of(c.audio).logmel) for c in sample])
    pca = PCA(n_components=24, whiten=True, random_state=args.seed).fit(ctx)
    embed = lambda x: pca.transform(x).astype(np.float32)  # noqa: E731
    feats = labelled(train, embed)
    progress(
        t0, "features: " + ", ".join(f"{k}={len(feats[k][1])}" for k in ("vad", "keyword", "alarm"))
    )

    speech = SpeechEmbedder(intra_op_threads=2)
    inputs = {
        "vad": (np.asarray(feats["vad"][0], np.float32), np.asarray(feats["vad"][1])),
        "alarm": (np.asarray(feats["alarm"][0], np.float32), np.asarray(feats["alarm"][1])),
    }
    heads = {}
    for name, hidden in (("vad", (32,)), ("alarm", (32,))):
        x, y = inputs[name]
        clf = make_pipeline(
            StandardScaler(),
            MLPClassifier(
                hidden, alpha=1e-3, max_iter=400, early_stopping=True, random_state=args.seed
            ),
        )
        heads[name] = clf.fit(x, y)
        progress(t0, f"{name}: train acc {clf.score(x, y):.3f} on {len(y)}")
    # The keyword head is trained by training/train_keyword.py; its figures here are the
    # committed model's on this script's held-out clips.
    keyword_onnx = (MODELS / "keyword.onnx").read_bytes()

    MODELS.mkdir(parents=True, exist_ok=True)
    files = {"audio_embedding": export_transformer(pca, ctx.shape[1])}
    for name, clf in heads.items():
        files[name] = export_classifier(clf, inputs[name][0].shape[1])
    files["keyword"] = keyword_onnx
    sessions = {
        n: ort.InferenceSession(b, providers=["CPUExecutionProvider"]) for n, b in files.items()
    }
    alarm_threshold = choose_alarm_threshold(train, feats["pattern_hits"], sessions["alarm"])
    print(f"alarm head threshold with the timing check: {alarm_threshold}", flush=True)
    metrics = evaluate(test + negatives, sessions, alarm_threshold=alarm_threshold, speech=speech)
    metrics["alarm_threshold"] = alarm_threshold
    print(json.dumps(metrics, indent=1), flush=True)
    split = (
        "split by voice, voice variant and noise level: train voices "
        f"{data.SPLITS['train']['voices']} variants {data.SPLITS['train']['variants']} SNR "
        f"{data.SPLITS['train']['snr_db']}; held-out voices {data.SPLITS['test']['voices']} "
        "variants "
        f"{data.SPLITS['test']['variants']} SNR {data.SPLITS['test']['snr_db']} (alarms also -3 dB)"
    )
    common = {
        "data": f"{len(train)} train / {len(test)} held-out synthetic clips (espeak-ng speech, "
        f"sox noise/music/reverb, synthetic T3/T4 beeps), seed {args.seed}",
        "split": split,
    }
    write_model(
        MODELS,
        "audio_embedding",
        files["audio_embedding"],
        kind="audio_embedding",
        inputs="3 x 40 log-mel frames (causal context)",
        extra={"n_features": ctx.shape[1]},
        card={
            **common,
            "what": "PCA (24 components, whitened) of 3-frame log-mel context: "
            "the shared embedding",
        },
    )
    write_model(
        MODELS,
        "vad",
        files["vad"],
        kind="audio_vad",
        inputs="0.5 s block of embeddings",
        extra={"threshold": 0.5, "window_s": 0.5, "hop_s": 0.5},
        card={
            **common,
            "what": "voice activity (speech / not) per 0.5 s block",
            "held-out": {"vad_accuracy": metrics["vad_accuracy"], "blocks": metrics["vad_blocks"]},
        },
    )
    write_model(
        MODELS,
        "alarm",
        files["alarm"],
        kind="audio_alarm",
        inputs="4 s of 3 kHz tonality in 50 ms bins, every 50 ms (+ the T3/T4 timing check)",
        extra={
            "threshold": alarm_threshold,
            "cooldown_s": ALARM_COOLDOWN,
            "window_s": 4.0,
            "hop_s": 0.05,
        },
        card={
            **common,
            "what": "smoke (T3) / CO (T4) sounder: fires only when the T3/T4 beep timing of one "
            "pitch matched (gateway.inference.audio.alarm_pattern on the whole frame's "
            "tonality, or alarm_pattern_in_band on the tone's own 2.5-4 kHz band: a sounder "
            "under a fan, traffic or brown noise) and this head's alarm probability is at "
            "least the threshold (chosen on training clips)",
            "held-out": {
                k: metrics[k]
                for k in (
                    "alarm_recall",
                    "alarm_clips",
                    "false_alarms",
                    "negative_hours",
                    "false_alarms_per_hour",
                    "alarm_detect_delay_p50_s",
                    "false_alarms_by_kind",
                    "negative_hours_by_kind",
                )
            },
            **noise_card(),
        },
    )
    (MODELS / "audio_metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")
    demo_clips(args.seed + 99)
    progress(t0, "done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
