"""Configuration of the format adapters: the future ``[adapters]`` section of the gateway config.

One `AdapterSettings` holds the home the adapted readings belong to, the room used when a device
has none, and one sub-model per ecosystem. Every sub-model shares `EcosystemSettings`: whether it
is enabled, how foreign device names map onto homeedge device ids and rooms (`devices`), which
foreign fields map to which metric beyond the built-in table (`field_metrics`), and which unit a
field is in when the payload does not say (`field_units`).
"""

from __future__ import annotations

from typing import Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.adapters.units import normalize_unit
from schemas.metrics import METRIC_NAME
from schemas.topics import GATEWAY_SEGMENT, valid_segment

HaDomain = Literal["sensor", "binary_sensor"]

_STRICT = ConfigDict(extra="forbid", frozen=True)


def _check_base_topic(value: str) -> str:
    if not value or value.startswith("/") or value.endswith("/") or any(c in value for c in "#\0"):
        raise ValueError(f"topic prefix {value!r} must be non-empty, without '#' or edge slashes")
    return value


def _check_plain_topic(value: str) -> str:
    _check_base_topic(value)
    if "+" in value:
        raise ValueError(f"topic prefix {value!r} must not contain the '+' wildcard")
    return value


def _check_room(value: str) -> str:
    if not valid_segment(value) or value == GATEWAY_SEGMENT:
        raise ValueError(f"room {value!r} is not a valid topic segment (or is reserved)")
    return value


class DeviceMapping(BaseModel):
    """Where one foreign device lands in homeedge."""

    model_config = _STRICT

    device: str | None = Field(
        default=None,
        description="homeedge device id; default: the foreign name sanitized into [A-Za-z0-9_.-]",
    )
    room: str | None = Field(default=None, description="room; default: the adapter's default room")

    @field_validator("device")
    @classmethod
    def _device_segment(cls, value: str | None) -> str | None:
        if value is not None and not valid_segment(value):
            raise ValueError(f"device {value!r} is not a valid topic segment")
        return value

    @field_validator("room")
    @classmethod
    def _room_segment(cls, value: str | None) -> str | None:
        return None if value is None else _check_room(value)


class EcosystemSettings(BaseModel):
    """What every ecosystem adapter is configured with."""

    model_config = _STRICT

    enabled: bool = Field(default=False, description="subscribe to and adapt this ecosystem")
    default_room: str | None = Field(
        default=None, description="room of unmapped devices; default: AdapterSettings.default_room"
    )
    devices: dict[str, DeviceMapping] = Field(
        default_factory=dict,
        description="foreign device name (friendly name, Tasmota topic, Shelly id, entity id) "
        "-> homeedge device id and room",
    )
    field_metrics: dict[str, str] = Field(
        default_factory=dict,
        description="foreign field -> metric, merged over the adapter's built-in table; an "
        "empty string ignores a built-in field; fields in neither are ignored and counted",
    )
    field_units: dict[str, str] = Field(
        default_factory=dict,
        description="foreign field -> unit its values are in, where the payload does not say "
        "(converted to the metric registry's unit, e.g. °F -> °C, Wh -> kWh)",
    )

    @field_validator("default_room")
    @classmethod
    def _room(cls, value: str | None) -> str | None:
        return None if value is None else _check_room(value)

    @field_validator("field_units")
    @classmethod
    def _units_known(cls, value: dict[str, str]) -> dict[str, str]:
        for field, unit in value.items():
            if normalize_unit(unit) is None:
                raise ValueError(f"field_units[{field!r}]: unknown unit {unit!r}")
        return value

    @field_validator("field_metrics")
    @classmethod
    def _metric_names(cls, value: dict[str, str]) -> dict[str, str]:
        for field, metric in value.items():
            if metric and not METRIC_NAME.match(metric):
                raise ValueError(f"field_metrics[{field!r}]: {metric!r} is not a metric name")
        return value


class Zigbee2MqttSettings(EcosystemSettings):
    """Zigbee2MQTT: JSON state objects on ``<base_topic>/<friendly_name>``."""

    base_topic: str = Field(default="zigbee2mqtt", description="Zigbee2MQTT's mqtt.base_topic")
    output: Literal["auto", "json", "attribute", "attribute_and_json"] = Field(
        default="auto",
        description="Zigbee2MQTT's advanced.output: 'json' and 'attribute_and_json' read the "
        "JSON state only, 'attribute' reads the per-property topics <name>/<property> too; "
        "'auto' reads a device's property topics until it has sent a JSON state (then its "
        "JSON state alone, so attribute_and_json never stores a value twice)",
    )
    device_temperature_markers: list[str] = Field(
        default_factory=lambda: [
            "contact",
            "state",
            "power",
            "energy",
            "water_leak",
            "vibration",
            "smoke",
            "gas",
        ],
        description="fields that make a device's 'temperature' its own (chip) temperature, "
        "stored as metric device_temperature, when the device reports no humidity: a contact "
        "sensor, a plug or relay; an empty list keeps every 'temperature' as the room's",
    )
    room_temperature_devices: list[str] = Field(
        default_factory=list,
        description="friendly names whose 'temperature' is always the room's, whatever else "
        "they report",
    )

    @field_validator("base_topic")
    @classmethod
    def _base(cls, value: str) -> str:
        return _check_plain_topic(value)


