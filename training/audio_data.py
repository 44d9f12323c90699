"""Synthetic, seeded audio for the audio heads: espeak-ng speech, sox noise/music/rooms, alarms.

Training-time only: needs the ``espeak-ng`` and ``sox`` programs (Debian packages). Every clip is
made from a seed, so a run is reproducible. The split is by *voice*, *voice variant* and *noise
level*: the held-out set uses voices, variants and SNRs the heads never saw.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

SR = 16000
F32 = npt.NDArray[np.float32]

KEYWORDS = {"lights_on": "lights on", "lights_off": "lights off", "stop": "stop"}
# Training only: spellings that make espeak say the keywords with other vowels and rhythm, a
# stand-in for accents the training voices lack (the held-out voices say the plain text).
KEYWORD_VARIANTS = {
    "lights_on": ["lights on", "lights on", "lites on", "lights awn", "lights ahn", "loights on"],
    "lights_off": [
        "lights off",
        "lights off",
        "lites off",
        "lights awf",
        "lights orf",
        "loights off",
    ],
    "stop": ["stop", "stop", "stahp", "stawp", "stop!", "stop."],
}
OTHER_PHRASES = [
    "hello there",
    "what time is it",
    "good morning",
    "open the door",
    "play some music",
    "top",
    "spot",
    "shop",
    "tonight",
    "nice and soft",
    "the weather is fine",
    "turn the heating up",
    "call mum",
    "dinner is ready",
    "where are my keys",
    "see you later",
    "office",
    "stock",
    "once more",
    "thank you",
    "is it raining",
    "coffee please",
]
# Variant names are espeak-ng's file names in voices/!v, case and all: espeak silently falls back
# to its default voice for a name it does not know (`require_tools` checks every one exists).
SPLITS: dict[str, dict[str, Any]] = {
    "train": {
        # English accents only: espeak's other languages read English text with their own
        # spelling rules, which makes different words rather than accents.
        "voices": ["en-gb", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan"],
        "variants": [
            *("m1", "m2", "m3", "m5", "m6", "m8", "f1", "f2", "f3"),
            *("klatt", "klatt3", "klatt4", "klatt5", "klatt6"),
            *("Alex", "Alicia", "Andrea", "Andy", "Annie", "Gene", "Gene2", "Hugo", "Jacky"),
            *("Lee", "Marco", "Mario", "Michael", "Mike", "adam", "anika", "antonio", "aunty"),
            *("belinda", "benjamin", "boris", "caleb", "david", "Denis", "ed", "edward"),
            *("edward2", "grandpa", "gustave", "iven", "iven2", "iven3", "john", "linda"),
            *("marcelo", "max", "michel", "miguel", "norbert", "pablo", "paul", "pedro"),
            *("quincy", "rob", "robert", "sandro", "shelby", "travis", "victor", "zac"),
        ],
        "snr_db": [None, 30.0, 20.0, 10.0],
    },
    "test": {
        "voices": ["en-029", "en-us-nyc", "en-gb-x-gbcwmd"],
        "variants": ["m4", "m7", "f4", "f5", "klatt2", "grandma", "steph"],
        "snr_db": [None, 25.0, 15.0, 8.0],
    },
}


def require_tools() -> None:
    missing = [t for t in ("espeak-ng", "sox") if shutil.which(t) is None]
    if missing:
        raise SystemExit(f"missing {missing}: apt-get install -y espeak-ng sox (training only)")
    unknown = missing_variants()
    if unknown:
        raise SystemExit(f"espeak-ng has no voice variants {unknown} (names are case-sensitive)")


@functools.cache
def variant_dir() -> Path:
    """espeak-ng's directory of voice variant files."""
    version = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout
    found = re.search(r"Data at:\s*(\S+)", version)
    if found is None:
        raise SystemExit(f"cannot find espeak-ng's data directory in {version!r}")
    return Path(found.group(1)) / "voices" / "!v"


def missing_variants() -> list[str]:
    """Variants in `SPLITS` that espeak-ng's data directory lacks (it would speak its default)."""
    have = {p.name for p in variant_dir().iterdir()}
    return sorted({v for cfg in SPLITS.values() for v in cfg["variants"]} - have)


