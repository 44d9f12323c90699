"""Alarms under household noise, through the real engine (frames -> `AudioStream` -> the
committed alarm head -> the debouncer -> a published event): a distant T3 under a loud brown
bed is found, which the whole-frame tonality check alone misses, and two minutes of household
audio without an alarm (talk over a bed, appliance noise with a kettle, beeps, a microwave,
rings and a doorbell) stay silent. The sounds are bench/alarm_noise.py's (seeded, held-out
part)."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from gateway.inference.engine import InferenceEngine
from gateway.inference.runtime import ModelRuntime
from gateway.inference.settings import DEFAULT_MODELS_DIR, InferenceSettings
from schemas.audio import AudioFrame
from schemas.events import decode_event
from tests.conftest import need

T0 = 1_767_225_600.0
SR = 16000


class Events:
    """The engine's publisher: keeps the decoded alarm events."""

    def __init__(self) -> None:
        self.labels: list[str] = []

    def submit(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        event = decode_event(payload)
        if "/alarm" in topic:
            self.labels.append(event.label)
        return True


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        need("espeak-ng and sox (apt-get install espeak-ng sox)")
    path = Path(__file__).resolve().parents[1] / "bench" / "alarm_noise.py"
    spec = importlib.util.spec_from_file_location("alarm_noise_bench", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
async def engine() -> AsyncIterator[tuple[InferenceEngine, Events]]:
    settings = InferenceSettings(models=["audio_embedding", "alarm"], discovery=False)
    runtime = ModelRuntime.load(DEFAULT_MODELS_DIR, names=settings.models)
    events = Events()

    async def discard(_item: object) -> None:
        return None

    eng = InferenceEngine(settings, runtime, write=discard, store=discard, publisher=events)
    task = asyncio.create_task(eng.run())
    try:
        yield eng, events
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        eng.close()


async def heard(eng: InferenceEngine, events: Events, audio: np.ndarray) -> list[str]:
    """Play float audio to the engine in 0.5 s PCM16 frames; the alarm events it published."""
    from training import audio_data

    pcm = audio_data.to_pcm16(audio.astype(np.float32))
    step = SR // 2
    for seq, i in enumerate(range(0, len(pcm), step)):
        eng.on_audio("h", "kitchen", "mic", AudioFrame(T0 + i / SR, seq, SR, pcm[i : i + step]))
    await eng.drain()
    return list(events.labels)


def whole_frame_patterns(audio: np.ndarray) -> list[str]:
    """What the whole-frame tonality check alone (`alarm_pattern`) finds in `audio`."""
    from gateway.inference.audio import ALARM_FRAMES, ALARM_HOP, alarm_pattern
    from gateway.inference.frontend import frames_of

    f = frames_of(audio.astype(np.float32))
    found = []
    for end in range(ALARM_HOP, len(f) + 1, ALARM_HOP):
        lo = max(0, end - ALARM_FRAMES)
        label = alarm_pattern(f.tonal[lo:end], f.narrow[lo:end], f.peak[lo:end])
        if label:
            found.append(label)
    return found


async def test_a_distant_t3_under_a_brown_noise_bed_is_found(
    bench: ModuleType, engine: tuple[InferenceEngine, Events]
) -> None:
    rng = np.random.default_rng(5)
    alarm, groups = bench.alarm_sound("t3", rng)
    bed = bench.household_bed("brown", bench.CLIP_S, 6, bench.PARTS["held_out"]) * bench.BED_RMS
    audio = alarm * 0.035 + bed  # the sounder's peak 0.035 of full scale, the bed -20 dBFS
    assert len(groups) >= 2
    assert whole_frame_patterns(audio) == []  # the tone is too weak against the whole frame
    eng, events = engine
    # One event per group (the sounder repeats its group every ~4 s, past the 3.5 s cooldown).
    assert await heard(eng, events, audio) == ["smoke_t3"] * len(groups)


async def test_household_audio_without_an_alarm_stays_silent(
    bench: ModuleType, engine: tuple[InferenceEngine, Events]
) -> None:
    talk = bench._long_job(("held_out", "talk", 2370001)).audio
    house = bench._long_job(("held_out", "household", 2380001)).audio
    eng, events = engine
    assert await heard(eng, events, np.concatenate([talk, house])) == []


def in_band_patterns(audio: np.ndarray) -> list[str]:
    """What the in-band check alone (`alarm_pattern_in_band`) finds in `audio`."""
    from gateway.inference.audio import ALARM_FRAMES, ALARM_HOP, alarm_pattern_in_band
    from gateway.inference.frontend import frames_of

    f = frames_of(audio.astype(np.float32))
    found = []
    for end in range(ALARM_HOP, len(f) + 1, ALARM_HOP):
        lo = max(0, end - ALARM_FRAMES)
        hit = alarm_pattern_in_band(f.inband[lo:end], f.inband_peak[lo:end], f.band_rel[lo:end])
        if hit:
            found.append(hit[0])
    return found


def test_the_in_band_check_knows_t3_and_t4_timing_and_nothing_else(bench: ModuleType) -> None:
    bed = bench.household_bed("brown", 10.0, 16, bench.PARTS["held_out"]) * bench.BED_RMS

    def beeps(on_off: list[tuple[float, float]], f0: float = 3100.0) -> np.ndarray:
        x = bed.copy()
        t = 1.5
        for on, off in on_off:
            i, n = int(t * SR), int(on * SR)
            x[i : i + n] += 0.03 * np.sin(2 * np.pi * f0 * np.arange(n) / SR).astype(np.float32)
            t += on + off
        return x

    assert in_band_patterns(beeps([(0.5, 0.5), (0.5, 0.5), (0.5, 1.5)])) == ["smoke_t3"]
    assert in_band_patterns(beeps([(0.1, 0.1)] * 3 + [(0.1, 5.0)])) == ["co_t4"]
    # Other rhythms under the same bed: a microwave's long beeps, a 0.3 s timer, five T3-like
    # beeps in a row (no pause), a single chirp, and the bed alone.
    assert in_band_patterns(beeps([(1.0, 0.3)] * 3)) == []
    assert in_band_patterns(beeps([(0.3, 0.3)] * 3)) == []
    assert in_band_patterns(beeps([(0.5, 0.5)] * 5)) == []
    assert in_band_patterns(beeps([(0.05, 2.0)])) == []
    assert in_band_patterns(bed) == []
