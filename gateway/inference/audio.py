"""Per-source audio streams: front-end frames -> embedding -> the task heads' feature vectors.

Pure numpy and model-agnostic: the embedding and the heads are called by the caller (the engine
batches them across sources), so training builds its features with this very code. A stream
keeps a few seconds of *features*, and of samples only the ~2.5 s the keyword window needs (in
memory, overwritten as audio arrives).

Heads and their inputs:

- ``vad``: every 0.5 s block of frames -> mean/std of the embeddings, energy modulation.
- ``keyword``: each *standalone* utterance cut by an energy endpointer (above the noise floor
  and the sound's typical level) -> the last `KW_SAMPLES` (2 s) of audio when the endpointer
  closes it, so every utterance sits whole at the same place before the window's end; the
  engine turns that window into pretrained speech embeddings (`speech_embedding`) and
  `keyword_features`. A command is an utterance of its own: a segment reaches the keyword head
  only with a pause (`_END_SILENCE`) before and after it and at most `KW_MAX_UTTERANCE_FRAMES`
  long, so a sentence that holds "lights off" or "stop" never does; and the input waits
  `KW_CONFIRM_FRAMES` more (0.5 s of quiet after the utterance in all) and is dropped when speech
  resumes in them. Short near misses ("the lights", "a stop sign", "lights here") are the head's
  "other" class (training/train_keyword.py), and each command has its own threshold. For this
  the stream keeps the last ~2.5 s of samples in memory, overwritten as new audio arrives and
  never stored or sent. A steady bed (music, a fan) sets the level and yields no input after
  its onset; household talk yields ~6 inputs a minute (the short utterances and pauses-apart
  phrases; each costs one ~20 ms speech embedding). Sound cut off at `KW_MAX_FRAMES` without a
  pause, and the segment right after such a cut-off (it began without a pause), yield none.
  The level needs a few seconds of a stream to settle: a command in a microphone's first second
  can raise it and be cut short.
- ``alarm``: every 50 ms, the 3 kHz tonality of the last 4 s in 50 ms bins (T3/T4 beep rhythms),
  with `alarm_pattern`'s verdict on the same 4 s: the sounder timing itself (beeps of one pitch
  with T3 or T4 on/off times and a pause before the group). When the whole-frame check finds no
  group, `alarm_pattern_in_band` looks for the same timing in the tone's own band (its peak over
  the 2.5-4 kHz band's noise floor), so a distant sounder under a fan, traffic or a dishwasher,
  whose power lies elsewhere, is heard too; the head then sees that check's beep frames as the
  tonality. The engine fires only on a verdict; the head's probability is the event's score.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from gateway.inference.frontend import (
    CONTEXT,
    F32,
    FRAMES_PER_SECOND,
    HOP,
    N_BAND,
    N_MELS,
    SAMPLE_RATE,
    WIN,
    Frames,
    FrontEnd,
    context_stack,
)
from gateway.inference.speech_embedding import KW_SAMPLES

VAD_BLOCK = FRAMES_PER_SECOND // 2
ALARM_FRAMES = 4 * FRAMES_PER_SECOND
ALARM_BIN = 5
ALARM_HOP = 5
KW_MIN_FRAMES = 15
KW_MAX_FRAMES = 250
# A command is a standalone utterance: quiet before and after it and at most this long (10 ms
# frames, with the endpointer's pads). Standalone "lights on" / "lights off" / "stop" by
# training and held-out voices lasted at most 1.41 s (espeak-ng at 120-210 words a minute, with
# reverb); a sentence around a command word lasts longer and never reaches the keyword head.
KW_MAX_UTTERANCE_FRAMES = 170
# A keyword input waits this many frames past the endpointer's close (0.3 s of quiet), so a
# command needs 0.5 s of quiet after it; speech in them drops the input. On 20 min of
# calibration talk it removed 20 % of the keyword inputs (309 -> 248) and no command clip's
# input (120 of 120; 0.4 s: 6 clips lost, their clip ended first); 0.2 s more latency.
KW_CONFIRM_FRAMES = 20
# How much later than contiguous audio would place it the confirming frame may be stamped: past
# it, the microphone paused between the utterance and its quiet (its pushes' clock jumped), and
# the input is dropped, not run when the microphone resumes (minutes or hours after the words).
# 3 s, not less: a busy sender (the demo's simulated microphones on a loaded 2-core machine)
# skips a second or two of pushes, and a command must survive that.
KW_CONFIRM_SLACK_S = 3.0
_SPEECH_DB = 9.0
_ABOVE_LEVEL_DB = 7.0
_LEVEL_FRAMES = ALARM_FRAMES  # the typical level's span: the 4 s of energies the stream keeps
_LEVEL_EVERY = 10  # frames between median updates (a median of 400 costs ~13 us)
_LEVEL_MIN = 50  # frames before the level counts
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


def keyword_features(speech_emb: F32, log_duration: float) -> F32:
    """One utterance's feature vector: its window's speech embeddings (KW_STEPS x 96, in time
    order) less their mean over the window, and the log of the endpointed duration.

    Taking out the window's mean removes what stays put for its 2 s (the voice's and the room's
    colour) and keeps how the sound moves, which is what tells one word from another: on voices
    and accents held out from training it was right more often than the raw embeddings.
    """
    centred = speech_emb - speech_emb.mean(axis=0, keepdims=True)
    return np.concatenate([centred.ravel(), [log_duration]]).astype(np.float32)


@dataclass(frozen=True, slots=True)
class BeepPattern:
    """A sounder's temporal code (ISO 8201 / NFPA 72 T3 and T4), with tolerances in seconds."""

    label: str
    beeps: int
    on_s: tuple[float, float]
    gap_s: tuple[float, float]
    settle_s: float  # quiet after the last beep (longer than any gap) before the group counts
    bridge: int  # dropout frames bridged inside one beep (noise can mask a few frames)


