"""The Shelly adapter: Gen1 plain-value topics, Gen2+ component status topics and RPC frames.

Gen1 (``shellies/<id>/...``, one plain value per topic, no timestamp: the receive time is used):

- ``relay/<n>/power`` (W) -> power; ``relay/<n>/energy`` (watt-minutes) -> energy in kWh; the
  same for ``light/<n>`` and ``roller/<n>``; ``emeter/<n>/power`` (W) -> power,
  ``reactive_power`` (var), ``voltage`` (V), ``current`` (A), ``pf`` -> power_factor,
  ``total`` (Wh) -> energy in kWh (``emeter/<n>/energy``, a second counter in watt-minutes, is
  not stored: one energy counter per meter);
- ``sensor/temperature`` (°C, or °F when ``gen1_temperature_unit`` says the device is set so) ->
  temperature; ``sensor/humidity`` -> humidity; ``sensor/battery`` -> battery; ``sensor/lux`` ->
  light; ``sensor/motion`` (true/false) -> motion; ``sensor/state`` (open/close) -> door;
  ``ext_temperature/<n>``/``ext_humidity/<n>`` (the temperature add-on's probes) -> temperature,
  humidity; ``status`` of a Shelly Motion (JSON ``motion``, ``lux``, ``bat``);
- ``temperature`` (the relay's or dimmer's own chip, °C) -> device_temperature, never the room's;
- ``sensor/ext_power`` true (an H&T on USB) makes that device's ``sensor/battery`` ignored, as is
  a negative battery (firmware 1.11 reports -1 on USB): a powered device has no flat battery;
- ``-``, ``unknown``, ``null`` or an empty payload is "not known": ignored (``null_values``);
- ``online`` (true/false, the last will) -> availability; ``announce``, ``info``, ``settings``
  and ``shellies/announce`` carry no new reading (the same values come on the plain topics);
- a Gen1 device publishing under another prefix than ``shellies/<id>`` (a custom MQTT id, which
  may contain ``/``): ``gen1_custom_prefixes`` lists the whole prefix that stands before
  ``relay/0/power``...; ``+`` levels name the device as for Gen2+; matched before
  ``gen1_prefix``, so give it literal levels that no ``shellies/<id>/...`` topic has.

Gen2+ (Plus, Pro, Gen3, Gen4; ``<prefix>`` is the device's ``mqtt.topic_prefix``, which may have
several levels and defaults to the device id ``<model>-<mac>``):

- ``<prefix>/status/<component:id>``: the whole status object of one component;
- ``<prefix>/events/rpc``: ``NotifyStatus`` (a partial overlay: only the fields that changed),
  ``NotifyFullStatus`` (every component), ``params.ts`` being the reading time; ``NotifyEvent``
  and other methods carry no reading (counted as ``ignored_messages``);
- ``<prefix>/status/rpc``: an RPC response (``result`` = a ``Shelly.GetStatus``), as
  discovery scripts ask for it;
- ``<prefix>/online`` (true/false) -> availability.

Under a prefix with ``+`` levels (the default ``+``), other devices' hand-made topics of the same
shape arrive too (``kitchen/status/light`` "ON", ``esp-hall/online`` "online"). Such a topic is
taken as a Shelly's only when its payload is Shelly-shaped: a status that is a JSON object whose
``id`` is the component's id (``switch:0`` -> 0), an ``online`` that is true/false, an
``events/rpc`` that is a JSON object with a ``method``. Anything else is "not ours": ignored and
counted (``counts["foreign_topics"]``), never a reading and never a dead letter. Under a literal
prefix the topic surely is a Shelly's, so a bad payload stays a dead letter. Those wildcard
filters also yield to topics that another adapter claims at run time (`yielding_filters`: e.g.
an entity adopted from Home Assistant discovery whose availability topic is ``<x>/online``).

Field names are ``<component type>.<path>``: ``switch|cover|light|pm1|rgb|rgbw|cct`` ``apower``
(W) -> power, ``voltage`` (V), ``current`` (A), ``pf`` -> power_factor, ``freq`` -> frequency,
``aenergy.total`` (Wh) -> energy in kWh, ``temperature.tC`` -> device_temperature (the relay's
own); ``temperature.tC`` -> temperature, ``humidity.rh``, ``illuminance.lux`` -> light,
``devicepower.battery.percent`` -> battery (ignored while ``external.present`` is true, which a
NotifyStatus without ``external`` keeps: a USB-powered H&T reports 0 %); ``em`` (three phases)
``<p>_current|voltage|act_power|aprt_power|pf|freq`` of phase ``p`` in a, b, c (and
``n_current``) -> device ``<device>-<p>``, ``total_current|act_power|aprt_power`` -> the device;
``emdata`` ``<p>_total_act_energy``/``total_act`` (Wh) -> energy; ``em1``/``em1data`` (one
channel each) ``current``, ``voltage``, ``act_power``, ``aprt_power``, ``pf``, ``freq``,
``total_act_energy`` (Wh).

Which device: the levels of the topic prefix that the configured filter's ``+`` wildcards
matched, joined by ``-`` (the default filters ``+`` and ``shellies/+`` give the device id); a
filter without wildcard names one device by its last level. ``devices`` may map that name, the
full prefix or an RPC frame's ``src``. Channel n of a multi-channel device (relay 1 of a Shelly
2.5, ``switch:2`` of a Pro 3) is device ``<name>-ch<n>``; channel 0 is ``<name>`` (see
`BaseAdapter.channel_identity`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
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
from gateway.adapters.settings import ShellySettings
from gateway.records import Reading

_METERED = ("relay", "light", "roller")
_GEN2_METERED = ("switch", "cover", "light", "pm1", "rgb", "rgbw", "cct")
_PHASES = frozenset("abcn")

GEN1_FIELDS: Mapping[str, FieldRule] = MappingProxyType(
    {
        **{f"{c}/power": FieldRule("power", unit="W") for c in _METERED},
        **{f"{c}/energy": FieldRule("energy", unit="Wmin") for c in _METERED},
        "emeter/power": FieldRule("power", unit="W"),
        "emeter/reactive_power": FieldRule("reactive_power", unit="var"),
        "emeter/voltage": FieldRule("voltage", unit="V"),
        "emeter/current": FieldRule("current", unit="A"),
        "emeter/pf": FieldRule("power_factor"),
        "emeter/total": FieldRule("energy", unit="Wh"),
        "sensor/temperature": FieldRule("temperature", unit="°C"),
        "sensor/humidity": FieldRule("humidity", unit="%"),
        "sensor/battery": FieldRule("battery", unit="%"),
        "sensor/lux": FieldRule("light", unit="lx"),
        "sensor/motion": FieldRule("motion", ValueKind.BINARY),
        "sensor/state": FieldRule("door", ValueKind.BINARY),
        # The relay's / dimmer's own chip, not the room.
        "temperature": FieldRule("device_temperature", unit="°C"),
        "ext_temperature": FieldRule("temperature", unit="°C"),
        "ext_humidity": FieldRule("humidity", unit="%"),
        # Shelly Motion's JSON status.
        "status.motion": FieldRule("motion", ValueKind.BINARY),
        "status.lux": FieldRule("light", unit="lx"),
        "status.bat": FieldRule("battery", unit="%"),
    }
)


def _electrical(ctype: str) -> dict[str, FieldRule]:
    return {
        f"{ctype}.apower": FieldRule("power", unit="W"),
        f"{ctype}.voltage": FieldRule("voltage", unit="V"),
        f"{ctype}.current": FieldRule("current", unit="A"),
        f"{ctype}.pf": FieldRule("power_factor"),
        f"{ctype}.freq": FieldRule("frequency", unit="Hz"),
        f"{ctype}.aenergy.total": FieldRule("energy", unit="Wh"),
        f"{ctype}.temperature.tC": FieldRule("device_temperature", unit="°C"),
    }


def _meter(ctype: str, prefix: str, power: str) -> dict[str, FieldRule]:
    return {
        f"{ctype}.{prefix}current": FieldRule("current", unit="A"),
        f"{ctype}.{prefix}voltage": FieldRule("voltage", unit="V"),
        f"{ctype}.{prefix}{power}": FieldRule("power", unit="W"),
        f"{ctype}.{prefix}aprt_power": FieldRule("apparent_power", unit="VA"),
        f"{ctype}.{prefix}pf": FieldRule("power_factor"),
        f"{ctype}.{prefix}freq": FieldRule("frequency", unit="Hz"),
    }


GEN2_FIELDS: Mapping[str, FieldRule] = MappingProxyType(
    {
        **{k: v for c in _GEN2_METERED for k, v in _electrical(c).items()},
        "temperature.tC": FieldRule("temperature", unit="°C"),
        "humidity.rh": FieldRule("humidity", unit="%"),
        "illuminance.lux": FieldRule("light", unit="lx"),
        "devicepower.battery.percent": FieldRule("battery", unit="%"),
        **{k: v for p in "abc" for k, v in _meter("em", f"{p}_", "act_power").items()},
        "em.n_current": FieldRule("current", unit="A"),
        "em.total_current": FieldRule("current", unit="A"),
        "em.total_act_power": FieldRule("power", unit="W"),
        "em.total_aprt_power": FieldRule("apparent_power", unit="VA"),
        **{f"emdata.{p}_total_act_energy": FieldRule("energy", unit="Wh") for p in "abc"},
        "emdata.total_act": FieldRule("energy", unit="Wh"),
        **_meter("em1", "", "act_power"),
        "em1data.total_act_energy": FieldRule("energy", unit="Wh"),
    }
)

_STATUS_METHODS = frozenset({"NotifyStatus", "NotifyFullStatus"})
_BOOL_WORDS = {"true": True, "false": False}
# Gen1 plain payloads meaning "no value yet" (a sensor not read, an add-on not attached).
_UNKNOWN_WORDS = frozenset({"", "-", "unknown", "n/a", "null", "none", "nan"})
# Gen1 topics that repeat, as one JSON document, what the plain topics carry.
_GEN1_SUMMARIES = frozenset({"announce", "info", "settings"})
_MAX_DEPTH = 3
# Devices whose "on external power" state is remembered (bounded: oldest forgotten first).
MAX_POWERED_DEVICES = 4096


def _bool_word(payload: bytes) -> bool | None:
    """True/False for a Shelly ``online`` payload, None for anything else (never raises)."""
    return _BOOL_WORDS.get(payload.decode("utf-8", "replace").strip())


def _json_or_none(payload: bytes) -> Any:
    """The payload's JSON value, or None when it is not JSON (never raises)."""
    try:
        return decode_json(payload)
    except AdapterError:
        return None


