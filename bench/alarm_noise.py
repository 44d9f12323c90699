"""Alarms under household noise: a seeded, download-free evaluation of the alarm detector.

    .venv/bin/python bench/alarm_noise.py [--json] [--part tune|held_out] [--cache DIR]

Everything is generated here (numpy, sox and espeak-ng through `training.audio_data`):

- alarm sounds: synthetic T3 (smoke) and T4 (CO) sounders at 2.8-3.5 kHz with the standard's
  timing (+-12 % jitter, `audio_data.beep_pattern`), a 520 Hz square-wave T3 (a low-frequency
  sounder: only its 5th and 7th harmonics fall in the 2.5-4 kHz band), and the two alarm clips
  of devices/clips; each scaled so its peak is `LEVELS` of full scale;
- household beds at `BED_RMS` (-20 dBFS): brown and pink noise, a fan (whoosh + motor hum and
  harmonic), a dishwasher (broadband spray with periodic sloshes and a pump hum), traffic
  rumble with passing cars (held-out part only), espeak-ng talk and music-like notes;
- the issue's two conditions: T3/T4 with the tone's power 20 dB below a brown bed's broadband
  power and 10 dB below a pink bed's;
- the original evaluation's alarm clips (train_audio's held-out plan, seed 8: speech, noise and
  music backgrounds at the held-out SNRs) and its "beeps" negatives;
- long-form negatives without any alarm: household talk (training/talk_data.py) and minutes of
  household noise beds with kettle whistles, single beeps, microwave beeps, phone rings,
  doorbells and music sprinkled in.

Two parts with different seeds, voices, sentences and beds: ``tune`` (training voices and
sentences, no traffic bed) is where thresholds may be chosen; ``held_out`` (held-out voices and
sentences, other seeds, plus the traffic bed) is what figures are reported on.

The detector runs as served: `AudioStream` in 0.1 s pushes, the alarm head (gateway/models/
alarm.onnx) on every input whose T3/T4 timing matched, and `AlarmDebouncer` with the manifest's
threshold and cooldown. An alarm clip is found when the detector fires after the first group
ended (or anywhere, for the devices/clips mixes); firing before the first group starts counts as
a false alarm. Generated audio is cached (--cache) so two detectors see identical audio.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devices.clips import CLIP_DIR, read_wav  # noqa: E402
from gateway.inference.audio import AlarmDebouncer, AudioStream, alarm_decision  # noqa: E402
from gateway.inference.settings import DEFAULT_MODELS_DIR  # noqa: E402

SR = 16000
CHUNK = 1600
LEVELS = (0.01, 0.02, 0.035, 0.05, 0.1)  # alarm peak, share of full scale
BED_RMS = 0.1  # -20 dBFS: a loud household bed at the microphone
CLIP_S = 12.0
NOISE_BEDS = ("brown", "pink", "fan", "dishwasher", "traffic")
BEDS = (*NOISE_BEDS, "speech", "music")
PARTS: dict[str, dict[str, Any]] = {
    "tune": {
        "seed": 11,
        "split": "train",
        "sentences": "fit",
        "beds": tuple(b for b in BEDS if b != "traffic"),
    },
    "held_out": {"seed": 23, "split": "test", "sentences": "test", "beds": BEDS},
}
# Per bed and level: sources and how many of each.
SOURCES = (("t3", 4), ("t4", 4), ("lf_t3", 2), ("clip_t3", 1), ("clip_t4", 1))
TARGETS = (("brown", -20.0), ("pink", -10.0))  # tone power re the bed's broadband power, dB
TARGET_CLIPS = 30  # per target condition (half T3, half T4)
ORIGINAL_SEED = 8  # train_audio's held-out plan (bench/inference.py --regenerate uses it too)
F32 = np.ndarray


# ---------------------------------------------------------------------------- sounds


def _filt(x: F32, kind: str, hz: float | tuple[float, float], order: int = 4) -> F32:
    from scipy.signal import butter, sosfilt

    sos = butter(order, hz, kind, fs=SR, output="sos")
    return np.asarray(sosfilt(sos, x), np.float32)


def _unit(x: F32) -> F32:
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32)


def square_t3(
    seconds: float, rng: np.random.Generator, start: float
) -> tuple[F32, list[tuple[float, float]]]:
    """A low-frequency (520 Hz square wave) T3 sounder, with the T3 timing and jitter."""
    out = np.zeros(int(seconds * SR), np.float32)
    f0 = rng.uniform(500, 540)
    jit = lambda x: x * rng.uniform(0.88, 1.12)  # noqa: E731
    ends, t = [], start
    while True:
        beeps, tt = [], t
        for _ in range(3):
            on = jit(0.5)
            beeps.append((tt, on))
            tt += on + jit(0.5)
        if beeps[-1][0] + beeps[-1][1] > seconds:
            break
        for b0, dur in beeps:
            n = int(dur * SR)
            ramp = np.minimum(1.0, np.minimum(np.arange(n), n - np.arange(n)) / 80.0)
            wave = np.sign(np.sin(2 * np.pi * f0 * np.arange(n) / SR))
            out[int(b0 * SR) : int(b0 * SR) + n] += (0.5 * wave * ramp).astype(np.float32)
        ends.append((t, beeps[-1][0] + beeps[-1][1]))
        t = beeps[-1][0] + beeps[-1][1] + jit(1.5)
    return out, ends


def alarm_sound(source: str, rng: np.random.Generator) -> tuple[F32, list[tuple[float, float]]]:
    """Peak-normalised alarm audio of `CLIP_S` and its group (start, end) times ([] for clips)."""
    from training import audio_data as data

    if source in ("t3", "t4"):
        x, ends = data.beep_pattern(source, CLIP_S, rng, start=float(rng.uniform(1.5, 3.0)))
    elif source == "lf_t3":
        x, ends = square_t3(CLIP_S, rng, float(rng.uniform(1.5, 3.0)))
    else:
        pcm = read_wav(
            CLIP_DIR / ("alarm_smoke_t3.wav" if source == "clip_t3" else "alarm_co_t4.wav")
        )
        x = np.zeros(int(CLIP_S * SR), np.float32)
        clip = pcm.astype(np.float32) / 32768.0
        at = int(rng.uniform(1.0, 2.0) * SR)
        n = min(len(clip), len(x) - at)
        x[at : at + n] = clip[:n]
        ends = []
    return (x / (np.max(np.abs(x)) + 1e-12)).astype(np.float32), list(ends)


def talk(seconds: float, split: str, sentences: str, rng: np.random.Generator) -> F32:
    from training import audio_data as data
    from training import talk_data

    cfg = data.SPLITS[split]
    out = np.zeros(int(seconds * SR), np.float32)
    t = float(rng.uniform(0.0, 0.8))
    while t < seconds - 0.3:
        s = data.speak(
            str(rng.choice(talk_data.SENTENCES[sentences])),
            str(rng.choice(cfg["voices"])),
            str(rng.choice(cfg["variants"])),
            int(rng.integers(120, 210)),
            int(rng.integers(25, 80)),
            int(rng.choice([0, 0, 30, 60])),
        ) * float(rng.uniform(0.4, 1.0))
        i = int(t * SR)
        k = min(len(s), len(out) - i)
        out[i : i + k] += s[:k]
        t += len(s) / SR + float(rng.uniform(0.15, 1.2))
    return out


def household_bed(kind: str, seconds: float, seed: int, part: dict[str, Any]) -> F32:
    """A unit-RMS household bed."""
    from training import audio_data as data
    from training import talk_data

    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    times = np.arange(n) / SR
    if kind in ("brown", "pink"):
        return _unit(data._seeded_noise(kind, seconds, seed))
    if kind == "fan":
        return _unit(talk_data.bed("fan", part["split"], part["sentences"], seconds, rng, seed))
    if kind == "dishwasher":
        spray = _filt(rng.standard_normal(n).astype(np.float32), "bandpass", (150.0, 6000.0), 2)
        slosh = np.zeros(n, np.float32)
        t = float(rng.uniform(0.0, 1.5))
        while t < seconds:
            dur = float(rng.uniform(0.3, 1.2))
            a, b = int(t * SR), min(n, int((t + dur) * SR))
            env = np.sin(np.linspace(0, np.pi, b - a)) ** 2 * float(rng.uniform(1.5, 3.5))
            burst = rng.standard_normal(b - a).astype(np.float32)
            slosh[a:b] += burst * env.astype(np.float32)
            t += float(rng.uniform(1.5, 4.0))
        slosh = _filt(slosh, "bandpass", (250.0, 5000.0), 2)
        hum_hz = float(rng.uniform(48.0, 110.0))
        hum = 0.6 * np.sin(2 * np.pi * hum_hz * times) + 0.25 * np.sin(6 * np.pi * hum_hz * times)
        return _unit(_unit(spray) + 0.8 * _unit(slosh) + hum.astype(np.float32))
    if kind == "traffic":
        rumble = _unit(data._seeded_noise("brown", seconds, seed))
        cars = np.zeros(n, np.float32)
        t = float(rng.uniform(-3.0, 2.0))
        while t < seconds:
            centre, width = t + float(rng.uniform(2.0, 5.0)), float(rng.uniform(1.0, 3.0))
            env = np.exp(-0.5 * ((times - centre) / width) ** 2).astype(np.float32)
            cut = float(rng.uniform(600.0, 1500.0))
            car = _filt(rng.standard_normal(n).astype(np.float32), "lowpass", cut, 2)
            cars += _unit(car) * env * float(rng.uniform(0.8, 2.5))
            t += float(rng.uniform(2.0, 7.0))
        low = 0.5 * np.sin(2 * np.pi * float(rng.uniform(28.0, 60.0)) * times)
        return _unit(rumble + cars + low.astype(np.float32))
    if kind == "speech":
        return _unit(talk(seconds, part["split"], part["sentences"], rng))
    if kind == "music":
        return _unit(data.music_bed(seconds, seed))
    raise ValueError(kind)


def event_sounds(seconds: float, rng: np.random.Generator) -> tuple[F32, list[str]]:
    """Household sounds that are not alarms (peak around 0.05-0.4): kettle whistles, single
    beeps, microwave beeps, phone rings, doorbells, hard beep rhythms."""
    from training import audio_data as data

    n = int(seconds * SR)
    out = np.zeros(n, np.float32)
    kinds: list[str] = []
    t = float(rng.uniform(0.5, 5.0))
    while t < seconds - 1.0:
        kind = str(
            rng.choice(["kettle", "beep", "microwave", "phone", "ringtone", "doorbell", "beeps"])
        )
        kinds.append(kind)
        amp = float(rng.uniform(0.05, 0.4))
        if kind == "kettle":  # a whistle gliding up to ~3 kHz, with breath noise, 3-15 s
            dur = float(rng.uniform(3.0, 15.0))
            m = int(dur * SR)
            f = np.linspace(rng.uniform(1800, 2600), rng.uniform(2800, 3400), m)
            f = f + 15 * np.sin(2 * np.pi * rng.uniform(3, 7) * np.arange(m) / SR)
            x = np.sin(2 * np.pi * np.cumsum(f) / SR) * np.minimum(1.0, np.arange(m) / (0.8 * SR))
            x += 0.2 * _filt(
                rng.standard_normal(m).astype(np.float32), "bandpass", (2000.0, 4000.0), 2
            )
        elif kind == "beep":  # a single appliance beep
            m = int(rng.uniform(0.08, 1.0) * SR)
            x = np.sin(2 * np.pi * rng.uniform(1500, 4000) * np.arange(m) / SR)
        elif kind == "microwave":  # 3-5 beeps of ~1 s or 0.2 s, 2-3.5 kHz
            f0, on, off = (
                rng.uniform(2000, 3500),
                float(rng.choice([0.2, 0.9, 1.0])),
                float(rng.uniform(0.2, 0.4)),
            )
            parts = []
            for _ in range(int(rng.integers(3, 6))):
                parts += [
                    np.sin(2 * np.pi * f0 * np.arange(int(on * SR)) / SR),
                    np.zeros(int(off * SR)),
                ]
            x = np.concatenate(parts)
        elif kind == "phone":  # UK double ring: 400+450 Hz, 0.4 on 0.2 off 0.4 on 2 off, x2-3
            parts = []
            for _ in range(int(rng.integers(2, 4))):
                for on, off in ((0.4, 0.2), (0.4, 2.0)):
                    tt = np.arange(int(on * SR)) / SR
                    parts += [
                        np.sin(2 * np.pi * 400 * tt) + np.sin(2 * np.pi * 450 * tt),
                        np.zeros(int(off * SR)),
                    ]
            x = np.concatenate(parts)
        elif kind == "ringtone":  # a mobile's melody of short notes, some in the alarm band
            parts = []
            for _ in range(int(rng.integers(8, 24))):
                dur = float(rng.choice([0.1, 0.15, 0.25]))
                tt = np.arange(int(dur * SR)) / SR
                parts.append(
                    np.sin(2 * np.pi * rng.choice([880, 1320, 1760, 2640, 3520]) * tt)
                    * np.exp(-tt * 8)
                )
            x = np.concatenate(parts * 2)
        elif kind == "doorbell":  # ding-dong: struck-bar partials (one near 3.5 kHz), decaying
            parts = []
            for f0 in (660.0, 550.0):
                tt = np.arange(int(1.2 * SR)) / SR
                parts.append(
                    sum(
                        a * np.sin(2 * np.pi * f0 * r * tt)
                        for r, a in ((1, 1), (2.76, 0.5), (5.4, 0.3))
                    )
                    * np.exp(-tt * 3)
                )
            x = np.concatenate(parts)
        else:  # beeps in other rhythms (the training set's hard negatives)
            x, _ = data.beep_pattern("beeps", 8.0, rng, start=0.1)
        x = np.asarray(x, np.float32)
        x = x / (np.max(np.abs(x)) + 1e-12) * amp
        i = int(t * SR)
        k = min(len(x), n - i)
        out[i : i + k] += x[:k]
        t += len(x) / SR + float(rng.uniform(3.0, 15.0))
    return out, kinds


# ---------------------------------------------------------------------------- sets


@dataclass(frozen=True)
class Item:
    audio: F32
    group: str  # "noise", "target", "original", "talk", "household"
    bed: str
    level: float  # alarm peak (or the target's dB); 0 for negatives
    source: str  # alarm source, or "none"
    groups: tuple[tuple[float, float], ...] = ()


def _alarm_job(args: tuple[str, str, float, str, int, str, float]) -> Item:
    part_name, bed, level, source, seed, group, rel_db = args
    part = PARTS[part_name]
    rng = np.random.default_rng(seed)
    alarm, groups = alarm_sound(source, rng)
    noise = household_bed(bed, CLIP_S, seed + 1, part) * BED_RMS
    if group == "target":  # tone power during the beeps `rel_db` re the bed's power
        on = np.abs(alarm) > 1e-3
        tone_rms = float(np.sqrt(np.mean(alarm[on] ** 2)))
        alarm = alarm * (BED_RMS * 10 ** (rel_db / 20) / tone_rms)
    else:
        alarm = alarm * level
    return Item(
        (alarm + noise).astype(np.float32),
        group,
        bed,
        rel_db if group == "target" else level,
        source,
        tuple(groups),
    )


def _long_job(args: tuple[str, str, int]) -> Item:
    part_name, kind, seed = args
    part = PARTS[part_name]
    if kind == "talk":
        from training import talk_data

        c = talk_data.talk_clip(part["split"], part["sentences"], seed)
        return Item(c.audio, "talk", c.bed, 0.0, "none")
    rng = np.random.default_rng(seed)
    beds = [b for b in part["beds"] if b != "speech"]
    bed = str(rng.choice(beds))
    noise = household_bed(bed, 60.0, seed + 1, part) * float(rng.uniform(0.02, 0.2))
    events, _ = event_sounds(60.0, rng)
    return Item((noise + events).astype(np.float32), "household", bed, 0.0, "none")


def _original_job(args: tuple[str, str, str, int]) -> Item:
    from training import audio_data as data
    from training import train_audio

    c = train_audio._job(args)
    # The clip does not record its background: replay `audio_data.alarm_clip`'s draws to name it.
    kind, _, _, seed = args
    rng = np.random.default_rng(seed)
    data.beep_pattern(kind, 9.0, rng, start=rng.uniform(0.2, 2.5))
    bg = str(rng.choice(["noise", "speech"]))
    if bg == "noise":
        bg = str(rng.choice(["white", "pink", "brown", "hum", "hiss", "music"]))
    return Item(c.audio, "original", bg, 0.0, c.kind, tuple(c.alarm_groups))


def plan(
    part_name: str, talk_minutes: int, household_minutes: int, long_only: bool = False
) -> dict[str, list[Any]]:
    part = PARTS[part_name]
    s0 = part["seed"] * 100000
    jobs: list[Any] = []
    i = 0
    for bed in () if long_only else part["beds"]:
        for level in LEVELS:
            for source, count in SOURCES:
                for _ in range(count):
                    jobs.append((part_name, bed, level, source, s0 + i, "noise", 0.0))
                    i += 1
    for bed, rel_db in () if long_only else TARGETS:
        for k in range(TARGET_CLIPS):
            jobs.append(
                (part_name, bed, 0.0, "t3" if k % 2 == 0 else "t4", s0 + i, "target", rel_db)
            )
            i += 1
    longs = [(part_name, "talk", s0 + 70000 + k) for k in range(talk_minutes)]
    longs += [(part_name, "household", s0 + 80000 + k) for k in range(household_minutes)]
    out: dict[str, list[Any]] = {"alarm": jobs, "long": longs, "original": []}
    if part_name == "held_out" and not long_only:
        from training import train_audio

        out["original"] = [
            j for j in train_audio.plan("test", 1.0, ORIGINAL_SEED) if j[0] in ("t3", "t4", "beeps")
        ]
    return out


def make_items(
    part_name: str,
    talk_minutes: int,
    household_minutes: int,
    cache: Path | None,
    long_only: bool = False,
) -> list[Item]:
    name = f"alarm-noise-{part_name}-{talk_minutes}-{household_minutes}{'-long' * long_only}.pkl"
    if cache is not None and (cache / name).exists():
        with (cache / name).open("rb") as f:
            items: list[Item] = pickle.load(f)
        return items
    jobs = plan(part_name, talk_minutes, household_minutes, long_only)
    with Pool(2) as pool:
        items = pool.map(_alarm_job, jobs["alarm"], chunksize=4)
        items += pool.map(_original_job, jobs["original"], chunksize=4)
        items += pool.map(_long_job, jobs["long"], chunksize=2)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        with (cache / name).open("wb") as f:
            pickle.dump(items, f)
    return items


# ---------------------------------------------------------------------------- detector


def detector() -> Callable[[F32], list[tuple[float, str, float]]]:
    """The served alarm path: audio -> [(time s, label, score)] of the events it fires."""
    import onnxruntime as ort

    man = json.loads((DEFAULT_MODELS_DIR / "alarm.json").read_text())
    thr = man["thresholds"]
    session = ort.InferenceSession(
        str(DEFAULT_MODELS_DIR / "alarm.onnx"), providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name

    def run(audio: F32) -> list[tuple[float, str, float]]:
        stream = AudioStream()
        deb = AlarmDebouncer(thr.get("threshold", 0.8), thr.get("cooldown_s", 3.5))
        fired = []
        for i in range(0, len(audio), CHUNK):
            ctx = stream.frames(audio[i : i + CHUNK].astype(np.float32), 1e9 + i / SR)
            for h in stream.accept(np.zeros((len(ctx), 8), np.float32)):
                if h.head != "alarm" or h.pattern is None:
                    continue  # the debouncer needs a matched timing: the head runs only then
                probs = np.asarray(session.run(None, {name: h.features[None, :]})[1][0])
                label, score = alarm_decision(probs, h.pattern)
                if deb.step(score, h.end, h.pattern):
                    fired.append((h.end - 1e9, label, score))
        return fired

    return run


def _score(item: Item, fired: list[tuple[float, str, float]]) -> tuple[bool, int]:
    """(found, false alarms) of one item."""
    if item.source in ("none", "beeps"):
        return False, len(fired)
    if not item.groups:  # a devices/clips mix: any event counts
        return bool(fired), 0
    first_start, first_end = item.groups[0]
    found = any(t >= first_end - 0.2 for t, _, _ in fired)
    return found, sum(1 for t, _, _ in fired if t < first_start)


def poisson_upper(k: int, hours: float, conf: float = 0.95) -> float:
    """One-sided upper confidence bound on an event rate from k events in `hours`."""
    from scipy.stats import chi2

    return float(chi2.ppf(conf, 2 * (k + 1)) / 2 / hours)


def evaluate(items: list[Item]) -> dict[str, Any]:
    run = detector()
    by: dict[str, list[int]] = {}
    fa = {"talk": 0, "household": 0, "original_beeps": 0, "alarm_clips_early": 0}
    hours = {"talk": 0.0, "household": 0.0}
    fa_beds: dict[str, int] = {}
    audio_s, t0 = 0.0, time.process_time()

    def add(key: str, ok: bool) -> None:
        by.setdefault(key, [0, 0])
        by[key][0] += int(ok)
        by[key][1] += 1

    for it in items:
        fired = run(it.audio)
        audio_s += len(it.audio) / SR
        found, false = _score(it, fired)
        if it.group in ("talk", "household"):
            fa[it.group] += false
            hours[it.group] += len(it.audio) / SR / 3600
            if false:
                fa_beds[f"{it.group}/{it.bed}"] = fa_beds.get(f"{it.group}/{it.bed}", 0) + false
        elif it.group == "original":
            if it.source == "beeps":
                fa["original_beeps"] += false
            else:
                fa["alarm_clips_early"] += false
                add("original/all", found)
                add(f"original/{it.bed}", found)
                add(
                    f"original/{'speech_music' if it.bed in ('speech', 'music') else 'noise'}",
                    found,
                )
        else:
            fa["alarm_clips_early"] += false
            if it.group == "target":
                add(f"target/{it.bed}_{int(it.level)}db", found)
            else:
                add(f"bed/{it.bed}", found)
                add(f"level/{it.level}", found)
                add(f"bed_level/{it.bed}/{it.level}", found)
                add(f"source/{it.source}", found)
                add("noise_beds/all" if it.bed in NOISE_BEDS else "speech_music/all", found)
    long_h = hours["talk"] + hours["household"]
    long_fa = fa["talk"] + fa["household"]
    return {
        "recall": {
            k: {"found": v[0], "n": v[1], "recall": round(v[0] / v[1], 4)}
            for k, v in sorted(by.items())
        },
        "false_alarms": fa,
        "false_alarms_by_bed": fa_beds,
        "long_form_hours": {k: round(v, 3) for k, v in hours.items()},
        "long_form_false_alarms_per_hour": round(long_fa / max(long_h, 1e-9), 3),
        "false_alarm_upper_bound_per_hour": round(poisson_upper(long_fa, long_h), 3)
        if long_h
        else None,
        "cpu_s_per_audio_s_eval": round((time.process_time() - t0) / max(audio_s, 1e-9), 5),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=tuple(PARTS), default="held_out")
    parser.add_argument(
        "--talk-minutes", type=int, default=None, help="long-form talk (1 min clips)"
    )
    parser.add_argument("--household-minutes", type=int, default=None)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/homeedge-alarm-noise"))
    parser.add_argument(
        "--long-only", action="store_true", help="only the long-form negatives (false alarms)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    talk_m = (
        args.talk_minutes
        if args.talk_minutes is not None
        else (120 if args.part == "held_out" else 30)
    )
    house_m = (
        args.household_minutes
        if args.household_minutes is not None
        else (60 if args.part == "held_out" else 30)
    )
    t = time.time()
    items = make_items(args.part, talk_m, house_m, args.cache, args.long_only)
    print(f"{len(items)} items in {time.time() - t:.0f} s", file=sys.stderr, flush=True)
    out = {"part": args.part, **evaluate(items)}
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        for k, v in out["recall"].items():
            if not k.startswith("bed_level"):
                print(f"{k:32s} {v['found']:4d}/{v['n']:<4d} {v['recall']:.3f}")
        print({k: v for k, v in out.items() if k != "recall"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
