"""Per-source audio streams: front-end frames -> embedding -> the task heads' feature vectors.

Pure numpy and model-agnostic: the embedding and the heads are called by the caller (the engine
batches them across sources), so training builds its features with this very code. A stream
keeps only a few seconds of *features* (never samples beyond the current 25 ms frame).

Heads and their inputs:

- ``vad``: every 0.5 s block of frames -> mean/std of the embeddings, energy modulation.
- ``keyword``: each utterance cut by an energy endpointer -> its embeddings, mean-normalised and
  resampled to `KW_STEPS` steps (so speaking rate and start time do not matter).
- ``alarm``: every 50 ms, the 3 kHz tonality of the last 4 s in 50 ms bins (T3/T4 beep rhythms).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from gateway.inference.frontend import (
    CONTEXT,
    F32,
    FRAMES_PER_SECOND,
    HOP,
    N_MELS,
    SAMPLE_RATE,
    Frames,
    FrontEnd,
    context_stack,
)

VAD_BLOCK = FRAMES_PER_SECOND // 2
ALARM_FRAMES = 4 * FRAMES_PER_SECOND
ALARM_BIN = 5
ALARM_HOP = 5
KW_STEPS = 12
KW_MIN_FRAMES = 15
KW_MAX_FRAMES = 250
_SPEECH_DB = 9.0
_END_SILENCE = 30
_PAD = 5


def vad_features(emb: F32, energy: F32, tonal: F32) -> F32:
    """One VAD block's feature vector."""
    de = np.diff(energy)
    extra = np.array(
        [
            float(np.std(energy)),
            float(np.percentile(energy, 90) - np.percentile(energy, 10)),
            float(np.mean(np.abs(de))) if len(de) else 0.0,
            float(np.mean(tonal)),
        ],
        np.float32,
    )
    centred = emb - emb.mean(axis=0)
    return np.concatenate(
        [emb.mean(axis=0), emb.std(axis=0), np.abs(centred).max(axis=0), extra]
    ).astype(np.float32)


def keyword_features(emb: F32) -> F32:
    """One utterance's feature vector: mean/variance-normalised embeddings at KW_STEPS steps."""
    centred = (emb - emb.mean(axis=0)) / (emb.std(axis=0) + 1e-3)
    pos = np.linspace(0.0, len(emb) - 1, KW_STEPS)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, len(emb) - 1)
    w = (pos - lo)[:, None].astype(np.float32)
    steps = centred[lo] * (1.0 - w) + centred[hi] * w
    dur = np.array([np.log(len(emb) / FRAMES_PER_SECOND)], np.float32)
    return np.concatenate([steps.ravel(), dur]).astype(np.float32)


def alarm_features(tonal: F32) -> F32:
    """The last ALARM_FRAMES of tonality pooled to 50 ms bins (max: a beep edge counts)."""
    if len(tonal) < ALARM_FRAMES:
        tonal = np.concatenate([np.zeros(ALARM_FRAMES - len(tonal), np.float32), tonal])
    return tonal[-ALARM_FRAMES:].reshape(-1, ALARM_BIN).max(axis=1).astype(np.float32)


@dataclass(frozen=True, slots=True)
class HeadInput:
    """A feature vector ready for a head, with the time span it covers."""

    head: str
    features: F32
    start: float
    end: float


@dataclass
class _Endpointer:
    """Energy endpointer: a slowly rising noise floor; speech is 9 dB above it."""

    floor: float | None = None
    start: int | None = None
    last_speech: int = -1
    run: int = 0

    def step(self, i: int, e: float) -> tuple[int, int] | None:
        # The floor follows drops at once and rises slowly, so speech does not raise it.
        if self.floor is None or e < self.floor:
            self.floor = e
        else:
            self.floor += 0.002 * (e - self.floor) + 0.005
        speech = e > self.floor + _SPEECH_DB
        self.run = self.run + 1 if speech else 0
        if speech:
            self.last_speech = i
            if self.start is None and self.run >= 3:
                self.start = i - 2
        if self.start is not None:
            too_long = i - self.start >= KW_MAX_FRAMES
            if i - self.last_speech >= _END_SILENCE or too_long:
                seg = (self.start - _PAD, min(self.last_speech + _PAD, i))
                self.start = None
                return seg
        return None


