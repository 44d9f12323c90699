"""What becomes of the engine's results: `InferenceResult`, and `ResultHandler`, which publishes
them as events (with Home Assistant discovery before a device's first result), hands each event
to ``on_event`` (`gateway.records.EdgeEvent`: the host's other plug-ins, local actions) and
stores them.

Storage, both through the gateway's writer thread:

- one ``inferences`` row per result, in a ``write`` job (``Writer.run``);
- one ``inference_<what>`` reading of the source device per result (`METRIC_OF`: 1 per alarm or
  keyword, the 0/1 decision of an anomaly or occupancy window, a speech share; the score stays
  in the ``inferences`` row) at the result's end, through the writer's batch path (``store``:
  ``Writer.store``), so the window aggregator sends counts and shares upstream (never audio) and
  the committed-readings callbacks see them like any other reading. They carry no `DeviceSeen`:
  a derived reading is not the device being heard from, so ``devices.last_seen`` is left alone.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, insert

from gateway.inference import discovery
from gateway.inference.manifest import ModelKind
from gateway.inference.publisher import DiscoverySink, EventSink
from gateway.inference.settings import InferenceSettings
from gateway.inference.stats import EngineStats
from gateway.inference.tables import inferences
from gateway.ingest import ReadingsIn
from gateway.records import EdgeEvent, EventKind, Reading
from schemas.events import InferenceEvent, encode_event
from schemas.topics import ROOT, gateway_events_topic

WriteFn = Callable[[Callable[[Connection], None]], Awaitable[None]]
"""Runs ``fn(connection)`` in the writer thread in its own transaction (``Writer.run``)."""
StoreFn = Callable[[ReadingsIn], Awaitable[None]]
"""Stores readings through the writer's batch commit (``Writer.store``)."""

METRIC_OF = {
    ModelKind.AUDIO_VAD: "inference_speech",
    ModelKind.AUDIO_KEYWORD: "inference_keyword",
    ModelKind.AUDIO_ALARM: "inference_alarm",
    ModelKind.SENSOR_ANOMALY: "inference_anomaly",
    ModelKind.SENSOR_OCCUPANCY: "inference_occupancy",
}
EVENT_KIND = {
    ModelKind.AUDIO_VAD: EventKind.SPEECH,
    ModelKind.AUDIO_KEYWORD: EventKind.KEYWORD,
    ModelKind.AUDIO_ALARM: EventKind.ALARM,
    ModelKind.SENSOR_ANOMALY: EventKind.ANOMALY,
    ModelKind.SENSOR_OCCUPANCY: EventKind.OCCUPANCY,
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
    value: float  # what the inference_* reading stores (an event's 1, a 0/1 decision, a share)
    event: bool  # publish it


class ResultHandler:
    """Events and discovery (event loop, non-blocking) and storage (awaits the writer)."""

    def __init__(
        self,
        settings: InferenceSettings,
        *,
        write: WriteFn,
        store: StoreFn,
        publisher: EventSink | None,
        stats: EngineStats,
        discovery: DiscoverySink | None = None,
        root: str = ROOT,
        availability_topic: str | None = None,
        clock: Callable[[], float] = time.time,
        max_announced: int = 20_000,
        on_event: Callable[[EdgeEvent], None] | None = None,
    ) -> None:
        self._settings = settings
        self._write = write
        self._store = store
        self._publisher = publisher
        self._discovery = discovery
        self._stats = stats
        self._root = root
        # HA discovery's availability: the gateway's status topic (`GatewayHost.status_topic`);
        # an engine without a gateway names none, so HA takes its entities as always available.
        self._availability = availability_topic
        self._clock = clock
        self._on_event = on_event
        # Sources whose discovery configs were published, least recently used first, bounded:
        # one forgotten is announced again with its next result (the same retained configs).
        self._announced: OrderedDict[tuple[str, ...], str] = OrderedDict()
        self._max_announced = max_announced

    async def handle(self, results: list[InferenceResult]) -> None:
        """Publish `results`, then store them."""
        self.emit(results)
        if results:
            await self.store(results)

    def emit(self, results: list[InferenceResult]) -> None:
        self._stats.results += len(results)
        publisher, on_event = self._publisher, self._on_event
        if publisher is None and on_event is None:
            return
        now = self._clock()
        for r in results:
            if self._settings.discovery and self._discovery is not None:
                self._announce(self._discovery, r)
            if not r.event:
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
            if publisher is not None and self._settings.publish_events:
                topic = gateway_events_topic(r.home, r.model, root=self._root)
                if publisher.submit(topic, encode_event(event)):
                    self._stats.events += 1
            # Also with publish_events off: local actions do not depend on the MQTT events.
            if on_event is not None:
                on_event(EdgeEvent.of(EVENT_KIND[r.kind], event))

    def _announce(self, sink: DiscoverySink, r: InferenceResult) -> None:
        s = self._settings
        status = self._availability
        gw, prefix = sink.gateway_id, sink.prefix
        owner = (r.home, r.device)
        if r.kind in (ModelKind.AUDIO_ALARM, ModelKind.AUDIO_KEYWORD, ModelKind.AUDIO_VAD):
            key: tuple[str, ...] = ("mic", r.home, r.device)
            configs = lambda: discovery.microphone_configs(  # noqa: E731
                r.home,
                r.room,
                r.device,
                gateway_id=gw,
                root=self._root,
                prefix=prefix,
                off_delay_s=s.alarm_off_delay_s,
                availability_topic=status,
            )
        elif r.kind == ModelKind.SENSOR_OCCUPANCY:
            key = ("room", r.home, r.room)
            owner = (r.home, "")
            configs = lambda: [  # noqa: E731
                discovery.occupancy_config(
                    r.home,
                    r.room,
                    gateway_id=gw,
                    root=self._root,
                    prefix=prefix,
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
                    gateway_id=gw,
                    root=self._root,
                    prefix=prefix,
                    availability_topic=status,
                )
            ]
        # A device the gateway forgot had its configs removed (`sink.has` is False again for
        # this source's config, even when the device's metric entities were announced anew by
        # its first readings since): announced anew when it is back.
        known = self._announced.get(key)
        if known is not None and sink.has(*owner, known):
            self._announced.move_to_end(key)
            return
        # Remembered only once every config was queued: a dropped one is tried again with the
        # next result of that source instead of never (HA would not know the entity).
        made = configs()
        if made and sink.announce(*owner, made):
            self._announced[key] = made[0].topic
            if len(self._announced) > self._max_announced:
                self._announced.popitem(last=False)

    async def store(self, results: Sequence[InferenceResult]) -> None:
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
        derived = [
            Reading(r.home, r.room, r.device, METRIC_OF[r.kind], r.end, r.value, None, now)
            for r in results
        ]

        def write(conn: Connection) -> None:
            conn.execute(insert(inferences), inf_rows)

        await self._write(write)
        await self._store(ReadingsIn(derived, seen=[]))
        self._stats.rows_written += len(inf_rows)
