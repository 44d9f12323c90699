"""`AudioScorer`: microphones' frames -> audio model decisions (inference thread).

Each frame goes through its microphone's `AudioStream`; the frame embedding runs once per round
of at most one frame per microphone (batched across microphones), the VAD, keyword and alarm
heads once per batch of the inputs the streams produced, and each head's output becomes a
decision: a speech share per ``speech_summary_s``, a keyword, an alarm that passed the
microphone's debouncer. The keyword head reads a pretrained speech embedding, loaded at the
first utterance; if that fails, keyword spotting turns off and the error joins the runtime's.
A microphone the streams evict has its partial speech summary published by `flush`.
"""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path

import numpy as np

from gateway.inference.audio import (
    HeadInput,
    alarm_decision,
    keyword_decision,
    keyword_features,
)
from gateway.inference.frontend import pcm16_to_float
from gateway.inference.manifest import ModelKind
from gateway.inference.results import InferenceResult
from gateway.inference.runtime import LoadedModel, ModelLoadError, ModelRuntime
from gateway.inference.settings import InferenceSettings
from gateway.inference.speech_embedding import SpeechEmbedder, SpeechEmbedderError
from gateway.inference.streams import DeviceStreams, Microphone
from schemas.audio import AudioFrame

log = logging.getLogger(__name__)

AudioItem = tuple[str, str, str, AudioFrame]  # home, room, device, frame


