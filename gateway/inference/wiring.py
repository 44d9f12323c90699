"""Edge inference inside a running gateway: `install_inference(host, settings)`.

- callbacks: committed readings -> `InferenceEngine.readings_in` (it waits while the engine's
  queue is full: a backlog reaches the models whole); audio frames ->
  `InferenceEngine.on_audio` (the frame is handed over and not kept);
- results are written by the gateway's writer thread: ``inferences`` rows as a job
  (``host.run_db``), ``inference_*`` readings through its batch commit (``host.store``, so
  the committed-readings callbacks and the unique indexes hold for them too);
- events go out on the gateway's own MQTT session (``host.publish``): one identity, one
  availability topic, one reconnect schedule; each event is also handed to the other plug-ins
  (``host.emit_event``: local actions); Home Assistant discovery goes through the
  `DiscoverySink` the Home Assistant plug-in hands over (the same session, recorded);
- task ``inference`` (the engine) and ``inference-sweep`` (idle devices' state is evicted and
  sensors' windows are closed by time (``sensor_grace_s``) also when no input arrives;
  `gateway.inference.streams`, limits from ``[devices]``);
- sensor baselines persisted in ``sensor_baselines`` (`gateway.inference.baselines`): read
  lazily by the inference thread on its own read-only connection, written by the writer every
  ``baseline_save_s`` and at shutdown (the lifetime's exit, after the engine's last batch);
- gauge ``homeedge_gateway_inference_streams{kind="sensor"|"microphone"}``: devices with state;
  ``homeedge_gateway_inference_baselines_persisted``: rows in ``sensor_baselines``;
  ``homeedge_gateway_inference_windows_closed_by_time``: sensor windows closed by the grace
  period rather than by a reading (a count since start);
- ``/healthz`` gets an ``inference`` object: models loaded, ``load_errors``, counters.

The models load in a lifetime at start; a model that fails is named in the log and in
``/healthz`` while the others serve.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from gateway.host import GatewayHost
from gateway.inference.publisher import DiscoverySink
from gateway.inference.settings import InferenceSettings
from gateway.inference.stats import ModelStatus
from gateway.records import Reading

if TYPE_CHECKING:
    from gateway.inference.engine import InferenceEngine
    from gateway.ingest import AudioIn, ReadingsIn


class HostEvents:
    """The engine's event sink: the gateway's own MQTT session, with counts for /healthz."""

    def __init__(self, host: GatewayHost) -> None:
        self._host = host
        self.published = 0
        self.dropped = 0

    def submit(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        if self._host.publish(topic, payload, retain=retain):
            self.published += 1
            return True
        self.dropped += 1
        return False


class EngineControl:
    """The running engine's models, for `gateway.updates` (its `InferenceControl`): load a
    model set beside the running one, swap it in between two batches, and the counters a
    bundle's soak reads."""

    def __init__(self, holder: dict[str, InferenceEngine]) -> None:
        self._holder = holder

    def status(self) -> ModelStatus:
        engine = self._holder.get("engine")
        if engine is None:
            return ModelStatus({}, ["the inference engine is not started"], 0, 0)
        return ModelStatus(
            {n: m.manifest.version for n, m in engine.runtime.models.items()},
            [str(e) for e in engine.runtime.errors],
            engine.stats.errors,
            engine.stats.dropped,
        )

    async def load(self, settings: InferenceSettings, models_dir: Path) -> tuple[Any, list[str]]:
        """The models (and fleet priors) of `settings` from `models_dir`, and load errors."""
        from gateway.inference.engine import load_priors, load_runtime

        runtime = await asyncio.to_thread(load_runtime, settings, models_dir)
        priors = await asyncio.to_thread(load_priors, settings)
        return (runtime, priors), [str(e) for e in runtime.errors]

    async def swap(self, runtime: Any) -> None:
        models, priors = runtime
        await self._holder["engine"].swap_runtime(models, priors)


