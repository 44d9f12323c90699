"""Decoding one MQTT message into what the writer stores: the ingest path's pure part.

`MessageDecoder.decode(topic, payload, received_at)` never raises for bad input: every message
becomes a list of items to store, in order, the last of which is the message's own:

- `ReadingsIn`: readings of one or more devices (native telemetry or a format adapter's output);
- `StateIn`: a device's availability (``online``/``offline``) from its ``state`` topic, or
  reported by a format adapter (then it comes before the message's `ReadingsIn`);
- `AudioIn`: a validated audio frame; it is NOT stored (raw audio never leaves memory), only the
  device's ``last_seen`` is, and the frame goes to the inference callbacks;
- `Ignored`: the gateways' own output topics under the root (``<root>/<home>/gateway/status``
  and ``.../gateway/events/<model>``), acked and not stored; any other topic under a
  ``gateway`` room (a device configured into the reserved room) is ``bad_topic``;
- `DeadLetter`: anything unusable, with a reason: ``invalid_json``, ``validation``,
  ``non_finite``, ``oversized``, ``too_deep`` (JSON nested deeper than 32 levels),
  ``bad_header``, ``bad_samples``, ``bad_topic``, ``unknown_topic``, ``adapter_error``, the
  adapters' ``adapter_*`` reasons (``adapter_invalid_json``, ``adapter_validation``,
  ``adapter_unit``, ``adapter_oversized``, ``adapter_too_deep``, ``adapter_template``), and,
  per reading (`gateway.validation`), ``ts_out_of_range`` (beyond ``[ingest]
  max_clock_skew_s`` ahead of the receive time or ``max_age_s`` behind it) and
  ``out_of_range`` (outside the metric's plausible range or a sensor error value,
  ``[ingest.ranges.<metric>]``), and
  ``too_many_devices`` (a new device beyond ``[devices] max_devices``). A message's
  rejected readings are dead letters stored ahead of its good ones, which are kept.

Adapters: topics outside ``<topic_root>/`` are offered to the `TopicAdapter`s (the first whose
filter matches owns the topic, then the filters adapters claimed at run time: `TopicClaims`,
e.g. Home Assistant discovery's state topics; an exact claim beats only a static filter its
adapter marks as a guess, ``yielding_filters``, like Shelly's ``+/online``); a topic nobody
claims is a dead letter (``unknown_topic``). An
adapter returns data, never calls back: `Adapted` (readings, possibly none, and availability
changes) or a `DeadLetter`.

Admission: with a `gateway.device_table.DeviceTable`, every device an item names (a native
topic's device, each device of an adapter's readings and availability) must be admitted by it
first: a device the table refuses (new, and the table is full) has its part of the message
turned into a dead letter ``too_many_devices`` (the whole message when nothing else is left; a
side dead letter naming the refused devices, ahead of the rest, when an adapter's message also
names admitted devices). Items the gateway makes itself (``Writer.store``) are not admitted:
they are about devices it already tracks.

One cache: each topic's route (a parsed device topic, the owning adapter, "ignored" or
"nobody") is remembered, bounded, so the same few topics are parsed and matched once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

import msgspec

from gateway.device_table import REFUSED, DeviceTable
from gateway.logs import RateLimitedLog
from gateway.records import DeadLetter, Reading
from gateway.topic_filters import TopicFilters
from gateway.validation import ReadingChecks, Rejections
from schemas.errors import PayloadError, TopicError
from schemas.state import Availability, decode_state
from schemas.telemetry import decode_telemetry
from schemas.topics import (
    GATEWAY_SEGMENT,
    DeviceTopic,
    Kind,
    is_gateway_output,
    parse_device_topic,
)

if TYPE_CHECKING:
    from schemas.audio import AudioFrame

log = logging.getLogger(__name__)

_TOPIC_CACHE = 4096


# msgspec structs, not frozen dataclasses: one of each per message on the MQTT thread, and a
# frozen dataclass's __init__ sets each field through object.__setattr__ (several times the cost).
class DeviceSeen(msgspec.Struct, frozen=True, gc=False):
    """A device was heard from at `at` (gateway clock)."""

    home: str
    room: str
    device: str
    at: float


class ReadingsIn(msgspec.Struct, frozen=True):
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


@dataclass(frozen=True, slots=True)
class AvailabilityChange:
    """A foreign device said it is online or offline (stored in `devices` like a `StateIn`)."""

    adapter: str
    home: str
    room: str
    device: str
    online: bool
    ts: float


@dataclass(frozen=True, slots=True)
class Adapted:
    """What a format adapter made of one message: readings (possibly none) and the availability
    changes it reported, in the order they were seen."""

    readings: list[Reading]
    availability: list[AvailabilityChange] = field(default_factory=list)
    # Parts of the message the adapter could not use, as (reason, detail): each reason becomes
    # a dead letter ahead of the readings (e.g. one entity's failing template among several).
    rejected: list[tuple[str, str]] = field(default_factory=list)


class TopicAdapter(Protocol):
    """A format adapter as the decoder sees it (`gateway.adapters.BaseAdapter` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def filters(self) -> tuple[str, ...]: ...

    def adapt(self, topic: str, payload: bytes, received_at: float) -> Adapted | DeadLetter:
        """Never raises for bad input."""
        ...


class TopicClaims(Protocol):
    """What an adapter with topics known only at run time is handed (`ClaimingAdapter`).

    Home Assistant discovery learns its entities' state and availability topics from retained
    config messages: `claim` asks the gateway to route a topic filter to the adapter and to
    subscribe to it (now, and again on every new connection); `release` undoes it. Both are
    called from the decoding thread, during ``adapt``."""

    def claim(self, topic_filter: str) -> bool:
        """True when the filter is routed to the adapter; False when another adapter owns it
        (a static filter of an enabled adapter matches it, unless that filter is one of its
        adapter's ``yielding_filters``, or another adapter claimed it)."""
        ...

    def release(self, topic_filter: str) -> None: ...


class ClaimingAdapter(TopicAdapter, Protocol):
    """A `TopicAdapter` whose topics grow at run time: the decoder binds it to its table."""

    def bind_claims(self, claims: TopicClaims) -> None: ...


ClaimListener = Callable[[str], None]


class AdapterTable:
    """Which adapter owns a topic: the first whose filter matches (adapters in priority order,
    each filter in the adapter's order), then the filters adapters claimed at run time
    (`claim`). The one dispatch rule, used by the decoder.

    A claimed filter never takes a topic from a static filter: an exact topic that a static
    filter matches cannot be claimed, and a claimed wildcard filter only gets the topics no
    static filter matches (the native adapter of an ecosystem knows its payloads best, and one
    owner per topic means one reading per value). The exception is an adapter's
    ``yielding_filters``, static filters that only guess (Shelly's ``+/online`` under its
    wildcard prefix also matches other devices' topics): an exact topic they match can be
    claimed, and the claimant then owns it."""

    def __init__(self, adapters: Sequence[TopicAdapter]) -> None:
        self.adapters = tuple(adapters)
        owners = [(f, a) for a in self.adapters for f in a.filters]
        self._filters = TopicFilters(f for f, _ in owners)
        self._owners = [a for _, a in owners]
        # The static filters that an exact claim cannot take a topic from.
        self._firm = TopicFilters(
            f for f, a in owners if f not in getattr(a, "yielding_filters", ())
        )
        # Claimed at run time: exact topics in a dict, wildcard filters matched in order.
        self._exact: dict[str, TopicAdapter] = {}
        self._wild: dict[str, TopicAdapter] = {}
        self._wild_filters = TopicFilters(())
        self._on_claim: list[tuple[ClaimListener, ClaimListener]] = []

    @property
    def filters(self) -> list[str]:
        """Every adapter's filters, without duplicates, in priority order (to subscribe to)."""
        return list(dict.fromkeys(self._filters.filters))

    @property
    def claimed(self) -> list[str]:
        """The filters claimed at run time (to subscribe to on a new connection)."""
        return [*self._exact, *self._wild]

    def owner(self, topic: str) -> TopicAdapter | None:
        # An exact claim exists only where no firm static filter matches (see `claim`).
        exact = self._exact.get(topic)
        if exact is not None:
            return exact
        index = self._filters.first(topic)
        if index >= 0:
            return self._owners[index]
        if not self._wild:
            return None
        index = self._wild_filters.first(topic)
        return None if index < 0 else list(self._wild.values())[index]

    def watch_claims(self, subscribe: ClaimListener, unsubscribe: ClaimListener) -> None:
        """Call `subscribe`/`unsubscribe` with each filter claimed/released from now on."""
        self._on_claim.append((subscribe, unsubscribe))

    def unwatch_claims(self, subscribe: ClaimListener) -> None:
        self._on_claim = [pair for pair in self._on_claim if pair[0] != subscribe]

    def claim(self, adapter: TopicAdapter, topic_filter: str) -> bool:
        """Route `topic_filter` to `adapter` (see the class docstring); idempotent."""
        wild = "+" in topic_filter or "#" in topic_filter
        claims = self._wild if wild else self._exact
        holder = claims.get(topic_filter)
        if holder is not None:
            return holder is adapter
        if not wild and self._firm.first(topic_filter) >= 0:
            return False
        claims[topic_filter] = adapter
        if wild:
            self._wild_filters = TopicFilters(self._wild)
        for subscribe, _ in self._on_claim:
            subscribe(topic_filter)
        return True

    def release(self, adapter: TopicAdapter, topic_filter: str) -> None:
        wild = "+" in topic_filter or "#" in topic_filter
        claims = self._wild if wild else self._exact
        if claims.get(topic_filter) is not adapter:
            return
        del claims[topic_filter]
        if wild:
            self._wild_filters = TopicFilters(self._wild)
        for _, unsubscribe in self._on_claim:
            unsubscribe(topic_filter)


class _DecoderClaims:
    """One adapter's `TopicClaims` on a decoder: claims change routes, so the route cache of
    the decoder is dropped with each (claims are rare: a discovery config, not a reading)."""

    def __init__(self, decoder: MessageDecoder, adapter: TopicAdapter) -> None:
        self._decoder = decoder
        self._adapter = adapter

    def claim(self, topic_filter: str) -> bool:
        root = self._decoder.topic_root
        if topic_filter.split("/", 1)[0] in (root, "#"):
            return False  # our own topics are ours: <root>/# is subscribed and decoded already
        ok = self._decoder.adapters.claim(self._adapter, topic_filter)
        self._decoder.forget_routes()
        return ok

    def release(self, topic_filter: str) -> None:
        self._decoder.adapters.release(self._adapter, topic_filter)
        self._decoder.forget_routes()


class _Route:
    """Where a topic goes when it is not a device topic of ours."""


_IGNORED = _Route()  # a gateway's own output topic under the root
_NOBODY = _Route()  # outside the root and no adapter claims it


class MessageDecoder:
    """Turns (topic, payload) into the items to store; safe to call from any one thread."""

    def __init__(
        self,
        *,
        topic_root: str,
        adapters: Sequence[TopicAdapter] = (),
        max_dead_letter_bytes: int = 65536,
        devices: DeviceTable | None = None,
        checks: ReadingChecks | None = None,
    ) -> None:
        self._root = topic_root
        self.topic_root = topic_root
        self._devices = devices
        self._prefix = topic_root + "/"
        self.adapters = AdapterTable(adapters)
        self._max_dl = max_dead_letter_bytes
        self.checks = checks if checks is not None else ReadingChecks()
        # Devices publish on the same few topics over and over: route each once. Bounded
        # (cleared when full) so random topics cannot grow it without limit; bad topics are
        # not remembered.
        self._routes: dict[str, DeviceTopic | TopicAdapter | _Route] = {}
        self._adapter_log = RateLimitedLog(log)  # a broken adapter fails on every message
        for adapter in adapters:
            bind = getattr(adapter, "bind_claims", None)
            if callable(bind):
                bind(_DecoderClaims(self, adapter))

    def forget_routes(self) -> None:
        """Drop the remembered routes (the adapters' claimed topics changed)."""
        self._routes.clear()

    def dead(self, topic: str, payload: bytes, reason: str, detail: str, at: float) -> DeadLetter:
        """A dead letter whose payload is cut to the configured size (the detail says so).

        Raw audio is never stored: whatever is wrong with a message on one of our ``audio``
        topics (its header, its samples, its topic, its device refused), only the frame's
        header is kept."""
        if topic.endswith("/audio") and topic.startswith(self._prefix):
            from schemas.audio import HEADER_SIZE  # numpy: only gateways that get audio

            if len(payload) > HEADER_SIZE:
                detail = f"{detail} (audio samples not kept)"
                payload = payload[:HEADER_SIZE]
        if len(payload) > self._max_dl:
            detail = f"{detail} (payload cut from {len(payload)} to {self._max_dl} bytes)"
            payload = payload[: self._max_dl]
        return DeadLetter(
            topic=topic, payload=payload, reason=reason, detail=detail, received_at=at
        )

    def decode(
        self,
        topic: str,
        payload: bytes,
        received_at: float,
        *,
        retained: bool = False,
        redelivered: bool = False,
    ) -> list[Ingested]:
        """The items of one message. `retained` (the broker replayed it from its store) and
        `redelivered` (MQTT DUP: it may have come before) mark them with `as_replay`; a retained
        one is admitted without taking a device slot (`DeviceTable.admit`)."""
        items = self._decode(topic, payload, received_at, retained)
        if retained or redelivered:
            return [as_replay(i, topic, retained=retained) for i in items]
        return items

    def _decode(
        self, topic: str, payload: bytes, received_at: float, retained: bool
    ) -> list[Ingested]:
        route = self._routes.get(topic)
        if route is None:
            try:
                route = self._route(topic)
            except TopicError as exc:  # not remembered: random bad topics must not fill it
                return [self.dead(topic, payload, "bad_topic", str(exc), received_at)]
            if len(self._routes) >= _TOPIC_CACHE:
                self._routes.clear()
            self._routes[topic] = route
        if isinstance(route, DeviceTopic):
            if route.kind is Kind.TELEMETRY:
                items = self._decode_telemetry(route, topic, payload, received_at)
            else:
                items = [self._decode_native(route, topic, payload, received_at)]
            table = self._devices
            item = items[-1]
            if table is None or type(item) is DeadLetter:
                return items
            audio = type(item) is AudioIn
            if table.admit(route.home, route.device, audio=audio, replay=retained):
                return items
            detail = table.refusal(audio=audio)
            return [self.dead(topic, payload, REFUSED, detail, received_at)]
        if route is _IGNORED:
            return [Ignored(topic)]
        if route is _NOBODY:
            return [
                self.dead(topic, payload, "unknown_topic", "no decoder for this topic", received_at)
            ]
        assert not isinstance(route, _Route)
        return self._decode_adapter(route, topic, payload, received_at, retained)

    def _route(self, topic: str) -> DeviceTopic | TopicAdapter | _Route:
        """Where `topic` goes; `TopicError` for a malformed topic under the root."""
        if topic.startswith(self._prefix):
            levels = topic[len(self._prefix) :].split("/", 2)
            if len(levels) > 2 and levels[1] == GATEWAY_SEGMENT:
                if is_gateway_output(levels[2]):
                    return _IGNORED
                raise TopicError(
                    f"room {GATEWAY_SEGMENT!r} is reserved for the gateway's own topics "
                    f"({self._prefix}<home>/{GATEWAY_SEGMENT}/status, .../events/<model>): "
                    "configure the device in another room"
                )
            return parse_device_topic(topic, root=self._root)
        owner = self.adapters.owner(topic)
        return _NOBODY if owner is None else owner

    def _decode_telemetry(
        self, where: DeviceTopic, topic: str, payload: bytes, at: float
    ) -> list[Ingested]:
        try:
            msg = decode_telemetry(payload)
        except PayloadError as exc:
            return [self.dead(topic, payload, exc.reason, exc.detail, at)]
        checks = self.checks
        too_old_or_new = checks.ts_problem(msg.ts, at)  # one time for the whole message
        if too_old_or_new is not None:
            return [self.dead(topic, payload, "ts_out_of_range", too_old_or_new, at)]
        readings: list[Reading] = []
        rejected = Rejections()
        for name, value in msg.readings.items():
            problem = checks.value_problem(name, value)
            if problem is not None:
                rejected.add("out_of_range", problem)
                continue
            readings.append(
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
            )
        seen = [DeviceSeen(where.home, where.room, where.device, at)]
        return self._with_rejections([], readings, seen, rejected, topic, payload, at)

    def _with_rejections(
        self,
        items: list[Ingested],
        readings: list[Reading],
        seen: list[DeviceSeen],
        rejected: Rejections,
        topic: str,
        payload: bytes,
        at: float,
    ) -> list[Ingested]:
        """`items` + a dead letter per reason of `rejected` + the readings, unless every
        reading was rejected (the last dead letter is then the message's own item)."""
        if rejected:
            items += [
                self.dead(topic, payload, reason, detail, at)
                for reason, detail in rejected.dead_letter_details()
            ]
            if not readings:
                return items
        items.append(ReadingsIn(readings=readings, seen=seen))
        return items

    def _decode_native(self, where: DeviceTopic, topic: str, payload: bytes, at: float) -> Ingested:
        try:
            if where.kind is Kind.AUDIO:
                # Imported on the first frame: schemas.audio needs numpy (~14 MB resident),
                # which a gateway without microphones never has to load.
                from schemas.audio import decode_audio_frame

                frame = decode_audio_frame(payload)
                return AudioIn(where.home, where.room, where.device, frame, at)
            return StateIn(where.home, where.room, where.device, decode_state(payload), at)
        except PayloadError as exc:
            return self.dead(topic, payload, exc.reason, exc.detail, at)

    def _decode_adapter(
        self, adapter: TopicAdapter, topic: str, payload: bytes, at: float, retained: bool
    ) -> list[Ingested]:
        try:
            out = adapter.adapt(topic, payload, at)
        except Exception as exc:  # a foreign adapter's bug must not stop ingest: dead-letter it
            self._adapter_log.warning("adapter %s failed on %s: %r", adapter.name, topic, exc)
            return [self.dead(topic, payload, "adapter_error", repr(exc), at)]
        if isinstance(out, DeadLetter):
            return [self.dead(out.topic, out.payload, out.reason, out.detail, out.received_at)]
        items: list[Ingested] = [
            StateIn(
                c.home,
                c.room,
                c.device,
                Availability.ONLINE if c.online else Availability.OFFLINE,
                c.ts,
            )
            for c in out.availability
        ]
        # An empty list is a message with nothing numeric in it (a Zigbee2MQTT "state": "ON"):
        # not an error, nothing to store, acked after the batch commits.
        readings, rejected = self.checks.split(list(out.readings), at)
        for reason, detail in out.rejected:
            rejected.add(reason, detail)
        seen: dict[tuple[str, str], DeviceSeen] = {}
        for r in readings:
            seen[(r.home, r.device)] = DeviceSeen(r.home, r.room, r.device, at)
        items = self._with_rejections(
            items, readings, list(seen.values()), rejected, topic, payload, at
        )
        if self._devices is None or retained:  # a replay takes no slot: `DeviceTable.admit`
            return items
        return self._admit_adapted(items, topic, payload, at)

    def _admit_adapted(
        self, items: list[Ingested], topic: str, payload: bytes, at: float
    ) -> list[Ingested]:
        """`items` (availability and the rejected readings' dead letters, then the readings or
        the last dead letter) without the refused devices' parts."""
        table = self._devices
        assert table is not None
        refused: dict[tuple[str, str], None] = {}
        verdicts: dict[tuple[str, str], bool] = {}

        def admitted(home: str, device: str) -> bool:
            key = (home, device)
            ok = verdicts.get(key)
            if ok is None:
                ok = verdicts[key] = table.admit(home, device, adapted=True)
                if not ok:
                    refused[key] = None
            return ok

        kept: list[Ingested] = [
            i for i in items[:-1] if not isinstance(i, StateIn) or admitted(i.home, i.device)
        ]
        last = items[-1]
        if not isinstance(last, ReadingsIn):  # every reading rejected: the dead letter stays
            if not refused:
                return items
            names = ", ".join(f"{h}/{d}" for h, d in refused)
            dead = self.dead(topic, payload, REFUSED, f"{names}: {table.refusal(audio=False)}", at)
            return [dead, *kept, last]
        readings = [r for r in last.readings if admitted(r.home, r.device)]
        if not refused:
            return items
        names = ", ".join(f"{h}/{d}" for h, d in refused)
        detail = f"{names}: {table.refusal(audio=False)}"
        dead = self.dead(topic, payload, REFUSED, detail, at)
        if not readings and not kept:
            return [dead]
        seen = [s for s in last.seen if (s.home, s.device) not in refused]
        return [dead, *kept, ReadingsIn(readings=readings, seen=seen)]


def as_replay(item: Ingested, topic: str, *, retained: bool) -> Ingested:
    """`item` of a message the broker may have delivered before: an MQTT redelivery (DUP flag)
    or, when `retained`, a retained message the broker replays on every subscription.

    A dead letter becomes a replay (stored once, never counted again: `DeadLetter`). Readings
    need nothing for a redelivery (their identity dedupes them), but a retained message is not
    the device being heard now: its readings are stored without moving ``last_seen``, and a
    retained audio frame (old sound) is dropped. A retained availability is the state itself
    and is kept."""
    if isinstance(item, DeadLetter):
        return replace(item, replay=True)
    if not retained:
        return item
    if isinstance(item, ReadingsIn):
        return ReadingsIn(readings=item.readings, seen=[])
    if isinstance(item, AudioIn):
        return Ignored(topic)
    return item
