"""Keyword endpointer benchmark: where the keyword windows fall, with and without the level rule.

    .venv/bin/python bench/endpointer.py [--json] [--negatives 40]

Needs the ``train`` extra and espeak-ng + sox (it makes the clips of the keyword recipe's choice
set, seed 8, and long negatives of seed 9, as training/train_audio.py does).
Each clip goes through the serving code (`AudioStream`, 0.1 s pushes); the embedding does not
matter for where segments close, so the frame embeddings are zeros. Prints, for the endpointer
as it is ("level") and with the level rule off ("floor only"):

- ``command_in_window``: the share of keyword clips with a keyword input whose 2 s window holds
  the whole command (from its start to 0.1 s before its end) and ends less than 0.8 s after it;
- ``inputs_per_keyword_clip``;
- ``inputs_per_minute`` of 30 s negatives by kind (running speech, music, noise): each input
  costs one speech embedding (~22 ms on one thread).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.inference import audio  # noqa: E402
from gateway.inference.frontend import SAMPLE_RATE  # noqa: E402
from gateway.inference.speech_embedding import KW_SECONDS  # noqa: E402

CHUNK = SAMPLE_RATE // 10
# A keyword input's window ends when the segment closes: `_END_SILENCE` frames after the last
# speech, of which `_PAD` are inside the segment (10 ms frames).
WINDOW_AFTER_SEGMENT_S = (audio._END_SILENCE - audio._PAD) / 100


def segments(samples: np.ndarray) -> list[tuple[float, float]]:
    """The (start, end) seconds of the keyword inputs the stream makes of `samples`."""
    stream = audio.AudioStream()
    out = []
    for i in range(0, len(samples), CHUNK):
        ctx = stream.frames(samples[i : i + CHUNK], i / SAMPLE_RATE)
        out += [
            (h.start, h.end)
            for h in stream.accept(np.zeros((len(ctx), 8), np.float32))
            if h.head == "keyword"
        ]
    return out


def measure(clips: list[Any], negatives: list[Any], keywords: dict[str, str]) -> dict[str, Any]:
    held = n = inputs = 0
    for clip in clips:
        if clip.kind not in keywords:
            continue
        active = np.flatnonzero(clip.speech_mask)
        u0, u1 = active[0] / SAMPLE_RATE, active[-1] / SAMPLE_RATE
        segs = segments(clip.audio)
        ends = [end + WINDOW_AFTER_SEGMENT_S for _, end in segs]
        held += any(e - KW_SECONDS <= u0 and u1 - 0.1 <= e < u1 + 0.8 for e in ends)
        inputs += len(segs)
        n += 1
    count: Counter[str] = Counter()
    minutes: Counter[str] = Counter()
    for clip in negatives:
        count[clip.kind] += len(segments(clip.audio))
        minutes[clip.kind] += len(clip.audio) / SAMPLE_RATE / 60
    return {
        "command_in_window": round(held / max(n, 1), 3),
        "keyword_clips": n,
        "inputs_per_keyword_clip": round(inputs / max(n, 1), 2),
        "inputs_per_minute": {k: round(count[k] / minutes[k], 1) for k in sorted(minutes)},
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--negatives", type=int, default=40, help="30 s negatives to make")
    args = parser.parse_args()
    from training import audio_data, train_audio

    audio_data.require_tools()
    clips = train_audio.make_clips("test", 1.0, 8)
    negatives = train_audio.make_clips("test", 1.0, 9, negatives=args.negatives)
    result = {"level": measure(clips, negatives, audio_data.KEYWORDS)}
    level_db = audio._ABOVE_LEVEL_DB
    audio._ABOVE_LEVEL_DB = float("-inf")  # speech needs only the floor's 9 dB
    try:
        result["floor only"] = measure(clips, negatives, audio_data.KEYWORDS)
    finally:
        audio._ABOVE_LEVEL_DB = level_db
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
