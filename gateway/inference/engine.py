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
- a sensor's open window is also closed by time (`sensor_grace_s`): at most every 10 s a batch
  closes and scores the windows whose end the wall clock (`clock`) is `sensor_grace_s` past, of
  devices that sent nothing for `sensor_grace_s` either (on `idle_clock`: a backlog arriving
  after an outage keeps its devices busy, so its windows still close by their readings, as they
  would have live);
- `gateway.inference.baselines`: sensors' baselines restored from SQLite when a device is first
  seen (``load``), saved through ``write`` every `baseline_save_s` (rows made in the inference
  thread after a batch, written after its results) and at a clean shutdown (`save_baselines`);
- `gateway.inference.scheduler`: the queue, batching, the inference thread, run/drain/close;
- `gateway.inference.audio_scoring` and `gateway.inference.sensor_scoring`: the models over
  those streams, producing `InferenceResult`s;
- `gateway.inference.results`: results -> events, Home Assistant discovery, ``inferences`` rows
  and ``inference_*`` readings of the source device (so the window aggregator sends counts and
  shares upstream, never audio).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection

from gateway.inference.audio_scoring import AudioScorer
from gateway.inference.baselines import Baselines, LoadFn, SavedBaseline, write_baselines
from gateway.inference.manifest import ModelKind
from gateway.inference.priors import FleetPriors, PriorsError
from gateway.inference.publisher import DiscoverySink, EventSink
from gateway.inference.results import InferenceResult, ResultHandler, StoreFn, WriteFn
from gateway.inference.runtime import ModelRuntime
from gateway.inference.scheduler import InferenceScheduler, Item
from gateway.inference.sensor_scoring import SensorScorer
from gateway.inference.sensors import ANOMALY_METRICS, OCCUPANCY_METRICS
from gateway.inference.settings import InferenceSettings
from gateway.inference.stats import EngineStats
from gateway.inference.streams import DeviceLimits, DeviceStreams
from gateway.records import EdgeEvent, Reading
from schemas.audio import AudioFrame
from schemas.topics import ROOT

# The sensor models' inputs. The engine's own ``inference_*`` readings come back through the
# committed-readings callback like any other and must not be fed to the models: they are not here.
log = logging.getLogger(__name__)
_SENSOR_METRICS = frozenset(ANOMALY_METRICS) | frozenset(OCCUPANCY_METRICS)
_DUE_EVERY_S = 10.0  # how often (idle clock) open windows are checked for sensor_grace_s


@dataclass(frozen=True, slots=True)
class _Batch:
    """What the inference thread made of a batch: results, and baseline rows to write."""

    results: list[InferenceResult]
    baselines: list[SavedBaseline]


def load_runtime(settings: InferenceSettings, models_dir: Path | None = None) -> ModelRuntime:
    """The models of `settings` (from `models_dir`, default ``settings.models_dir``),
    loaded and warmed up, with ``settings.thresholds`` over their manifests'."""
    return ModelRuntime.load(
        Path(models_dir or settings.models_dir),
        names=settings.models,
        intra_op_threads=settings.intra_op_threads,
        thresholds=settings.thresholds,
    )