# Nominal T3: 0.5 s on, 0.5 s off x3, then 1.5 s; T4: 0.1 s on, 0.1 s off x4, then 5 s. The
# ranges take +-12 % timing tolerance plus the 25 ms analysis window's smear.
BEEP_PATTERNS = (
    BeepPattern("smoke_t3", 3, (0.33, 0.75), (0.28, 0.75), 0.8, 12),
    BeepPattern("co_t4", 4, (0.05, 0.2), (0.03, 0.2), 0.3, 2),
)
PATTERN_PAUSE_S = 1.0  # no beep of that pitch this long before a group (both codes pause more)
_STRONG_NARROW, _STRONG_TONAL = 0.6, 0.1  # a frame that surely holds a tone
_ON_NARROW, _ON_TONAL = 0.45, 0.05  # a frame that holds the candidate tone
_PITCH_BINS = 2  # +-62.5 Hz
# The in-band path (`alarm_pattern_in_band`), chosen on bench/alarm_noise.py's tuning part: the
# smoothed band peak over 3 x the band's median bin, in dB (noise alone: median ~3.5 dB, 99th
# percentile ~7 dB).
INBAND_STRONG_DB = 7.0
INBAND_ON_DB = 6.0
_INBAND_ON = 10 ** (INBAND_ON_DB / 10)
INBAND_HELD = 0.6  # share of each beep's frames whose band peak sits at the beep's pitch
INBAND_TONAL = 0.8  # the alarm head sees the in-band on-frames at a clear tone's tonality
_RECENT = round(max(p.settle_s for p in BEEP_PATTERNS) * FRAMES_PER_SECOND) + 2 * ALARM_HOP


def _runs(on: npt.NDArray[np.bool_], bridge: int) -> list[tuple[int, int]]:
    """[start, end) of the on-runs, bridging gaps of up to `bridge` frames; runs < 30 ms dropped."""
    idx = np.flatnonzero(on)
    if len(idx) == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) > bridge + 1)
    starts = np.concatenate([idx[:1], idx[breaks + 1]])
    ends = np.concatenate([idx[breaks], idx[-1:]]) + 1
    return [(int(a), int(b)) for a, b in zip(starts, ends, strict=True) if b - a >= 3]


