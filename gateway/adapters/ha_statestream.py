"""The Home Assistant adapter: ``mqtt_statestream`` topics.

Home Assistant's mqtt_statestream publishes every state change of entity ``<domain>.<object_id>``
on ``<base>/<domain>/<object_id>/state`` and, with ``publish_attributes``, each attribute on its
own topic ``<base>/<domain>/<object_id>/<attribute>``, JSON-encoded (so strings arrive quoted).
A state is therefore only meaningful together with the entity's ``device_class`` (which metric)
and ``unit_of_measurement`` (which unit), which arrive as separate messages, in either order for
retained topics. The adapter remembers both per entity; a numeric state that arrives before them
is held (at most ``max_pending`` entities, the latest state each) and turned into a reading by
the attribute message that completes it, with the state's own receive time.

Built-in device classes (field names ``<domain>.<device_class>``), the same table as Home
Assistant discovery's (`gateway.adapters.ha_discovery.BUILTIN_CLASSES`): sensor.temperature,
.humidity, .carbon_dioxide -> co2, .illuminance -> light, .power, .energy, .battery,
.pressure/.atmospheric_pressure -> pressure, .voltage, .current, .apparent_power,
.reactive_power, .power_factor (``%`` -> ratio), .frequency, .volatile_organic_compounds_parts
-> voc, .pm1, .pm25, .pm10, .sound_pressure -> noise, .water, .gas (values converted from the
entity's unit, e.g. °F -> °C, Wh -> kWh, inHg -> hPa); binary_sensor.motion, .occupancy,
.presence -> motion, binary_sensor.door, .garage_door, .opening -> door (``on`` = 1).
Statestream does not publish an entity's ``entity_category``, so a device's own temperature
sensor (a diagnostic entity) cannot be told from a room's here: map it with ``entity_metrics``
(``device_temperature``). Other
device classes, text sensors and attributes are ignored and counted. ``entity_metrics`` maps an
entity without a published device class (its unit then comes from the attribute if published,
else ``field_units[<entity id>]``, else the value is taken as it is).

A state ``unavailable`` is reported as the entity going offline, the next real state as it coming
back; ``unknown`` is skipped. Statestream carries no time with the state (``last_updated`` comes
after it on its own topic), so the receive time is the reading time. The default device id is
the object id; ``devices`` maps entity ids (several entities may share one device id).

The gateway's own entities (`gateway.homeassistant`, entity ids ``<domain>.homeedge_...``,
``own_prefix``) are ignored and counted (``own_entities``): their states are the gateway's
readings already, and adopting them would make a new device of each, announced again.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from gateway.adapters.base import (
    AdapterError,
    BaseAdapter,
    FieldRule,
    Identity,
    MessageReadings,
    ValueKind,
    decode_json,
    decode_text,
    plain_value,
)
from gateway.adapters.ha_discovery import BUILTIN_CLASSES as DEVICE_CLASSES
from gateway.adapters.settings import HaStatestreamSettings
from gateway.records import Reading

log = logging.getLogger(__name__)

# The device classes Home Assistant discovery maps (one table for both HA adapters); binary
# sensors' states are "on"/"off" here.
BUILTIN_CLASSES = MappingProxyType(
    {
        name: FieldRule(rule.metric, ValueKind.BINARY) if name.startswith("binary_") else rule
        for name, rule in DEVICE_CLASSES.items()
    }
)

# Entities remembered (device class, unit, availability); the least recently heard one is
# forgotten beyond this (with its held state, counted): a flood of entity ids cannot grow it.
MAX_ENTITIES = 10_000
_DISCOVERY_LEAF = "config"  # <base>/<component>/<object_id>/config is MQTT discovery, not state
_BINARY_WORDS = frozenset({"on", "off"})


@dataclass(slots=True)
class _Pending:
    value: float | str
    received_at: float


@dataclass(slots=True)
class _Entity:
    device_class: str | None = None
    class_known: bool = False
    unit: str | None = None
    unit_known: bool = False
    offline: bool = False
    pending: _Pending | None = None


class _Unmapped:
    """Resolution outcome: the entity is known and maps to no metric."""


_UNMAPPED = _Unmapped()


class HaStatestreamAdapter(BaseAdapter[HaStatestreamSettings]):
    """Adapts Home Assistant statestream states and the attributes that give them meaning."""

    name = "ha_statestream"

    builtin_rules = BUILTIN_CLASSES

    def configure(self, eco: HaStatestreamSettings) -> None:
        self.base_topic = eco.base_topic
        self.domains = tuple(eco.domains)
        self.entity_metrics = eco.entity_metrics
        self.entity_units = eco.field_units
        self.max_pending = eco.max_pending
        self.own_prefix = eco.own_prefix
        self._entities: OrderedDict[str, _Entity] = OrderedDict()
        self._pending_count = 0

    @property
    def filters(self) -> tuple[str, ...]:
        return tuple(f"{self.base_topic}/{domain}/+/+" for domain in self.domains)

    def _adapt(self, topic: str, payload: bytes, received_at: float) -> list[Reading]:
        prefix = self.base_topic + "/"
        parts = topic[len(prefix) :].split("/") if topic.startswith(prefix) else []
        if len(parts) != 3 or parts[0] not in self.domains or parts[2] == _DISCOVERY_LEAF:
            return self.ignore_topic()
        domain, object_id, leaf = parts
        if object_id.startswith(self.own_prefix):
            self.counts["own_entities"] += 1  # the gateway's own entity: no loop
            return []
        entity_id = f"{domain}.{object_id}"
        if leaf == "state":
            return self._state(domain, entity_id, object_id, payload, received_at)
        if leaf in ("device_class", "unit_of_measurement"):
            return self._attribute(domain, entity_id, object_id, leaf, payload)
        self.ignore_field(leaf)
        return []

    # -- entity memory ----------------------------------------------------------------------

    def _entity(self, entity_id: str) -> _Entity:
        entity = self._entities.get(entity_id)
        if entity is not None:
            # Least recently heard first: an entity in use is never the one forgotten.
            self._entities.move_to_end(entity_id)
            return entity
        if len(self._entities) >= MAX_ENTITIES:
            _, oldest = self._entities.popitem(last=False)
            self.counts["entities_forgotten"] += 1
            if oldest.pending is not None:
                self._pending_count -= 1
                self.counts["pending_dropped"] += 1
        entity = self._entities[entity_id] = _Entity()
        return entity

    def _hold(self, entity: _Entity, value: float | str, received_at: float) -> None:
        if entity.pending is None:
            if self._pending_count >= self.max_pending:
                self.counts["pending_dropped"] += 1
                return
            self._pending_count += 1
        entity.pending = _Pending(value, received_at)
        self.counts["pending"] += 1

    def _release(self, entity: _Entity) -> _Pending | None:
        pending, entity.pending = entity.pending, None
        if pending is not None:
            self._pending_count -= 1
        return pending

    def _resolve(
        self, domain: str, entity_id: str, entity: _Entity
    ) -> tuple[FieldRule, str | None] | _Unmapped | None:
        """The rule and unit of the entity's state; `_UNMAPPED`; None while still unknown."""
        kind = ValueKind.NUMBER if domain == "sensor" else ValueKind.BINARY
        explicit = self.entity_metrics.get(entity_id)
        if explicit is not None:
            unit = entity.unit if entity.unit_known else self.entity_units.get(entity_id)
            return FieldRule(explicit, kind), unit
        if not entity.class_known:
            return None
        rule = self.rules.get(f"{domain}.{entity.device_class}")
        if rule is None:
            return _UNMAPPED
        if domain == "sensor" and not entity.unit_known:
            return None
        return rule, entity.unit if domain == "sensor" else None

    # -- messages ---------------------------------------------------------------------------

    def _who(self, entity_id: str, object_id: str) -> Identity:
        return self.identity([entity_id], object_id)

    def _text(self, payload: bytes) -> str:
        text = decode_text(payload)
        if text.startswith('"'):
            decoded = decode_json(payload)
            if not isinstance(decoded, str):
                raise AdapterError("adapter_validation", "a quoted state must be a JSON string")
            return decoded.strip()
        return text

    def _state(
        self, domain: str, entity_id: str, object_id: str, payload: bytes, received_at: float
    ) -> list[Reading]:
        text = self._text(payload)
        entity = self._entity(entity_id)
        if text == "unavailable":
            entity.offline = True
            self._release(entity)
            return self.availability(self._who(entity_id, object_id), False, received_at)
        if text in ("unknown", ""):
            self.counts["unknown_states"] += 1
            return []
        if entity.offline:
            entity.offline = False
            self.availability(self._who(entity_id, object_id), True, received_at)
        value = plain_value(text) if domain == "sensor" else text
        resolved = self._resolve(domain, entity_id, entity)
        if isinstance(resolved, _Unmapped):
            self.ignore_field(f"{domain}.{entity.device_class}")
            return []
        if resolved is None:
            plausible = isinstance(value, float) or str(value).lower() in _BINARY_WORDS
            if plausible:
                self._hold(entity, value, received_at)
            else:
                self.ignore_field(f"{domain}.<non-numeric>")
            return []
        self._release(entity)  # a newer state supersedes a held one
        rule, unit = resolved
        out = MessageReadings(received_at)
        self.add(
            out, self._who(entity_id, object_id), received_at, entity_id, value, rule, unit=unit
        )
        return out.as_list()

    def _attribute(
        self, domain: str, entity_id: str, object_id: str, leaf: str, payload: bytes
    ) -> list[Reading]:
        value: Any = self._text(payload) if payload.strip() else None
        if value == "null":
            value = None
        entity = self._entity(entity_id)
        if leaf == "device_class":
            entity.device_class, entity.class_known = value, True
        else:
            entity.unit, entity.unit_known = value, True
        if entity.pending is None:
            return []
        resolved = self._resolve(domain, entity_id, entity)
        if resolved is None:
            return []
        pending = self._release(entity)
        if isinstance(resolved, _Unmapped) or pending is None:
            self.ignore_field(f"{domain}.{entity.device_class}")
            return []
        rule, unit = resolved
        out = MessageReadings(pending.received_at)
        who = self._who(entity_id, object_id)
        try:
            self.add(out, who, pending.received_at, entity_id, pending.value, rule, unit=unit)
        except AdapterError as exc:
            # The held state was fine on its own; only now is its unit known to be unusable.
            # Its message was acknowledged long ago, so this is logged and counted.
            self.counts["pending_invalid"] += 1
            log.warning("%s: held state of %s dropped: %s", self.name, entity_id, exc)
            return []
        self.counts["pending_resolved"] += 1
        return out.as_list()