def load_priors(settings: InferenceSettings) -> FleetPriors | None:
    """The fleet priors of ``settings.priors_file`` (None without one, or when it is bad:
    logged; the sensors then warm up on their own)."""
    if settings.priors_file is None:
        return None
    try:
        return FleetPriors.load(Path(settings.priors_file))
    except PriorsError as exc:
        log.error("%s; sensors warm up without fleet priors", exc)
        return None


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
        load: LoadFn | None = None,
        on_event: Callable[[EdgeEvent], None] | None = None,
        discovery: DiscoverySink | None = None,
        priors: FleetPriors | None = None,
        room_class: Callable[[str], str] | None = None,
    ) -> None:
        """`clock` stamps stored results and closes windows by time (the readings' epoch);
        `idle_clock` times the devices' idleness; `load` reads a stored sensor baseline
        (`gateway.inference.baselines.BaselineReader`; None: baselines are not persisted);
        `on_event` receives every event (on the event loop, `gateway.host.EventCallback`)."""
        self.settings = settings
        self.runtime = runtime
        self.stats = EngineStats()
        self._write = write
        self._clock = clock
        self._idle_clock = idle_clock
        limits = limits or DeviceLimits()
        self.streams = streams = DeviceStreams(
            settings,
            alarm=runtime.of_kind(ModelKind.AUDIO_ALARM),
            limits=limits,
            clock=idle_clock,
            restore=lambda home, device: self._baselines.restore(home, device),
            priors=priors,
            room_class=room_class,
        )
        self._baselines = Baselines(
            settings,
            streams.sensors,
            load=load,
            stats=self.stats,
            clock=clock,
            idle_clock=idle_clock,
        )
        self._due_every = min(_DUE_EVERY_S, settings.sensor_grace_s)
        self._next_due = idle_clock()
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
            on_event=on_event,
            # Every tracked device's key (a microphone or a sensor) and a room each, so a
            # tracked device is never announced twice.
            max_announced=2 * (limits.max_devices + limits.max_microphones),
        )
        self._scheduler: InferenceScheduler[_Batch] = InferenceScheduler(
            queue_size=settings.queue_size,
            batch_max=settings.batch_max,
            process=self._process,
            handle=self._handle,
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
        load: LoadFn | None = None,
        on_event: Callable[[EdgeEvent], None] | None = None,
        discovery: DiscoverySink | None = None,
        room_class: Callable[[str], str] | None = None,
    ) -> InferenceEngine:
        """Load (and warm up) the models of `settings`; failures are logged and kept in
        ``engine.runtime.errors``, the other models serve. Fleet priors from
        ``settings.priors_file`` (one that cannot be read is logged and not used)."""
        runtime = load_runtime(settings)
        priors = load_priors(settings)
        return cls(
            settings,
            runtime,
            write=write,
            store=store,
            publisher=publisher,
            root=root,
            availability_topic=availability_topic,
            limits=limits,
            load=load,
            on_event=on_event,
            discovery=discovery,
            priors=priors,
            room_class=room_class,
        )

    # -- input (event loop; non-blocking) -------------------------------------------------

    def on_readings(self, readings: Iterable[Reading]) -> None:
        """Committed readings (the ingest core's callback); only the sensor models' metrics."""
        for r in readings:
            if r.metric in _SENSOR_METRICS:
                self._scheduler.put(("reading", r))

    async def readings_in(self, readings: Iterable[Reading]) -> None:
        """As `on_readings`, but waits while the queue is full instead of dropping: a backlog
        after an outage reaches the models whole (so it scores as it would have live), and the
        wait holds the gateway's committed-readings callbacks (whose own bounded queue then
        fills; the rows are stored either way)."""
        scheduler = self._scheduler
        if not isinstance(readings, Sequence) or len(readings) > scheduler.room():
            readings = list(readings)
            for r in readings:
                if r.metric in _SENSOR_METRICS and not scheduler.try_put(item := ("reading", r)):
                    await scheduler.put_waiting(item)
            return
        self.on_readings(readings)  # room for all: the same cost per reading as before

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

    async def save_baselines(self) -> None:
        """Write every sensor baseline that changed since it was last written (the clean
        shutdown: after the last batch, before `close`)."""
        rows = await self._scheduler.call(lambda: self._baselines.round(force=True))
        if rows:
            await self._write_baselines(rows)

    def close(self) -> None:
        self._scheduler.close()

    async def swap_runtime(
        self, runtime: ModelRuntime, priors: FleetPriors | None = None
    ) -> ModelRuntime:
        """Serve with `runtime` (loaded and warmed up beforehand, `load_runtime`) from the next
        batch on; returns the one it replaces. The switch runs in the inference thread between
        two batches: what is queued meanwhile waits in the queue (nothing is dropped for it)
        and the streams' state (windows, baselines, debouncers) carries over."""
        return await self._scheduler.call(lambda: self._swap(runtime, priors))

    def _swap(self, runtime: ModelRuntime, priors: FleetPriors | None) -> ModelRuntime:
        old, self.runtime = self.runtime, runtime
        self.streams.priors = priors  # for devices seen from now on
        self.streams.set_alarm(runtime.of_kind(ModelKind.AUDIO_ALARM))
        speech = self._audio.speech  # the pretrained speech embedding is not part of a bundle
        self._audio = AudioScorer(self.settings, runtime, self.streams)
        self._audio.speech = speech
        self._sensors = SensorScorer(self.settings, runtime, self.streams)
        self.stats.swaps += 1
        return old

    # -- results (event loop) ---------------------------------------------------------------

    async def _handle(self, batch: _Batch) -> None:
        try:
            await self._results.handle(batch.results)
        finally:
            if batch.baselines:
                await self._write_baselines(batch.baselines)

    async def _write_baselines(self, rows: list[SavedBaseline]) -> None:
        persisted: list[int] = []

        def job(conn: Connection) -> None:
            persisted.append(write_baselines(conn, rows))

        await self._write(job)
        # The inference thread is idle now (the scheduler awaits this before the next batch).
        self._baselines.saved(rows)
        self.stats.baselines_persisted = persisted[0]

    # -- processing (inference thread) ------------------------------------------------------

    def _process(self, items: list[Item]) -> _Batch:
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
            self._baselines.evicted(evicted.sensors)
        results += self._close_due()
        speech = self._audio.speech
        speech.release_if_idle()  # between batches: the sessions are not running
        self.stats.speech_embedding_loads = speech.loads
        self.stats.speech_embedding_releases = speech.releases
        return _Batch(results, self._baselines.round())

    def _close_due(self) -> list[InferenceResult]:
        """Close the windows `sensor_grace_s` past their end (see the module docstring)."""
        idle_now = self._idle_clock()
        if idle_now < self._next_due:
            return []
        self._next_due = idle_now + self._due_every
        grace = self.settings.sensor_grace_s
        quiet = [s for s in self.streams.sensors.values() if s.used <= idle_now - grace]
        if not quiet:
            return []
        closed, results = self._sensors.due(quiet, self._clock(), grace)
        self.stats.windows_closed_by_time += len(closed)
        self._baselines.touched((s.home, s.device) for s in closed)
        return results