def _timed(on: npt.NDArray[np.bool_], n: int) -> tuple[str, list[tuple[int, int]]] | None:
    """The T3/T4 code whose group the on-frames (of one pitch) just completed, with the group's
    beeps ([start, end) frames), if any."""
    for p in BEEP_PATTERNS:
        settle = round(p.settle_s * FRAMES_PER_SECOND)
        # The group's last on-frame lies settle_s before now, within one hop (a cheap necessary
        # condition, checked before the runs are cut).
        if not on[max(0, n - settle - ALARM_HOP) : max(0, n - settle)].any():
            continue
        runs = _runs(on, p.bridge)
        if len(runs) < p.beeps:
            continue
        group, before = runs[-p.beeps :], runs[: -p.beeps]
        if not settle <= n - group[-1][1] < settle + ALARM_HOP:
            continue
        on_ok = all(p.on_s[0] <= (b - a) / FRAMES_PER_SECOND <= p.on_s[1] for a, b in group)
        gaps = [(b[0] - a[1]) / FRAMES_PER_SECOND for a, b in itertools.pairwise(group)]
        gap_ok = all(p.gap_s[0] <= g <= p.gap_s[1] for g in gaps)
        pause = PATTERN_PAUSE_S * FRAMES_PER_SECOND
        if on_ok and gap_ok and all(group[0][0] - r[1] >= pause for r in before):
            return p.label, group
    return None


def alarm_pattern(tonal: F32, narrow: F32, peak: F32) -> str | None:
    """``smoke_t3`` / ``co_t4`` when the frames (10 ms each, oldest first) end just after a
    complete T3/T4 group of one pitch, else None.

    Only groups whose last beep ended `settle_s` ago (and not much longer) match, so a stream
    checked every 50 ms matches each group once. Candidate pitches are the commonest peak bins
    of clearly tonal frames: other tones (music, speech harmonics) at other pitches do not break
    the alarm's runs.
    """
    n = len(tonal)
    # Cheap exit for speech and noise: a group that just completed had strong frames lately
    # (checked on the recent frames alone first: this runs 20 times per second per microphone).
    recent = _RECENT
    if not ((narrow[-recent:] >= _STRONG_NARROW) & (tonal[-recent:] >= _STRONG_TONAL)).any():
        return None
    strong = (narrow >= _STRONG_NARROW) & (tonal >= _STRONG_TONAL)
    if int(strong.sum()) < 10:
        return None
    bins, counts = np.unique(peak[strong], return_counts=True)
    for pitch in bins[np.argsort(-counts)][:2]:
        on = (np.abs(peak - pitch) <= _PITCH_BINS) & (narrow >= _ON_NARROW) & (tonal >= _ON_TONAL)
        found = _timed(on, n)
        if found:
            return found[0]
    return None


def alarm_pattern_in_band(inband: F32, inband_peak: F32, band_rel: F32) -> tuple[str, F32] | None:
    """The same T3/T4 check on the in-band tone (`frontend.Frames.inband`): for a sounder under
    a bed whose power lies elsewhere (a fan, traffic, a dishwasher), which `alarm_pattern`'s
    share of the whole frame's power misses. Returns the code and the on-frames of its pitch
    (the alarm head's input in place of the whole-frame tonality), else None.

    A frame is on when the candidate pitch's 3 bins of its smoothed band spectrum stand
    `INBAND_ON_DB` over the band's noise floor (`band_rel`); candidate pitches are the
    commonest peaks of frames `INBAND_STRONG_DB` over it. In noise alone the peak wanders over
    the band's 49 bins, so it seldom holds one pitch for a beep, let alone for a T3/T4 group
    with its pause.
    """
    n = len(inband)
    recent = inband[-_RECENT:] >= INBAND_STRONG_DB
    if int(recent.sum()) < 3:
        return None
    strong = inband >= INBAND_STRONG_DB
    if int(strong.sum()) < 10:
        return None
    counts = np.bincount(inband_peak[strong].astype(np.intp), minlength=N_BAND)
    for k in np.argsort(-counts)[:2]:
        if counts[k] == 0:
            break
        pitch = float(k)
        level = band_rel[:, max(0, k - 1) : k + 2].mean(axis=1)
        on = level >= _INBAND_ON
        found = _timed(on, n)
        if found is None:
            continue
        # Each beep holds the band's peak at its pitch most of the time: a sounder does, the
        # harmonics of speech and music glide and noise wanders.
        held = np.abs(inband_peak - pitch) <= _PITCH_BINS
        if all(held[a:b].mean() >= INBAND_HELD for a, b in found[1]):
            return found[0], on.astype(np.float32)
    return None


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
    pattern: str | None = None  # alarm: `alarm_pattern`'s verdict on the same frames
    audio: F32 | None = None  # keyword: the last KW_SAMPLES samples (features = log duration)


