"""The Shelly adapter: Gen1 plain-value topics and Gen2+ RPC ``NotifyStatus`` frames.

Gen1 (``shellies/<id>/...``, one plain value per topic, no timestamp: the receive time is used):

- ``relay/<n>/power`` (W) -> power; ``relay/<n>/energy`` (watt-minutes) -> energy in kWh; the
  same for ``light/<n>`` and ``roller/<n>``; ``emeter/<n>/power`` (W) -> power,
  ``emeter/<n>/total`` (Wh) -> energy in kWh;
- ``sensor/temperature`` (°C, or °F when ``gen1_temperature_unit`` says the device is set so) ->
  temperature; ``sensor/humidity`` -> humidity; ``sensor/battery`` -> battery; ``sensor/lux`` ->
  light; ``sensor/motion`` (true/false) -> motion; ``sensor/state`` (open/close) -> door;
- ``online`` (true/false, the last will) -> availability.

Field names are the topic path without the channel number (``relay/power``, ``sensor/lux``,
``temperature`` for the device's internal temperature, which is ignored built-in).

Gen2+ (``<prefix>/events/rpc``, where the prefix defaults to the device id): a JSON-RPC
notification ``{"src": <device id>, "method": "NotifyStatus", "params": {"ts": <unix s>,
"<component>:<n>": {...}}}``; ``NotifyFullStatus`` has the same shape, other methods (events)
are ignored. ``params.ts`` is the reading time. Field names are ``<component type>.<path>``:
``switch|pm1|cover|light.apower`` (W) -> power, ``...aenergy.total`` (Wh) -> energy in kWh,
``temperature.tC`` -> temperature, ``humidity.rh`` -> humidity, ``illuminance.lux`` -> light,
``devicepower.battery.percent`` -> battery. ``<prefix>/online`` (true/false) -> availability.

Channel n of a multi-channel device (relay 1 of a Shelly 2.5, ``switch:2`` of a Pro 3) is device
``<id>-ch<n>``; channel 0 is ``<id>`` (see `BaseAdapter.channel_identity`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

from gateway.adapters.base import (
    AdapterError,
    BaseAdapter,
    FieldRule,
    MessageReadings,
    ValueKind,
    decode_json,
    decode_text,
    plain_value,
)
from gateway.adapters.settings import ShellySettings
from gateway.records import Reading
from gateway.topic_filters import TopicFilters

_METERED = ("relay", "light", "roller")
_GEN2_METERED = ("switch", "pm1", "cover", "light")

GEN1_FIELDS: Mapping[str, FieldRule] = MappingProxyType(
    {
        **{f"{c}/power": FieldRule("power", unit="W") for c in _METERED},
        **{f"{c}/energy": FieldRule("energy", unit="Wmin") for c in _METERED},
        "emeter/power": FieldRule("power", unit="W"),
        "emeter/total": FieldRule("energy", unit="Wh"),
        "sensor/temperature": FieldRule("temperature", unit="°C"),
        "sensor/humidity": FieldRule("humidity", unit="%"),
        "sensor/battery": FieldRule("battery", unit="%"),
        "sensor/lux": FieldRule("light", unit="lx"),
        "sensor/motion": FieldRule("motion", ValueKind.BINARY),
        "sensor/state": FieldRule("door", ValueKind.BINARY),
    }
)

GEN2_FIELDS: Mapping[str, FieldRule] = MappingProxyType(
    {
        **{f"{c}.apower": FieldRule("power", unit="W") for c in _GEN2_METERED},
        **{f"{c}.aenergy.total": FieldRule("energy", unit="Wh") for c in _GEN2_METERED},
        "temperature.tC": FieldRule("temperature", unit="°C"),
        "humidity.rh": FieldRule("humidity", unit="%"),
        "illuminance.lux": FieldRule("light", unit="lx"),
        "devicepower.battery.percent": FieldRule("battery", unit="%"),
    }
)

_STATUS_METHODS = frozenset({"NotifyStatus", "NotifyFullStatus"})
_BOOL_WORDS = {"true": True, "false": False}
_MAX_DEPTH = 3


def _flatten(prefix: str, obj: Mapping[str, Any], depth: int = 0) -> Iterator[tuple[str, Any]]:
    for key, value in obj.items():
        label = f"{prefix}.{key}"
        if isinstance(value, dict) and depth < _MAX_DEPTH:
            yield from _flatten(label, value, depth + 1)
        else:
            yield label, value


class ShellyAdapter(BaseAdapter[ShellySettings]):
    """Adapts Shelly Gen1 MQTT topics and Gen2+ RPC status notifications."""

    name = "shelly"

    builtin_rules = MappingProxyType({**GEN1_FIELDS, **GEN2_FIELDS})

    def default_rules(self, eco: ShellySettings) -> Mapping[str, FieldRule]:
        # Gen1 H&T report in the unit set on the device, which the payload does not say.
        unit = FieldRule("temperature", unit=eco.gen1_temperature_unit)
        return {**self.builtin_rules, "sensor/temperature": unit}

    def configure(self, eco: ShellySettings) -> None:
        self.gen1_prefix = eco.gen1_prefix
        self.gen2_events = TopicFilters(f"{p}/events/rpc" for p in eco.gen2_prefixes)
        self.gen2_online = TopicFilters(f"{p}/online" for p in eco.gen2_prefixes)
        self._gen2_components = {label.split(".", 1)[0] for label in self.rules if "." in label}

    @property
    def filters(self) -> tuple[str, ...]:
        gen1 = (f"{self.gen1_prefix}/#",) if self.gen1_prefix else ()
        return gen1 + self.gen2_events.filters + self.gen2_online.filters

    def _adapt(self, topic: str, payload: bytes, received_at: float) -> list[Reading]:
        if self.gen2_events.matches(topic):
            return self._gen2_event(topic, payload, received_at)
        if self.gen1_prefix and topic.startswith(self.gen1_prefix + "/"):
            return self._gen1(topic[len(self.gen1_prefix) + 1 :], payload, received_at)
        if self.gen2_online.matches(topic):
            prefix = topic.rsplit("/", 1)[0]
            return self._online(prefix.rsplit("/", 1)[-1], payload, received_at)
        return self.ignore_topic()

    def _online(self, device_id: str, payload: bytes, received_at: float) -> list[Reading]:
        word = decode_text(payload)
        if word not in _BOOL_WORDS:
            raise AdapterError("adapter_validation", f"online {word[:40]!r} is not true/false")
        who = self.channel_identity(device_id, 0)
        return self.availability(who, _BOOL_WORDS[word], received_at)

    # -- Gen1 -------------------------------------------------------------------------------

    def _gen1(self, rest: str, payload: bytes, received_at: float) -> list[Reading]:
        device_id, _, path = rest.partition("/")
        if not device_id or not path:
            return self.ignore_topic()  # shellies/announce, shellies/command
        if path == "online":
            return self._online(device_id, payload, received_at)
        parts = path.split("/")
        digits = [p for p in parts if p.isdecimal()]
        channel = int(digits[0]) if digits else 0
        label = "/".join(p for p in parts if not p.isdecimal())
        rule = self.rules.get(label)
        if rule is None:
            self.ignore_field(label)
            return []
        text = decode_text(payload)
        if not text:
            return self.ignore_topic()
        out = MessageReadings(received_at)
        who = self.channel_identity(device_id, channel)
        self.add(out, who, received_at, label, plain_value(text), rule)
        return out.as_list()

    # -- Gen2+ ------------------------------------------------------------------------------

    def _gen2_event(self, topic: str, payload: bytes, received_at: float) -> list[Reading]:
        frame = decode_json(payload)
        if not isinstance(frame, dict) or not isinstance(frame.get("method"), str):
            raise AdapterError("adapter_validation", "an RPC notification needs a method")
        if frame["method"] not in _STATUS_METHODS:
            self.counts["ignored_messages"] += 1
            return []
        params = frame.get("params")
        if not isinstance(params, dict):
            raise AdapterError("adapter_validation", f"{frame['method']} params must be an object")
        src = frame.get("src")
        if not isinstance(src, str) or not src:
            src = topic[: -len("/events/rpc")].rsplit("/", 1)[-1]
        raw_ts = params.get("ts")
        ts = received_at
        if isinstance(raw_ts, int | float) and not isinstance(raw_ts, bool):
            ts = self.when(float(raw_ts), received_at)
        out = MessageReadings(received_at)
        for component, status in params.items():
            if component == "ts":
                continue
            ctype, _, cid = component.partition(":")
            if ctype not in self._gen2_components or not isinstance(status, dict):
                self.ignore_field(ctype)
                continue
            who = self.channel_identity(src, int(cid) if cid.isdecimal() else 0)
            for label, raw in _flatten(ctype, status):
                self.add(out, who, ts, label, raw, self.rules.get(label))
        return out.as_list()
