"""`InferenceEngine`: audio frames and committed readings in; results stored, events published.

Wiring (the gateway app): call `on_readings` with each committed batch of `Reading`s and
`on_audio` with each decoded audio frame (both non-blocking, never on the hot path's budget),
run `run()` as a background task, and give the engine a `write` function that runs a callable
on the writer thread's SQLAlchemy connection (``Writer.run``). Everything model-related happens
in the engine's single inference thread: the event loop only queues and publishes.

Results go to the `inferences` table and, as ``inference_*`` readings of the source device, to
`readings` so the window aggregator sends counts and shares upstream (never audio).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Connection, insert

from gateway.db import readings as readings_table
from gateway.inference import discovery
from gateway.inference.audio import (
    AlarmDebouncer,
    AudioStream,
    HeadInput,
    alarm_decision,
    keyword_decision,
    keyword_features,
)
from gateway.inference.frontend import pcm16_to_float
from gateway.inference.manifest import ModelKind
from gateway.inference.publisher import EventSink
from gateway.inference.runtime import LoadedModel, ModelLoadError, ModelRuntime
from gateway.inference.sensors import (
    ANOMALY_METRICS,
    OCCUPANCY_METRICS,
    SensorStream,
    WindowStats,
    anomaly_features,
    occupancy_applies,
    occupancy_features,
    window_flagged,
)
from gateway.inference.settings import InferenceSettings
from gateway.inference.speech_embedding import SpeechEmbedder, SpeechEmbedderError
from gateway.inference.tables import inferences
from gateway.records import Reading
from schemas.audio import AudioFrame
from schemas.events import InferenceEvent, encode_event
from schemas.topics import ROOT, gateway_events_topic, gateway_status_topic

log = logging.getLogger(__name__)

WriteFn = Callable[[Callable[[Connection], None]], Awaitable[Any] | Any]
_SENSOR_METRICS = frozenset(ANOMALY_METRICS) | frozenset(OCCUPANCY_METRICS)
METRIC_OF = {
    ModelKind.AUDIO_VAD: "inference_speech",
    ModelKind.AUDIO_KEYWORD: "inference_keyword",
    ModelKind.AUDIO_ALARM: "inference_alarm",
    ModelKind.SENSOR_ANOMALY: "inference_anomaly",
    ModelKind.SENSOR_OCCUPANCY: "inference_occupancy",
}


@dataclass(frozen=True, slots=True)
class InferenceResult:
    """One model decision about one source and time span."""

    model: str
    version: str
    kind: ModelKind
    home: str
    room: str
    device: str
    start: float
    end: float
    score: float
    label: str
    value: float  # what the inference_* reading stores (count, share, flag or score)
    event: bool  # publish it


@dataclass
class _Mic:
    home: str
    room: str
    device: str
    stream: AudioStream = field(default_factory=AudioStream)
    debouncer: AlarmDebouncer | None = None
    speech_start: float | None = None
    speech_blocks: int = 0
    speech_hits: int = 0


@dataclass
class _Sensor:
    home: str
    room: str
    device: str
    stream: SensorStream
    occupied: bool | None = None


@dataclass
class EngineStats:
    audio_frames: int = 0
    readings: int = 0
    dropped: int = 0
    results: int = 0
    events: int = 0
    errors: int = 0
    batches: int = 0
    rows_written: int = 0


class InferenceEngine:
    """See the module docstring; create with `InferenceEngine.create` to load the models."""

    def __init__(
        self,
        settings: InferenceSettings,
        runtime: ModelRuntime,
        *,
        write: WriteFn,
        publisher: EventSink | None = None,
        root: str = ROOT,
        availability_topic: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self._write = write
        self._publisher = publisher
        self._root = root
        # The gateway's status topic for HA discovery; standalone: the home's, as before.
        self._availability = availability_topic
        self._clock = clock
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=settings.queue_size)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._mics: dict[tuple[str, str], _Mic] = {}
        self._sensors: dict[tuple[str, str], _Sensor] = {}
        self._announced: set[tuple[str, ...]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.stats = EngineStats()
        m = runtime.of_kind
        self._embed = m(ModelKind.AUDIO_EMBEDDING)
        self._heads: dict[str, LoadedModel | None] = {
            "vad": m(ModelKind.AUDIO_VAD),
            "keyword": m(ModelKind.AUDIO_KEYWORD),
            "alarm": m(ModelKind.AUDIO_ALARM),
        }
        # The keyword head reads a pretrained speech embedding, loaded at the first utterance.
        self._speech = SpeechEmbedder(intra_op_threads=settings.intra_op_threads)
        self._anomaly = m(ModelKind.SENSOR_ANOMALY)
        self._occupancy = m(ModelKind.SENSOR_OCCUPANCY)

    @classmethod
    def create(
        cls,
        settings: InferenceSettings,
        *,
        write: WriteFn,
        publisher: EventSink | None = None,
        root: str = ROOT,
        availability_topic: str | None = None,
    ) -> InferenceEngine:
        """Load (and warm up) the models of `settings`; failures are logged and kept in
        ``engine.runtime.errors``, the other models serve."""
        runtime = ModelRuntime.load(
            Path(settings.models_dir),
            names=settings.models,
            intra_op_threads=settings.intra_op_threads,
        )
        return cls(
            settings,
            runtime,
            write=write,
            publisher=publisher,
            root=root,
            availability_topic=availability_topic,
        )

    # -- input (event loop; non-blocking) -------------------------------------------------

    def on_readings(self, readings: Iterable[Reading]) -> None:
        """Committed readings (the ingest core's callback)."""
        for r in readings:
            if r.metric in _SENSOR_METRICS:
                self._put(("reading", r))

    def on_audio(self, home: str, room: str, device: str, frame: AudioFrame) -> None:
        """A decoded audio frame (the ingest core's callback); the samples are not kept."""
        if self._embed is not None:
            self._put(("audio", (home, room, device, frame)))

    def _put(self, item: tuple[str, Any]) -> None:
        try:
            self._queue.put_nowait(item)
            self._idle.clear()
        except asyncio.QueueFull:
            self.stats.dropped += 1
            if self.stats.dropped % 1000 == 1:
                log.warning(
                    "inference queue full (%d): dropped %d items so far",
                    self._queue.maxsize,
                    self.stats.dropped,
                )

    # -- the background task ----------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                items = [await self._queue.get()]
                while len(items) < self.settings.batch_max and not self._queue.empty():
                    items.append(self._queue.get_nowait())
                try:
                    results = await loop.run_in_executor(self._pool, self._process, items)
                    self._emit(results)
                    if results:
                        await self._store(results)
                except Exception:  # a task's top level: log, count, keep serving
                    self.stats.errors += 1
                    log.exception("inference batch of %d items failed", len(items))
                if self._queue.empty():
                    self._idle.set()
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def drain(self) -> None:
        """Wait until everything queued so far is processed (tests, shutdown)."""
        await self._idle.wait()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- processing (inference thread) ------------------------------------------------------

    def _process(self, items: list[tuple[str, Any]]) -> list[InferenceResult]:
        self.stats.batches += 1
        audio = [p for kind, p in items if kind == "audio"]
        readings = [p for kind, p in items if kind == "reading"]
        results: list[InferenceResult] = []
        if audio:
            self.stats.audio_frames += len(audio)
            results += self._process_audio(audio)
        if readings:
            self.stats.readings += len(readings)
            results += self._process_readings(readings)
        return results

    def _mic(self, home: str, room: str, device: str) -> _Mic:
        mic = self._mics.get((home, device))
        if mic is None:
            alarm = self._heads["alarm"]
            deb = None
            if alarm is not None:
                t = alarm.manifest.thresholds
                deb = AlarmDebouncer(t.get("threshold", 0.8), t.get("cooldown_s", 3.5))
            mic = self._mics[(home, device)] = _Mic(home, room, device, debouncer=deb)
        mic.room = room
        return mic

    def _process_audio(
        self, frames: list[tuple[str, str, str, AudioFrame]]
    ) -> list[InferenceResult]:
        assert self._embed is not None
        per_mic: dict[tuple[str, str], deque[AudioFrame]] = {}
        for home, room, device, frame in frames:
            mic = self._mic(home, room, device)
            per_mic.setdefault((home, device), deque()).append(frame)
            if self.settings.debug_audio_dir is not None:
                self._debug_keep(mic, frame)
        heads: list[tuple[_Mic, HeadInput]] = []
        # Rounds of at most one frame per microphone, so each round is one embedding call.
        while per_mic:
            mics: list[_Mic] = []
            ctxs = []
            for key in list(per_mic):
                frame = per_mic[key].popleft()
                if not per_mic[key]:
                    del per_mic[key]
                mic = self._mics[key]
                mics.append(mic)
                ctxs.append(mic.stream.frames(pcm16_to_float(frame.samples), frame.ts))
            sizes = [len(c) for c in ctxs]
            emb = (
                self._embed.run(np.vstack(ctxs))[0] if sum(sizes) else np.zeros((0, 0), np.float32)
            )
            offset = 0
            for mic, n in zip(mics, sizes, strict=True):
                heads += [(mic, h) for h in mic.stream.accept(np.asarray(emb[offset : offset + n]))]
                offset += n
        return self._run_heads(heads)

    def _run_heads(self, inputs: list[tuple[_Mic, HeadInput]]) -> list[InferenceResult]:
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
                r = self._decide_audio(model, mic, h, p)
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
            emb = [self._speech.embed(w[None, :])[0] for w in windows]
        except SpeechEmbedderError as exc:
            log.error("keyword spotting off: %s", exc)
            self._heads["keyword"] = None
            self.runtime.errors.append(ModelLoadError(Path("speech_embedding"), str(exc)))
            return None
        return np.vstack(
            [keyword_features(e, float(h.features[0])) for e, h in zip(emb, inputs, strict=True)]
        )

    def _decide_audio(
        self, model: LoadedModel, mic: _Mic, h: HeadInput, p: np.ndarray
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
            mic.speech_blocks += 1
            mic.speech_hits += int(p[1] >= man.thresholds.get("threshold", 0.5))
            if h.end - mic.speech_start < self.settings.speech_summary_s:
                return None
            share = mic.speech_hits / mic.speech_blocks
            start = mic.speech_start
            mic.speech_start, mic.speech_blocks, mic.speech_hits = None, 0, 0
            return result("speech" if share > 0 else "quiet", share, share, start, True)
        if man.kind == ModelKind.AUDIO_KEYWORD:
            label, score = keyword_decision(p, man.thresholds.get("threshold", 0.5))
            return None if label == "other" else result(label, score, 1.0, h.start, True)
        label, score = alarm_decision(p, h.pattern)
        if mic.debouncer is not None and mic.debouncer.step(score, h.end, h.pattern):
            return result(label, score, 1.0, h.start, True)
        return None

    def _process_readings(self, readings: list[Reading]) -> list[InferenceResult]:
        results: list[InferenceResult] = []
        closed: list[tuple[_Sensor, WindowStats]] = []
        in_round: set[tuple[str, str]] = set()
        s = self.settings
        for r in readings:
            key = (r.home, r.device)
            sensor = self._sensors.get(key)
            if sensor is None:
                stream = SensorStream(s.sensor_window_s, s.baseline_windows)
                sensor = self._sensors[key] = _Sensor(r.home, r.room, r.device, stream)
            sensor.room = r.room
            w = sensor.stream.add(r.metric, r.ts, r.value)
            if w is None:
                continue
            if key in in_round:  # its previous window must be learned first
                results += self._score_windows(closed)
                closed, in_round = [], set()
            closed.append((sensor, w))
            in_round.add(key)
        return results + self._score_windows(closed)

    def _score_windows(self, closed: list[tuple[_Sensor, WindowStats]]) -> list[InferenceResult]:
        s = self.settings
        ready = []
        for sensor, w in closed:
            if sensor.stream.ready(s.baseline_min_windows):
                ready.append((sensor, w))
            else:
                sensor.stream.commit(w, False)
        if not ready:
            return []
        results: list[InferenceResult] = []
        rows: list[np.ndarray] = []
        owners: list[int] = []
        row_metrics: list[str] = []
        occ_rows: list[np.ndarray] = []
        occ_owners: list[int] = []
        for i, (sensor, w) in enumerate(ready):
            names, feats = anomaly_features(w, sensor.stream.baseline, sensor.stream.stuck_runs)
            rows += list(feats)
            owners += [i] * len(names)
            row_metrics += names
            if occupancy_applies(w):
                occ_rows.append(occupancy_features(w, sensor.stream.baseline, sensor.stream.prev))
                occ_owners.append(i)
        flagged = [False] * len(ready)
        if self._anomaly is not None and rows:
            man = self._anomaly.manifest
            p = self._anomaly.probabilities(np.vstack(rows))[:, 1]
            worst = np.zeros(len(ready))
            np.maximum.at(worst, np.asarray(owners), p)
            owner_arr = np.asarray(owners)
            for i in sorted(set(owners)):
                sensor, w = ready[i]
                mine = np.flatnonzero(owner_arr == i)
                flagged[i] = window_flagged([row_metrics[j] for j in mine], p[mine], man.thresholds)
                results.append(
                    InferenceResult(
                        man.name,
                        man.version,
                        man.kind,
                        sensor.home,
                        sensor.room,
                        sensor.device,
                        w.start,
                        w.end,
                        float(worst[i]),
                        "anomaly" if flagged[i] else "normal",
                        float(worst[i]),
                        True,
                    )
                )
        if self._occupancy is not None and occ_rows:
            man = self._occupancy.manifest
            p = self._occupancy.probabilities(np.vstack(occ_rows))[:, 1]
            for i, q in zip(occ_owners, p, strict=True):
                sensor, w = ready[i]
                occupied = bool(q >= man.thresholds.get("threshold", 0.5))
                changed = occupied != sensor.occupied
                sensor.occupied = occupied
                results.append(
                    InferenceResult(
                        man.name,
                        man.version,
                        man.kind,
                        sensor.home,
                        sensor.room,
                        sensor.device,
                        w.start,
                        w.end,
                        float(q),
                        "occupied" if occupied else "empty",
                        1.0 if occupied else 0.0,
                        changed,
                    )
                )
        for i, (sensor, w) in enumerate(ready):
            sensor.stream.commit(w, flagged[i])
        return results

    def _debug_keep(self, mic: _Mic, frame: AudioFrame) -> None:
        # Local debugging only (off by default): raw PCM never goes to the DB or the network.
        assert self.settings.debug_audio_dir is not None
        self.settings.debug_audio_dir.mkdir(parents=True, exist_ok=True)
        path = self.settings.debug_audio_dir / f"{mic.home}_{mic.device}.pcm"
        with path.open("ab") as f:
            f.write(frame.samples.astype("<i2").tobytes())

    # -- output (event loop) ----------------------------------------------------------------

    def _emit(self, results: list[InferenceResult]) -> None:
        self.stats.results += len(results)
        if self._publisher is None:
            return
        now = self._clock()
        for r in results:
            if self.settings.discovery:
                self._announce(r)
            if not (r.event and self.settings.publish_events):
                continue
            event = InferenceEvent(
                model=r.model,
                version=r.version,
                home=r.home,
                room=r.room,
                device=r.device,
                label=r.label,
                score=r.score,
                window_start=r.start,
                window_end=r.end,
                ts=now,
            )
            topic = gateway_events_topic(r.home, r.model, root=self._root)
            if self._publisher.submit(topic, encode_event(event)):
                self.stats.events += 1

    def _announce(self, r: InferenceResult) -> None:
        assert self._publisher is not None
        s = self.settings
        status = self._availability or gateway_status_topic(r.home, root=self._root)
        if r.kind in (ModelKind.AUDIO_ALARM, ModelKind.AUDIO_KEYWORD, ModelKind.AUDIO_VAD):
            key: tuple[str, ...] = ("mic", r.home, r.device)
            configs = lambda: discovery.microphone_configs(  # noqa: E731
                r.home,
                r.room,
                r.device,
                root=self._root,
                prefix=s.discovery_prefix,
                off_delay_s=s.alarm_off_delay_s,
                availability_topic=status,
            )
        elif r.kind == ModelKind.SENSOR_OCCUPANCY:
            key = ("room", r.home, r.room)
            configs = lambda: [  # noqa: E731
                discovery.occupancy_config(
                    r.home,
                    r.room,
                    root=self._root,
                    prefix=s.discovery_prefix,
                    availability_topic=status,
                )
            ]
        else:
            key = ("anomaly", r.home, r.device)
            configs = lambda: [  # noqa: E731
                discovery.anomaly_config(
                    r.home,
                    r.room,
                    r.device,
                    root=self._root,
                    prefix=s.discovery_prefix,
                    availability_topic=status,
                )
            ]
        if key in self._announced:
            return
        self._announced.add(key)
        for c in configs():
            self._publisher.submit(c.topic, c.payload, retain=True)

    async def _store(self, results: list[InferenceResult]) -> None:
        now = self._clock()
        inf_rows = [
            {
                "model": r.model,
                "version": r.version,
                "home": r.home,
                "room": r.room,
                "device": r.device,
                "window_start": r.start,
                "window_end": r.end,
                "score": r.score,
                "label": r.label,
            }
            for r in results
        ]
        reading_rows = [
            {
                "home": r.home,
                "room": r.room,
                "device": r.device,
                "metric": METRIC_OF[r.kind],
                "ts": r.end,
                "value": r.value,
                "seq": None,
                "received_at": now,
            }
            for r in results
        ]

        def write(conn: Connection) -> None:
            conn.execute(insert(inferences), inf_rows)
            conn.execute(insert(readings_table).prefix_with("OR IGNORE"), reading_rows)

        out = self._write(write)
        if inspect.isawaitable(out):
            await out
        self.stats.rows_written += len(inf_rows)
