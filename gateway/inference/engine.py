"""`InferenceEngine`: audio frames and committed readings in; results stored, events published.

Wiring (the gateway app): call `on_readings` with each committed batch of `Reading`s and
`on_audio` with each decoded audio frame (both non-blocking, never on the hot path's budget),
run `run()` as a background task, and give the engine the writer's two async entry points:
``write`` runs a callable on the writer thread's SQLAlchemy connection (``Writer.run``), ``store``
stores readings through its batch commit (``Writer.store``). Everything model-related happens in
the engine's single inference thread: the event loop only queues and publishes.

The engine coordinates its parts, each in a module of its own:

- `gateway.inference.streams`: per-device stream state (microphones' audio streams and
  debouncers, sensors' windows and baselines), bounded by `DeviceLimits`: after every batch the
  idle (and surplus) devices are evicted, their open windows scored first; `sweep` queues an
  empty batch so that happens when no input arrives;
- `gateway.inference.scheduler`: the queue, batching, the inference thread, run/drain/close;
- `gateway.inference.audio_scoring` and `gateway.inference.sensor_scoring`: the models over
  those streams, producing `InferenceResult`s;
- `gateway.inference.results`: results -> events, Home Assistant discovery, ``inferences`` rows
  and ``inference_*`` readings of the source device (so the window aggregator sends counts and
  shares upstream, never audio).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

from gateway.inference.audio_scoring import AudioScorer
from gateway.inference.manifest import ModelKind
from gateway.inference.publisher import DiscoverySink, EventSink
from gateway.inference.results import InferenceResult, ResultHandler, StoreFn, WriteFn
from gateway.inference.runtime import ModelRuntime
from gateway.inference.scheduler import InferenceScheduler, Item
from gateway.inference.sensor_scoring import SensorScorer
from gateway.inference.sensors import ANOMALY_METRICS, OCCUPANCY_METRICS
from gateway.inference.settings import InferenceSettings
from gateway.inference.stats import EngineStats
from gateway.inference.streams import DeviceLimits, DeviceStreams
from gateway.records import Reading
from schemas.audio import AudioFrame
from schemas.topics import ROOT

# The sensor models' inputs. The engine's own ``inference_*`` readings come back through the
# committed-readings callback like any other and must not be fed to the models: they are not here.
_SENSOR_METRICS = frozenset(ANOMALY_METRICS) | frozenset(OCCUPANCY_METRICS)


class InferenceEngine:
    """See the module docstring; create with `InferenceEngine.create` to load the models."""

    def __init__(
        self,
        settings: InferenceSettings,
        runtime: ModelRuntime,
        *,
        write: WriteFn,
        store: StoreFn,
        publisher: EventSink | None = None,
        root: str = ROOT,
        availability_topic: str | None = None,
        clock: Callable[[], float] = time.time,
        limits: DeviceLimits | None = None,
        idle_clock: Callable[[], float] = time.monotonic,
        discovery: DiscoverySink | None = None,
    ) -> None:
        """`clock` stamps stored results; `idle_clock` times the devices' idleness."""
        self.settings = settings
        self.runtime = runtime
        self.stats = EngineStats()
        limits = limits or DeviceLimits()
        self.streams = streams = DeviceStreams(
            settings, alarm=runtime.of_kind(ModelKind.AUDIO_ALARM), limits=limits, clock=idle_clock
        )
        self._audio = AudioScorer(settings, runtime, streams)
        self._sensors = SensorScorer(settings, runtime, streams)
        self._results = ResultHandler(
            settings,
            write=write,
            store=store,
            publisher=publisher,
            stats=self.stats,
            discovery=discovery,
            root=root,
            availability_topic=availability_topic,
            clock=clock,
            # Every tracked device's key (a microphone or a sensor) and a room each, so a
            # tracked device is never announced twice.
            max_announced=2 * (limits.max_devices + limits.max_microphones),
        )
        self._scheduler = InferenceScheduler(
            queue_size=settings.queue_size,
            batch_max=settings.batch_max,
            process=self._process,
            handle=self._results.handle,
            stats=self.stats,
        )

    @classmethod
    def create(
        cls,
        settings: InferenceSettings,
        *,
        write: WriteFn,
        store: StoreFn,
        publisher: EventSink | None = None,
        root: str = ROOT,
        availability_topic: str | None = None,
        limits: DeviceLimits | None = None,
        discovery: DiscoverySink | None = None,
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
            store=store,
            publisher=publisher,
            root=root,
            availability_topic=availability_topic,
            limits=limits,
            discovery=discovery,
        )

    # -- input (event loop; non-blocking) -------------------------------------------------

    def on_readings(self, readings: Iterable[Reading]) -> None:
        """Committed readings (the ingest core's callback); only the sensor models' metrics."""
        for r in readings:
            if r.metric in _SENSOR_METRICS:
                self._scheduler.put(("reading", r))

    def on_audio(self, home: str, room: str, device: str, frame: AudioFrame) -> None:
        """A decoded audio frame (the ingest core's callback); the samples are not kept."""
        if self._audio.embed is not None:
            self._scheduler.put(("audio", (home, room, device, frame)))

    def sweep(self) -> None:
        """Queue an empty batch, so idle devices are evicted when no input arrives
        (non-blocking; nothing is queued while inputs wait: their batches evict anyway)."""
        self._scheduler.nudge()

    # -- the background task ----------------------------------------------------------------

    async def run(self) -> None:
        await self._scheduler.run()

    async def drain(self) -> None:
        """Wait until everything queued so far is processed and stored (tests, shutdown)."""
        await self._scheduler.drain()

    def close(self) -> None:
        self._scheduler.close()

    # -- processing (inference thread) ------------------------------------------------------

    def _process(self, items: list[Item]) -> list[InferenceResult]:
        self.stats.batches += 1
        audio = [p for kind, p in items if kind == "audio"]
        readings = [p for kind, p in items if kind == "reading"]
        results: list[InferenceResult] = []
        if audio:
            self.stats.audio_frames += len(audio)
            results += self._audio.process(audio)
        if readings:
            self.stats.readings += len(readings)
            results += self._sensors.process(readings)
        evicted = self.streams.evict()
        if evicted:
            self.stats.evicted_sensors += len(evicted.sensors)
            self.stats.evicted_microphones += len(evicted.microphones)
            results += self._sensors.flush(evicted.sensors)
            results += self._audio.flush(evicted.microphones)
        return results
