"""The Home Assistant MQTT discovery adapter: devices that announce themselves, adopted.

ESPHome, Tasmota (``SetOption19 1``), Zigbee2MQTT (``homeassistant: true``), OpenMQTTGateway,
Shelly scripts and many more publish retained configs on
``<prefix>/<component>/[<node_id>/]<object_id>/config`` (https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery).
This adapter subscribes to ``<prefix>/+/+/config`` and ``<prefix>/+/+/+/config`` and adopts
every ``sensor`` and ``binary_sensor`` (also from HA's device-based ``<prefix>/device/<node>
/config`` with ``cmps``). Keys may be abbreviated (``stat_t``, ``val_tpl``, ``dev_cla``,
``unit_of_meas``, ``avty_t``, ``dev`` with ``ids``/``mdl``...) and topics may start or end with
``~`` (the config's base topic).

Adopting an entity claims its ``state_topic`` and availability topics from the gateway
(`gateway.ingest.TopicClaims`): the gateway subscribes to them and routes them here. A state
topic that an enabled native adapter already owns (``zigbee2mqtt/+`` with the Zigbee2MQTT
adapter on) stays with that adapter, so one value is stored once. Several entities may share
one state topic (a Tasmota ``tele/<t>/SENSOR``, a Zigbee2MQTT device): each message is run
through each entity's ``value_template`` (`gateway.adapters.ha_templates`, jinja2's sandbox).

Mapping: ``<component>.<device_class>`` -> metric (`BUILTIN_CLASSES`, merged with
``field_metrics``), the value converted from ``unit_of_measurement`` (`gateway.adapters.units`).
A ``diagnostic`` temperature is the device's own (``device_temperature``), a ``diagnostic``
voltage a battery's (not mapped: ``voltage`` is mains). A binary sensor's rendered state is
compared with ``payload_on``/``payload_off`` (HA's defaults ``ON``/``OFF``; a JSON ``true``
becomes ``"True"`` as in HA). Other device classes and components are ignored and counted.

Identity: the device's first identifier (``device_id = "name"``: its name), sanitized;
``devices`` maps any identifier or the name. When two entities of one device map to the same
metric (two temperature probes), the later one gets ``<device>-<object_id>``. No device block:
the config's unique_id, else its object id.

Availability: ``availability_topic`` or the ``availability`` list with ``payload_available`` /
``payload_not_available`` (defaults ``online``/``offline``) and their value template.

An empty config removes the entity (and releases its topics). The gateway's own entities
(`gateway.inference.discovery`: unique ids and device identifiers starting with
``own_prefix``, ``homeedge_``) are ignored, so the gateway never adopts what it publishes.
Discovered entities are not persisted: configs are retained on the broker, and a restarted
gateway receives them again on subscribing. At most ``max_entities`` are adopted (counted
beyond). Counted: ``entities``, ``entities_removed``, ``entities_refused``, ``own_entities``,
``ignored_components``, ``unmapped_entities``, ``state_topic_taken``, ``template_errors``,
``no_value``, ``empty_states``, ``unmatched_payloads``, ``availability_refused``,
``topics_refused``.

Claimed topics are bounded, because any client on the broker can publish a config: no ``#`` and
at least one literal level (``+/#`` or ``+/+`` would subscribe the gateway to every topic; a state
topic that is not is `adapter_validation`), at most `MAX_AVAILABILITY` availability entries per
entity and ``max_claimed_topics`` distinct filters in all (beyond: refused and counted).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import msgspec

from gateway.adapters.base import (
    AdapterError,
    AdaptResult,
    BaseAdapter,
    FieldRule,
    Identity,
    MessageReadings,
    ValueKind,
    decode_json,
    plain_value,
    sanitize_device,
)
from gateway.adapters.ha_templates import (
    NoValue,
    TemplateProblem,
    ValueTemplate,
    compile_template,
)
from gateway.adapters.settings import HaDiscoverySettings
from gateway.adapters.units import UnitError, to_metric_unit
from gateway.ingest import Adapted, TopicClaims
from gateway.records import Reading
from gateway.topic_filters import TopicFilters
from schemas.json_input import nesting_problem

log = logging.getLogger(__name__)

COMPONENTS = ("sensor", "binary_sensor")

BUILTIN_CLASSES = MappingProxyType(
    {
        "sensor.temperature": FieldRule("temperature"),
        "sensor.humidity": FieldRule("humidity"),
        "sensor.carbon_dioxide": FieldRule("co2"),
        "sensor.illuminance": FieldRule("light"),
        "sensor.power": FieldRule("power"),
        "sensor.energy": FieldRule("energy"),
        "sensor.battery": FieldRule("battery"),
        "sensor.pressure": FieldRule("pressure"),
        "sensor.atmospheric_pressure": FieldRule("pressure"),
        "sensor.voltage": FieldRule("voltage"),
        "sensor.current": FieldRule("current"),
        "sensor.apparent_power": FieldRule("apparent_power"),
        "sensor.reactive_power": FieldRule("reactive_power"),
        "sensor.power_factor": FieldRule("power_factor"),
        "sensor.frequency": FieldRule("frequency"),
        "sensor.volatile_organic_compounds_parts": FieldRule("voc"),
        "sensor.pm1": FieldRule("pm1"),
        "sensor.pm25": FieldRule("pm25"),
        "sensor.pm10": FieldRule("pm10"),
        "sensor.sound_pressure": FieldRule("noise"),
        "sensor.water": FieldRule("water"),
        "sensor.gas": FieldRule("gas"),
        "binary_sensor.motion": FieldRule("motion"),
        "binary_sensor.occupancy": FieldRule("motion"),
        "binary_sensor.presence": FieldRule("motion"),
        "binary_sensor.door": FieldRule("door"),
        "binary_sensor.garage_door": FieldRule("door"),
        "binary_sensor.opening": FieldRule("door"),
    }
)

# HA's abbreviations of the keys a sensor / binary_sensor config uses
# (https://www.home-assistant.io/integrations/mqtt/#supported-abbreviations-in-mqtt-discovery-messages).
ABBREVIATIONS = MappingProxyType(
    {
        "avty": "availability",
        "avty_mode": "availability_mode",
        "avty_t": "availability_topic",
        "avty_tpl": "availability_template",
        "cmps": "components",
        "dev": "device",
        "dev_cla": "device_class",
        "e": "encoding",
        "en": "enabled_by_default",
        "ent_cat": "entity_category",
        "exp_aft": "expire_after",
        "frc_upd": "force_update",
        "ic": "icon",
        "json_attr_t": "json_attributes_topic",
        "json_attr_tpl": "json_attributes_template",
        "lrst_val_tpl": "last_reset_value_template",
        "o": "origin",
        "obj_id": "object_id",
        "off_dly": "off_delay",
        "p": "platform",
        "pl_avail": "payload_available",
        "pl_not_avail": "payload_not_available",
        "pl_off": "payload_off",
        "pl_on": "payload_on",
        "stat_cla": "state_class",
        "stat_t": "state_topic",
        "sug_dsp_prc": "suggested_display_precision",
        "t": "topic",
        "uniq_id": "unique_id",
        "unit_of_meas": "unit_of_measurement",
        "val_tpl": "value_template",
    }
)
DEVICE_ABBREVIATIONS = MappingProxyType(
    {
        "cns": "connections",
        "cu": "configuration_url",
        "hw": "hw_version",
        "ids": "identifiers",
        "mf": "manufacturer",
        "mdl": "model",
        "mdl_id": "model_id",
        "sa": "suggested_area",
        "sn": "serial_number",
        "sw": "sw_version",
        "via_device": "via_device",
    }
)
# Keys a device-based config (<prefix>/device/<node>/config) shares with all its components.
_SHARED_KEYS = (
    "device",
    "origin",
    "state_topic",
    "availability",
    "availability_topic",
    "availability_mode",
    "availability_template",
    "payload_available",
    "payload_not_available",
    "qos",
    "encoding",
    "~",
)
_EMPTY_STATES = frozenset({"", "None", "none", "unknown", "unavailable"})


def expand(config: dict[str, Any]) -> dict[str, Any]:
    """`config` with HA's abbreviations spelled out and ``~`` applied to every ``*_topic``."""
    out = {ABBREVIATIONS.get(k, k): v for k, v in config.items()}
    device = out.get("device")
    if isinstance(device, dict):
        out["device"] = {DEVICE_ABBREVIATIONS.get(k, k): v for k, v in device.items()}
    origin = out.get("origin")
    if isinstance(origin, dict):
        out["origin"] = {
            {"sw": "sw_version", "url": "support_url"}.get(k, k): v for k, v in origin.items()
        }
    if isinstance(out.get("availability"), list):
        out["availability"] = [
            {ABBREVIATIONS.get(k, k): v for k, v in item.items()}
            if isinstance(item, dict)
            else item
            for item in out["availability"]
        ]
    base = out.get("~")
    if isinstance(base, str):
        for key, value in list(out.items()):
            if key.endswith("_topic") and isinstance(value, str):
                out[key] = _tilde(value, base)
        for item in out.get("availability") or []:
            if isinstance(item, dict) and isinstance(item.get("topic"), str):
                item["topic"] = _tilde(item["topic"], base)
    return out