@dataclass(slots=True)
class _Endpointer:
    """Energy endpointer: speech is 9 dB above a slowly rising noise floor *and* 7 dB above the
    sound's typical level (the median frame energy of the last 4 s).

    The floor alone lets a steady bed louder than the room's quietest moments (music, TV, a fan
    at 8-15 dB below the voice) hold a segment open until the `KW_MAX_FRAMES` cut-off, whose
    window then sits anywhere on the command. A short command barely moves a 4 s median, so the
    level keeps the bed out and the command's own end closes its segment. Chosen on held-out
    voices of the recipe's choice set (seed 8), bench/endpointer.py: the share of keyword clips
    with a window that holds the whole command went from 0.71 to 0.91, for 8.0 inputs a minute
    of music instead of 7.1.
    """

    floor: float | None = None
    start: int | None = None
    last_speech: int = -1
    run: int = 0
    after_pause: bool = True  # the open segment began after quiet (not right after a cut-off)
    standalone: bool = False  # the segment `step` just returned had quiet before and after it
    level: float = float("-inf")  # the median, refreshed every _LEVEL_EVERY frames

    def step(self, i: int, e: float, energy: F32) -> tuple[int, int] | None:
        """Frame `i` (from 0) of energy `e`; `energy` ends with it (the stream's history)."""
        if (i + 1) % _LEVEL_EVERY == 0 and i + 1 >= _LEVEL_MIN:
            self.level = float(np.median(energy[-_LEVEL_FRAMES:]))
        # The floor follows drops at once and rises slowly, so speech does not raise it.
        if self.floor is None or e < self.floor:
            self.floor = e
        else:
            self.floor += 0.002 * (e - self.floor) + 0.005
        speech = e > max(self.floor + _SPEECH_DB, self.level + _ABOVE_LEVEL_DB)
        self.run = self.run + 1 if speech else 0
        if speech:
            self.last_speech = i
            if self.start is None and self.run >= 3:
                self.start = i - 2
        if self.start is not None:
            too_long = i - self.start >= KW_MAX_FRAMES  # cut off: no pause ends this segment
            if i - self.last_speech >= _END_SILENCE or too_long:
                seg = (self.start - _PAD, min(self.last_speech + _PAD, i))
                self.start = None
                self.standalone = self.after_pause and not too_long
                # A segment cut off mid-sound is followed by one that starts without a pause.
                self.after_pause = not too_long
                return seg
        return None