@dataclass
class AudioStream:
    """Feature state of one microphone."""

    frontend: FrontEnd = field(default_factory=FrontEnd)
    frame_index: int = 0  # index of the next frame
    t0: float | None = None  # time of frame index 0
    history: F32 = field(default_factory=lambda: np.zeros((0, N_MELS), np.float32))
    emb: deque[F32] = field(default_factory=lambda: deque(maxlen=KW_MAX_FRAMES + 2 * _PAD + 40))
    energy: deque[float] = field(default_factory=lambda: deque(maxlen=ALARM_FRAMES))
    tonal: deque[float] = field(default_factory=lambda: deque(maxlen=ALARM_FRAMES))
    endpointer: _Endpointer = field(default_factory=_Endpointer)
    since_alarm: int = 0
    pending: Frames | None = None

    def frames(self, samples: F32, ts: float) -> F32:
        """Phase 1: push samples, return the embedding inputs of the completed frames."""
        if self.t0 is None:
            self.t0 = ts
        frames = self.frontend.push(samples)
        self.pending = frames
        ctx = context_stack(frames.logmel, self.history if len(self.history) else None)
        if len(frames):
            self.history = np.vstack([self.history, frames.logmel])[-(CONTEXT - 1) :]
        return ctx

    def time_of(self, index: int) -> float:
        assert self.t0 is not None
        return self.t0 + index * HOP / SAMPLE_RATE

    def accept(self, emb: F32) -> list[HeadInput]:
        """Phase 2: take the embeddings of the pending frames, return the heads' inputs."""
        frames = self.pending
        self.pending = None
        out: list[HeadInput] = []
        if frames is None:
            return out
        for k in range(len(frames)):
            i = self.frame_index
            self.frame_index += 1
            self.emb.append(emb[k])
            self.energy.append(float(frames.energy[k]))
            self.tonal.append(float(frames.tonal[k]))
            if (i + 1) % VAD_BLOCK == 0:
                block = np.asarray(list(self.emb)[-VAD_BLOCK:])
                en = np.asarray(list(self.energy)[-VAD_BLOCK:], np.float32)
                to = np.asarray(list(self.tonal)[-VAD_BLOCK:], np.float32)
                out.append(
                    HeadInput(
                        "vad",
                        vad_features(block, en, to),
                        self.time_of(i + 1 - VAD_BLOCK),
                        self.time_of(i + 1),
                    )
                )
            seg = self.endpointer.step(i, float(frames.energy[k]))
            if seg is not None:
                lo, hi = max(seg[0], i + 1 - len(self.emb)), seg[1]
                if hi - lo >= KW_MIN_FRAMES:
                    stored = np.asarray(self.emb)
                    part = stored[len(stored) - (i + 1 - lo) : len(stored) - (i - hi)]
                    out.append(
                        HeadInput(
                            "keyword", keyword_features(part), self.time_of(lo), self.time_of(hi)
                        )
                    )
            self.since_alarm += 1
            if self.since_alarm >= ALARM_HOP:
                self.since_alarm = 0
                end = self.frame_index
                out.append(
                    HeadInput(
                        "alarm",
                        alarm_features(np.asarray(self.tonal, np.float32)),
                        self.time_of(max(0, end - ALARM_FRAMES)),
                        self.time_of(end),
                    )
                )
        return out


KEYWORD_LABELS = ("other", "lights_on", "lights_off", "stop")
ALARM_LABELS = ("none", "smoke_t3", "co_t4")


@dataclass
class AlarmDebouncer:
    """One event per alarm pattern: fire on a score above threshold, then hold off `cooldown_s`."""

    threshold: float
    cooldown_s: float
    last_fired: float = float("-inf")

    def step(self, score: float, at: float) -> bool:
        if score >= self.threshold and at - self.last_fired >= self.cooldown_s:
            self.last_fired = at
            return True
        return False


def keyword_decision(probs: F32, threshold: float) -> tuple[str, float]:
    """The keyword a segment's class probabilities name, or ``other`` below `threshold`."""
    best = int(np.argmax(probs[1:])) + 1
    score = float(probs[best])
    return (KEYWORD_LABELS[best], score) if score >= threshold else ("other", score)


def alarm_decision(probs: F32) -> tuple[str, float]:
    """Alarm label and score (probability of any alarm) of one alarm-head output."""
    score = float(1.0 - probs[0])
    label = ALARM_LABELS[1 + int(np.argmax(probs[1:]))]
    return label, score