def _tilde(topic: str, base: str) -> str:
    if topic.startswith("~"):
        return base + topic[1:]
    if topic.endswith("~"):
        return topic[:-1] + base
    return topic


def _payload_text(value: Any, default: str) -> str:
    """A payload_* option as HA's schema makes it: a string (``true`` -> ``"True"``)."""
    if value is None:
        return default
    return str(value)


MAX_AVAILABILITY = 8  # availability entries per entity; HA configs name one or two


def _valid_filter(topic: str) -> bool:
    """A topic or filter a discovered entity may claim: ``+`` only as a whole level, no ``#``
    (``+/#`` would subscribe the gateway to the whole broker) and at least one literal level
    (``+/+`` would too; OpenMQTTGateway's ``+/+/BTtoMQTT/<mac>`` names one)."""
    if not topic or topic.startswith("$") or "\0" in topic or "#" in topic:
        return False
    levels = topic.split("/")
    if any("+" in level and level != "+" for level in levels):
        return False
    return any(level not in ("", "+") for level in levels)


@dataclass(slots=True)
class _Availability:
    topic: str
    available: str
    not_available: str
    template: ValueTemplate | None


@dataclass(slots=True)
class _Entity:
    key: str  # config topic (#object for a device-based config's component)
    component: str
    object_id: str
    label: str  # unique_id or object id: names the entity in counts and dead letters
    who: Identity
    rule: FieldRule
    unit: str | None
    state_topic: str
    template: ValueTemplate | None
    payload_on: str
    payload_off: str
    availability: list[_Availability] = field(default_factory=list)

    def topics(self) -> list[str]:
        return [self.state_topic, *(a.topic for a in self.availability)]


