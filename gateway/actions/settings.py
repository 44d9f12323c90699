"""`ActionsSettings`: the ``[actions]`` section of the gateway config (local actions on edge
events; `gateway.actions`).

Decisions recorded here:

- What a household needs works with no ``[actions]`` table at all: two built-in rules publish
  every alarm (``alarms``: at most one per room and label per minute, never silenced by quiet
  hours) and every sensor anomaly (``anomalies``: at most one per device and label per hour) on
  the gateway's local notify topic. ``notify_alarms``/``notify_anomalies`` turn them off.
- A webhook may leave the home, so it is opt-in (it needs a URL) and its body holds by default
  only the rule, the event's kind, label, room, time and score (`WEBHOOK_FIELDS`): no home or
  device name, never audio (an event carries none). ``fields`` can add ``home``, ``device`` or
  ``model`` for a receiver the owner trusts.
- Quiet hours silence notifications (notify topic and webhooks), never MQTT commands: a spoken
  "lights on" at 3 a.m. is meant. An alarm ignores quiet hours unless its rule says
  ``ignore_quiet_hours = false``; any other event observes them unless it says ``true``.
- Rate limits are per rule and, by default, per room and label (``scope = "room"``), so a
  smoke alarm in the kitchen cannot hold back a CO alarm in the garage.
"""

from __future__ import annotations

import datetime
import json
import zoneinfo
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from gateway.records import EventKind

Field_ = Literal["kind", "label", "room", "time", "ts", "score", "home", "device", "model"]
WEBHOOK_FIELDS: tuple[Field_, ...] = ("kind", "label", "room", "time", "score")
"""A webhook's default extra fields beyond ``id`` and ``rule``: no home or device names."""
LOCAL_FIELDS: tuple[Field_, ...] = get_args(Field_)
"""The notify topic's fields: it stays on the home's broker, so it names home and device too."""