def _component_id(component: str) -> int | None:
    """0 for ``switch:0``; None for a name without a numeric id (no Gen2+ component has one
    among those we read)."""
    _, sep, cid = component.partition(":")
    return int(cid) if sep and cid.isdecimal() else None


def _flatten(prefix: str, obj: Mapping[str, Any], depth: int = 0) -> Iterator[tuple[str, Any]]:
    for key, value in obj.items():
        label = f"{prefix}.{key}"
        if isinstance(value, dict) and depth < _MAX_DEPTH:
            yield from _flatten(label, value, depth + 1)
        else:
            yield label, value


def _phase(field: str) -> str | None:
    """``a`` for ``a_voltage``/``a_total_act_energy`` (an EM phase's field), else None."""
    if len(field) > 2 and field[1] == "_" and field[0] in _PHASES:
        return field[0]
    return None


@dataclass(frozen=True, slots=True)
class TopicPrefix:
    """One configured device topic prefix (``+`` levels allowed) and how it names devices."""

    levels: tuple[str, ...]

    @classmethod
    def parse(cls, prefix: str) -> TopicPrefix:
        return cls(tuple(prefix.split("/")))

    @property
    def text(self) -> str:
        return "/".join(self.levels)

    def device(self, parts: list[str]) -> str | None:
        """The device name when `parts` start with this prefix, else None."""
        if len(parts) < len(self.levels):
            return None
        wild: list[str] = []
        for want, got in zip(self.levels, parts, strict=False):
            if want == "+":
                if not got:
                    return None
                wild.append(got)
            elif want != got:
                return None
        return "-".join(wild) if wild else self.levels[-1]