class _Refused(Exception):
    """An entity this adapter does not adopt (counted under `count`); not an error."""

    def __init__(self, count: str, label: str = "") -> None:
        super().__init__(count)
        self.count = count
        self.label = label


class HaDiscoveryAdapter(BaseAdapter[HaDiscoverySettings]):
    """Adopts announced sensors and binary sensors and reads their state topics."""

    name = "ha_discovery"

    builtin_rules = BUILTIN_CLASSES

    def configure(self, eco: HaDiscoverySettings) -> None:
        self.prefix = eco.prefix
        self.device_id = eco.device_id
        self.max_entities = eco.max_entities
        self.max_claimed_topics = eco.max_claimed_topics
        self.own_prefix = eco.own_prefix
        self._config_filters = TopicFilters(self.filters)
        self._entities: dict[str, _Entity] = {}
        # Claimed topic filter -> the entities reading it (state or availability).
        self._readers: dict[str, list[_Entity]] = {}
        self._wild = TopicFilters(())
        self._wild_keys: list[str] = []
        # (device, metric) -> entity key holding it, so a second probe gets its own device.
        self._slots: dict[tuple[str, str], str] = {}
        self._claims: TopicClaims | None = None
        self._rejected: list[tuple[str, str]] = []

    def bind_claims(self, claims: TopicClaims) -> None:
        """The gateway's decoder hands over its claims (`gateway.ingest.ClaimingAdapter`)."""
        self._claims = claims

    @property
    def filters(self) -> tuple[str, ...]:
        return (f"{self.prefix}/+/+/config", f"{self.prefix}/+/+/+/config")

    @property
    def entities(self) -> dict[str, _Entity]:
        return self._entities

    def adapt(self, topic: str, payload: bytes, received_at: float) -> AdaptResult:
        self._rejected = []
        out = super().adapt(topic, payload, received_at)
        if self._rejected and isinstance(out, Adapted):
            return Adapted(out.readings, out.availability, list(self._rejected))
        return out

    def _adapt(self, topic: str, payload: bytes, received_at: float) -> list[Reading]:
        if self._config_filters.matches(topic):
            return self._config(topic, payload)
        readers = list(self._readers.get(topic, ()))
        for wild in self._wild_keys:
            if _matches(wild, topic):
                readers += self._readers[wild]
        if not readers:
            return self.ignore_topic()  # released a moment ago, or a stale subscription
        return self._state(topic, readers, payload, received_at)

    # -- configs ----------------------------------------------------------------------------

    def _config(self, topic: str, payload: bytes) -> list[Reading]:
        parts = topic[len(self.prefix) + 1 :].split("/")
        component, object_id = parts[0], parts[-2]
        if not payload.strip():
            removed = [k for k in self._entities if k == topic or k.startswith(topic + "#")]
            for key in removed:
                self._remove(key)
            self.counts["entities_removed"] += len(removed)
            return []
        if component not in (*COMPONENTS, "device"):
            self.counts["ignored_components"] += 1
            return []
        raw = decode_json(payload)
        if not isinstance(raw, dict):
            raise AdapterError("adapter_validation", "a discovery config must be a JSON object")
        config = expand(raw)
        if component == "device":
            return self._device_config(topic, config)
        self._adopt(topic, component, object_id, config)
        return []

    def _device_config(self, topic: str, config: dict[str, Any]) -> list[Reading]:
        components = config.get("components")
        if not isinstance(components, dict):
            raise AdapterError("adapter_validation", "device config: 'cmps' must be an object")
        shared = {k: config[k] for k in _SHARED_KEYS if k in config}
        keep = set()
        for object_id, sub in components.items():
            if not isinstance(sub, dict):
                continue
            merged = expand({**shared, **sub})
            platform = merged.get("platform")
            key = f"{topic}#{object_id}"
            if platform not in COMPONENTS:
                self.counts["ignored_components"] += 1
                continue
            keep.add(key)
            self._adopt(key, str(platform), str(object_id), merged)
        for key in [k for k in self._entities if k.startswith(topic + "#") and k not in keep]:
            self._remove(key)
            self.counts["entities_removed"] += 1
        return []

    def _adopt(self, key: str, component: str, object_id: str, config: dict[str, Any]) -> None:
        try:
            entity = self._entity(key, component, object_id, config)
        except _Refused as refused:
            self.counts[refused.count] += 1
            if refused.label:
                self.ignore_field(refused.label)
            self._remove(key)  # a config that changed into one we do not take
            return
        except TemplateProblem as exc:
            self.counts["template_errors"] += 1
            self._remove(key)
            raise AdapterError("adapter_template", f"{object_id}: value template: {exc}") from None
        old = self._entities.get(key)
        if old is None and len(self._entities) >= self.max_entities:
            self.counts["entities_refused"] += 1
            log.warning(
                "%s: %d entities adopted already: %s refused", self.name, self.max_entities, key
            )
            return
        # The new entity claims its topics before the old one releases them: a config that
        # is sent again (every reconnect replays the retained ones) does not unsubscribe.
        why = self._claim(entity.state_topic, entity)
        if why is not None:
            self.counts[why] += 1
            self._remove(key)
            return
        kept = []
        for avail in entity.availability:
            why = self._claim(avail.topic, entity)
            if why == "topics_refused":
                self.counts[why] += 1
            elif why is None:
                kept.append(avail)
        entity.availability = kept
        self._remove(key)
        entity.who = self._slot(entity)
        self._entities[key] = entity
        self.counts["entities"] += 1

    def _is_own(self, config: dict[str, Any]) -> bool:
        own = self.own_prefix
        if str(config.get("unique_id", "")).startswith(own):
            return True
        device = config.get("device")
        if isinstance(device, dict):
            ids = device.get("identifiers")
            ids = [ids] if isinstance(ids, str) else ids if isinstance(ids, list) else []
            return any(str(i).startswith(own) for i in ids)
        return False

    def _entity(self, key: str, component: str, object_id: str, config: dict[str, Any]) -> _Entity:
        if self._is_own(config):
            raise _Refused("own_entities")
        state_topic = config.get("state_topic")
        if not isinstance(state_topic, str) or not _valid_filter(state_topic):
            raise AdapterError(
                "adapter_validation", f"{object_id}: no usable state_topic ({state_topic!r})"
            )
        device_class = config.get("device_class")
        unit = config.get("unit_of_measurement")
        if unit is not None and not isinstance(unit, str):
            raise AdapterError(
                "adapter_validation", f"{object_id}: unit_of_measurement {unit!r} is not a string"
            )
        diagnostic = config.get("entity_category") == "diagnostic"
        label = f"{component}.{device_class}"
        rule = self.rules.get(label)
        if rule is not None and diagnostic and rule.metric == "temperature":
            rule = FieldRule("device_temperature")
        elif rule is not None and diagnostic and rule.metric == "voltage":
            rule = None  # a battery's voltage, not the mains
            label = f"{label}.diagnostic"
        if rule is None:
            raise _Refused("unmapped_entities", label)
        if component == "sensor":
            try:
                to_metric_unit(1.0, unit if unit else None, rule.metric)
            except UnitError as exc:
                raise AdapterError("adapter_unit", f"{object_id}: {exc}") from None
        template = config.get("value_template")
        availability = self._availability(config)
        unique_id = config.get("unique_id")
        return _Entity(
            key=key,
            component=component,
            object_id=object_id,
            label=str(unique_id) if unique_id else object_id,
            who=self._who(config, unique_id, object_id),
            rule=FieldRule(rule.metric, ValueKind.NUMBER),
            unit=unit if unit else None,
            state_topic=state_topic,
            template=compile_template(template) if isinstance(template, str) else None,
            payload_on=_payload_text(config.get("payload_on"), "ON"),
            payload_off=_payload_text(config.get("payload_off"), "OFF"),
            availability=availability,
        )

    def _availability(self, config: dict[str, Any]) -> list[_Availability]:
        on = _payload_text(config.get("payload_available"), "online")
        off = _payload_text(config.get("payload_not_available"), "offline")
        items: list[_Availability] = []
        topic = config.get("availability_topic")
        template = config.get("availability_template")
        if isinstance(topic, str) and not _valid_filter(topic):
            self.counts["availability_refused"] += 1
        elif isinstance(topic, str):
            compiled = compile_template(template) if isinstance(template, str) else None
            items.append(_Availability(topic, on, off, compiled))
        listed = config.get("availability") or []
        if not isinstance(listed, list):
            listed = []
        for item in listed:
            if not isinstance(item, dict) or not isinstance(item.get("topic"), str):
                continue
            if not _valid_filter(item["topic"]) or len(items) >= MAX_AVAILABILITY:
                # a filter over the whole broker, or a list that would claim hundreds
                self.counts["availability_refused"] += 1
                continue
            tpl = item.get("value_template")
            items.append(
                _Availability(
                    item["topic"],
                    _payload_text(item.get("payload_available"), "online"),
                    _payload_text(item.get("payload_not_available"), "offline"),
                    compile_template(tpl) if isinstance(tpl, str) else None,
                )
            )
        return items

    def _who(self, config: dict[str, Any], unique_id: Any, object_id: str) -> Identity:
        device = config.get("device")
        keys: list[str] = []
        name: str | None = None
        if isinstance(device, dict):
            ids = device.get("identifiers")
            ids = [ids] if isinstance(ids, str) else ids if isinstance(ids, list) else []
            keys = [str(i) for i in ids if i not in (None, "")]
            if isinstance(device.get("name"), str) and device["name"]:
                name = device["name"]
        fallback = (
            name
            if self.device_id == "name" and name
            else keys[0]
            if keys
            else name or (str(unique_id) if unique_id else object_id)
        )
        return self.identity([*keys, *([name] if name else [])], fallback)

    def _slot(self, entity: _Entity) -> Identity:
        """The entity's identity, its own device when its device's metric is taken."""
        who = entity.who
        holder = self._slots.get((who.device, entity.rule.metric))
        if holder is not None and holder != entity.key:
            device = sanitize_device(f"{who.device}-{entity.object_id}")
            who = Identity(who.home, who.room, device)
        self._slots.setdefault((who.device, entity.rule.metric), entity.key)
        return who

    # -- topic claims -----------------------------------------------------------------------

    def _claim(self, topic: str, entity: _Entity) -> str | None:
        """None when `entity` reads `topic` now, else why not (a count's name)."""
        readers = self._readers.get(topic)
        if readers is None:
            if len(self._readers) >= self.max_claimed_topics:
                log.warning(
                    "%s: %d topics claimed already: %s refused",
                    self.name,
                    self.max_claimed_topics,
                    topic,
                )
                return "topics_refused"
            if self._claims is not None and not self._claims.claim(topic):
                return "state_topic_taken"
            readers = self._readers[topic] = []
            self._rebuild_wild()
        readers.append(entity)
        return None

    def _remove(self, key: str) -> None:
        entity = self._entities.pop(key, None)
        if entity is None:
            return
        for slot, holder in list(self._slots.items()):
            if holder == key:
                del self._slots[slot]
        for topic in dict.fromkeys(entity.topics()):
            readers = self._readers.get(topic)
            if readers is None:
                continue
            readers[:] = [e for e in readers if e is not entity]
            if not readers:
                del self._readers[topic]
                self._rebuild_wild()
                if self._claims is not None:
                    self._claims.release(topic)

    def _rebuild_wild(self) -> None:
        self._wild_keys = [t for t in self._readers if "+" in t or "#" in t]
        self._wild = TopicFilters(self._wild_keys)

    # -- states -----------------------------------------------------------------------------

    def _state(
        self, topic: str, readers: list[_Entity], payload: bytes, received_at: float
    ) -> list[Reading]:
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise AdapterError("adapter_validation", "payload is not UTF-8 text") from None
        value_json: Any = _NO_JSON
        if nesting_problem(payload) is None:
            with contextlib.suppress(msgspec.DecodeError):
                value_json = msgspec.json.decode(payload)
        out = MessageReadings(received_at)
        problems: list[str] = []  # templates that failed on this message
        unusable: list[tuple[str, str]] = []  # rendered values that failed (reason, detail)
        told: set[tuple[str, bool]] = set()
        done: set[int] = set()
        for entity in readers:
            if id(entity) in done:
                continue
            done.add(id(entity))
            if _matches(entity.state_topic, topic):
                self._entity_state(entity, text, value_json, out, received_at, problems, unusable)
            for avail in entity.availability:
                if _matches(avail.topic, topic):
                    online = self._online(avail, text, value_json, problems, entity)
                    if online is not None and (entity.who.device, online) not in told:
                        told.add((entity.who.device, online))
                        self.availability(entity.who, online, received_at)
        readings = out.as_list()
        self.counts["template_errors"] += len(problems)
        failed = [("adapter_template", p) for p in problems] + unusable
        if failed and not readings and not told:
            reason = failed[0][0]
            raise AdapterError(reason, "; ".join(d for r, d in failed[:5] if r == reason))
        self._rejected.extend(failed)
        return readings

    def _render(self, template: ValueTemplate | None, text: str, value_json: Any) -> str:
        if template is None:
            return text.strip()
        if value_json is _NO_JSON:
            return template.render(text)
        return template.render(text, value_json)

    def _entity_state(
        self,
        entity: _Entity,
        text: str,
        value_json: Any,
        out: MessageReadings,
        received_at: float,
        problems: list[str],
        unusable: list[tuple[str, str]],
    ) -> None:
        try:
            rendered = self._render(entity.template, text, value_json)
        except NoValue:
            self.counts["no_value"] += 1
            return
        except TemplateProblem as exc:
            problems.append(f"{entity.label}: {exc}")
            return
        if entity.component == "binary_sensor":
            if rendered == entity.payload_on:
                value: float | str = 1.0
            elif rendered == entity.payload_off:
                value = 0.0
            else:
                self.counts["unmatched_payloads"] += 1
                return
        else:
            if rendered in _EMPTY_STATES:
                self.counts["empty_states"] += 1
                return
            value = plain_value(rendered)
            if not isinstance(value, float):
                self.ignore_field(f"{entity.label}.<non-numeric>")
                return
        try:
            self.add(
                out, entity.who, received_at, entity.label, value, entity.rule, unit=entity.unit
            )
        except AdapterError as exc:
            unusable.append((exc.reason, f"{entity.label}: {exc.detail}"))

    def _online(
        self,
        avail: _Availability,
        text: str,
        value_json: Any,
        problems: list[str],
        entity: _Entity,
    ) -> bool | None:
        try:
            rendered = self._render(avail.template, text, value_json)
        except NoValue:
            return None
        except TemplateProblem as exc:
            problems.append(f"{entity.label} availability: {exc}")
            return None
        if rendered == avail.available:
            return True
        if rendered == avail.not_available:
            return False
        self.counts["unmatched_payloads"] += 1
        return None


_NO_JSON = object()


def _matches(topic_filter: str, topic: str) -> bool:
    if "+" not in topic_filter and "#" not in topic_filter:
        return topic_filter == topic
    return TopicFilters((topic_filter,)).matches(topic)
