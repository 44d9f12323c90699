"""The microphones' clip set: 16 kHz PCM16 mono WAV files made by the gateway's audio training
script (held-out voices, so the gateway never trained on them).

File names say what a clip is: ``keyword_<word>_<n>.wav`` (a spoken command), ``speech_<n>.wav``,
``alarm_<smoke_t3|co_t4>.wav`` (a smoke or CO sounder pattern), ``noise_<n>.wav``.
`load_clips()` groups them by the simulator's scene labels: ``speech`` (commands and other
speech), ``alarm`` and ``noise``.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt

CLIP_DIR = Path(__file__).parent
SAMPLE_RATE = 16000


def read_wav(path: Path) -> npt.NDArray[np.int16]:
    """A clip's samples; raises ValueError for anything but 16 kHz mono PCM16."""
    with wave.open(str(path), "rb") as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (SAMPLE_RATE, 1, 2):
            raise ValueError(f"{path}: expected 16 kHz mono PCM16")
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)


def label_of(name: str) -> str:
    """Scene label of a clip file stem: keyword and speech clips are ``speech``."""
    head = name.split("_", 1)[0]
    return "speech" if head in ("keyword", "speech") else head


def load_clips(directory: Path = CLIP_DIR) -> dict[str, list[npt.NDArray[np.int16]]]:
    """All clips by label (``speech``, ``alarm``, ``noise``), in file-name order."""
    out: dict[str, list[npt.NDArray[np.int16]]] = {}
    for path in sorted(directory.glob("*.wav")):
        out.setdefault(label_of(path.stem), []).append(read_wav(path))
    return out
