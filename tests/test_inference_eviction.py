"""The engine's per-device state is bounded: a device idle for ``idle_s`` is evicted (also when
no input arrives: `sweep`), its open window scored first and a microphone's partial speech
summary kept; beyond the limits the least recently used device goes; an evicted sensor starts
learning again. Real models, a fake idle clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest

from gateway.inference.engine import InferenceEngine
from gateway.inference.manifest import ModelKind
from gateway.inference.results import METRIC_OF
from gateway.inference.runtime import ModelRuntime
from gateway.inference.settings import DEFAULT_MODELS_DIR, InferenceSettings
from gateway.inference.streams import DeviceLimits
from gateway.ingest import ReadingsIn
from gateway.records import Reading
from schemas.audio import AudioFrame

T0 = 1_767_225_600.0
WINDOW = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Stored:
    """The engine's writer entry points: keeps the derived readings."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []

    async def write(self, _fn: Callable[..., None]) -> None:
        return None

    async def store(self, item: ReadingsIn) -> None:
        self.readings += item.readings

    def of(self, metric: str) -> list[Reading]:
        return [r for r in self.readings if r.metric == metric]


@pytest.fixture
async def engine() -> AsyncIterator[tuple[InferenceEngine, Clock, Stored]]:
    clock, stored = Clock(), Stored()
    settings = InferenceSettings(
        models=["sensor_anomaly", "audio_embedding", "vad"],
        sensor_window_s=WINDOW,
        warmup_hours=3 * WINDOW / 3600.0,  # 3 windows learn, the 4th is scored
        discovery=False,
    )
    runtime = ModelRuntime.load(DEFAULT_MODELS_DIR, names=settings.models)
    eng = InferenceEngine(
        settings,
        runtime,
        write=stored.write,
        store=stored.store,
        limits=DeviceLimits(idle_s=100.0, max_devices=2, max_microphones=1),
        idle_clock=clock,
    )
    task = asyncio.create_task(eng.run())
    try:
        yield eng, clock, stored
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        eng.close()


def reading(device: str, ts: float, value: float = 21.0) -> Reading:
    return Reading("h", "lab", device, "temperature", ts, value, None, ts)


async def test_an_idle_sensors_open_window_is_scored_and_its_state_dropped(
    engine: tuple[InferenceEngine, Clock, Stored],
) -> None:
    eng, clock, stored = engine
    # Windows 0..3 close (3 learn the baseline, the 4th is scored); window 4 stays open.
    eng.on_readings([reading("s1", T0 + k * WINDOW + 5) for k in range(5)])
    await eng.drain()
    assert [r.ts for r in stored.of(METRIC_OF[ModelKind.SENSOR_ANOMALY])] == [T0 + 4 * WINDOW]
    assert list(eng.streams.sensors) == [("h", "s1")]
    clock.now += 99.0
    eng.sweep()
    await eng.drain()
    assert list(eng.streams.sensors) == [("h", "s1")]  # not idle for 100 s yet
    clock.now += 2.0
    eng.sweep()  # no input at all: the sweep gives the engine its turn
    await eng.drain()
    assert eng.streams.sensors == {} and eng.stats.evicted_sensors == 1
    # The open window [4, 5) was scored on eviction instead of lost.
    ends = [r.ts for r in stored.of(METRIC_OF[ModelKind.SENSOR_ANOMALY])]
    assert ends == [T0 + 4 * WINDOW, T0 + 5 * WINDOW]
    # Back after eviction: a new device, learning its baseline again before it is scored.
    eng.on_readings([reading("s1", T0 + k * WINDOW + 5) for k in range(10, 13)])
    await eng.drain()
    assert len(stored.of(METRIC_OF[ModelKind.SENSOR_ANOMALY])) == 2


async def test_beyond_the_limits_the_least_recently_used_device_goes(
    engine: tuple[InferenceEngine, Clock, Stored],
) -> None:
    eng, clock, _ = engine
    for device in ("a", "b", "a", "c"):  # max_devices = 2: b is the least recently used
        clock.now += 1.0
        eng.on_readings([reading(device, T0 + clock.now)])
        await eng.drain()
    assert set(eng.streams.sensors) == {("h", "a"), ("h", "c")}
    assert eng.stats.evicted_sensors == 1


async def test_an_evicted_microphone_keeps_its_partial_speech_summary(
    engine: tuple[InferenceEngine, Clock, Stored],
) -> None:
    eng, clock, stored = engine
    rng = np.random.default_rng(3)
    for seq in range(4):  # 2 s of audio: the summary (every 10 s) is still open
        samples = (rng.standard_normal(8000) * 2000).astype(np.int16)
        eng.on_audio("h", "lab", "mic", AudioFrame(T0 + seq * 0.5, seq, 16000, samples))
    await eng.drain()
    assert stored.of(METRIC_OF[ModelKind.AUDIO_VAD]) == [] and len(eng.streams.microphones) == 1
    clock.now += 101.0
    eng.sweep()
    await eng.drain()
    assert eng.streams.microphones == {} and eng.stats.evicted_microphones == 1
    [summary] = stored.of(METRIC_OF[ModelKind.AUDIO_VAD])
    assert summary.device == "mic" and 0.0 <= summary.value <= 1.0
    assert T0 + 1.0 < summary.ts <= T0 + 2.0  # the end of the last 0.5 s block it summed
