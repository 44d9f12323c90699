"""The Tasmota adapter: ``SENSOR``, ``STATE``, ``LWT`` telemetry and ``STATUS8``/``STATUS10``.

Tasmota builds its topics from a FullTopic pattern (https://tasmota.github.io/docs/MQTT/):
``%prefix%/%topic%/`` by default, ``%topic%/%prefix%/`` as documented too, or a custom one
with fixed levels (``home/cellar/%topic%/%prefix%/``); ``full_topics`` lists the patterns in
use (both documented orders by default) and the adapter subscribes to each with the tele and
stat prefixes. It publishes, every TelePeriod:

- ``<tele>/SENSOR``: ``{"Time": ..., "<Sensor>": {<Field>: value...}, "TempUnit": "C",
  "PressureUnit": "hPa"}`` with one nested object per attached sensor (``AM2301``, ``DHT11``,
  ``SHT3X``, ``BME280``, ``DS18B20-1``, ``SCD30``, ``SCD40``, ``SGP30``, ``PMS5003``,
  ``BH1750``...), ``ENERGY`` for power monitoring plugs, ``ESP32`` for the chip's own
  temperature;
- ``<tele>/STATE``: uptime, relay ``POWER``, ``Wifi`` details (nothing mapped built-in; all
  of it is the device's own, on ``<topic>``);
- ``<tele>/LWT``: ``Online`` / ``Offline`` (retained, last will).

``<stat>/STATUS8`` / ``STATUS10`` (replies to ``Status 8/10``) wrap the same sensor object
in ``StatusSNS``.

Devices: with ``sensor_devices`` (the default) every sensor object is its own device,
``<topic>.<Sensor>`` (``boiler.DS18B20-2``, ``sonoff_th.AM2301``: the topic segment charset
allows ``.``, which Tasmota topics rarely use, so the split stays readable), so three probes
or a DHT11 beside an SHT3X all keep their values; ``ENERGY`` and the chip's ``ESP32`` /
``ESP8266`` object stay on ``<topic>``. ``devices`` maps ``<topic>/<Sensor>``, or ``<topic>``:
then its sensors are ``<device>.<Sensor>`` in its room.
Multi-channel ENERGY arrays (``"Power": [12, 0]``) go to ``<topic>-ch1``, ``<topic>-ch2``...

Field rules (``<Sensor>.<Field>`` first, then ``<Field>``): Temperature (unit from
``TempUnit``, °F converted) -> temperature; Humidity; Pressure (``PressureUnit``: hPa, mmHg,
inHg) -> pressure, SeaPressure only without Pressure; CarbonDioxide -> co2; TVOC -> voc (ppb);
PM1/PM2.5/PM10 -> pm1/pm25/pm10 (µg/m³); Illuminance -> light; ESP32/ESP8266.Temperature ->
device_temperature; ENERGY: Total -> energy, Today -> energy_today, Yesterday ->
energy_yesterday (kWh), Power (W), ApparentPower (VA), ReactivePower (var), Factor ->
power_factor, Voltage (V), Current (A), Frequency (Hz). Ignored and counted unless
``field_metrics`` names them: DewPoint, eCO2 (an estimate, not a CO2 measurement), CF*/PB*
particle counts, ENERGY.Period (Wh of the last period), TotalStartTime, Id, Wifi...

``Time`` is the device's local time, usually without UTC offset: it is used when it carries an
offset (``SetOption52``) or when ``naive_time_zone`` says which zone the device clock is in;
otherwise the receive time is used.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo

from gateway.adapters.base import (
    AdapterError,
    BaseAdapter,
    FieldRule,
    Identity,
    MessageReadings,
    decode_json,
    decode_text,
    parse_iso_time,
    sanitize_device,
)
from gateway.adapters.settings import TasmotaSettings
from gateway.records import Reading

BUILTIN_FIELDS = MappingProxyType(
    {
        "Temperature": FieldRule("temperature", unit="°C"),
        "Humidity": FieldRule("humidity", unit="%"),
        "Pressure": FieldRule("pressure", unit="hPa"),
        "SeaPressure": FieldRule("pressure", unit="hPa", unless="Pressure"),
        "CarbonDioxide": FieldRule("co2", unit="ppm"),
        "TVOC": FieldRule("voc", unit="ppb"),
        "PM1": FieldRule("pm1", unit="µg/m³"),
        "PM2.5": FieldRule("pm25", unit="µg/m³"),
        "PM10": FieldRule("pm10", unit="µg/m³"),
        "Illuminance": FieldRule("light", unit="lx"),
        "ESP32.Temperature": FieldRule("device_temperature", unit="°C"),
        "ESP8266.Temperature": FieldRule("device_temperature", unit="°C"),
        "ENERGY.Total": FieldRule("energy", unit="kWh"),
        "ENERGY.Today": FieldRule("energy_today", unit="kWh"),
        "ENERGY.Yesterday": FieldRule("energy_yesterday", unit="kWh"),
        "ENERGY.Power": FieldRule("power", unit="W"),
        "ENERGY.ApparentPower": FieldRule("apparent_power", unit="VA"),
        "ENERGY.ReactivePower": FieldRule("reactive_power", unit="var"),
        "ENERGY.Factor": FieldRule("power_factor"),
        "ENERGY.Voltage": FieldRule("voltage", unit="V"),
        "ENERGY.Current": FieldRule("current", unit="A"),
        "ENERGY.Frequency": FieldRule("frequency", unit="Hz"),
        # Not a sensor's own field names: keep them from matching a bare-field rule.
        "ENERGY.Period": FieldRule("", unit=None),
    }
)

# Top-level keys that describe the message, not a measurement.
_META_KEYS = frozenset({"Time", "TempUnit", "PressureUnit", "SpeedUnit", "Epoch"})
# Sensor objects that describe the device itself: stored on <topic>, never <topic>.<Sensor>.
_OWN_OBJECTS = frozenset({"ENERGY", "ESP32", "ESP8266"})
_UNIT_KEYS = MappingProxyType(
    {
        "Temperature": "TempUnit",
        "DewPoint": "TempUnit",
        "Pressure": "PressureUnit",
        "SeaPressure": "PressureUnit",
    }
)
_KINDS = {"tele": ("SENSOR", "STATE", "LWT"), "stat": ("STATUS8", "STATUS10")}
_TOKEN = re.compile(r"%(prefix|topic|hostname|id)%")


class _Pattern:
    """One FullTopic pattern: its subscriptions and a matcher yielding (prefix, name, kind)."""

    def __init__(self, pattern: str, tele: str, stat: str) -> None:
        self.levels = pattern.strip("/").split("/")
        self.prefixes = {"tele": tele, "stat": stat}
        parts = []
        for level in self.levels:
            token = _TOKEN.fullmatch(level)
            if token is None:
                parts.append(re.escape(level))
            elif token.group(1) == "prefix":
                parts.append(f"(?P<prefix>{re.escape(tele)}|{re.escape(stat)})")
            else:
                parts.append(f"(?P<{token.group(1)}>[^/]+)")
        self.regex = re.compile("/".join(parts) + "/(?P<kind>[^/]+)")

    def filters(self) -> list[str]:
        out: list[str] = []
        for role, kinds in _KINDS.items():
            levels = [
                self.prefixes[role]
                if level == "%prefix%"
                else "+"
                if _TOKEN.fullmatch(level)
                else level
                for level in self.levels
            ]
            out.extend("/".join([*levels, kind]) for kind in kinds)
        return out

    def match(self, topic: str) -> tuple[str, str, str] | None:
        found = self.regex.fullmatch(topic)
        if found is None:
            return None
        groups = found.groupdict()
        role = "tele" if groups["prefix"] == self.prefixes["tele"] else "stat"
        name = groups.get("topic") or groups.get("hostname") or groups.get("id") or ""
        return role, name, groups["kind"]


class TasmotaAdapter(BaseAdapter[TasmotaSettings]):
    """Adapts Tasmota telemetry, status replies and last-will messages."""

    name = "tasmota"

    builtin_rules = BUILTIN_FIELDS

    def configure(self, eco: TasmotaSettings) -> None:
        self.tele_prefix = eco.tele_prefix
        self.stat_prefix = eco.stat_prefix
        self.naive_zone = ZoneInfo(eco.naive_time_zone) if eco.naive_time_zone else None
        self.sensor_devices = eco.sensor_devices
        self.patterns = [_Pattern(p, eco.tele_prefix, eco.stat_prefix) for p in eco.full_topics]

    @property
    def filters(self) -> tuple[str, ...]:
        out: list[str] = []
        for pattern in self.patterns:
            out.extend(f for f in pattern.filters() if f not in out)
        return tuple(out)

    def _adapt(self, topic: str, payload: bytes, received_at: float) -> list[Reading]:
        for pattern in self.patterns:
            matched = pattern.match(topic)
            if matched is not None:
                break
        else:
            return self.ignore_topic()
        role, device_topic, kind = matched
        if kind not in _KINDS[role]:
            return self.ignore_topic()
        if kind == "LWT":
            return self._lwt(device_topic, payload, received_at)
        body = self._object(payload)
        if role == "stat":
            wrapped = body.get("StatusSNS")
            if not isinstance(wrapped, dict):
                raise AdapterError("adapter_validation", f"{kind} has no StatusSNS object")
            body = wrapped
        # STATE describes the device itself (Wifi, relays): no sensor objects in it.
        return self._sensors(device_topic, body, received_at, split=kind != "STATE")

    def _object(self, payload: bytes) -> dict[str, Any]:
        body = decode_json(payload)
        if not isinstance(body, dict):
            raise AdapterError(
                "adapter_validation", "a Tasmota telemetry payload must be an object"
            )
        return body

    def _lwt(self, device_topic: str, payload: bytes, received_at: float) -> list[Reading]:
        word = decode_text(payload)
        if word not in ("Online", "Offline"):
            raise AdapterError("adapter_validation", f"LWT {word[:40]!r} is not Online/Offline")
        who = self.identity([device_topic], device_topic)
        return self.availability(who, word == "Online", received_at)

    def _time(self, body: Mapping[str, Any], received_at: float) -> float:
        raw = body.get("Time")
        if not isinstance(raw, str):
            return received_at
        parsed = parse_iso_time(raw, self.naive_zone)
        return received_at if parsed is None else self.when(parsed, received_at)

    def _sensor_identity(self, device_topic: str, key: str, split: bool) -> Identity:
        if not (split and self.sensor_devices) or key in _OWN_OBJECTS:
            return self.identity([f"{device_topic}/{key}", device_topic], device_topic)
        if f"{device_topic}/{key}" not in self.devices and device_topic in self.devices:
            # The device's own mapping places its sensors too: <device>.<Sensor> in its room.
            base = self.identity([device_topic], device_topic)
            return Identity(base.home, base.room, sanitize_device(f"{base.device}.{key}"))
        return self.identity([f"{device_topic}/{key}"], f"{device_topic}.{key}")

    def _sensors(
        self, device_topic: str, body: dict[str, Any], received_at: float, *, split: bool
    ) -> list[Reading]:
        ts = self._time(body, received_at)
        units = {
            field: body[unit_key]
            for field, unit_key in _UNIT_KEYS.items()
            if isinstance(body.get(unit_key), str)
        }
        out = MessageReadings(received_at)
        device_who = self.identity([device_topic], device_topic)
        for key, value in body.items():
            if key in _META_KEYS:
                continue
            if not isinstance(value, dict):
                self.add(out, device_who, ts, key, value, self.rules.get(key))
                continue
            who = self._sensor_identity(device_topic, key, split)
            for field, raw in value.items():
                label = f"{key}.{field}"
                rule = self._rule(label, field)
                if rule is not None and rule.unless is not None and rule.unless in value:
                    self.ignore_field(label)
                    continue
                if isinstance(raw, list) and key == "ENERGY" and rule is not None:
                    self._channels(out, device_topic, ts, label, raw, rule)
                    continue
                self.add(out, who, ts, label, raw, rule, unit=units.get(field))
        return out.as_list()

    def _rule(self, label: str, field: str) -> FieldRule | None:
        rule = self.rules.get(label)
        if rule is None:
            rule = self.rules.get(field)
        return rule if rule is not None and rule.metric else None

    def _channels(
        self,
        out: MessageReadings,
        device_topic: str,
        ts: float,
        label: str,
        values: list[Any],
        rule: FieldRule,
    ) -> None:
        """One ENERGY field per channel: element i is relay i+1's (``<topic>-ch<i+1>``)."""
        for index, raw in enumerate(values):
            who = self.channel_identity(device_topic, index + 1)
            self.add(out, who, ts, f"{label}[{index}]", raw, rule)
