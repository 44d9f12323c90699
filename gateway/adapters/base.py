"""What every format adapter shares: identity mapping, value coercion, timestamps, counting.

An adapter turns one MQTT message of a foreign ecosystem into homeedge `Reading`s (possibly none)
or one `DeadLetter`. The gateway calls ``adapter.adapt(topic, payload, received_at)`` for topics
matching ``adapter.filters``; that call never raises for bad input.

- Identity: a foreign device name (friendly name, Tasmota topic, Shelly id, entity id) maps to a
  homeedge device id and room through the ecosystem's ``devices`` table; unmapped names are
  sanitized into the topic segment charset and land in the default room.
- Fields: each adapter has a built-in table of foreign field -> `FieldRule` (metric, how to read
  the value, unit it comes in), merged with the ecosystem's ``field_metrics``/``field_units``.
  Fields in no rule are ignored and counted (``counts["ignored_fields"]`` and, per field name,
  ``ignored_fields``), so an operator can see what a device sends that homeedge drops.
- Values, read leniently but exactly: a field's value is a finite float within +-1e15, a
  JSON number or a numeric string (``"37.00"``, ``" 21.5 "``, as older Zigbee2MQTT and some
  Tasmota sensors send); where the rule says the field is binary, booleans, ``1``/``0`` and the
  ecosystems' words (on/off, open/close(d), true/false, detected/clear, yes/no) become 1/0. A
  mapped field whose value does not fit (``"warm"``, ``"nan"``, a number where a word is
  expected, a unit that cannot be converted) is *bad*: it is skipped and counted
  (``counts["bad_fields"]`` and, per field name, ``bad_fields``), and the message's other
  fields are still stored. Only a message that yields no reading at all because of its bad
  fields becomes a dead letter (with the first problem: ``adapter_validation`` or
  ``adapter_unit``), so its payload can be inspected and nothing else is lost. Whole-message
  problems stay dead letters: undecodable JSON is ``adapter_invalid_json``, JSON nested deeper
  than `schemas.json_input.MAX_JSON_DEPTH` (32) is ``adapter_too_deep``, too large a payload
  is ``adapter_oversized``, a payload of the wrong shape (a list where a state object belongs)
  is ``adapter_validation``. The decoder then checks each reading's time and value
  (`gateway.validation`: ``ts_out_of_range``, ``out_of_range``), keeping the message's other
  readings.
- Time: the payload's own timestamp where the ecosystem documents one and it parses to a time in
  [2000, 2100); otherwise the receive time (a device clock that is not set is counted as
  ``bad_time``).
- Availability (online/offline topics) is not a reading: the call returns it in
  ``Adapted.availability`` (counted), for the writer to store in ``devices``.

Adapters keep plain counters and are meant to be called by one task at a time.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import Enum
from typing import Any, ClassVar, Generic, TypeVar
from zoneinfo import ZoneInfo

import msgspec

from gateway.adapters.settings import AdapterSettings, EcosystemSettings
from gateway.adapters.units import UnitError, to_metric_unit
from gateway.ingest import Adapted, AvailabilityChange
from gateway.records import DeadLetter, Reading
from schemas.json_input import decode_error_detail, nesting_problem
from schemas.telemetry import TS_MAX, TS_MIN

log = logging.getLogger(__name__)

E = TypeVar("E", bound=EcosystemSettings)

AdaptResult = Adapted | DeadLetter


MAX_ABS_VALUE = 1e15
# Distinct ignored field names remembered per adapter; a device inventing names cannot grow it.
MAX_IGNORED_NAMES = 256
_OTHER = "<other>"

_INVALID_CHARS = re.compile(r"[^A-Za-z0-9_.\-]+")
_PLAIN_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\Z")
_TRUE_WORDS = frozenset({"on", "true", "open", "opened", "detected", "yes", "online", "1"})
_FALSE_WORDS = frozenset({"off", "false", "close", "closed", "clear", "no", "offline", "0"})
# Words an INVERTED field may invert: they say true/false, not what the thing is. A word like
# "open" states the door's state itself, so inverting it would store the opposite (review2 #8).
_INVERTIBLE_WORDS = frozenset({"on", "off", "true", "false", "yes", "no", "1", "0"})
# Words that state an opening's state directly: stored as said, never inverted.
_STATE_WORDS = {"open": 1.0, "opened": 1.0, "close": 0.0, "closed": 0.0}


def _count_name(counter: Counter[str], name: str) -> None:
    if name in counter or len(counter) < MAX_IGNORED_NAMES:
        counter[name] += 1
    else:
        counter[_OTHER] += 1


class AdapterError(Exception):
    """Bad input: becomes a dead letter with `reason` and `detail`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ValueKind(Enum):
    """How a field's raw value becomes a float."""

    NUMBER = "number"  # a JSON number (or a numeric plain-text payload)
    BINARY = "binary"  # true/false, on/off, open/close... -> 1/0
    INVERTED = "inverted"  # binary, inverted (Zigbee "contact": false means the door is open)
    AUTO = "auto"  # whatever parses: numbers as they are, binary words as 1/0


