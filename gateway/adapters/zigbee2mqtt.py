"""The Zigbee2MQTT adapter: ``<base>/<friendly_name>`` JSON states and per-property topics.

Zigbee2MQTT (https://www.zigbee2mqtt.io/guide/configuration/mqtt.html, ``advanced.output``)
publishes each device's state as one JSON object on ``<base>/<friendly_name>`` (``json``, the
default), as one plain value per property on ``<base>/<friendly_name>/<property>``
(``attribute``: ``21.5``, ``ON``, ``true``; a nested object as ``<key>-<subkey>``, a null as
an empty payload), or both (``attribute_and_json``). The friendly name may itself contain
``/``: a payload that is a JSON object is a device's state; any other payload on a topic
below a device is one property of the device named by all but the last level. Setting
``output`` mirrors Zigbee2MQTT's; the default ``auto`` reads a device's property topics until
it has sent a JSON state, so ``attribute_and_json`` never stores a value twice.

Not readings: ``<base>/bridge/...`` (Zigbee2MQTT's own state, log, requests and responses),
command topics ``.../set``, ``.../get``, ``.../set/<property>``, ``.../get/<property>``. The
retained ``<base>/bridge/devices`` list is read, never stored: it tells each device's power
source and the unit of each exposed property (``voltage`` in mV or V, ``voc`` in ppb, ppm
or µg/m³), which the field rules below then use. Availability comes on
``<base>/<friendly_name>/availability``, as ``{"state": "online"}`` or, in older versions, the
plain words ``online``/``offline``.

Field rules (Zigbee2MQTT expose names): temperature (°C), local_temperature (a thermostat's
measured temperature, when there is no ``temperature``), humidity (%), pressure (hPa), co2
(ppm), voc (ppb; only when ``bridge/devices`` or ``field_units`` gives its unit, which differs
between device definitions), formaldehyd (mg/m³ -> formaldehyde µg/m³), pm1/pm25/pm10
(µg/m³), illuminance_lux / illuminance (lx; ``illuminance`` only when ``illuminance_lux`` is
absent) -> light, occupancy -> motion, presence -> motion (without occupancy), contact ->
door (inverted: ``contact: false`` means open = 1), power (W), energy (kWh), current (A),
voltage (V), ac_frequency -> frequency (Hz), battery (%), device_temperature (°C).

Context rules, because one name means two things:

- ``temperature`` is the device's own (chip) temperature, stored as ``device_temperature``,
  when the device also reports one of ``device_temperature_markers`` (contact, state, power,
  energy, water_leak, vibration, smoke, gas) and no humidity, unless its friendly name is in
  ``room_temperature_devices``; otherwise it is the room's ``temperature``.
- ``voltage`` is mains ``voltage`` only on a device that meters power (power, current or
  energy) and has no battery; on a battery device (``battery``/``battery_low``, or power
  source ``Battery``) it is ``battery_voltage`` (mV unless ``bridge/devices`` says V); with
  neither sign it is ambiguous and ignored (counted).
- ``illuminance`` is lux in Zigbee2MQTT 2.x, which renamed ``illuminance_lux`` to it; in 1.x it
  is a raw value beside ``illuminance_lux``. It is stored as lux when its unit (``field_units``
  or ``bridge/devices``) is ``lx``, or, with no unit known, when the device has no
  ``illuminance_lux``; a unit-less exposed ``illuminance`` (1.x) is never stored
  (``raw_illuminance``).

In attribute output one topic carries one property: the device's other properties are
remembered (names only, bounded) from its property topics and ``bridge/devices``. Until they
are all known (the device is in ``bridge/devices``, or one of its property topics comes round
again), its ``temperature``, ``voltage`` and ``illuminance`` topics are skipped and counted
(``context_unknown``), never guessed.
The optional ``last_seen`` field (ISO 8601 or epoch milliseconds, per
``advanced.last_seen``) is the reading time of a JSON state when present.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
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
    parse_iso_time,
)
from gateway.adapters.settings import Zigbee2MqttSettings
from gateway.records import Reading

log = logging.getLogger(__name__)

BUILTIN_FIELDS = MappingProxyType(
    {
        "temperature": FieldRule("temperature", unit="°C"),
        "local_temperature": FieldRule("temperature", unit="°C", unless="temperature"),
        "device_temperature": FieldRule("device_temperature", unit="°C"),
        "humidity": FieldRule("humidity", unit="%"),
        "pressure": FieldRule("pressure", unit="hPa"),
        "co2": FieldRule("co2", unit="ppm"),
        "voc": FieldRule("voc", unit="ppb"),
        "formaldehyd": FieldRule("formaldehyde", unit="mg/m³"),
        "pm1": FieldRule("pm1", unit="µg/m³"),
        "pm25": FieldRule("pm25", unit="µg/m³"),
        "pm10": FieldRule("pm10", unit="µg/m³"),
        "illuminance_lux": FieldRule("light", unit="lx"),
        "illuminance": FieldRule("light", unit="lx", unless="illuminance_lux"),
        "occupancy": FieldRule("motion", ValueKind.BINARY),
        "presence": FieldRule("motion", ValueKind.BINARY, unless="occupancy"),
        "contact": FieldRule("door", ValueKind.INVERTED),
        "power": FieldRule("power", unit="W"),
        "energy": FieldRule("energy", unit="kWh"),
        "current": FieldRule("current", unit="A"),
        "voltage": FieldRule("voltage", unit="V"),
        "ac_frequency": FieldRule("frequency", unit="Hz"),
        "battery": FieldRule("battery", unit="%"),
    }
)

# Fields that describe the message rather than measure anything.
_META_FIELDS = frozenset({"last_seen", "elapsed"})
_COMMANDS = frozenset({"set", "get"})
# Fields whose unit differs between device definitions: mapped only with a known unit.
_UNIT_REQUIRED = frozenset({"voc"})
_MAINS_MARKERS = frozenset({"power", "current", "energy"})
_BATTERY_MARKERS = frozenset({"battery", "battery_low"})
# Fields whose meaning depends on the device's other properties (see the module docstring).
# `illuminance` is lux in Zigbee2MQTT 2.x but a raw value (about 10000*log10(lux)+1) beside
# `illuminance_lux` in 1.x: read only once the device's properties or units are known.
_CONTEXT_FIELDS = frozenset({"temperature", "voltage", "illuminance"})
# Devices whose property names and exposes are remembered; the oldest is forgotten beyond.
MAX_REMEMBERED_DEVICES = 4096
# bridge/devices lists every device with its definition: far larger than a state object.
BRIDGE_DEVICES_MAX_BYTES = 8 * 1024 * 1024


@dataclass(slots=True)
class _Device:
    """What is known about one friendly name beyond the message at hand."""

    properties: set[str] = field(default_factory=set)  # seen on property topics or exposed
    units: dict[str, str] = field(default_factory=dict)  # from bridge/devices exposes
    exposed: set[str] = field(default_factory=set)  # properties bridge/devices lists
    power_source: str | None = None
    sent_json: bool = False
    # Every property name is known: listed in bridge/devices, or a property topic repeated
    # (Zigbee2MQTT publishes all of a device's properties each time: a repeat starts a new round).
    complete: bool = False


def _exposed_units(exposes: Any, out: dict[str, str]) -> None:
    """property -> unit of every numeric expose, composite features included."""
    if not isinstance(exposes, list):
        return
    for item in exposes:
        if not isinstance(item, dict):
            continue
        prop = item.get("property")
        if isinstance(prop, str):
            unit = item.get("unit")
            out[prop] = unit if isinstance(unit, str) else ""
        _exposed_units(item.get("features"), out)


class Zigbee2MqttAdapter(BaseAdapter[Zigbee2MqttSettings]):
    """Adapts Zigbee2MQTT device state, property and availability messages."""

    name = "zigbee2mqtt"

    builtin_rules = BUILTIN_FIELDS

    def configure(self, eco: Zigbee2MqttSettings) -> None:
        self.base_topic = eco.base_topic
        self.output = eco.output
        self.markers = frozenset(eco.device_temperature_markers)
        self.room_devices = frozenset(eco.room_temperature_devices)
        self.configured_units = dict(eco.field_units)
        self._known: OrderedDict[str, _Device] = OrderedDict()

    @property
    def filters(self) -> tuple[str, ...]:
        return (f"{self.base_topic}/#",)

    def payload_limit(self, topic: str) -> int:
        if topic == f"{self.base_topic}/bridge/devices":
            return max(self.max_payload_bytes, BRIDGE_DEVICES_MAX_BYTES)
        return self.max_payload_bytes

    # -- what is known per device -----------------------------------------------------------

    def _device(self, name: str, *, create: bool = True) -> _Device | None:
        known = self._known.get(name)
        if known is not None:
            self._known.move_to_end(name)
            return known
        if not create:
            return None
        known = self._known[name] = _Device()
        if len(self._known) > MAX_REMEMBERED_DEVICES:
            self._known.popitem(last=False)
            self.counts["devices_forgotten"] += 1
        return known

    # -- messages ---------------------------------------------------------------------------

    def _adapt(self, topic: str, payload: bytes, received_at: float) -> list[Reading]:
        prefix = self.base_topic + "/"
        if not topic.startswith(prefix):
            return self.ignore_topic()
        name = topic[len(prefix) :]
        parts = name.split("/")
        if not name or parts[0] == "bridge":
            if name == "bridge/devices" and payload:
                self._bridge_devices(payload)
            return self.ignore_topic()
        if parts[-1] in _COMMANDS or (len(parts) > 2 and parts[-2] in _COMMANDS):
            return self.ignore_topic()
        head, leaf = "/".join(parts[:-1]), parts[-1]
        if leaf == "availability" and head:
            return self._availability(head, payload, received_at)
        start = payload.lstrip()[:1]
        if start in (b"{", b"[") or not head:
            if not payload:
                # An empty retained message clears a topic; there is nothing to read.
                return self.ignore_topic()
            state = decode_json(payload)
            if not isinstance(state, dict):
                raise AdapterError("adapter_validation", "a device state must be a JSON object")
            return self._state(name, state, received_at)
        return self._property(head, leaf, payload, received_at)

    def _state(self, name: str, state: dict[str, Any], received_at: float) -> list[Reading]:
        known = self._device(name)
        assert known is not None
        known.sent_json = True
        who = self.identity([name], name)
        ts = self.when(self._last_seen(state.get("last_seen")), received_at)
        measured = {k: v for k, v in state.items() if k not in _META_FIELDS}
        context = set(measured) | known.properties
        out = MessageReadings(received_at)
        for label, raw in measured.items():
            rule = self.rules.get(label)
            if rule is not None and rule.unless is not None and rule.unless in measured:
                self.ignore_field(label)
                continue
            self._field(out, who, ts, name, known, context, label, raw, rule)
        return out.as_list()

    def _property(self, name: str, leaf: str, payload: bytes, received_at: float) -> list[Reading]:
        known = self._device(name)
        assert known is not None
        if self.output in ("json", "attribute_and_json") or (
            self.output == "auto" and known.sent_json
        ):
            # Its JSON state carries the same values.
            self.counts["attribute_duplicates"] += 1
            return self.ignore_topic()
        if leaf in known.properties:
            known.complete = True
        known.properties.add(leaf)
        if leaf in _META_FIELDS:
            return []
        if leaf in _CONTEXT_FIELDS and not known.complete:
            # Whether it is the room's temperature or mains voltage depends on properties that
            # may not have arrived yet: skipped (never guessed) until the device is known.
            self.counts["context_unknown"] += 1
            return []
        rule = self.rules.get(leaf)
        if rule is not None and rule.unless is not None and rule.unless in known.properties:
            self.ignore_field(leaf)
            return []
        text = decode_text(payload)
        out = MessageReadings(received_at)
        who = self.identity([name], name)
        raw: Any = None if text == "" else text
        self._field(out, who, received_at, name, known, known.properties, leaf, raw, rule)
        return out.as_list()

    def _field(
        self,
        out: MessageReadings,
        who: Identity,
        ts: float,
        name: str,
        known: _Device,
        context: set[str],
        label: str,
        raw: Any,
        rule: FieldRule | None,
    ) -> None:
        unit = self.configured_units.get(label) or known.units.get(label) or None
        if rule is not None and label in _UNIT_REQUIRED and unit is None:
            self.counts["unit_unknown"] += 1
            self.ignore_field(label)
            return
        if label == "temperature" and rule is not None and rule.metric == "temperature":
            if self._internal_temperature(name, context):
                rule = FieldRule("device_temperature", unit=rule.unit)
        elif label == "voltage" and rule is not None and rule.metric == "voltage":
            battery = (
                known.power_source == "Battery"
                or known.units.get("voltage") == "mV"
                or bool(context & _BATTERY_MARKERS)
            )
            mains = bool(context & _MAINS_MARKERS)
            if battery and not mains:
                rule = FieldRule("battery_voltage", unit="mV")
            elif battery or not mains:
                self.counts["ambiguous_fields"] += 1
                self.ignore_field(label)
                return
        elif (
            label == "illuminance"
            and rule is not None
            and rule.metric == "light"
            and not self._illuminance_is_lux(known, context, unit)
        ):
            self.counts["raw_illuminance"] += 1
            self.ignore_field(label)
            return
        self.add(out, who, ts, label, raw, rule, unit=unit)

    @staticmethod
    def _illuminance_is_lux(known: _Device, context: set[str], unit: str | None) -> bool:
        """Whether `illuminance` is in lx. Zigbee2MQTT 2.0 renamed `illuminance_lux` to
        `illuminance` (zigbee-herdsman-converters PR 8304); in 1.x `illuminance` is the raw
        value, exposed without a unit, and `illuminance_lux` carries the lux."""
        if unit is not None:
            return unit == "lx"
        if "illuminance" in known.exposed:
            return False  # exposed without a unit: 1.x's raw value
        return "illuminance_lux" not in context

    def _internal_temperature(self, name: str, context: set[str]) -> bool:
        if name in self.room_devices or "humidity" in context:
            return False
        return bool(context & self.markers)

    def _bridge_devices(self, payload: bytes) -> None:
        try:
            devices = decode_json(payload)
        except AdapterError as exc:
            # Metadata only: a broken list changes nothing and is not a device's message.
            self.counts["bad_bridge_devices"] += 1
            log.warning("%s: bridge/devices not read: %s", self.name, exc.detail)
            return
        if not isinstance(devices, list):
            self.counts["bad_bridge_devices"] += 1
            return
        for entry in devices:
            if not isinstance(entry, dict) or not isinstance(entry.get("friendly_name"), str):
                continue
            if entry.get("type") == "Coordinator":
                continue
            known = self._device(entry["friendly_name"])
            assert known is not None
            power = entry.get("power_source")
            known.power_source = power if isinstance(power, str) else None
            definition = entry.get("definition")
            units: dict[str, str] = {}
            if isinstance(definition, dict):
                _exposed_units(definition.get("exposes"), units)
            known.units = {k: v for k, v in units.items() if v}
            known.exposed = set(units)
            known.properties |= set(units)
            known.complete = True
        self.counts["bridge_devices"] += 1

    def _availability(self, name: str, payload: bytes, received_at: float) -> list[Reading]:
        text = decode_text(payload)
        word: Any = text
        if text.startswith("{"):
            body = decode_json(payload)
            word = body.get("state") if isinstance(body, dict) else None
        if word not in ("online", "offline"):
            raise AdapterError(
                "adapter_validation", f"availability {text[:40]!r} is not online/offline"
            )
        return self.availability(self.identity([name], name), word == "online", received_at)

    def _last_seen(self, raw: Any) -> float | None:
        if isinstance(raw, str):
            # ISO_8601 carries "Z", ISO_8601_local an offset: both are absolute.
            parsed = parse_iso_time(raw, None)
            if parsed is None:
                self.counts["bad_time"] += 1
            return parsed
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return float(raw) / 1000.0  # "epoch": milliseconds
        return None


def exposed_units(definition: Mapping[str, Any]) -> dict[str, str]:
    """property -> unit of a Zigbee2MQTT device definition's exposes (for tests and tools)."""
    out: dict[str, str] = {}
    _exposed_units(definition.get("exposes"), out)
    return out