Name = Annotated[str, Field(min_length=1, max_length=64)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QuietHours(_Section):
    """A daily span of local time (``start`` included, ``end`` not); it may wrap midnight."""

    start: datetime.time = Field(description='start, local time ("22:00" or 22:00:00)')
    end: datetime.time = Field(description='end, local time ("07:00"); before start wraps')

    @model_validator(mode="after")
    def _check_span(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError("start and end are the same time: the span would be empty")
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("use local times without an offset; actions.timezone sets the zone")
        return self

    def contains(self, moment: datetime.time) -> bool:
        if self.start < self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end


class RateLimit(_Section):
    """At most `count` firings of a rule in any `per_s` seconds, counted per `scope`."""

    count: int = Field(default=1, ge=1, le=10_000, description="firings allowed per window")
    per_s: float = Field(gt=0, le=7 * 86400, description="the window, seconds")
    scope: Literal["rule", "room", "device"] = Field(
        default="room",
        description="what is counted apart: the whole rule, each (home, room, label) or each "
        "(home, device, label)",
    )


class MqttCommand(_Section):
    """A message published on the gateway's MQTT session (QoS 1) when the rule fires."""

    topic: str = Field(
        min_length=1,
        max_length=1024,
        description="e.g. zigbee2mqtt/<friendly_name>/set, tasmota's cmnd/<name>/POWER",
    )
    payload: dict[str, Any] | str = Field(
        description='a table is sent as JSON ({state = "ON"} -> {"state":"ON"}); a string as is'
    )
    retain: bool = Field(default=False, description="publish retained")

    @field_validator("topic")
    @classmethod
    def _check_topic(cls, value: str) -> str:
        if any(c in value for c in "+#\0"):
            raise ValueError("a topic to publish on has no wildcards (+, #) or NUL")
        if value.startswith("$"):
            raise ValueError("topics starting with $ belong to the broker")
        return value

    @model_validator(mode="after")
    def _check_payload(self) -> MqttCommand:
        try:
            self.encoded()
        except (TypeError, ValueError) as exc:  # a TOML date or time has no JSON form
            raise ValueError(f"payload cannot be sent as JSON: {exc}") from None
        return self

    def encoded(self) -> bytes:
        if isinstance(self.payload, str):
            return self.payload.encode()
        return json.dumps(self.payload, separators=(",", ":"), sort_keys=True).encode()


class WebhookConfig(_Section):
    """An HTTP POST of the notification (JSON) when the rule fires; see the module docstring."""

    url: str = Field(description="http:// or https:// URL to POST the notification to")
    headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="extra request headers (e.g. Authorization); never logged",
    )
    fields: list[Field_] = Field(
        default_factory=lambda: list(WEBHOOK_FIELDS),
        description="event fields in the body besides id and rule; home, device and model "
        "name things in the home and are left out by default",
    )
    timeout_s: float = Field(default=10.0, gt=0, le=300, description="per request")
    max_attempts: int = Field(
        default=6, ge=1, le=100, description="tries per notification before it is given up"
    )
    retry_min_s: float = Field(default=1.0, gt=0, le=3600, description="first retry delay")
    retry_max_s: float = Field(
        default=300.0, gt=0, le=86400, description="retry delay cap (exponential, jittered)"
    )
    queue_size: int = Field(
        default=100,
        ge=1,
        le=100_000,
        description="notifications waiting for this webhook; when full the oldest is dropped "
        "and counted",
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"expected an http:// or https:// URL, got scheme {parts.scheme!r}")
        if not parts.hostname:
            raise ValueError("the URL has no host")
        try:
            parts.port  # noqa: B018  # raises on a bad port
        except ValueError as exc:
            raise ValueError(f"bad port: {exc}") from None
        return value

    @model_validator(mode="after")
    def _check_retry(self) -> WebhookConfig:
        if self.retry_max_s < self.retry_min_s:
            raise ValueError("retry_max_s is smaller than retry_min_s")
        return self


class Rule(_Section):
    """One rule: which events (every given selector must match) and what they do."""

    name: Name = Field(description="the rule's name: in notifications, logs and metrics")
    kinds: list[EventKind] | None = Field(
        default=None, description="event kinds: alarm, keyword, anomaly, occupancy, speech"
    )
    labels: list[Name] | None = Field(
        default=None,
        description="event labels, e.g. smoke_t3, co_t4, lights_on, lights_off, stop, anomaly "
        "(any string: a label a future model emits, such as level_change, is allowed)",
    )
    models: list[Name] | None = Field(default=None, description="model names (manifests)")
    homes: list[Name] | None = Field(default=None, description="homes; default any")
    rooms: list[Name] | None = Field(default=None, description="rooms; default any")
    devices: list[Name] | None = Field(
        default=None, description="source devices (a microphone, a sensor); default any"
    )
    min_score: float = Field(default=0.0, ge=0, le=1, description="ignore events scored below")
    mqtt: MqttCommand | None = Field(default=None, description="an MQTT command to publish")
    notify: bool = Field(default=False, description="publish on the gateway's notify topic")
    webhook: WebhookConfig | None = Field(default=None, description="an HTTP webhook to call")
    rate_limit: RateLimit | None = Field(default=None, description="default: none")
    quiet_hours: QuietHours | None = Field(
        default=None, description="this rule's quiet hours; default: actions.quiet_hours"
    )
    ignore_quiet_hours: bool | None = Field(
        default=None,
        description="notify during quiet hours; default: alarms do, other events do not",
    )

    @model_validator(mode="after")
    def _check_rule(self) -> Rule:
        if self.mqtt is None and not self.notify and self.webhook is None:
            raise ValueError("the rule does nothing: give it mqtt, notify = true or webhook")
        if self.kinds is None and self.labels is None and self.models is None:
            raise ValueError("the rule matches every event: give it kinds, labels or models")
        return self


ALARM_RULE = Rule(
    name="alarms",
    kinds=[EventKind.ALARM],
    notify=True,
    rate_limit=RateLimit(count=1, per_s=60.0, scope="room"),
)
ANOMALY_RULE = Rule(
    name="anomalies",
    kinds=[EventKind.ANOMALY],
    labels=["anomaly", "level_change"],
    notify=True,
    rate_limit=RateLimit(count=1, per_s=3600.0, scope="device"),
)


class ActionsSettings(_Section):
    """``[actions]``: events to MQTT commands and notifications; see the module docstring."""

    enabled: bool = Field(default=True, description="run local actions at all")
    timezone: str | None = Field(
        default=None,
        description="IANA zone of quiet hours and notification times (e.g. Europe/Berlin); "
        "default: the system's",
    )
    quiet_hours: QuietHours | None = Field(
        default=None, description="quiet hours of every rule that sets none; default: none"
    )
    notify_alarms: bool = Field(
        default=True, description="built-in rule 'alarms': every alarm on the notify topic"
    )
    notify_anomalies: bool = Field(
        default=True,
        description="built-in rule 'anomalies': sensor anomalies on the notify topic",
    )
    notify_fields: list[Field_] = Field(
        default_factory=lambda: list(LOCAL_FIELDS),
        description="event fields of notify-topic messages besides id and rule",
    )
    rules: list[Rule] = Field(default_factory=list, description="[[actions.rules]]")

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name: Europe/Berlin)") from None
        return value

    @model_validator(mode="after")
    def _check_names(self) -> ActionsSettings:
        seen: set[str] = set()
        for rule in self.all_rules():
            if rule.name in seen:
                raise ValueError(
                    f"two rules are named {rule.name!r} (the built-in ones are 'alarms' and "
                    "'anomalies' while notify_alarms/notify_anomalies are on)"
                )
            seen.add(rule.name)
        return self

    def all_rules(self) -> list[Rule]:
        """The built-in rules that are on, then the configured ones."""
        builtin = [ALARM_RULE] if self.notify_alarms else []
        if self.notify_anomalies:
            builtin.append(ANOMALY_RULE)
        return builtin + list(self.rules)

    def tz(self) -> datetime.tzinfo | None:
        """The configured zone; None means the system's local time."""
        return zoneinfo.ZoneInfo(self.timezone) if self.timezone else None
