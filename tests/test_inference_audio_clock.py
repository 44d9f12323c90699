"""A microphone stream's results carry its frames' own clock: after a pause (or in a replay
faster than real time) a result is stamped with the time of the audio it came from, not with
the first frame's time plus the samples heard since."""

from __future__ import annotations

import numpy as np

from gateway.inference.audio import AudioStream
from gateway.inference.frontend import HOP, SAMPLE_RATE

CHUNK = SAMPLE_RATE // 2  # 0.5 s pushes


def test_stream_times_follow_each_push_across_a_pause() -> None:
    stream = AudioStream()
    rng = np.random.default_rng(1)
    t = 1_800_000_000.0
    for k in range(4):  # 2 s of contiguous audio
        stream.frames(rng.normal(0, 0.01, CHUNK).astype(np.float32), t + k * 0.5)
    contiguous = stream.time_of(stream.recent_end // HOP)
    assert abs(contiguous - (t + 2.0)) < 0.05  # contiguous audio: as before
    later = t + 3600.0  # the microphone was silent for an hour
    stream.frames(rng.normal(0, 0.01, CHUNK).astype(np.float32), later)
    end_frame = stream.recent_end // HOP
    assert abs(stream.time_of(end_frame) - (later + 0.5)) < 0.05
    # The old rule (first frame's time + samples since) would put it two and a half seconds
    # after the start, an hour in the past.
    assert stream.time_of(end_frame) - (t + end_frame * HOP / SAMPLE_RATE) > 3500.0
