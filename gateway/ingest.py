"""Decoding one MQTT message into what the writer stores: the ingest path's pure part.

`MessageDecoder.decode(topic, payload, received_at)` never raises for bad input: every message
becomes exactly one of

- `ReadingsIn`: readings of one or more devices (native telemetry or a format adapter's output);
- `StateIn`: a device's availability (``online``/``offline``) from its ``state`` topic;
- `AudioIn`: a validated audio frame; it is NOT stored (raw audio never leaves memory), only the
  device's ``last_seen`` is, and the frame goes to the inference callbacks;
- `Ignored`: gateway output topics under the root (status, events), acked and not stored;
- `DeadLetter`: anything unusable, with a reason (``invalid_json``, ``validation``,
  ``non_finite``, ``oversized``, ``bad_header``, ``bad_samples``, ``bad_topic``,
  ``unknown_topic``, ``adapter_error``...).

An adapter that returns an empty list means "nothing to store" (not an error).

Adapters: topics outside ``<topic_root>/`` are offered to the registered `Adapter`s (first match
wins); a topic nobody claims is a dead letter (``unknown_topic``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from paho.mqtt.client import topic_matches_sub

from gateway.records import DeadLetter, Reading
from schemas.errors import PayloadError, TopicError
from schemas.state import Availability, decode_state
from schemas.telemetry import decode_telemetry
from schemas.topics import GATEWAY_SEGMENT, DeviceTopic, Kind, parse_device_topic

if TYPE_CHECKING:
    from schemas.audio import AudioFrame

log = logging.getLogger(__name__)

_TOPIC_CACHE = 4096

AdapterFn = Callable[[str, bytes, float], "list[Reading] | DeadLetter"]
"""An adapter maps (topic, payload, received_at) to readings, or to a dead letter."""


@dataclass(frozen=True, slots=True)
class Adapter:
    """A format adapter: the MQTT filter it subscribes to and the function that maps payloads."""

    topic_filter: str
    fn: AdapterFn
    name: str = ""


@dataclass(frozen=True, slots=True)
class DeviceSeen:
    """A device was heard from at `at` (gateway clock)."""

    home: str
    room: str
    device: str
    at: float


@dataclass(frozen=True, slots=True)
class ReadingsIn:
    """Readings to store, and the devices they came from."""

    readings: list[Reading]
    seen: list[DeviceSeen]


@dataclass(frozen=True, slots=True)
class StateIn:
    """A device's availability message."""

    home: str
    room: str
    device: str
    availability: Availability
    at: float


@dataclass(frozen=True, slots=True)
class AudioIn:
    """A validated audio frame of one device (kept in memory only)."""

    home: str
    room: str
    device: str
    frame: AudioFrame
    received_at: float

    @property
    def seen(self) -> DeviceSeen:
        return DeviceSeen(self.home, self.room, self.device, self.received_at)


@dataclass(frozen=True, slots=True)
class Ignored:
    """A message with nothing to store: the gateways' own output topics
    (``<root>/<home>/gateway/...``, e.g. status and events) that ``<root>/#`` also matches."""

    topic: str


Ingested = ReadingsIn | StateIn | AudioIn | Ignored | DeadLetter


