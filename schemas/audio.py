"""The audio frame: binary PCM16 LE mono after a fixed 24-byte header (never base64).

Header, little-endian (struct ``<4sBBHdII``):

=========  ======  =====================================================
offset     type    field
=========  ======  =====================================================
0          4s      magic ``b"HEAF"``
4          u8      version (1)
5          u8      codec (0 = PCM16 LE mono)
6          u16     reserved (0)
8          f64     ts: Unix seconds UTC of the first sample
16         u32     seq: per-device frame counter
20         u32     sample_rate (16000)
=========  ======  =====================================================

The samples follow: an even number of bytes, at most `MAX_FRAME_SECONDS` of audio.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from schemas.errors import PayloadError

MAGIC = b"HEAF"
VERSION = 1
CODEC_PCM16LE = 0
SAMPLE_RATE = 16000
MAX_FRAME_SECONDS = 2.0
HEADER = struct.Struct("<4sBBHdII")
HEADER_SIZE = HEADER.size
MAX_AUDIO_BYTES = HEADER_SIZE + int(SAMPLE_RATE * MAX_FRAME_SECONDS) * 2


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """A decoded audio frame; `samples` is int16 mono at `sample_rate`."""

    ts: float
    seq: int
    sample_rate: int
    samples: npt.NDArray[np.int16]

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


def encode_audio_frame(
    ts: float, seq: int, samples: npt.NDArray[np.int16], *, sample_rate: int = SAMPLE_RATE
) -> bytes:
    """Encode one frame (what microphones publish)."""
    pcm = np.ascontiguousarray(samples, dtype="<i2")
    return HEADER.pack(MAGIC, VERSION, CODEC_PCM16LE, 0, ts, seq, sample_rate) + pcm.tobytes()


def decode_audio_frame(payload: bytes) -> AudioFrame:
    """Decode and validate a frame; raise `PayloadError` with the reason."""
    if len(payload) > MAX_AUDIO_BYTES:
        raise PayloadError("oversized", f"{len(payload)} bytes > limit {MAX_AUDIO_BYTES}")
    if len(payload) < HEADER_SIZE:
        raise PayloadError("bad_header", f"{len(payload)} bytes is shorter than the header")
    magic, version, codec, _reserved, ts, seq, rate = HEADER.unpack_from(payload)
    if magic != MAGIC:
        raise PayloadError("bad_header", f"magic {magic!r} != {MAGIC!r}")
    if version != VERSION:
        raise PayloadError("bad_header", f"unsupported version {version}")
    if codec != CODEC_PCM16LE:
        raise PayloadError("bad_header", f"unsupported codec {codec}")
    if rate != SAMPLE_RATE:
        raise PayloadError("bad_header", f"sample rate {rate} != {SAMPLE_RATE}")
    if not (946684800.0 <= ts <= 4102444800.0):
        raise PayloadError("bad_header", f"ts {ts!r} out of range")
    body = len(payload) - HEADER_SIZE
    if body == 0 or body % 2:
        raise PayloadError("bad_samples", f"{body} sample bytes is not a positive even count")
    samples = np.frombuffer(payload, dtype="<i2", offset=HEADER_SIZE).astype(np.int16, copy=False)
    return AudioFrame(ts=ts, seq=seq, sample_rate=rate, samples=samples)