def install_inference(
    host: GatewayHost, settings: InferenceSettings, *, discovery: DiscoverySink | None = None
) -> EngineControl | None:
    """Wire the engine into the gateway (before it starts); see the module docstring.
    `discovery`: where Home Assistant configs go (none: the entities are not announced).
    Returns the engine's control for model swaps (`gateway.updates`); None when disabled."""
    if not settings.enabled:
        return None
    # Imported here, not at module level: the engine pulls in onnxruntime (~30 MB resident),
    # which an ingest-only gateway ([inference] enabled = false) must not pay for.
    from prometheus_client import Gauge

    from gateway.inference.baselines import BaselineReader, count_baselines
    from gateway.inference.engine import InferenceEngine
    from gateway.inference.streams import DeviceLimits
    from gateway.sync.privacy import room_class

    rooms = host.config.privacy.rooms

    dev = host.config.devices
    limits = DeviceLimits(
        idle_s=dev.idle_s, max_devices=dev.max_devices, max_microphones=dev.max_microphones
    )
    events = HostEvents(host)
    holder: dict[str, InferenceEngine] = {}

    async def write(fn: Callable[[Connection], None]) -> None:
        await host.run_db(fn)

    async def store(item: ReadingsIn) -> None:
        await host.store(item)

    async def lifetime() -> AsyncIterator[None]:
        reader = BaselineReader(host.config.storage.path)
        engine = InferenceEngine.create(
            settings,
            write=write,
            store=store,
            publisher=events,
            root=host.config.mqtt.topic_root,
            availability_topic=host.status_topic,
            limits=limits,
            load=reader,
            on_event=host.emit_event,
            discovery=discovery,
            room_class=lambda room: room_class(room, rooms).value,
        )
        engine.stats.baselines_persisted = await host.run_db(count_baselines)
        holder["engine"] = engine
        try:
            yield
            # The tasks are cancelled by now, the writer still runs: the learning since the
            # last save round is written, so a clean restart loses none.
            await engine.save_baselines()
        finally:
            engine.close()
            reader.close()

    async def on_readings(readings: Sequence[Reading]) -> None:
        if "engine" in holder:
            await holder["engine"].readings_in(readings)

    async def on_audio(item: AudioIn) -> None:
        if "engine" in holder:
            holder["engine"].on_audio(item.home, item.room, item.device, item.frame)

    async def run_engine() -> None:
        await holder["engine"].run()

    async def sweep() -> None:
        # As the device table's sweep: at most a minute (or a quarter of idle_s) late; windows
        # close at most half a grace period (10 s at most) after they are due.
        every = min(limits.idle_s / 4, 60.0, max(settings.sensor_grace_s / 2, 1.0), 10.0)
        while True:
            await asyncio.sleep(every)
            holder["engine"].sweep()

    def tracked(kind: str) -> Callable[[], float]:
        def size() -> float:
            engine = holder.get("engine")
            if engine is None:
                return 0.0
            streams = engine.streams
            return float(len(streams.sensors if kind == "sensor" else streams.microphones))

        return size

    gauge = Gauge(
        "homeedge_gateway_inference_streams",
        "devices whose inference state (windows, baselines, audio streams) is kept, by kind; "
        "evicted after devices.idle_s without input",
        ["kind"],
        registry=host.registry,
    )
    for kind in ("sensor", "microphone"):
        gauge.labels(kind).set_function(tracked(kind))

    def stat(name: str) -> Callable[[], float]:
        def value() -> float:
            engine = holder.get("engine")
            return float(getattr(engine.stats, name)) if engine is not None else 0.0

        return value

    Gauge(
        "homeedge_gateway_inference_baselines_persisted",
        "sensor baselines stored in SQLite (sensor_baselines) after the last save round",
        registry=host.registry,
    ).set_function(stat("baselines_persisted"))
    Gauge(
        "homeedge_gateway_inference_windows_closed_by_time",
        "sensor windows closed by inference.sensor_grace_s (no reading after their end), "
        "since start",
        registry=host.registry,
    ).set_function(stat("windows_closed_by_time"))

    def health() -> dict[str, Any]:
        engine = holder.get("engine")
        if engine is None:
            return {"state": "not started"}
        return {
            "models": {n: m.manifest.version for n, m in engine.runtime.models.items()},
            "load_errors": [str(e) for e in engine.runtime.errors],
            **asdict(engine.stats),
            "events_published": events.published,
            "events_dropped": events.dropped,
        }

    host.add_lifetime(lifetime)
    host.on_readings(on_readings)
    host.on_audio(on_audio)
    host.add_task("inference", run_engine)
    host.add_task("inference-sweep", sweep)
    host.add_health("inference", health)
    return EngineControl(holder)