@dataclass(slots=True)
class AudioStream:
    """Feature state of one microphone."""

    frontend: FrontEnd = field(default_factory=FrontEnd)
    frame_index: int = 0  # index of the next frame
    # The newest push's time and the stream sample index of its first sample: stream times are
    # counted from it (`time_of`), so a microphone that paused (or a replay faster than real
    # time) gives results stamped with its frames' own clock, not with the first frame's time
    # plus the samples since, which drifted by every gap.
    t0: float | None = None
    t0_sample: int = 0
    history: F32 = field(default_factory=lambda: np.zeros((0, N_MELS), np.float32))
    emb: deque[F32] = field(default_factory=lambda: deque(maxlen=KW_MAX_FRAMES + 2 * _PAD + 40))
    # The last ALARM_FRAMES per-frame values as arrays (not deques): the alarm check slices them
    # 20 times a second, and converting a 400-long deque each time cost ~1 ms per audio second.
    energy: F32 = field(default_factory=lambda: np.zeros((0,), np.float32))
    tonal: F32 = field(default_factory=lambda: np.zeros((0,), np.float32))
    narrow: F32 = field(default_factory=lambda: np.zeros((0,), np.float32))
    peak: F32 = field(default_factory=lambda: np.zeros((0,), np.float32))
    inband: F32 = field(default_factory=lambda: np.zeros((0,), np.float32))
    inband_peak: F32 = field(default_factory=lambda: np.zeros((0,), np.float32))
    band_rel: F32 = field(default_factory=lambda: np.zeros((0, N_BAND), np.float32))
    endpointer: _Endpointer = field(default_factory=_Endpointer)
    since_alarm: int = 0
    pending: Frames | None = None
    recent: F32 = field(default_factory=lambda: np.zeros((0,), np.float32))
    recent_end: int = 0  # stream sample index just after `recent`
    # Frames of further quiet a keyword input waits for after the endpointer closed it (its
    # window is taken at the close); speech in them drops it: a command stands alone.
    kw_confirm: int = KW_CONFIRM_FRAMES
    kw_pending: tuple[HeadInput, int, float] | None = None  # input, due frame, due time

    def frames(self, samples: F32, ts: float) -> F32:
        """Phase 1: push samples, return the embedding inputs of the completed frames."""
        self.t0, self.t0_sample = ts, self.recent_end
        frames = self.frontend.push(samples)
        self.pending = frames
        # Enough for the 2 s window ending at any frame this push completes; older samples go.
        keep = KW_SAMPLES + len(samples) + WIN
        self.recent = np.concatenate([self.recent, samples])[-keep:]
        self.recent_end += len(samples)
        ctx = context_stack(frames.logmel, self.history if len(self.history) else None)
        if len(frames):
            self.history = np.vstack([self.history, frames.logmel])[-(CONTEXT - 1) :]
        return ctx

    def window_before(self, end: int) -> F32:
        """The KW_SAMPLES samples before stream sample `end` (zeros before the stream began)."""
        stop = len(self.recent) - (self.recent_end - end)
        part = self.recent[max(0, stop - KW_SAMPLES) : max(0, stop)]
        if len(part) < KW_SAMPLES:
            part = np.concatenate([np.zeros(KW_SAMPLES - len(part), np.float32), part])
        return part

    def time_of(self, index: int) -> float:
        """The time of frame `index`, from the newest push's time (frames before that push
        are placed back from it, as contiguous audio)."""
        assert self.t0 is not None
        return self.t0 + (index * HOP - self.t0_sample) / SAMPLE_RATE

    def accept(self, emb: F32) -> list[HeadInput]:
        """Phase 2: take the embeddings of the pending frames, return the heads' inputs."""
        frames = self.pending
        self.pending = None
        out: list[HeadInput] = []
        if frames is None:
            return out
        # History + this push's frames; `cur` below is the end (exclusive) of frame k in them.
        held = len(self.tonal)
        energy = np.concatenate([self.energy, np.asarray(frames.energy, np.float32)])
        tonal_all = np.concatenate([self.tonal, np.asarray(frames.tonal, np.float32)])
        narrow = np.concatenate([self.narrow, np.asarray(frames.narrow, np.float32)])
        peak = np.concatenate([self.peak, np.asarray(frames.peak, np.float32)])
        inband = np.concatenate([self.inband, frames.inband])
        inband_peak = np.concatenate([self.inband_peak, frames.inband_peak])
        band_rel = np.concatenate([self.band_rel, frames.band_rel])
        self.energy, self.tonal = energy[-ALARM_FRAMES:], tonal_all[-ALARM_FRAMES:]
        self.narrow, self.peak = narrow[-ALARM_FRAMES:], peak[-ALARM_FRAMES:]
        self.inband, self.inband_peak = inband[-ALARM_FRAMES:], inband_peak[-ALARM_FRAMES:]
        self.band_rel = band_rel[-ALARM_FRAMES:]
        for k in range(len(frames)):
            i = self.frame_index
            self.frame_index += 1
            cur = held + k + 1
            self.emb.append(emb[k])
            if (i + 1) % VAD_BLOCK == 0:
                block = np.asarray(list(self.emb)[-VAD_BLOCK:])
                en = energy[max(0, cur - VAD_BLOCK) : cur]
                to = tonal_all[max(0, cur - VAD_BLOCK) : cur]
                out.append(
                    HeadInput(
                        "vad",
                        vad_features(block, en, to),
                        self.time_of(i + 1 - VAD_BLOCK),
                        self.time_of(i + 1),
                    )
                )
            seg = self.endpointer.step(i, float(frames.energy[k]), energy[:cur])
            if self.kw_pending is not None:
                if self.endpointer.start is not None:  # speech again: not an utterance alone
                    self.kw_pending = None
                elif i >= self.kw_pending[1]:
                    if self.time_of(i) <= self.kw_pending[2] + KW_CONFIRM_SLACK_S:
                        out.append(self.kw_pending[0])
                    self.kw_pending = None
            if seg is not None:
                lo, hi = max(seg[0], i + 1 - len(self.emb)), seg[1]
                standalone = self.endpointer.standalone and hi - lo <= KW_MAX_UTTERANCE_FRAMES
                if hi - lo >= KW_MIN_FRAMES and standalone:
                    h = HeadInput(
                        "keyword",
                        np.array([np.log((hi - lo) / FRAMES_PER_SECOND)], np.float32),
                        self.time_of(lo),
                        self.time_of(hi),
                        audio=self.window_before(i * HOP + WIN),
                    )
                    if self.kw_confirm:
                        due = i + self.kw_confirm
                        self.kw_pending = (h, due, self.time_of(due))
                    else:
                        out.append(h)
            self.since_alarm += 1
            if self.since_alarm >= ALARM_HOP:
                self.since_alarm = 0
                end = self.frame_index
                lo_a = max(0, cur - ALARM_FRAMES)
                tonal = tonal_all[lo_a:cur]
                pattern = alarm_pattern(tonal, narrow[lo_a:cur], peak[lo_a:cur])
                # A tone under a loud bed, judged in its own band. When it matches, the head sees
                # its beep frames as a clear tone's tonality (the whole-frame tonality of such a
                # tone is a few %, which the head, trained on clearer alarms, scores low, even
                # when the whole-frame check matched too) in an input of its own: after the
                # whole-frame input, so the in-band path only adds chances to fire (the
                # debouncer's cooldown keeps it to one event).
                in_band = alarm_pattern_in_band(
                    inband[lo_a:cur], inband_peak[lo_a:cur], band_rel[lo_a:cur]
                )
                span = self.time_of(max(0, end - ALARM_FRAMES)), self.time_of(end)
                if in_band is None or pattern is not None:
                    out.append(HeadInput("alarm", alarm_features(tonal), *span, pattern))
                if in_band is not None:
                    heard = np.maximum(tonal, in_band[1] * INBAND_TONAL)
                    out.append(
                        HeadInput("alarm", alarm_features(heard), *span, pattern or in_band[0])
                    )
        return out