class TasmotaSettings(EcosystemSettings):
    """Tasmota: ``<tele>/<topic>/SENSOR|STATE|LWT`` and ``<stat>/<topic>/STATUS8|STATUS10``."""

    tele_prefix: str = Field(default="tele", description="Tasmota's %prefix% for telemetry")
    stat_prefix: str = Field(default="stat", description="Tasmota's %prefix% for status replies")
    full_topics: list[str] = Field(
        default_factory=lambda: ["%prefix%/%topic%/", "%topic%/%prefix%/"],
        description="Tasmota FullTopic patterns in use (tokens %prefix%, %topic%, %hostname%, "
        "%id%; e.g. 'home/cellar/%topic%/%prefix%/'): the adapter subscribes to each with the "
        "tele and stat prefixes; the device id is %topic% (else %hostname%, else %id%)",
    )
    sensor_devices: bool = Field(
        default=True,
        description="store each sensor object of a payload (AM2301, DS18B20-2, BME280...) as "
        "its own device '<topic>.<Sensor>' (ENERGY and the chip's own ESP32/ESP8266 object "
        "stay on '<topic>'); false: every field on '<topic>', a second probe of one quantity "
        "then ignored as a duplicate",
    )
    naive_time_zone: str | None = Field(
        default=None,
        description="IANA zone of the devices' clocks, used for a 'Time' without UTC offset; "
        "None: such times are not trusted and the receive time is used",
    )

    @field_validator("tele_prefix", "stat_prefix")
    @classmethod
    def _prefixes(cls, value: str) -> str:
        return _check_plain_topic(value)

    @field_validator("full_topics")
    @classmethod
    def _full_topics(cls, value: list[str]) -> list[str]:
        for pattern in value:
            levels = pattern.strip("/").split("/")
            if "%prefix%" not in levels or not {"%topic%", "%hostname%", "%id%"} & set(levels):
                raise ValueError(
                    f"FullTopic {pattern!r} needs %prefix% and one of %topic%, %hostname%, %id% "
                    "as whole levels"
                )
            tokens = [level for level in levels if level.startswith("%")]
            if len(tokens) != len(set(tokens)):
                raise ValueError(f"FullTopic {pattern!r} repeats a token")
            if any(c in pattern for c in "+#\0"):
                raise ValueError(f"FullTopic {pattern!r} must not contain MQTT wildcards")
        return value

    @field_validator("naive_time_zone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"unknown time zone {value!r}") from exc
        return value


class ShellySettings(EcosystemSettings):
    """Shelly: Gen1 plain-value topics, Gen2+ ``status/<component>`` topics and RPC frames."""

    gen1_prefix: str | None = Field(
        default="shellies", description="Gen1 topic prefix (``shellies``); None disables Gen1"
    )
    gen1_temperature_unit: Literal["°C", "°F"] = Field(
        default="°C", description="unit of Gen1 sensor/temperature (set on the device)"
    )
    gen1_custom_prefixes: list[str] = Field(
        default_factory=list,
        description="Gen1 devices publishing under another prefix than shellies/<id> (a "
        "custom MQTT id, which may contain '/'): the whole prefix before relay/0/power..., "
        "e.g. 'shellies/office/+/+' for shellies/office/roller/window/roller/0/power; "
        "matched before gen1_prefix (give it literal levels no shellies/<id>/... topic has); "
        "the '+' levels, joined by '-', name the device (a prefix without '+': its last level)",
    )
    gen2_prefixes: list[str] = Field(
        default_factory=lambda: ["+", "shellies/+"],
        description="Gen2+ topic prefixes (the device's mqtt.topic_prefix), '+' matching one "
        "level: '+' is the default prefix (the device id), 'shellies/+' the Gen1-style one; a "
        "multi-level custom prefix such as 'home/kitchen/shellyplus1pm-a8032ab12345' needs "
        "'home/+/+' (or the prefix itself). The adapter subscribes to <prefix>/events/rpc, "
        "<prefix>/status/+ and <prefix>/online; the '+' levels, joined by '-', name the "
        "device; empty disables Gen2+",
    )

    @field_validator("gen1_prefix")
    @classmethod
    def _gen1(cls, value: str | None) -> str | None:
        return None if value is None else _check_plain_topic(value)

    @field_validator("gen2_prefixes", "gen1_custom_prefixes")
    @classmethod
    def _device_prefixes(cls, value: list[str]) -> list[str]:
        for prefix in value:
            _check_base_topic(prefix)
            if any(not level or ("+" in level and level != "+") for level in prefix.split("/")):
                raise ValueError(
                    f"topic prefix {prefix!r}: empty level, or '+' that is not a whole level"
                )
        return value


class HaStatestreamSettings(EcosystemSettings):
    """Home Assistant mqtt_statestream: ``<base>/<domain>/<object_id>/state|<attribute>``."""

    base_topic: str = Field(default="homeassistant", description="mqtt_statestream base_topic")
    domains: list[HaDomain] = Field(
        default_factory=lambda: list(get_args(HaDomain)),
        description="entity domains to adapt",
    )
    entity_metrics: dict[str, str] = Field(
        default_factory=dict,
        description="entity id -> metric, for entities whose device_class is not published "
        "(publish_attributes off) or maps to the wrong metric",
    )
    max_pending: int = Field(
        default=1024,
        ge=0,
        description="entities whose latest state is held while their device_class or unit "
        "attribute has not arrived yet (statestream publishes them on separate topics)",
    )

    own_prefix: str = Field(
        default="homeedge_",
        description="entity object ids of the gateway's own Home Assistant entities "
        "(gateway.homeassistant: default_entity_id homeedge_<gateway>_...), which are ignored: "
        "statestream would otherwise hand the gateway its own readings back as new devices",
    )

    @field_validator("base_topic")
    @classmethod
    def _base(cls, value: str) -> str:
        return _check_plain_topic(value)

    @field_validator("entity_metrics")
    @classmethod
    def _entity_metrics(cls, value: dict[str, str]) -> dict[str, str]:
        for entity, metric in value.items():
            if not METRIC_NAME.match(metric):
                raise ValueError(f"entity_metrics[{entity!r}]: {metric!r} is not a metric name")
        return value


class HaDiscoverySettings(EcosystemSettings):
    """Home Assistant MQTT discovery, consumed: retained ``<prefix>/<component>/[<node>/]<object>
    /config`` messages announce sensors and binary sensors (ESPHome, Tasmota, Zigbee2MQTT,
    OpenMQTTGateway, Shelly scripts...), whose state topics the gateway then subscribes to."""

    enabled: bool = Field(
        default=True,
        description="adopt every sensor/binary_sensor announced under the prefix (the devices "
        "describe their own metric and unit; the gateway's own entities are ignored)",
    )
    prefix: str = Field(default="homeassistant", description="Home Assistant's discovery_prefix")
    device_id: Literal["identifier", "name"] = Field(
        default="identifier",
        description="homeedge device id from the config's device identifiers (unique by HA's "
        "rule) or from its name (readable, but e.g. every Tasmota is called 'Tasmota')",
    )
    max_entities: int = Field(
        default=2000,
        ge=0,
        description="entities adopted at most; configs beyond are refused and counted",
    )
    max_claimed_topics: int = Field(
        default=4000,
        ge=0,
        description="distinct state and availability topic filters claimed at most (each one "
        "is a broker subscription); a claim beyond is refused and counted (topics_refused)",
    )
    own_prefix: str = Field(
        default="homeedge_",
        description="unique_id / device identifier prefix of the gateway's own published "
        "entities (gateway.inference.discovery), which are ignored: no loop",
    )

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return _check_plain_topic(value)


class AdapterSettings(BaseModel):
    """The ``[adapters]`` section: one home, a default room, one sub-section per ecosystem."""

    model_config = _STRICT

    home: str = Field(default="home", description="home id every adapted reading belongs to")
    default_room: str = Field(default="unassigned", description="room of unmapped devices")
    max_payload_bytes: int = Field(
        default=64 * 1024, gt=0, description="larger foreign payloads are dead-lettered"
    )
    zigbee2mqtt: Zigbee2MqttSettings = Field(default_factory=Zigbee2MqttSettings)
    tasmota: TasmotaSettings = Field(default_factory=TasmotaSettings)
    shelly: ShellySettings = Field(default_factory=ShellySettings)
    ha_discovery: HaDiscoverySettings = Field(default_factory=HaDiscoverySettings)
    ha_statestream: HaStatestreamSettings = Field(default_factory=HaStatestreamSettings)

    @field_validator("home")
    @classmethod
    def _home(cls, value: str) -> str:
        if not valid_segment(value):
            raise ValueError(f"home {value!r} is not a valid topic segment")
        return value

    @field_validator("default_room")
    @classmethod
    def _default_room(cls, value: str) -> str:
        return _check_room(value)
