"""The Zigbee2MQTT adapter: ``<base>/<friendly_name>`` JSON state objects.

Zigbee2MQTT publishes each device's state as one JSON object on ``<base>/<friendly_name>``; the
friendly name may itself contain ``/``. Availability (when enabled in Zigbee2MQTT) comes on
``<base>/<friendly_name>/availability``, as ``{"state": "online"}`` or, in older versions, the
plain words ``online``/``offline``. ``<base>/bridge/...`` is Zigbee2MQTT's own state and is
ignored, as are the ``/set`` and ``/get`` command topics.

Built-in fields: temperature (°C), humidity (%), co2 (ppm), illuminance_lux / illuminance (lx;
``illuminance`` only when ``illuminance_lux`` is absent) -> light, occupancy -> motion (0/1),
contact -> door (inverted: ``contact: false`` means open = 1), power (W), energy (kWh),
battery (%). Everything else (linkquality, voltage, device_temperature, update...) is ignored and
counted unless ``field_metrics`` names it. The optional ``last_seen`` field (ISO 8601 or epoch
milliseconds, per Zigbee2MQTT's ``advanced.last_seen``) is the reading time when present.
"""

from __future__ import annotations

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
    parse_iso_time,
)
from gateway.adapters.settings import Zigbee2MqttSettings
from gateway.records import Reading

BUILTIN_FIELDS = MappingProxyType(
    {
        "temperature": FieldRule("temperature", unit="°C"),
        "humidity": FieldRule("humidity", unit="%"),
        "co2": FieldRule("co2", unit="ppm"),
        "illuminance_lux": FieldRule("light", unit="lx"),
        "illuminance": FieldRule("light", unit="lx", unless="illuminance_lux"),
        "occupancy": FieldRule("motion", ValueKind.BINARY),
        "contact": FieldRule("door", ValueKind.INVERTED),
        "power": FieldRule("power", unit="W"),
        "energy": FieldRule("energy", unit="kWh"),
        "battery": FieldRule("battery", unit="%"),
    }
)

# Fields that describe the message rather than measure anything.
_META_FIELDS = frozenset({"last_seen"})
_COMMAND_LEAVES = frozenset({"set", "get"})


class Zigbee2MqttAdapter(BaseAdapter[Zigbee2MqttSettings]):
    """Adapts Zigbee2MQTT device state and availability messages."""

    name = "zigbee2mqtt"

    builtin_rules = BUILTIN_FIELDS

    def configure(self, eco: Zigbee2MqttSettings) -> None:
        self.base_topic = eco.base_topic

    @property
    def filters(self) -> tuple[str, ...]:
        return (f"{self.base_topic}/#",)

    def _adapt(self, topic: str, payload: bytes, received_at: float) -> list[Reading]:
        prefix = self.base_topic + "/"
        if not topic.startswith(prefix):
            return self.ignore_topic()
        name = topic[len(prefix) :]
        head, _, leaf = name.rpartition("/")
        if name == "bridge" or name.startswith("bridge/") or leaf in _COMMAND_LEAVES or not name:
            return self.ignore_topic()
        if leaf == "availability" and head:
            return self._availability(head, payload, received_at)
        if not payload:
            # An empty retained message clears a topic; there is nothing to read.
            return self.ignore_topic()
        state = decode_json(payload)
        if not isinstance(state, dict):
            raise AdapterError("adapter_validation", "a device state must be a JSON object")
        who = self.identity([name], name)
        ts = self.when(self._last_seen(state.get("last_seen")), received_at)
        out = MessageReadings(received_at)
        measured = {k: v for k, v in state.items() if k not in _META_FIELDS}
        self.add_fields(out, who, ts, measured)
        return out.as_list()

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