def voice_signature(variant: str) -> tuple[str, tuple[str, ...], str]:
    """What sets a variant's sound apart: its pitch range, its formant frequency factors and its
    klatt synthesiser. Two variants alike in all three (e.g. ``steph`` and ``steph2``, which
    differ only in formant heights) sound nearly the same, so one must not be held out while
    the other trains."""
    pitch, klatt, formants = "", "", []
    for line in (variant_dir() / variant).read_text(errors="replace").splitlines():
        words = line.split("//")[0].split()
        if words[:1] == ["pitch"]:
            pitch = " ".join(words[1:])
        elif words[:1] == ["klatt"]:
            klatt = " ".join(words[1:])
        elif words[:1] == ["formant"] and len(words) >= 3:
            formants.append(f"{words[1]}:{words[2]}")
    return pitch, tuple(formants), klatt


def _sox_raw(args: list[str], stdin: bytes | None = None) -> F32:
    """``sox <args>`` in its repeatable mode, raw 16-bit output as floats: without ``-R`` its
    dither and its pluck synth draw fresh random numbers on every call, so the same seed gave
    clips a few LSB apart."""
    out = subprocess.run(["sox", "-R", *args], input=stdin, capture_output=True, check=True).stdout
    return np.frombuffer(out, dtype="<i2").astype(np.float32) / 32768.0


def speak(text: str, voice: str, variant: str, speed: int, pitch: int, reverb: int) -> F32:
    """espeak-ng speech at 16 kHz, optionally through a sox room reverb."""
    wav = subprocess.run(
        [
            "espeak-ng",
            "-v",
            f"{voice}+{variant}",
            "-s",
            str(speed),
            "-p",
            str(pitch),
            "--stdout",
            text,
        ],
        capture_output=True,
        check=True,
    ).stdout
    effects = ["reverb", str(reverb), "channels", "1"] if reverb else []
    audio = _sox_raw(
        ["-t", "wav", "-", "-r", str(SR), "-b", "16", "-c", "1", "-t", "raw", "-", *effects],
        wav,
    )
    # espeak pads with silence; trim so placement in a clip is ours to choose.
    active = np.flatnonzero(np.abs(audio) > 0.01)
    return audio[active[0] : active[-1] + 1] if len(active) else audio


def _seeded_noise(kind: str, seconds: float, seed: int) -> F32:
    # sox -R repeats the same noise for every call; filtering seeded numpy noise through sox keeps
    # beds distinct and reproducible.
    rng = np.random.default_rng(seed)
    white = rng.standard_normal(int(seconds * SR)).astype(np.float32) * 0.1
    pcm = (np.clip(white, -1, 1) * 32767).astype("<i2").tobytes()
    colour = {
        "white": [],
        "pink": ["lowpass", "-1", "2000"],
        "brown": ["lowpass", "-1", "300"],
        "hum": ["bandpass", "120", "20"],
        "hiss": ["highpass", "3000"],
    }[kind]
    raw = ["-t", "raw", "-r", str(SR), "-b", "16", "-c", "1", "-e", "signed-integer"]
    return _sox_raw([*raw, "-", *raw, "-", *colour, "gain", "-n", "-6"], pcm)


