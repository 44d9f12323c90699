"""Synthetic microphone audio: PCM16 mono frames of silence, room noise and tones, plus a clip
set where recorded sounds (speech, keywords, alarms) plug in.

`ClipSet` is the extension point: ``ClipSet({"speech": [...], "alarm_smoke": [...]})`` with
int16 arrays at 16 kHz, or ``ClipSet.from_dir(path)`` over WAV files named
``<label>[_<n>].wav`` (``keyword_stop_0.wav`` has label ``keyword_stop``). A label's family is
its first word (``keyword``, ``speech``, ``alarm``, ``noise``); `CLIP_PROBABILITY` says how
often a family starts per frame. A clip longer than a frame plays on over the next frames, so a
listener that concatenates one microphone's frames hears it whole.
"""

from __future__ import annotations

import math
import re
import wave
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
import numpy.typing as npt

from schemas.audio import SAMPLE_RATE

Samples = npt.NDArray[np.int16]


class Scene(StrEnum):
    """Labels of the synthetic scenes (clip labels come from the clip set)."""

    SILENCE = "silence"  # empty room: the microphone's noise floor
    NOISE = "noise"  # people about: broadband room noise
    TONE = "tone"  # a beep (microwave, oven timer): short sine bursts


BACKGROUND = frozenset({Scene.SILENCE.value, Scene.NOISE.value})
# Chance per frame that a clip of the family starts: (room occupied and awake, otherwise).
CLIP_PROBABILITY: Mapping[str, tuple[float, float]] = {
    "speech": (0.05, 0.0),
    "keyword": (0.02, 0.0),
    "alarm": (0.001, 0.001),
    "noise": (0.05, 0.0),
}
_OTHER_FAMILY = (0.01, 0.0)
_TONE_PROBABILITY = (0.05, 0.01)  # occupied, empty
_NUMBERED = re.compile(r"_\d+$")
# Quiet around a cued clip (`AudioSynth.cue`): a spoken command stands alone only with a pause
# before and after it, and an alarm pattern counts only after a second without its beeps.
CUE_QUIET_S = 1.0


def family(label: str) -> str:
    """``keyword_lights_on`` -> ``keyword``."""
    return label.split("_", 1)[0]


@dataclass(frozen=True)
class ClipSet:
    """Recorded sounds by label (int16 mono at 16 kHz)."""

    clips: Mapping[str, Sequence[Samples]] = field(default_factory=dict)

    @classmethod
    def from_dir(cls, path: Path) -> ClipSet:
        """Every ``*.wav`` in `path` (16-bit mono 16 kHz); the label is the name without a
        trailing ``_<n>``."""
        clips: dict[str, list[Samples]] = {}
        for wav in sorted(path.glob("*.wav")):
            with wave.open(str(wav), "rb") as w:
                shape = (w.getnchannels(), w.getsampwidth(), w.getframerate())
                if shape != (1, 2, SAMPLE_RATE):
                    raise ValueError(
                        f"{wav}: {shape[0]} channel(s), {8 * shape[1]}-bit, {shape[2]} Hz; "
                        f"expected mono 16-bit {SAMPLE_RATE} Hz"
                    )
                pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)
            if len(pcm):
                clips.setdefault(_NUMBERED.sub("", wav.stem), []).append(pcm)
        return cls(clips)

    def labels(self) -> list[str]:
        return sorted(label for label, items in self.clips.items() if len(items) > 0)

    def pick(self, label: str, rng: np.random.Generator) -> Samples:
        items = self.clips[label]
        return items[int(rng.integers(len(items)))]


@dataclass(frozen=True, slots=True)
class SynthFrame:
    """One frame's samples and label; `started`/`finished` mark a clip's first and last frame."""

    samples: Samples
    label: str
    started: bool = False
    finished: bool = False


def _floor(rng: np.random.Generator, n: int) -> npt.NDArray[np.float64]:
    return rng.normal(0.0, 8.0, n)


def _room_noise(rng: np.random.Generator, n: int) -> npt.NDArray[np.float64]:
    # White noise through a one-pole low-pass: duller, like voices and footsteps through a room.
    white = rng.normal(0.0, 1.0, n)
    kernel = 0.85 ** np.arange(32)
    shaped = np.convolve(white, kernel, mode="same")
    level = rng.uniform(200.0, 1500.0)
    return shaped / (shaped.std() + 1e-9) * level


