"""VAD figures on held-out clips: music called speech, and speech recall.

Training-time and benchmark only (espeak-ng + sox through `training.audio_data`). The clips run
through the serving stream (`gateway.inference.audio.AudioStream`, 0.1 s pushes) with the
committed `audio_embedding` model and a VAD model, block by block (0.5 s), decided as the engine
decides (`p[speech] >= threshold`):

- music: `audio_data.music_bed` alone at the levels `audio_data.background_clip` uses, from
  seeds no training run uses (`MUSIC_SEED`);
- talk: `talk_data.talk_clip` minutes of the held-out voices reading the held-out sentences over
  the six beds; a block is speech when at least half of it lies inside a spoken sentence and not
  speech when at most 5 % does (the VAD's training labels); in between is not scored. A TV
  bed holds muffled talk, so its non-speech blocks are counted apart (`tv_gap_as_speech`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from gateway.inference.audio import AudioStream
from gateway.inference.frontend import SAMPLE_RATE
from training import audio_data as data
from training import talk_data

CHUNK = SAMPLE_RATE // 10
MUSIC_SEED = 9_100_000  # held-out music beds: seeds no training plan reaches
TALK_SEED = 9_200_000
MUSIC_SECONDS = 30.0


@dataclass(frozen=True)
class Block:
    """One VAD block: its features, its speech share (truth), and the clip's bed."""

    features: np.ndarray
    share: float
    bed: str


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def blocks(
    audio: np.ndarray,
    spans: Sequence[tuple[int, int]],
    bed: str,
    embed: Callable[[np.ndarray], np.ndarray],
) -> list[Block]:
    """The VAD inputs the serving stream makes of `audio`, with each block's speech share."""
    mask = np.zeros(len(audio), np.float32)
    for a, b in spans:
        mask[a:b] = 1.0
    stream = AudioStream()
    out: list[Block] = []
    for i in range(0, len(audio), CHUNK):
        ctx = stream.frames(audio[i : i + CHUNK], i / SAMPLE_RATE)
        for h in stream.accept(embed(ctx) if len(ctx) else ctx):
            if h.head == "vad":
                lo, hi = int(h.start * SAMPLE_RATE), int(h.end * SAMPLE_RATE)
                out.append(Block(h.features, float(mask[max(0, lo) : hi].mean()), bed))
    return out


def music_clip(seed: int) -> np.ndarray:
    """Music alone at a level `audio_data.background_clip` uses."""
    rng = np.random.default_rng(seed)
    bed = data.music_bed(MUSIC_SECONDS, seed)
    gain = rng.uniform(0.02, 0.5) / (np.sqrt(np.mean(bed**2)) + 1e-9)
    return (bed * gain).astype(np.float32)


def _music_job(seed: int) -> tuple[np.ndarray, tuple[tuple[int, int], ...], str]:
    return music_clip(seed), (), "music_alone"


def _talk_job(args: tuple[str, str, int]) -> tuple[np.ndarray, tuple[tuple[int, int], ...], str]:
    t = talk_data.talk_clip(*args)
    return t.audio, t.spans, t.bed


def clips(
    music: int, talk: int, *, split: str = "test", sentences: str = "test", offset: int = 0
) -> list[tuple[np.ndarray, tuple[tuple[int, int], ...], str]]:
    """`music` music clips (30 s) and `talk` talk minutes of a split (seeded)."""
    from multiprocessing import Pool

    with Pool(2) as pool:
        out = pool.map(_music_job, [MUSIC_SEED + offset + i for i in range(music)])
        out += pool.map(
            _talk_job, [(split, sentences, TALK_SEED + offset + i) for i in range(talk)]
        )
    return out


def embedder(models: Path) -> Callable[[np.ndarray], np.ndarray]:
    emb = session(models / "audio_embedding.onnx")
    name = emb.get_inputs()[0].name
    return lambda x: np.asarray(emb.run(None, {name: x.astype(np.float32)})[0], np.float32)


def speech_probabilities(vad: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    if not len(x):
        return np.zeros((0,), np.float32)
    return np.asarray(vad.run(None, {vad.get_inputs()[0].name: x})[-1])[:, 1]


def figures(all_blocks: Sequence[Block], probs: np.ndarray, threshold: float) -> dict[str, Any]:
    """Music called speech (music alone), talk speech recall and non-speech called speech."""
    said = probs >= threshold
    share = np.array([b.share for b in all_blocks])
    beds = np.array([b.bed for b in all_blocks])
    music = beds == "music_alone"
    talk = ~music
    speech = talk & (share >= 0.5)
    quiet = talk & (share <= 0.05)
    by_bed: dict[str, dict[str, float]] = {}
    for bed in sorted(set(beds[talk].tolist())):
        on = beds == bed
        by_bed[bed] = {
            "speech_recall": float(said[speech & on].mean()) if (speech & on).any() else 0.0,
            "gap_as_speech": float(said[quiet & on].mean()) if (quiet & on).any() else 0.0,
            "speech_blocks": int((speech & on).sum()),
            "gap_blocks": int((quiet & on).sum()),
        }
    gaps_no_tv = quiet & (beds != "tv")
    return {
        "vad_music_as_speech": float(said[music].mean()) if music.any() else 0.0,
        "music_blocks": int(music.sum()),
        "vad_speech_recall": float(said[speech].mean()) if speech.any() else 0.0,
        "speech_blocks": int(speech.sum()),
        "vad_gap_as_speech": float(said[gaps_no_tv].mean()) if gaps_no_tv.any() else 0.0,
        "gap_blocks": int(gaps_no_tv.sum()),
        "tv_gap_as_speech": by_bed.get("tv", {}).get("gap_as_speech"),
        "threshold": threshold,
        "by_bed": by_bed,
    }


def evaluate(models: Path, music: int = 40, talk: int = 30) -> dict[str, Any]:
    """The held-out figures of the VAD in `models` (with its manifest's threshold)."""
    import json

    threshold = json.loads((models / "vad.json").read_text())["thresholds"]["threshold"]
    embed = embedder(models)
    bl = [b for a, s, bed in clips(music, talk) for b in blocks(a, s, bed, embed)]
    x = np.asarray([b.features for b in bl], np.float32)
    out = figures(bl, speech_probabilities(session(models / "vad.onnx"), x), threshold)
    out["data"] = (
        f"{music} x {MUSIC_SECONDS:.0f} s of music alone (seeds {MUSIC_SEED}..) and {talk} min "
        f"of held-out talk (held-out voices and sentences, seeds {TALK_SEED}..)"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    from gateway.inference.settings import DEFAULT_MODELS_DIR

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--music", type=int, default=40, help="30 s music clips")
    parser.add_argument("--talk", type=int, default=30, help="talk minutes")
    parser.add_argument(
        "--write", action="store_true", help="write gateway/models/vad_metrics.json"
    )
    args = parser.parse_args(argv)
    data.require_tools()
    m = evaluate(DEFAULT_MODELS_DIR, music=args.music, talk=args.talk)
    print(json.dumps(m, indent=1))
    if args.write:
        path = DEFAULT_MODELS_DIR / "vad_metrics.json"
        path.write_text(json.dumps(m, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