@dataclass(frozen=True, slots=True)
class Gen2Topic:
    """A topic under a Gen2+ prefix: its device name, the concrete prefix and what follows."""

    name: str
    prefix: str
    rest: tuple[str, ...]
    # Matched by a prefix with '+' levels: the topic may be another device's (see the module doc).
    wild: bool = False


class ShellyAdapter(BaseAdapter[ShellySettings]):
    """Adapts Shelly Gen1 MQTT topics and Gen2+ component status and RPC notifications."""

    name = "shelly"

    builtin_rules = MappingProxyType({**GEN1_FIELDS, **GEN2_FIELDS})

    def default_rules(self, eco: ShellySettings) -> Mapping[str, FieldRule]:
        # Gen1 H&T report in the unit set on the device, which the payload does not say.
        unit = FieldRule("temperature", unit=eco.gen1_temperature_unit)
        return {**self.builtin_rules, "sensor/temperature": unit}

    def configure(self, eco: ShellySettings) -> None:
        self.gen1_prefix = eco.gen1_prefix
        self.gen2_prefixes = [TopicPrefix.parse(p) for p in eco.gen2_prefixes]
        self.gen1_custom = [TopicPrefix.parse(p) for p in eco.gen1_custom_prefixes]
        self._gen2_components = {label.split(".", 1)[0] for label in self.rules if "." in label}
        self._gen2_components.discard("status")  # Gen1 Motion's labels
        # device id -> on external power (USB): its battery reading means nothing then.
        self._powered: dict[str, bool] = {}
        gen1_all = f"{self.gen1_prefix}/" if self.gen1_prefix else None
        filters: list[str] = [f"{self.gen1_prefix}/#"] if self.gen1_prefix else []
        for prefix in self.gen2_prefixes:
            # Under the Gen1 prefix, `shellies/#` already delivers these. MQTT lets a broker
            # deliver a message once per overlapping subscription (Mosquitto 2.0.11 sends one
            # copy; others may not), so none is added.
            if gen1_all is not None and prefix.text.startswith(gen1_all):
                continue
            for tail in ("events/rpc", "status/+", "online"):
                topic_filter = f"{prefix.text}/{tail}"
                if topic_filter not in filters:
                    filters.append(topic_filter)
        for prefix in self.gen1_custom:
            topic_filter = f"{prefix.text}/#"
            covered = gen1_all is not None and prefix.text.startswith(gen1_all)
            if not covered and topic_filter not in filters:
                filters.append(topic_filter)
        self._filters = tuple(filters)
        # The wildcard prefixes' filters only guess that a topic is a Shelly's.
        self._yielding = tuple(
            f
            for f in filters
            for prefix in self.gen2_prefixes
            if "+" in prefix.levels and f.startswith(f"{prefix.text}/")
        )

    @property
    def filters(self) -> tuple[str, ...]:
        return self._filters

    @property
    def yielding_filters(self) -> tuple[str, ...]:
        """The filters under a wildcard Gen2+ prefix: a topic another adapter claims (an exact
        topic, e.g. an adopted Home Assistant entity's) is that adapter's, not ours."""
        return tuple(dict.fromkeys(self._yielding))

    def _foreign(self) -> list[Reading]:
        """A topic under a wildcard prefix whose payload is not a Shelly's: not ours."""
        self.counts["foreign_topics"] += 1
        return []

    def _gen2_topic(self, topic: str) -> Gen2Topic | None:
        parts = topic.split("/")
        for prefix in self.gen2_prefixes:
            rest = tuple(parts[len(prefix.levels) :])
            if rest not in (("events", "rpc"), ("online",)) and not (
                len(rest) == 2 and rest[0] == "status" and rest[1]
            ):
                continue
            name = prefix.device(parts)
            if name is not None:
                concrete = "/".join(parts[: len(prefix.levels)])
                # Under the Gen1 prefix (shellies/+) every topic is a Shelly's.
                gen1 = bool(self.gen1_prefix) and concrete.startswith(f"{self.gen1_prefix}/")
                wild = "+" in prefix.levels and not gen1
                return Gen2Topic(name, concrete, rest, wild)
        return None

    def _adapt(self, topic: str, payload: bytes, received_at: float) -> list[Reading]:
        gen2 = self._gen2_topic(topic) if not topic.startswith("$") else None
        if gen2 is not None:
            if gen2.rest == ("events", "rpc"):
                return self._gen2_event(gen2, payload, received_at)
            if gen2.rest == ("online",):
                if gen2.wild and _bool_word(payload) is None:
                    return self._foreign()
                return self._online(self._who(gen2, None, 0), payload, received_at)
            if gen2.rest[1] == "rpc":
                return self._gen2_response(gen2, payload, received_at)
            return self._gen2_status_topic(gen2, gen2.rest[1], payload, received_at)
        # Custom Gen1 prefixes first: one may sit under `shellies/` (an MQTT id with '/').
        parts = topic.split("/")
        for prefix in self.gen1_custom:
            name = prefix.device(parts)
            if name is not None and len(parts) > len(prefix.levels):
                path = "/".join(parts[len(prefix.levels) :])
                return self._gen1(name, path, payload, received_at)
        if self.gen1_prefix and topic.startswith(self.gen1_prefix + "/"):
            device_id, _, path = topic[len(self.gen1_prefix) + 1 :].partition("/")
            return self._gen1(device_id, path, payload, received_at)
        return self.ignore_topic()

    def _online(self, who: Identity, payload: bytes, received_at: float) -> list[Reading]:
        word = decode_text(payload)
        if word not in _BOOL_WORDS:
            raise AdapterError("adapter_validation", f"online {word[:40]!r} is not true/false")
        return self.availability(who, _BOOL_WORDS[word], received_at)

    # -- external power ---------------------------------------------------------------------

    def _remember_power(self, device: str, external: bool) -> None:
        self._powered.pop(device, None)
        if len(self._powered) >= MAX_POWERED_DEVICES:
            self._powered.pop(next(iter(self._powered)))
        self._powered[device] = external

    def _battery_ignored(self, device: str, label: str) -> bool:
        if self._powered.get(device, False):
            self.counts["external_power_battery"] += 1
            self.ignore_field(label)
            return True
        return False

    # -- Gen1 -------------------------------------------------------------------------------

    def _gen1(self, device_id: str, path: str, payload: bytes, received_at: float) -> list[Reading]:
        if not device_id or not path or path in _GEN1_SUMMARIES:
            return self.ignore_topic()  # shellies/announce, shellies/command, <id>/info
        who = self.channel_identity(device_id, 0)
        if path == "online":
            return self._online(who, payload, received_at)
        if path == "status":
            return self._gen1_status(who, payload, received_at)
        parts = path.split("/")
        digits = [p for p in parts if p.isdecimal()]
        channel = int(digits[0]) if digits else 0
        label = "/".join(p for p in parts if not p.isdecimal())
        text = decode_text(payload)
        if label == "sensor/ext_power":
            if text in _BOOL_WORDS:
                self._remember_power(who.device, _BOOL_WORDS[text])
            self.ignore_field(label)
            return []
        rule = self.rules.get(label)
        if rule is None:
            self.ignore_field(label)
            return []
        if text.lower() in _UNKNOWN_WORDS:
            self.counts["null_values"] += 1
            return []
        value = plain_value(text)
        if rule.metric == "battery":
            if self._battery_ignored(who.device, label):
                return []
            if isinstance(value, float) and value < 0:
                # Firmware 1.11 reports -1 for an H&T on USB: "no battery", not a level.
                self.counts["null_values"] += 1
                return []
        out = MessageReadings(received_at)
        if channel:
            who = self.channel_identity(device_id, channel)
        self.add(out, who, received_at, label, value, rule)
        return out.as_list()

    def _gen1_status(self, who: Identity, payload: bytes, received_at: float) -> list[Reading]:
        status = decode_json(payload)
        if not isinstance(status, dict):
            raise AdapterError("adapter_validation", "a Gen1 status must be a JSON object")
        out = MessageReadings(received_at)
        for key, raw in status.items():
            label = f"status.{key}"
            self.add(out, who, received_at, label, raw, self.rules.get(label))
        return out.as_list()

    # -- Gen2+ ------------------------------------------------------------------------------

    def _who(self, topic: Gen2Topic, src: str | None, channel: int, sub: str = "") -> Identity:
        bases = [topic.name, topic.prefix] + ([src] if src and src != topic.name else [])
        suffix = f":{sub}" if sub else ""
        keys = [f"{b}:{channel}{suffix}" for b in bases]
        if channel == 0 and not sub:
            keys += bases
        fallback = topic.name if channel == 0 else f"{topic.name}-ch{channel}"
        return self.identity(keys, f"{fallback}-{sub}" if sub else fallback)

    def _gen2_status_topic(
        self, topic: Gen2Topic, component: str, payload: bytes, received_at: float
    ) -> list[Reading]:
        if component.partition(":")[0] not in self._gen2_components:
            # sys, wifi, input:0... carry no reading; not decoding them also keeps a foreign
            # device's <x>/status/<y> (matched by the '+' prefix) out of the dead letters.
            self.ignore_field(component.partition(":")[0])
            return []
        if topic.wild:
            # Every Gen2+ component status carries its own id ("id": 0 for switch:0); another
            # device's <x>/status/<y> ("ON", Tasmota-like JSON, a BLE gateway's {"id": "<mac>"})
            # does not.
            shaped = _json_or_none(payload)
            cid = _component_id(component)
            if (
                not isinstance(shaped, dict)
                or cid is None
                or isinstance(shaped.get("id"), bool)
                or shaped.get("id") != cid
            ):
                return self._foreign()
            status: object = shaped
        else:
            status = decode_json(payload)
        if not isinstance(status, dict):
            raise AdapterError("adapter_validation", f"status of {component[:40]} is not an object")
        out = MessageReadings(received_at)
        self._component(out, topic, None, received_at, component, status)
        return out.as_list()

    def _gen2_event(self, topic: Gen2Topic, payload: bytes, received_at: float) -> list[Reading]:
        frame = _json_or_none(payload) if topic.wild else decode_json(payload)
        if topic.wild and not (isinstance(frame, dict) and isinstance(frame.get("method"), str)):
            return self._foreign()
        if not isinstance(frame, dict) or not isinstance(frame.get("method"), str):
            raise AdapterError("adapter_validation", "an RPC notification needs a method")
        if frame["method"] not in _STATUS_METHODS:
            self.counts["ignored_messages"] += 1
            return []
        params = frame.get("params")
        if not isinstance(params, dict):
            raise AdapterError("adapter_validation", f"{frame['method']} params must be an object")
        raw_ts = params.get("ts")
        ts = received_at
        if isinstance(raw_ts, int | float) and not isinstance(raw_ts, bool):
            ts = self.when(float(raw_ts), received_at)
        return self._components(topic, frame.get("src"), ts, received_at, params)

    def _gen2_response(self, topic: Gen2Topic, payload: bytes, received_at: float) -> list[Reading]:
        frame = _json_or_none(payload) if topic.wild else decode_json(payload)
        if topic.wild and not (isinstance(frame, dict) and ("result" in frame or "error" in frame)):
            return self._foreign()  # not an RPC response
        result = frame.get("result") if isinstance(frame, dict) else None
        if not isinstance(result, dict):
            # An error response, or a reply to another call: nothing to read.
            self.counts["ignored_messages"] += 1
            return []
        ts = received_at
        sys_status = result.get("sys")
        if isinstance(sys_status, dict):
            unixtime = sys_status.get("unixtime")
            if isinstance(unixtime, int | float) and not isinstance(unixtime, bool):
                ts = self.when(float(unixtime), received_at)
        return self._components(topic, frame.get("src"), ts, received_at, result)

    def _components(
        self,
        topic: Gen2Topic,
        src: object,
        ts: float,
        received_at: float,
        components: Mapping[str, Any],
    ) -> list[Reading]:
        src_name = src if isinstance(src, str) and src else None
        out = MessageReadings(received_at)
        for component, status in components.items():
            if component == "ts":
                continue
            if not isinstance(status, dict):
                self.ignore_field(component.partition(":")[0])
                continue
            self._component(out, topic, src_name, ts, component, status)
        return out.as_list()

    def _component(
        self,
        out: MessageReadings,
        topic: Gen2Topic,
        src: str | None,
        ts: float,
        component: str,
        status: Mapping[str, Any],
    ) -> None:
        ctype, _, cid = component.partition(":")
        if ctype not in self._gen2_components:
            self.ignore_field(ctype)
            return
        channel = int(cid) if cid.isdecimal() else 0
        who = self._who(topic, src, channel)
        if ctype == "devicepower":
            external = status.get("external")
            present = external.get("present") if isinstance(external, dict) else None
            if isinstance(present, bool):
                self._remember_power(who.device, present)
        phased = ctype in ("em", "emdata")
        for label, raw in _flatten(ctype, status):
            rule = self.rules.get(label)
            battery = rule is not None and rule.metric == "battery"
            if battery and self._battery_ignored(who.device, label):
                continue
            target = who
            if phased:
                phase = _phase(label.split(".", 1)[1])
                if phase is not None:
                    target = self._who(topic, src, channel, phase)
            self.add(out, target, ts, label, raw, rule)
