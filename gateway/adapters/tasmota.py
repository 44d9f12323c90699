"""The Tasmota adapter: ``tele/<topic>/SENSOR|STATE|LWT`` and ``stat/<topic>/STATUS8|STATUS10``.

Tasmota (default FullTopic ``%prefix%/%topic%/``) publishes, every TelePeriod:

- ``tele/<topic>/SENSOR``: ``{"Time": ..., "<Sensor>": {<Field>: value...}, "TempUnit": "C"}``
  with one nested object per attached sensor (``AM2301``, ``BME280``, ``DS18B20-1``, ``SCD30``,
  ``BH1750``...) and ``ENERGY`` for power monitoring plugs;
- ``tele/<topic>/STATE``: uptime, relay ``POWER``, ``Wifi`` details (nothing mapped built-in);
- ``tele/<topic>/LWT``: ``Online`` / ``Offline`` (retained, last will).

``stat/<topic>/STATUS8`` / ``STATUS10`` (replies to ``Status 8/10``) wrap the same sensor object
in ``StatusSNS``.

Built-in fields (looked up as ``<Sensor>.<Field>`` first, then ``<Field>``): Temperature
(unit from ``TempUnit``, °F converted) -> temperature, Humidity -> humidity, CarbonDioxide -> co2,
Illuminance -> light, ENERGY.Power (W) -> power, ENERGY.Total (kWh) -> energy. Other fields
(DewPoint, Pressure, ENERGY.Today, Voltage, Wifi.RSSI...) are ignored and counted unless
``field_metrics`` names them. Per-channel lists (``"Power": [12, 0]``) are ignored and counted.

``Time`` is the device's local time, usually without UTC offset: it is used when it carries an
offset (``SetOption52``) or when ``naive_time_zone`` says which zone the device clock is in;
otherwise the receive time is used. A device id is the sanitized Tasmota topic; a device with two
probes of one quantity can map the second as ``<topic>/<Sensor>`` in ``devices``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo

from gateway.adapters.base import (
    AdapterError,
    BaseAdapter,
    FieldRule,
    MessageReadings,
    decode_json,
    decode_text,
    parse_iso_time,
)
from gateway.adapters.settings import TasmotaSettings
from gateway.records import Reading

BUILTIN_FIELDS = MappingProxyType(
    {
        "Temperature": FieldRule("temperature", unit="°C"),
        "Humidity": FieldRule("humidity", unit="%"),
        "CarbonDioxide": FieldRule("co2", unit="ppm"),
        "Illuminance": FieldRule("light", unit="lx"),
        "ENERGY.Power": FieldRule("power", unit="W"),
        "ENERGY.Total": FieldRule("energy", unit="kWh"),
    }
)

# Top-level keys that describe the message, not a measurement.
_META_KEYS = frozenset({"Time", "TempUnit", "PressureUnit", "SpeedUnit", "Epoch"})


class TasmotaAdapter(BaseAdapter[TasmotaSettings]):
    """Adapts Tasmota telemetry, status replies and last-will messages."""

    name = "tasmota"

    builtin_rules = BUILTIN_FIELDS

    def configure(self, eco: TasmotaSettings) -> None:
        self.tele_prefix = eco.tele_prefix
        self.stat_prefix = eco.stat_prefix
        self.naive_zone = ZoneInfo(eco.naive_time_zone) if eco.naive_time_zone else None

    @property
    def filters(self) -> tuple[str, ...]:
        tele, stat = self.tele_prefix, self.stat_prefix
        return (
            f"{tele}/+/SENSOR",
            f"{tele}/+/STATE",
            f"{tele}/+/LWT",
            f"{stat}/+/STATUS8",
            f"{stat}/+/STATUS10",
        )

    def _adapt(self, topic: str, payload: bytes, received_at: float) -> list[Reading]:
        for prefix in (self.tele_prefix, self.stat_prefix):
            if topic.startswith(prefix + "/"):
                device_topic, _, kind = topic[len(prefix) + 1 :].rpartition("/")
                break
        else:
            return self.ignore_topic()
        if not device_topic or "/" in device_topic:
            return self.ignore_topic()
        if prefix == self.tele_prefix and kind == "LWT":
            return self._lwt(device_topic, payload, received_at)
        if prefix == self.tele_prefix and kind in ("SENSOR", "STATE"):
            body = self._object(payload)
        elif prefix == self.stat_prefix and kind in ("STATUS8", "STATUS10"):
            wrapped = self._object(payload).get("StatusSNS")
            if not isinstance(wrapped, dict):
                raise AdapterError("adapter_validation", f"{kind} has no StatusSNS object")
            body = wrapped
        else:
            return self.ignore_topic()
        return self._sensors(device_topic, body, received_at)

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

    def _sensors(
        self, device_topic: str, body: dict[str, Any], received_at: float
    ) -> list[Reading]:
        ts = self._time(body, received_at)
        temp_unit = body.get("TempUnit")
        units = {"Temperature": temp_unit} if isinstance(temp_unit, str) else {}
        out = MessageReadings(received_at)
        device_who = self.identity([device_topic], device_topic)
        for key, value in body.items():
            if key in _META_KEYS:
                continue
            if not isinstance(value, dict):
                self.add(out, device_who, ts, key, value, self.rules.get(key))
                continue
            who = self.identity([f"{device_topic}/{key}", device_topic], device_topic)
            for field, raw in value.items():
                label = f"{key}.{field}"
                rule = self.rules.get(label) or self.rules.get(field)
                self.add(out, who, ts, label, raw, rule, unit=units.get(field))
        return out.as_list()
