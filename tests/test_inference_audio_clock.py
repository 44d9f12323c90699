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


def test_a_keyword_input_waiting_for_its_quiet_is_dropped_across_a_pause() -> None:
    """The confirm wait holds a keyword input until 0.2 s more of quiet are heard; a
    microphone that pauses in that wait must not have the command run when it resumes (the
    words were said before the pause), while contiguous quiet still releases it."""
    rng = np.random.default_rng(2)

    def keyword_inputs(pause_s: float) -> list[float]:
        stream = AudioStream()
        t, found = 1_800_000_000.0, []
        quiet = [rng.normal(0, 0.001, SAMPLE_RATE * 3), rng.normal(0, 0.001, SAMPLE_RATE * 2 // 5)]
        loud = rng.normal(0, 0.2, SAMPLE_RATE * 3 // 5)
        for k, chunk in enumerate([quiet[0], loud, quiet[1], quiet[1]]):
            if k == 3:
                t += pause_s  # the microphone's pushes resume after this long
            stream.frames(chunk.astype(np.float32), t)
            assert stream.pending is not None
            emb = np.zeros((len(stream.pending), 96), np.float32)  # no say in when inputs come
            found += [h.start for h in stream.accept(emb) if h.head == "keyword"]
            t += len(chunk) / SAMPLE_RATE
        return found

    (start,) = keyword_inputs(0.0)  # the utterance (3 s in), once its quiet was heard
    assert abs(start - (1_800_000_000.0 + 3.0)) < 0.2
    assert keyword_inputs(600.0) == []