@dataclass(frozen=True, slots=True)
class FieldRule:
    """How one foreign field becomes a metric."""

    metric: str
    kind: ValueKind = ValueKind.NUMBER
    unit: str | None = None  # unit the ecosystem reports the field in (None: the metric's own)
    unless: str | None = None  # ignore this field when that (better) field is in the payload


def merge_rules(builtin: Mapping[str, FieldRule], eco: EcosystemSettings) -> dict[str, FieldRule]:
    """The built-in table with the ecosystem's ``field_metrics`` and ``field_units`` applied."""
    rules = dict(builtin)
    for name, metric_name in eco.field_metrics.items():
        if not metric_name:
            rules.pop(name, None)
        elif name in rules:
            rules[name] = replace(rules[name], metric=metric_name)
        else:
            rules[name] = FieldRule(metric_name, ValueKind.AUTO)
    for name, unit in eco.field_units.items():
        if name in rules:
            rules[name] = replace(rules[name], unit=unit)
    return rules


@dataclass(frozen=True, slots=True)
class Identity:
    """Where a foreign device's readings go."""

    home: str
    room: str
    device: str


# Called for every message with the same few names: memoized (bounded) off the MQTT hot path.
@functools.lru_cache(maxsize=4096)
def sanitize_device(name: str) -> str:
    """A device id in the topic segment charset ([A-Za-z0-9_.-], 1-64, alphanumeric first).

    Runs of other characters (the ``/`` of a Zigbee2MQTT friendly name, spaces) become one
    ``-``. Names that would be longer than 64 characters keep a hash of the full name so two long
    names sharing a prefix stay apart.
    """
    cleaned = _INVALID_CHARS.sub("-", name).lstrip("-._").rstrip("-")
    if not cleaned:
        return "device-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    if len(cleaned) > 64:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        cleaned = cleaned[:55].rstrip("-._") + "-" + digest
    return cleaned


def decode_json(payload: bytes) -> Any:
    """The JSON value of `payload`; `AdapterError` ``adapter_invalid_json`` otherwise, or
    ``adapter_too_deep`` when it nests deeper than `MAX_JSON_DEPTH`."""
    too_deep = nesting_problem(payload)
    if too_deep is not None:
        raise AdapterError("adapter_too_deep", too_deep)
    try:
        return msgspec.json.decode(payload)
    except msgspec.DecodeError as exc:
        raise AdapterError("adapter_invalid_json", decode_error_detail(payload, str(exc))) from None


def decode_text(payload: bytes) -> str:
    """A plain-text payload, stripped; `AdapterError` when it is not UTF-8."""
    try:
        return payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise AdapterError("adapter_validation", "payload is not UTF-8 text") from None


def plain_value(text: str) -> float | str:
    """A plain-text payload's value: a float when it is a decimal number, else the text."""
    if _PLAIN_NUMBER.match(text):
        return float(text)
    return text


