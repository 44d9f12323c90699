"""Synthetic microphone audio: PCM16 mono frames of silence, room noise and tones, plus a clip
set where recorded sounds (speech, alarms) plug in.

`ClipSet` is the extension point: ``ClipSet({"speech": [...], "alarm": [...]})`` with int16
arrays at 16 kHz; a microphone then plays a clip of a label with that label's probability per
frame (`CLIP_PROBABILITY`, occupancy-aware for speech). With an empty clip set (today) only the
synthetic scenes play.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from schemas.audio import SAMPLE_RATE

Samples = npt.NDArray[np.int16]


class Scene(StrEnum):
    """What a frame contains (the label of the frame)."""

    SILENCE = "silence"  # empty room: the microphone's noise floor
    NOISE = "noise"  # people about: broadband room noise
    TONE = "tone"  # a beep (microwave, oven timer): short sine bursts
    SPEECH = "speech"  # from the clip set only
    ALARM = "alarm"  # from the clip set only


BACKGROUND = frozenset({Scene.SILENCE, Scene.NOISE})
# Per frame, when the label has clips: (probability when the room is occupied, when empty).
CLIP_PROBABILITY: Mapping[str, tuple[float, float]] = {
    Scene.SPEECH: (0.3, 0.0),
    Scene.ALARM: (0.002, 0.002),
}
_TONE_PROBABILITY = (0.05, 0.01)  # occupied, empty


@dataclass(frozen=True)
class ClipSet:
    """Recorded sounds by label (int16 mono at 16 kHz), e.g. ``{"speech": [a, b]}``."""

    clips: Mapping[str, Sequence[Samples]] = field(default_factory=dict)

    def labels(self) -> list[str]:
        return sorted(label for label, items in self.clips.items() if len(items) > 0)

    def pick(self, label: str, rng: np.random.Generator) -> Samples:
        items = self.clips[label]
        return items[int(rng.integers(len(items)))]


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

    def choose(self, occupied: bool) -> str:
        """The label of the next frame."""
        r = self.rng.random()
        for label in self.clips.labels():
            p = CLIP_PROBABILITY.get(label, (0.01, 0.0))[0 if occupied else 1]
            if r < p:
                return label
            r -= p
        if r < _TONE_PROBABILITY[0 if occupied else 1]:
            return Scene.TONE
        return Scene.NOISE if occupied else Scene.SILENCE

    def frame(self, occupied: bool) -> tuple[Samples, str]:
        """One frame's samples and its label."""
        n = self.samples_per_frame
        label = self.choose(occupied)
        signal = _floor(self.rng, n)
        if occupied:
            signal += _room_noise(self.rng, n) * (0.3 if label != Scene.NOISE else 1.0)
        if label == Scene.TONE:
            signal += _beeps(self.rng, n)
        elif label not in BACKGROUND:
            clip = self.clips.pick(label, self.rng).astype(np.float64)[:n]
            offset = int(self.rng.integers(0, n - len(clip) + 1))
            signal[offset : offset + len(clip)] += clip
        return _to_pcm(signal), label
