"""The audio training data: every espeak-ng voice variant we name is real, and splits are apart.

espeak-ng speaks its default voice for a variant name it does not know (names are
case-sensitive), so a typo would silently shrink the training voices or put the default voice,
which training uses, into the held-out set.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tests.conftest import need
from training import audio_data as data


@pytest.fixture(scope="module")
def espeak() -> None:
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        need("espeak-ng and sox (apt-get install espeak-ng sox)")


def test_held_out_voices_and_variants_are_not_in_training() -> None:
    train, test = data.SPLITS["train"], data.SPLITS["test"]
    assert not set(train["voices"]) & set(test["voices"])
    assert not {v.lower() for v in train["variants"]} & {v.lower() for v in test["variants"]}


@pytest.mark.usefixtures("espeak")
def test_every_named_variant_is_installed() -> None:
    assert data.missing_variants() == []


@pytest.mark.usefixtures("espeak")
def test_no_held_out_variant_is_a_near_copy_of_a_training_one() -> None:
    train = {data.voice_signature(v): v for v in data.SPLITS["train"]["variants"]}
    near = {
        v: train[sig]
        for v in data.SPLITS["test"]["variants"]
        if (sig := data.voice_signature(v)) in train
    }
    assert near == {}
    assert data.voice_signature("steph") == data.voice_signature("steph2")  # what this catches


@pytest.mark.usefixtures("espeak")
def test_every_variant_changes_the_voice() -> None:
    def say(variant: str) -> np.ndarray:
        return data.speak("lights on", "en-us", variant, 160, 50, 0)

    def alike(a: np.ndarray, b: np.ndarray) -> bool:
        # espeak-ng's output differs from run to run in the last bit or two of a few samples.
        return a.shape == b.shape and float(np.max(np.abs(a - b))) < 0.01

    default = say("no-such-variant")
    variants = data.SPLITS["train"]["variants"] + data.SPLITS["test"]["variants"]
    assert [v for v in variants if alike(say(v), default)] == []
    assert alike(say("Steph"), default)  # the case-sensitivity this file guards against


@pytest.mark.usefixtures("espeak")
def test_the_same_seed_makes_the_same_clip_to_the_sample() -> None:
    # Music beds (sox's pluck synth) and speech through sox; sox without its repeatable mode
    # dithers with fresh random numbers, which left two runs a few LSB apart.
    def clips() -> list[np.ndarray]:
        rng = np.random.default_rng(11)
        return [
            data.music_bed(1.5, 4),
            data.utterance_clip("stop", "stop", "train", rng, 4).audio,
            data.alarm_clip("t4", "test", rng, 5).audio,
        ]

    for first, second in zip(clips(), clips(), strict=True):
        assert first.dtype == second.dtype and np.array_equal(first, second)