def music_bed(seconds: float, seed: int) -> F32:
    """Music-like tones: sox-synthesised plucked/sine/square notes on a random melody."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * SR), np.float32)
    t = 0.0
    while t < seconds:
        dur = float(rng.choice([0.15, 0.25, 0.4, 0.6]))
        shape = str(rng.choice(["pluck", "sine", "square", "triangle"]))
        # Some notes sit in the alarm band on purpose: music must not look like an alarm.
        freq = float(rng.choice([rng.uniform(110, 1000), rng.uniform(1000, 4200)], p=[0.7, 0.3]))
        note = _sox_raw(
            [
                "-n",
                "-r",
                str(SR),
                "-b",
                "16",
                "-c",
                "1",
                "-t",
                "raw",
                "-",
                "synth",
                f"{dur}",
                shape,
                f"{freq:.1f}",
                "fade",
                "0.01",
                f"{dur}",
                "0.05",
                "gain",
                "-12",
            ]
        )
        i = int(t * SR)
        n = min(len(note), len(out) - i)
        out[i : i + n] += note[:n]
        t += dur * float(rng.choice([1.0, 1.0, 1.5, 0.5]))
    return out


def beep_pattern(
    kind: str, seconds: float, rng: np.random.Generator, *, start: float
) -> tuple[F32, list[tuple[float, float]]]:
    """Smoke (T3) or CO (T4) sounder beeps near 3 kHz with timing jitter; returns group end times.

    ``hard`` makes alarm-band beeps in other rhythms (microwave, timer, single chirps): negatives.
    """
    out = np.zeros(int(seconds * SR), np.float32)
    f0 = rng.uniform(2800, 3500)
    jitter = lambda x: x * rng.uniform(0.88, 1.12)  # noqa: E731
    if kind == "t3":
        group = [(0.5, 0.5)] * 3
        pause = 1.5
    elif kind == "t4":
        group = [(0.1, 0.1)] * 4
        pause = 5.0
    else:
        n = int(rng.integers(1, 6))
        on = float(rng.choice([0.05, 0.2, 0.3, 1.0, 2.0]))
        group = [(on, float(rng.choice([0.2, 0.3, 0.8])))] * n
        pause = float(rng.uniform(2.0, 6.0))
    ends: list[tuple[float, float]] = []
    t = start
    while True:
        times = []
        tt = t
        for on, off in group:
            times.append((tt, jitter(on)))
            tt += jitter(on) + jitter(off)
        last_end = times[-1][0] + times[-1][1]
        if last_end > seconds:
            break
        for b0, dur in times:
            n = int(dur * SR)
            tone = np.arange(n) / SR
            wave = np.sin(2 * np.pi * f0 * tone) + 0.3 * np.sin(2 * np.pi * 2 * f0 * tone)
            ramp = np.minimum(1.0, np.minimum(np.arange(n), n - np.arange(n)) / 80.0)
            i = int(b0 * SR)
            out[i : i + n] += (0.5 * wave * ramp).astype(np.float32)
        ends.append((t, last_end))
        t = tt - jitter(group[-1][1]) + jitter(pause) if kind in ("t3", "t4") else tt + pause
    return out, ends


def mix(signal: F32, noise: F32, snr_db: float | None) -> F32:
    """Signal plus noise scaled to `snr_db` (None: a faint floor only)."""
    sp = (
        float(np.mean(signal[np.abs(signal) > 1e-3] ** 2))
        if np.any(np.abs(signal) > 1e-3)
        else 1e-4
    )
    npow = float(np.mean(noise**2)) + 1e-12
    target = sp / (10 ** ((snr_db if snr_db is not None else 50.0) / 10))
    return signal + noise * np.sqrt(target / npow).astype(np.float32)


@dataclass(frozen=True)
class Clip:
    audio: F32
    kind: str  # keyword name, "speech", "noise", "music", "alarm_t3", "alarm_t4", "beeps"
    speech_mask: F32 | None = None  # per-sample 1 where the utterance is
    alarm_groups: tuple[tuple[float, float], ...] = ()


def background(rng: np.random.Generator, seconds: float, seed: int) -> F32:
    kind = str(rng.choice(["white", "pink", "brown", "hum", "hiss", "music"]))
    return music_bed(seconds, seed) if kind == "music" else _seeded_noise(kind, seconds, seed)


def utterance_clip(text: str, kind: str, split: str, rng: np.random.Generator, seed: int) -> Clip:
    cfg = SPLITS[split]
    speech = speak(
        text,
        str(rng.choice(cfg["voices"])),
        str(rng.choice(cfg["variants"])),
        int(rng.integers(120, 210)),
        int(rng.integers(25, 80)),
        int(rng.choice([0, 0, 30, 60])),
    )
    seconds = 3.5
    speech = speech[: int(2.2 * SR)] * rng.uniform(0.2, 1.0)
    clean = np.zeros(int(seconds * SR), np.float32)
    # At least 0.5 s after the utterance: the endpointer closes a segment on 0.3 s of quiet.
    at = int(rng.uniform(0.3, seconds - 0.5 - len(speech) / SR) * SR)
    clean[at : at + len(speech)] = speech
    mask = np.zeros_like(clean)
    mask[at : at + len(speech)] = 1.0
    snr = rng.choice(np.array(cfg["snr_db"], dtype=object))
    audio = mix(clean, background(rng, seconds, seed), snr)
    return Clip(audio.astype(np.float32), kind, mask)


def background_clip(split: str, rng: np.random.Generator, seed: int) -> Clip:
    seconds = 3.0
    kind = str(rng.choice(["white", "pink", "brown", "hum", "hiss", "music", "music"]))
    bed = music_bed(seconds, seed) if kind == "music" else _seeded_noise(kind, seconds, seed)
    gain = rng.uniform(0.02, 0.5) / (np.sqrt(np.mean(bed**2)) + 1e-9)
    return Clip(
        (bed * gain).astype(np.float32), "music" if kind == "music" else "noise", np.zeros_like(bed)
    )


def alarm_clip(kind: str, split: str, rng: np.random.Generator, seed: int) -> Clip:
    seconds = 9.0
    beeps, ends = beep_pattern(kind, seconds, rng, start=rng.uniform(0.2, 2.5))
    cfg = SPLITS[split]
    bg_kind = rng.choice(["noise", "speech"])
    if bg_kind == "speech":
        bg = np.zeros(int(seconds * SR), np.float32)
        for k in range(3):
            s = speak(
                str(rng.choice(OTHER_PHRASES)),
                str(rng.choice(cfg["voices"])),
                str(rng.choice(cfg["variants"])),
                160,
                50,
                0,
            )[: 2 * SR]
            i = int(k * 3 * SR)
            bg[i : i + len(s)] += s
        bg += _seeded_noise("pink", seconds, seed) * 0.01
    else:
        bg = background(rng, seconds, seed)
    extra = 0.0 if split == "train" else -3.0  # the hardest level is held out too
    snr = rng.choice(np.array([s for s in cfg["snr_db"] if s is not None] + [extra], dtype=object))
    audio = mix(beeps, bg, float(snr))
    return Clip(
        audio.astype(np.float32),
        kind if kind == "beeps" else f"alarm_{kind}",
        alarm_groups=tuple(ends) if kind in ("t3", "t4") else (),
    )


def negative_clip(split: str, rng: np.random.Generator, seed: int, seconds: float = 30.0) -> Clip:
    """A long negative for the false-alarm rate: running speech, a noise bed or music."""
    kind = str(rng.choice(["speech", "noise", "music"]))
    if kind == "speech":
        cfg = SPLITS[split]
        audio = np.zeros(int(seconds * SR), np.float32)
        t = float(rng.uniform(0.0, 1.0))
        while t < seconds - 0.5:
            s = speak(
                str(rng.choice(OTHER_PHRASES)),
                str(rng.choice(cfg["voices"])),
                str(rng.choice(cfg["variants"])),
                int(rng.integers(120, 210)),
                int(rng.integers(25, 80)),
                int(rng.choice([0, 0, 30, 60])),
            ) * float(rng.uniform(0.2, 1.0))
            i = int(t * SR)
            n = min(len(s), len(audio) - i)
            audio[i : i + n] += s[:n]
            t += len(s) / SR + float(rng.uniform(0.2, 1.5))
        snr = rng.choice(np.array(cfg["snr_db"], dtype=object))
        audio = mix(audio, background(rng, seconds, seed), snr)
        return Clip(audio.astype(np.float32), "speech_long")
    bed = music_bed(seconds, seed) if kind == "music" else background(rng, seconds, seed)
    gain = rng.uniform(0.02, 0.5) / (np.sqrt(np.mean(bed**2)) + 1e-9)
    return Clip((bed * gain).astype(np.float32), f"{kind}_long")


def to_pcm16(audio: F32) -> npt.NDArray[np.int16]:
    peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
    if peak > 0.99:
        audio = audio * (0.99 / peak)
    return (audio * 32767).astype(np.int16)