class MessageDecoder:
    """Turns (topic, payload) into an `Ingested` value; safe to call from any one thread."""

    def __init__(
        self,
        *,
        topic_root: str,
        adapters: Sequence[Adapter] = (),
        max_dead_letter_bytes: int = 65536,
    ) -> None:
        self._root = topic_root
        self._prefix = topic_root + "/"
        self._adapters = tuple(adapters)
        self._max_dl = max_dead_letter_bytes
        # Devices publish on the same few topics over and over: parse each once. Bounded
        # (cleared when full) so random topics cannot grow it without limit.
        self._topics: dict[str, DeviceTopic] = {}
        self._adapter_cache: dict[str, Adapter | None] = {}

    def dead(self, topic: str, payload: bytes, reason: str, detail: str, at: float) -> DeadLetter:
        """A dead letter whose payload is cut to the configured size (the detail says so)."""
        if len(payload) > self._max_dl:
            detail = f"{detail} (payload cut from {len(payload)} to {self._max_dl} bytes)"
            payload = payload[: self._max_dl]
        return DeadLetter(
            topic=topic, payload=payload, reason=reason, detail=detail, received_at=at
        )

    def decode(self, topic: str, payload: bytes, received_at: float) -> Ingested:
        if topic.startswith(self._prefix):
            return self._decode_native(topic, payload, received_at)
        adapter = self._adapter_for(topic)
        if adapter is not None:
            return self._decode_adapter(adapter, topic, payload, received_at)
        return self.dead(topic, payload, "unknown_topic", "no decoder for this topic", received_at)

    def _adapter_for(self, topic: str) -> Adapter | None:
        # topic_matches_sub builds a matcher per call: remember each topic's adapter instead.
        try:
            return self._adapter_cache[topic]
        except KeyError:
            pass
        found = next((a for a in self._adapters if topic_matches_sub(a.topic_filter, topic)), None)
        if len(self._adapter_cache) >= _TOPIC_CACHE:
            self._adapter_cache.clear()
        self._adapter_cache[topic] = found
        return found

    def _decode_native(self, topic: str, payload: bytes, at: float) -> Ingested:
        where = self._topics.get(topic)
        if where is None:  # only device topics are cached, so the gateway check runs once each
            levels = topic[len(self._prefix) :].split("/", 2)
            if len(levels) > 2 and levels[1] == GATEWAY_SEGMENT:
                return Ignored(topic)
            try:
                where = parse_device_topic(topic, root=self._root)
            except TopicError as exc:
                return self.dead(topic, payload, "bad_topic", str(exc), at)
            if len(self._topics) >= _TOPIC_CACHE:
                self._topics.clear()
            self._topics[topic] = where
        try:
            if where.kind is Kind.TELEMETRY:
                msg = decode_telemetry(payload)
                readings = [
                    Reading(
                        home=where.home,
                        room=where.room,
                        device=where.device,
                        metric=name,
                        ts=msg.ts,
                        value=value,
                        seq=msg.seq,
                        received_at=at,
                    )
                    for name, value in msg.readings.items()
                ]
                seen = [DeviceSeen(where.home, where.room, where.device, at)]
                return ReadingsIn(readings=readings, seen=seen)
            if where.kind is Kind.AUDIO:
                # Imported on the first frame: schemas.audio needs numpy (~14 MB resident),
                # which a gateway without microphones never has to load.
                from schemas.audio import decode_audio_frame

                frame = decode_audio_frame(payload)
                return AudioIn(where.home, where.room, where.device, frame, at)
            return StateIn(where.home, where.room, where.device, decode_state(payload), at)
        except PayloadError as exc:
            return self.dead(topic, payload, exc.reason, exc.detail, at)

    def _decode_adapter(self, adapter: Adapter, topic: str, payload: bytes, at: float) -> Ingested:
        try:
            out = adapter.fn(topic, payload, at)
        except Exception as exc:  # a foreign adapter's bug must not stop ingest: dead-letter it
            log.warning(
                "adapter %s failed on %s: %r", adapter.name or adapter.topic_filter, topic, exc
            )
            return self.dead(topic, payload, "adapter_error", repr(exc), at)
        if isinstance(out, DeadLetter):
            return self.dead(out.topic, out.payload, out.reason, out.detail, out.received_at)
        # An empty list is a message with nothing numeric in it (a Zigbee2MQTT "state": "ON"):
        # not an error, nothing to store, acked after the batch commits.
        seen: dict[tuple[str, str], DeviceSeen] = {}
        for r in out:
            seen[(r.home, r.device)] = DeviceSeen(r.home, r.room, r.device, at)
        return ReadingsIn(readings=list(out), seen=list(seen.values()))
