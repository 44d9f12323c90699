"""The shared audio front end: PCM16 -> log-mel frames, frame energy and 3 kHz tonality (numpy).

Computed in numpy (no model file) so training and serving share the exact same code. Streaming:
`FrontEnd.push` takes any number of new samples and returns the frames they complete; the
samples a frame still needs are kept, nothing else is (raw audio is dropped as it is consumed).

Frames are 25 ms Hann windows every 10 ms; 40 mel bands 60-7600 Hz in dB; ``tonal`` is the
share of a frame's power in the strongest 3-bin peak between 2.5 and 4 kHz (smoke and CO alarm
sounders beep near 3 kHz), ``narrow`` the same peak's share of the 2.5-4 kHz band alone (high
for a tone even when low-frequency noise or speech dominates the frame), ``peak`` the peak's bin
index within that band (a sounder keeps its pitch; music and speech move), ``energy`` the frame
power in dB re full scale.

For a tone under a loud bed (a fan, traffic, a dishwasher: most of the frame's power far from
3 kHz) ``inband`` judges the peak against the noise in its own band instead: the 2.5-4 kHz band
spectrum is averaged over the last `INBAND_SMOOTH` frames (a sounder holds its pitch, so the
tone adds up while the noise's bin-to-bin scatter shrinks), and ``inband`` is its strongest
3-bin peak over 3 x the band's median bin power (the in-band noise floor: a tone fills a few of
the band's 49 bins, so the median is the noise), in dB; ``inband_peak`` is that peak's bin, and
``band_rel`` the smoothed band spectrum over the same floor (the alarm check reads a candidate
pitch's bins in it, so a frame whose peak noise happens to outshine the tone still counts).
Both come from the FFT bins the frame already computed (a cumulative sum and a median of 49
bins per frame).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 16000
WIN = 400
HOP = 160
NFFT = 512
N_MELS = 40
FRAMES_PER_SECOND = SAMPLE_RATE // HOP
ALARM_BAND_HZ = (2500.0, 4000.0)
INBAND_SMOOTH = 4  # frames (40 ms) of band spectrum averaged for `inband`

F32 = npt.NDArray[np.float32]


def _hz_to_mel(hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(n_mels: int = N_MELS, low: float = 60.0, high: float = 7600.0) -> F32:
    """Triangular mel filters, shape (NFFT // 2 + 1, n_mels)."""
    bins = np.fft.rfftfreq(NFFT, 1.0 / SAMPLE_RATE)
    edges = _mel_to_hz(
        np.linspace(_hz_to_mel(np.array(low)), _hz_to_mel(np.array(high)), n_mels + 2)
    )
    fb = np.zeros((len(bins), n_mels), dtype=np.float64)
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        up = (bins - lo) / (mid - lo)
        down = (hi - bins) / (hi - mid)
        fb[:, m] = np.maximum(0.0, np.minimum(up, down))
    return fb.astype(np.float32)


@dataclass(frozen=True, slots=True)
class Frames:
    """Front-end output for T frames."""

    logmel: F32  # (T, N_MELS) dB
    energy: F32  # (T,) dB re full scale
    tonal: F32  # (T,) 0..1
    narrow: F32  # (T,) 0..1
    peak: F32  # (T,) bin index in the alarm band
    inband: F32  # (T,) dB: the smoothed band's peak over its median (the in-band noise floor)
    inband_peak: F32  # (T,) that peak's bin index in the alarm band
    band_rel: F32  # (T, band bins) the smoothed band spectrum over its median bin
    band: F32  # (T, band bins) power: the next push's smoothing needs the last few rows

    def __len__(self) -> int:
        return len(self.energy)


_WINDOW = np.hanning(WIN).astype(np.float32)
_FB = mel_filterbank()
_FREQS = np.fft.rfftfreq(NFFT, 1.0 / SAMPLE_RATE)
_BAND = np.flatnonzero((ALARM_BAND_HZ[0] <= _FREQS) & (ALARM_BAND_HZ[1] >= _FREQS))
N_BAND = len(_BAND)


def _inband(band: F32, before: F32 | None) -> tuple[F32, F32, F32]:
    """`inband`, `inband_peak` and `band_rel` of band power rows, `before` the rows preceding
    them."""
    k = INBAND_SMOOTH
    if before is None or len(before) == 0:
        before = np.repeat(band[:1], k - 1, axis=0)
    rows = np.vstack([before[-(k - 1) :], band])
    csum = np.cumsum(rows, axis=0, dtype=np.float64)
    smooth = csum[k - 1 :].copy()
    smooth[1:] -= csum[: -k + 1][: len(smooth) - 1]
    smooth = smooth[-len(band) :]
    peak = smooth.argmax(axis=1)
    idx = np.clip(peak[:, None] + np.arange(-1, 2)[None, :], 0, band.shape[1] - 1)
    peak_power = np.take_along_axis(smooth, idx, axis=1).sum(axis=1)
    # The median bin (the band has an odd number of bins: one partition, no sort).
    floor = np.partition(smooth, N_BAND // 2, axis=1)[:, N_BAND // 2] + 1e-12
    rel = (smooth / floor[:, None]).astype(np.float32)
    inband = 10.0 * np.log10(peak_power / (3.0 * floor) + 1e-12)
    return inband.astype(np.float32), peak.astype(np.float32), rel


def frames_of(samples: F32, band_before: F32 | None = None) -> Frames:
    """Frames of float samples in [-1, 1] (as many whole frames as fit); `band_before` is the
    previous frames' `Frames.band` rows (a stream's continuity for `inband`)."""
    n = 0 if len(samples) < WIN else 1 + (len(samples) - WIN) // HOP
    if n == 0:
        empty = np.zeros((0,), np.float32)
        no_band = np.zeros((0, len(_BAND)), np.float32)
        return Frames(
            np.zeros((0, N_MELS), np.float32),
            *(empty,) * 6,
            no_band,
            no_band,
        )
    view = np.lib.stride_tricks.sliding_window_view(samples[: (n - 1) * HOP + WIN], WIN)[::HOP]
    spec = np.fft.rfft(view * _WINDOW, NFFT).astype(np.complex64)
    power = (spec.real**2 + spec.imag**2).astype(np.float32)
    total = power.sum(axis=1) + 1e-9
    logmel = 10.0 * np.log10(power @ _FB + 1e-9)
    band = power[:, _BAND]
    # A 3-bin neighbourhood around the band's peak: a tone leaks into its neighbours.
    peak = band.argmax(axis=1)
    idx = np.clip(peak[:, None] + np.arange(-1, 2)[None, :], 0, band.shape[1] - 1)
    peak_power = np.take_along_axis(band, idx, axis=1).sum(axis=1)
    tonal = peak_power / total
    narrow = np.minimum(peak_power / (band.sum(axis=1) + 1e-9), 1.0)
    energy = 10.0 * np.log10(total / WIN)
    inband, inband_peak, band_rel = _inband(band, band_before)
    return Frames(
        logmel.astype(np.float32),
        energy.astype(np.float32),
        tonal.astype(np.float32),
        narrow.astype(np.float32),
        peak.astype(np.float32),
        inband,
        inband_peak,
        band_rel,
        band,
    )


def pcm16_to_float(samples: npt.NDArray[np.int16]) -> F32:
    return samples.astype(np.float32) / 32768.0


class FrontEnd:
    """Streaming front end for one audio source."""

    def __init__(self) -> None:
        self._tail = np.zeros((0,), np.float32)
        self._band: F32 | None = None  # the last INBAND_SMOOTH - 1 frames' band power

    def push(self, samples: F32) -> Frames:
        buf = np.concatenate([self._tail, samples]) if len(self._tail) else samples
        out = frames_of(buf, self._band)
        used = len(out) * HOP
        self._tail = buf[used:].copy() if len(out) else buf.copy()
        if len(out):
            rows = out.band if self._band is None else np.vstack([self._band, out.band])
            self._band = rows[-(INBAND_SMOOTH - 1) :].copy()
        return out


CONTEXT = 3


def context_stack(logmel: F32, history: F32 | None = None) -> F32:
    """Each frame with its two predecessors (causal 3-frame context): the embedding's input.

    `history` holds the frames before the first one (the caller keeps the last two); without it
    the first frame stands in for them.
    """
    if len(logmel) == 0:
        return np.zeros((0, CONTEXT * N_MELS), np.float32)
    if history is None or len(history) < CONTEXT - 1:
        history = np.repeat(logmel[:1], CONTEXT - 1, axis=0)
    full = np.vstack([history[-(CONTEXT - 1) :], logmel])
    n = len(logmel)
    return np.hstack([full[k : k + n] for k in range(CONTEXT)]).astype(np.float32)