def parse_iso_time(text: str, naive_zone: ZoneInfo | None) -> float | None:
    """Unix seconds of an ISO 8601 time; a time without offset needs `naive_zone`, else None."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        if naive_zone is None:
            return None
        parsed = parsed.replace(tzinfo=naive_zone)
    return parsed.timestamp()


def _short(raw: Any) -> str:
    text = repr(raw)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(raw: Any) -> float | None:
    """A JSON number or a numeric string as a float; None otherwise (booleans included)."""
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    if isinstance(raw, str):
        text = raw.strip()
        if _PLAIN_NUMBER.match(text):
            return float(text)
    return None


def coerce(raw: Any, kind: ValueKind, label: str) -> float:
    """`raw` as a finite float according to `kind`; `AdapterError` when it does not fit.

    NUMBER: a JSON number or a numeric string. BINARY: a boolean, 0/1 (number or string) or an
    on/off word. INVERTED: a boolean, 0/1 or a true/false, on/off, yes/no word, inverted; the
    words open/opened (1) and close/closed (0) are taken as said, never inverted. AUTO: a
    number, a numeric string or an on/off word.
    """
    value: float | None = None
    if kind is ValueKind.NUMBER:
        value = _number(raw)
    else:
        invert = kind is ValueKind.INVERTED
        if isinstance(raw, bool):
            value = 1.0 if raw else 0.0
        elif isinstance(raw, str):
            word = raw.strip().lower()
            if word in _STATE_WORDS:
                value, invert = _STATE_WORDS[word], False
            elif not invert or word in _INVERTIBLE_WORDS:
                # Other words (detected, online, ...) are refused on an INVERTED field: whether
                # they mean the inverted or the plain state is a guess.
                value = 1.0 if word in _TRUE_WORDS else 0.0 if word in _FALSE_WORDS else None
            if value is None and kind is ValueKind.AUTO:
                value = _number(raw)
        elif isinstance(raw, int | float) and (kind is ValueKind.AUTO or raw in (0, 1)):
            value = float(raw)
        if value is not None and invert:
            value = 1.0 - value
    if value is None:
        expected = "a number" if kind is ValueKind.NUMBER else "a binary value"
        raise AdapterError("adapter_validation", f"{label}: expected {expected}, got {_short(raw)}")
    if not math.isfinite(value) or abs(value) > MAX_ABS_VALUE:
        raise AdapterError("adapter_validation", f"{label}: {value!r} is out of range")
    return value


@dataclass(slots=True)
class MessageReadings:
    """The readings one message yields, one per (device, metric)."""

    received_at: float
    readings: dict[tuple[str, str], Reading] = field(default_factory=dict)

    def as_list(self) -> list[Reading]:
        return list(self.readings.values())


class BaseAdapter(ABC, Generic[E]):
    """One ecosystem's adapter, configured by the `AdapterSettings` section named `name`.

    Subclasses set `name` and `builtin_rules` and implement `configure`, `filters` and `_adapt`.
    """

    name: ClassVar[str]
    builtin_rules: ClassVar[Mapping[str, FieldRule]]

    def __init__(self, settings: AdapterSettings) -> None:
        eco: E = getattr(settings, self.name)
        self.home = settings.home
        self.default_room = eco.default_room or settings.default_room
        self.max_payload_bytes = settings.max_payload_bytes
        self.devices = eco.devices
        self.rules = merge_rules(self.default_rules(eco), eco)
        # Availability reported during the current `adapt` call (one call at a time).
        self._changes: list[AvailabilityChange] = []
        self.counts: Counter[str] = Counter()
        self.ignored_fields: Counter[str] = Counter()
        self.bad_fields: Counter[str] = Counter()
        # The first bad field of the current `adapt` call: the dead letter's reason when the
        # message yields no reading at all.
        self._first_bad: AdapterError | None = None
        self.configure(eco)

    def default_rules(self, eco: E) -> Mapping[str, FieldRule]:
        """The built-in field table before ``field_metrics``/``field_units`` apply."""
        return self.builtin_rules

    @abstractmethod
    def configure(self, eco: E) -> None:
        """Take the ecosystem's own settings (topics, units, time zone...)."""

    @property
    @abstractmethod
    def filters(self) -> tuple[str, ...]:
        """The MQTT topic filters this adapter needs to be subscribed to."""

    @property
    def yielding_filters(self) -> tuple[str, ...]:
        """Those of `filters` that only guess a topic is ours: an exact topic another adapter
        claims at run time is taken from them (`gateway.ingest.AdapterTable`). None by default."""
        return ()

    def payload_limit(self, topic: str) -> int:
        """The largest payload accepted on `topic` (``max_payload_bytes`` unless an ecosystem's
        metadata topic is known to be larger)."""
        return self.max_payload_bytes

    @abstractmethod
    def _adapt(self, topic: str, payload: bytes, received_at: float) -> list[Reading]:
        """Readings of one message; raise `AdapterError` for bad input."""

    def adapt(self, topic: str, payload: bytes, received_at: float) -> AdaptResult:
        """Readings of one message (possibly none) and the availability it reported, or a dead
        letter; never raises on input."""
        self.counts["messages"] += 1
        self._changes = []
        self._first_bad = None
        try:
            limit = self.payload_limit(topic)
            if len(payload) > limit:
                raise AdapterError("adapter_oversized", f"{len(payload)} bytes > limit {limit}")
            readings = self._adapt(topic, payload, received_at)
            if not readings and self._first_bad is not None:
                # Every mapped field was unusable: keep the payload for inspection.
                raise self._first_bad
        except AdapterError as exc:
            self.counts["dead_letters"] += 1
            log.debug("%s: dead letter on %s: %s", self.name, topic, exc)
            return DeadLetter(topic, payload, exc.reason, exc.detail, received_at)
        self.counts["readings"] += len(readings)
        return Adapted(readings, self._changes)

    # -- identity ---------------------------------------------------------------------------

    def identity(self, keys: Iterable[str], fallback: str) -> Identity:
        """The first of `keys` found in ``devices``, else `fallback` sanitized, default room."""
        for key in keys:
            mapping = self.devices.get(key)
            if mapping is not None:
                return Identity(
                    self.home,
                    mapping.room or self.default_room,
                    mapping.device or sanitize_device(fallback),
                )
        return Identity(self.home, self.default_room, sanitize_device(fallback))

    def channel_identity(self, base: str, channel: int) -> Identity:
        """Identity of channel `channel` of a multi-channel device (relays, meters).

        Channel 0 is the device itself (``<base>``); channel n > 0 is ``<base>-ch<n>``. Both can be
        mapped explicitly as ``<base>:<n>``, channel 0 also as ``<base>``.
        """
        keys = [f"{base}:{channel}", base] if channel == 0 else [f"{base}:{channel}"]
        return self.identity(keys, base if channel == 0 else f"{base}-ch{channel}")

    # -- counting ---------------------------------------------------------------------------

    def ignore_field(self, name: str) -> None:
        """Count a field no rule maps (by name, bounded)."""
        self.counts["ignored_fields"] += 1
        _count_name(self.ignored_fields, name)

    def bad_field(self, name: str, error: AdapterError) -> None:
        """Count a mapped field whose value is unusable (by name, bounded); the message's other
        fields are kept."""
        self.counts["bad_fields"] += 1
        _count_name(self.bad_fields, name)
        if self._first_bad is None:
            self._first_bad = error
        log.debug("%s: bad field %s", self.name, error.detail)

    def ignore_topic(self) -> list[Reading]:
        self.counts["ignored_topics"] += 1
        return []

    # -- values -----------------------------------------------------------------------------

    def when(self, candidate: float | None, received_at: float) -> float:
        """The payload's time when it is plausible, else the receive time."""
        if candidate is None:
            return received_at
        if not math.isfinite(candidate) or not TS_MIN <= candidate < TS_MAX:
            self.counts["bad_time"] += 1
            return received_at
        return candidate

    def add(
        self,
        out: MessageReadings,
        who: Identity,
        ts: float,
        label: str,
        raw: Any,
        rule: FieldRule | None,
        *,
        unit: str | None = None,
    ) -> None:
        """Add the reading of field `label` (value `raw`) to `out`, or ignore and count it.

        `unit` is a unit the payload itself declares; it wins over the rule's unit.
        """
        if rule is None or isinstance(raw, list | dict):
            self.ignore_field(label)
            return
        if raw is None:
            # Zigbee2MQTT and Home Assistant publish null for "not known yet".
            self.counts["null_values"] += 1
            return
        try:
            value = coerce(raw, rule.kind, label)
            try:
                value = to_metric_unit(value, unit or rule.unit, rule.metric)
            except UnitError as exc:
                raise AdapterError("adapter_unit", f"{label}: {exc}") from None
            if not math.isfinite(value) or abs(value) > MAX_ABS_VALUE:
                raise AdapterError("adapter_validation", f"{label}: {value!r} is out of range")
        except AdapterError as exc:
            self.bad_field(label, exc)
            return
        key = (who.device, rule.metric)
        if key in out.readings:
            # Two fields of one message claim the same metric for one device (e.g. two Tasmota
            # probes mapped onto one device): the first wins.
            self.counts["duplicate_fields"] += 1
            self.ignore_field(label)
            return
        out.readings[key] = Reading(
            home=who.home,
            room=who.room,
            device=who.device,
            metric=rule.metric,
            ts=ts,
            value=value,
            seq=None,
            received_at=out.received_at,
        )

    def add_fields(
        self,
        out: MessageReadings,
        who: Identity,
        ts: float,
        fields: Mapping[str, Any],
        *,
        units: Mapping[str, str] | None = None,
    ) -> None:
        """`add` every field of a flat object, honouring each rule's ``unless``."""
        for label, raw in fields.items():
            rule = self.rules.get(label)
            if rule is not None and rule.unless is not None and rule.unless in fields:
                self.ignore_field(label)
                continue
            self.add(out, who, ts, label, raw, rule, unit=(units or {}).get(label))

    def availability(self, who: Identity, online: bool, ts: float) -> list[Reading]:
        """Report an availability change (returned with the call's result); yields no readings."""
        self.counts["availability"] += 1
        self._changes.append(
            AvailabilityChange(self.name, who.home, who.room, who.device, online, ts)
        )
        return []