def _beeps(rng: np.random.Generator, n: int) -> npt.NDArray[np.float64]:
    out = np.zeros(n)
    freq = rng.choice([880.0, 1000.0, 2000.0, 2800.0])
    amplitude = rng.uniform(3000.0, 8000.0)
    length = int(rng.uniform(0.08, 0.2) * SAMPLE_RATE)
    t = np.arange(length) / SAMPLE_RATE
    burst = amplitude * np.sin(2 * np.pi * freq * t) * np.hanning(length)
    start = int(rng.integers(0, max(1, n // 4)))
    while start + length <= n:
        out[start : start + length] += burst
        start += 2 * length
        if rng.random() < 0.4:
            break
    return out


def _to_pcm(signal: npt.NDArray[np.float64]) -> Samples:
    return np.clip(np.rint(signal), -32768, 32767).astype(np.int16)


class AudioSynth:
    """Makes one microphone's frames; deterministic for its random generator."""

    def __init__(
        self,
        rng: np.random.Generator,
        *,
        frame_seconds: float,
        clips: ClipSet | None = None,
    ) -> None:
        self.rng = rng
        self.samples_per_frame = max(1, round(frame_seconds * SAMPLE_RATE))
        self.clips = clips or ClipSet()
        self._families: dict[str, list[str]] = {}
        for label in self.clips.labels():
            self._families.setdefault(family(label), []).append(label)
        self._playing: tuple[str, Samples] | None = None
        self._pos = 0
        # Cued clips (`cue`), the quiet frames owed before the next one may start or after one
        # ended, and how many quiet frames a pause takes.
        self._cued: list[str] = []
        self._quiet_owed = 0
        self._quiet_run = 0
        self._pause_frames = max(1, math.ceil(CUE_QUIET_S / frame_seconds))

    @property
    def playing(self) -> str | None:
        """The label of the clip being played (it continues in the next frame)."""
        return None if self._playing is None else self._playing[0]

    def cue(self, label: str) -> None:
        """Play clip `label` once the clip playing (if any) has ended, with `CUE_QUIET_S` of
        the room's quiet floor before and after it, so that it stands alone: a spoken command
        with a pause around it, an alarm not run into speech. An unknown label raises
        `KeyError`."""
        if not self.clips.clips.get(label):
            raise KeyError(f"no clip labelled {label!r} (have: {', '.join(self.clips.labels())})")
        self._cued.append(label)

    def _next_label(self, occupied: bool) -> str:
        if self._quiet_owed > 0 or (self._cued and self._quiet_run < self._pause_frames):
            self._quiet_owed = max(0, self._quiet_owed - 1)
            return Scene.SILENCE.value
        if self._cued:
            self._quiet_owed = self._pause_frames  # after it ends
            return self._cued.pop(0)
        return self.choose(occupied)

    def choose(self, occupied: bool) -> str:
        """The label of the next frame when no clip is playing."""
        which = 0 if occupied else 1
        r = self.rng.random()
        for fam, labels in sorted(self._families.items()):
            p = CLIP_PROBABILITY.get(fam, _OTHER_FAMILY)[which]
            if r < p:
                return labels[int(self.rng.integers(len(labels)))]
            r -= p
        if r < _TONE_PROBABILITY[which]:
            return Scene.TONE.value
        return Scene.NOISE.value if occupied else Scene.SILENCE.value

    def frame(self, occupied: bool) -> SynthFrame:
        """The next frame."""
        n = self.samples_per_frame
        started = False
        offset = 0
        if self._playing is None:
            label = self._next_label(occupied)
            self._quiet_run = self._quiet_run + 1 if label == Scene.SILENCE else 0
            if label in self.clips.clips:
                self._playing = (label, self.clips.pick(label, self.rng))
                self._pos = 0
                started = True
                offset = int(self.rng.integers(0, max(1, n // 2)))
        else:
            label = self._playing[0]
        signal = _floor(self.rng, n)
        if occupied:
            signal += _room_noise(self.rng, n) * (1.0 if label == Scene.NOISE else 0.3)
        if label == Scene.TONE:
            signal += _beeps(self.rng, n)
        finished = False
        if self._playing is not None:
            clip = self._playing[1]
            take = min(n - offset, len(clip) - self._pos)
            signal[offset : offset + take] += clip[self._pos : self._pos + take]
            self._pos += take
            if self._pos >= len(clip):
                self._playing = None
                finished = True
        return SynthFrame(_to_pcm(signal), label, started=started, finished=finished)