KEYWORD_LABELS = ("other", "lights_on", "lights_off", "stop")
ALARM_LABELS = ("none", "smoke_t3", "co_t4")


@dataclass(slots=True)
class AlarmDebouncer:
    """One event per alarm: fire when the T3/T4 timing matched and the head's score is at least
    `threshold`, then hold off `cooldown_s` (a sounder repeats its group)."""

    threshold: float
    cooldown_s: float
    last_fired: float = float("-inf")

    def step(self, score: float, at: float, pattern: str | None) -> bool:
        if pattern is None or score < self.threshold:
            return False
        if at - self.last_fired >= self.cooldown_s:
            self.last_fired = at
            return True
        return False


def keyword_decision(probs: F32, threshold: float | Mapping[str, float]) -> tuple[str, float]:
    """The keyword a segment's class probabilities name, or ``other`` below its threshold.

    `threshold` is one number or a manifest's thresholds: a command's own
    (``threshold_lights_on``, ``threshold_lights_off``, ``threshold_stop``: chosen per command
    on calibration data) where it has one, else ``threshold``.
    """
    best = int(np.argmax(probs[1:])) + 1
    label, score = KEYWORD_LABELS[best], float(probs[best])
    if isinstance(threshold, Mapping):
        limit = float(threshold.get(f"threshold_{label}", threshold.get("threshold", 0.5)))
    else:
        limit = float(threshold)
    return (label, score) if score >= limit else ("other", score)


def alarm_decision(probs: F32, pattern: str | None = None) -> tuple[str, float]:
    """Alarm label and score (the head's probability of any alarm); the matched timing
    pattern, when there is one, names the alarm."""
    score = float(1.0 - probs[0])
    label = pattern or ALARM_LABELS[1 + int(np.argmax(probs[1:]))]
    return label, score
