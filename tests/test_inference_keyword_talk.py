"""Keyword commands are standalone utterances: a command phrase inside a sentence, or a near miss,
never fires; the command said on its own does. espeak-ng speech by a held-out voice (one the
keyword head never trained on) through the real engine (frames -> `AudioStream` -> speech
embedding -> the committed keyword model -> the scorer's decision -> a published event)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator

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
VOICE = ("en-us-nyc", "m4", 160, 50)  # a held-out voice and variant (training/audio_data.SPLITS)


class Events:
    """The engine's publisher: keeps the decoded events."""

    def __init__(self) -> None:
        self.labels: list[str] = []

    def submit(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        self.labels.append(decode_event(payload).label)
        return True


@pytest.fixture(scope="module")
def espeak() -> None:
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        need("espeak-ng and sox (apt-get install espeak-ng sox)")


@pytest.fixture
async def engine() -> AsyncIterator[tuple[InferenceEngine, Events]]:
    settings = InferenceSettings(models=["audio_embedding", "keyword"], discovery=False)
    runtime = ModelRuntime.load(DEFAULT_MODELS_DIR, names=settings.models)
    events = Events()

    async def write(_fn: object) -> None:
        return None

    async def store(_item: object) -> None:
        return None

    eng = InferenceEngine(settings, runtime, write=write, store=store, publisher=events)
    task = asyncio.create_task(eng.run())
    try:
        yield eng, events
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        eng.close()


def spoken(texts: list[str]) -> np.ndarray:
    """Each text said by the held-out voice, 2.5 s of quiet room between them (int16 PCM)."""
    from training import audio_data

    rng = np.random.default_rng(11)
    quiet = lambda s: (rng.standard_normal(int(s * SR)) * 3e-4).astype(np.float32)  # noqa: E731
    parts = [quiet(1.5)]
    for text in texts:
        parts += [audio_data.speak(text, *VOICE, 0) * 0.5, quiet(2.5)]
    return audio_data.to_pcm16(np.concatenate(parts))


async def heard(eng: InferenceEngine, events: Events, pcm: np.ndarray) -> list[str]:
    """Play `pcm` to the engine in 0.5 s frames; the keyword events it published."""
    step = SR // 2
    for seq, i in enumerate(range(0, len(pcm), step)):
        eng.on_audio("h", "lounge", "mic", AudioFrame(T0 + i / SR, seq, SR, pcm[i : i + step]))
    await eng.drain()
    return list(events.labels)


@pytest.mark.usefixtures("espeak")
async def test_command_words_inside_sentences_and_near_misses_do_not_fire(
    engine: tuple[InferenceEngine, Events],
) -> None:
    eng, events = engine
    talk = [
        "we turned the lights off before the film",
        "can you leave the lights on for your sister",
        "the bus did not stop at our corner",
        "lights",
        "the lights",
        "a stop sign",
        "the spotlight",
        "on and on",
        "stop it now",
        "don't stop",
    ]
    assert await heard(eng, events, spoken(talk)) == []


@pytest.mark.usefixtures("espeak")
async def test_a_standalone_command_still_fires(engine: tuple[InferenceEngine, Events]) -> None:
    eng, events = engine
    pcm = spoken(["lights off", "lights on"])
    assert await heard(eng, events, pcm) == ["lights_off", "lights_on"]


# The head retrained on long-form talk (threshold 0.98 for 6 false commands an hour) misses
# over a third of standalone "stop"s by held-out voices (50/80 heard, keyword_metrics.json), this
# voice's among them. Strict: it must pass once the head hears "stop" again.
@pytest.mark.xfail(strict=True, reason="retrained keyword head misses ~35% of standalone stops")
@pytest.mark.usefixtures("espeak")
async def test_a_standalone_stop_fires(engine: tuple[InferenceEngine, Events]) -> None:
    eng, events = engine
    assert await heard(eng, events, spoken(["stop"])) == ["stop"]