class AudioScorer:
    """See the module docstring."""

    def __init__(
        self, settings: InferenceSettings, runtime: ModelRuntime, streams: DeviceStreams
    ) -> None:
        self._settings = settings
        self._runtime = runtime
        self._streams = streams
        m = runtime.of_kind
        self.embed = m(ModelKind.AUDIO_EMBEDDING)
        self._heads: dict[str, LoadedModel | None] = {
            "vad": m(ModelKind.AUDIO_VAD),
            "keyword": m(ModelKind.AUDIO_KEYWORD),
            "alarm": m(ModelKind.AUDIO_ALARM),
        }
        self.speech = SpeechEmbedder(
            intra_op_threads=settings.intra_op_threads,
            idle_release_s=settings.speech_idle_release_s,
        )

    def process(self, frames: list[AudioItem]) -> list[InferenceResult]:
        assert self.embed is not None
        per_mic: dict[tuple[str, str], deque[AudioFrame]] = {}
        for home, room, device, frame in frames:
            mic = self._streams.microphone(home, room, device)
            per_mic.setdefault((home, device), deque()).append(frame)
            if self._settings.debug_audio_dir is not None:
                self._debug_keep(mic, frame)
        heads: list[tuple[Microphone, HeadInput]] = []
        # Rounds of at most one frame per microphone, so each round is one embedding call.
        while per_mic:
            mics: list[Microphone] = []
            ctxs = []
            for key in list(per_mic):
                frame = per_mic[key].popleft()
                if not per_mic[key]:
                    del per_mic[key]
                mic = self._streams.microphones[key]
                mics.append(mic)
                ctxs.append(mic.stream.frames(pcm16_to_float(frame.samples), frame.ts))
            sizes = [len(c) for c in ctxs]
            emb = self.embed.run(np.vstack(ctxs))[0] if sum(sizes) else np.zeros((0, 0), np.float32)
            offset = 0
            for mic, n in zip(mics, sizes, strict=True):
                heads += [(mic, h) for h in mic.stream.accept(np.asarray(emb[offset : offset + n]))]
                offset += n
        return self._run_heads(heads)

    def flush(self, mics: list[Microphone]) -> list[InferenceResult]:
        """The partial speech summaries of `mics`, which are being evicted."""
        vad = self._heads["vad"]
        if vad is None:
            return []
        out = []
        for mic in mics:
            if mic.speech_blocks and mic.speech_start is not None and mic.speech_end is not None:
                out.append(self._speech_summary(vad, mic))
        return out

    def _speech_summary(self, model: LoadedModel, mic: Microphone) -> InferenceResult:
        """The speech share since the summary began; the next one starts afresh."""
        assert mic.speech_start is not None and mic.speech_end is not None
        man = model.manifest
        share = mic.speech_hits / mic.speech_blocks
        result = InferenceResult(
            man.name,
            man.version,
            man.kind,
            mic.home,
            mic.room,
            mic.device,
            mic.speech_start,
            mic.speech_end,
            float(min(max(share, 0.0), 1.0)),
            "speech" if share > 0 else "quiet",
            share,
            True,
        )
        mic.speech_start, mic.speech_end, mic.speech_blocks, mic.speech_hits = None, None, 0, 0
        return result

    def _run_heads(self, inputs: list[tuple[Microphone, HeadInput]]) -> list[InferenceResult]:
        results: list[InferenceResult] = []
        for name in ("vad", "keyword", "alarm"):
            model = self._heads[name]
            batch = [(mic, h) for mic, h in inputs if h.head == name]
            if model is None or not batch:
                continue
            if name == "keyword":
                features = self._keyword_inputs([h for _, h in batch])
                if features is None:
                    continue
            else:
                features = np.vstack([h.features for _, h in batch])
            probs = model.probabilities(features)
            for (mic, h), p in zip(batch, probs, strict=True):
                r = self._decide(model, mic, h, p)
                if r is not None:
                    results.append(r)
        return results

    def _keyword_inputs(self, inputs: list[HeadInput]) -> np.ndarray | None:
        """The keyword head's rows: speech embeddings of each utterance's window + duration."""
        # One utterance per call (same outputs): the mel model's arena keeps its largest run for
        # good, and eight utterances in one call left it 3.2 MB larger for the same time (190 ms
        # against 192 ms for eight single calls; the embedding CNN runs one window at a time
        # either way, `SpeechEmbedder.embed`).
        windows = [h.audio for h in inputs if h.audio is not None]
        assert len(windows) == len(inputs), "the stream attaches every keyword input's window"
        try:
            emb = [self.speech.embed(w[None, :])[0] for w in windows]
        except SpeechEmbedderError as exc:
            log.error("keyword spotting off: %s", exc)
            self._heads["keyword"] = None
            self._runtime.errors.append(ModelLoadError(Path("speech_embedding"), str(exc)))
            return None
        return np.vstack(
            [keyword_features(e, float(h.features[0])) for e, h in zip(emb, inputs, strict=True)]
        )

    def _decide(
        self, model: LoadedModel, mic: Microphone, h: HeadInput, p: np.ndarray
    ) -> InferenceResult | None:
        man = model.manifest

        def result(
            label: str, score: float, value: float, start: float, event: bool
        ) -> InferenceResult:
            return InferenceResult(
                man.name,
                man.version,
                man.kind,
                mic.home,
                mic.room,
                mic.device,
                start,
                h.end,
                float(min(max(score, 0.0), 1.0)),
                label,
                value,
                event,
            )

        if man.kind == ModelKind.AUDIO_VAD:
            if mic.speech_start is None:
                mic.speech_start = h.start
            mic.speech_end = h.end
            mic.speech_blocks += 1
            mic.speech_hits += int(p[1] >= man.thresholds.get("threshold", 0.5))
            if h.end - mic.speech_start < self._settings.speech_summary_s:
                return None
            return self._speech_summary(model, mic)
        if man.kind == ModelKind.AUDIO_KEYWORD:
            label, score = keyword_decision(p, man.thresholds)
            return None if label == "other" else result(label, score, 1.0, h.start, True)
        label, score = alarm_decision(p, h.pattern)
        if mic.debouncer is not None and mic.debouncer.step(score, h.end, h.pattern):
            return result(label, score, 1.0, h.start, True)
        return None

    def _debug_keep(self, mic: Microphone, frame: AudioFrame) -> None:
        # Local debugging only (off by default): raw PCM never goes to the DB or the network.
        assert self._settings.debug_audio_dir is not None
        self._settings.debug_audio_dir.mkdir(parents=True, exist_ok=True)
        path = self._settings.debug_audio_dir / f"{mic.home}_{mic.device}.pcm"
        with path.open("ab") as f:
            f.write(frame.samples.astype("<i2").tobytes())
