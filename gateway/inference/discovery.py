"""Home Assistant MQTT discovery for inference results.

Retained configs under ``<prefix>/<component>/<node>/<object>/config``; every entity reads the
gateway's event topic of its model, keeps only its own source via the value template, and is
available while the gateway's status topic says ``online``: the caller passes that topic (the
one the gateway's MQTT session really publishes, `gateway.host.GatewayHost.status_topic`,
keyed by the gateway id, not by a home); without one the entities carry no availability. Entities:

- alarm: ``binary_sensor`` (device_class smoke) per microphone, auto-off after a delay;
- keyword: ``event`` per microphone (event types lights_on, lights_off, stop);
- occupancy: ``binary_sensor`` (device_class occupancy) per room;
- sensor_anomaly: ``sensor`` (score 0..1) per sensor device.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from schemas.topics import gateway_events_topic

KEYWORDS = ["lights_on", "lights_off", "stop"]


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    topic: str
    payload: bytes


def _slug(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", value)


def _base(
    home: str, model: str, root: str, object_id: str, name: str, availability_topic: str | None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name,
        "unique_id": f"homeedge_{_slug(home)}_{object_id}",
        "object_id": f"homeedge_{_slug(home)}_{object_id}",
        "state_topic": gateway_events_topic(home, model, root=root),
        "device": {
            "identifiers": [f"homeedge_{_slug(home)}_gateway"],
            "name": f"homeedge gateway {home}",
            "manufacturer": "homeedge",
            "model": "edge gateway",
        },
    }
    if availability_topic is not None:
        body.update(
            availability_topic=availability_topic,
            payload_available="online",
            payload_not_available="offline",
        )
    return body


def _config(
    prefix: str, component: str, home: str, object_id: str, body: dict[str, Any]
) -> DiscoveryConfig:
    topic = f"{prefix}/{component}/homeedge_{_slug(home)}/{_slug(object_id)}/config"
    return DiscoveryConfig(topic, json.dumps(body, sort_keys=True).encode())


def microphone_configs(
    home: str,
    room: str,
    device: str,
    *,
    root: str,
    prefix: str,
    off_delay_s: int,
    availability_topic: str | None,
) -> list[DiscoveryConfig]:
    """The alarm binary_sensor and the keyword event of one microphone."""
    alarm_id = f"{room}_{device}_alarm"
    alarm = _base(
        home, "alarm", root, alarm_id, f"{room} {device} smoke/CO alarm", availability_topic
    )
    alarm.update(
        device_class="smoke",
        value_template=(f"{{% if value_json.device == '{device}' %}}ON{{% endif %}}"),
        payload_on="ON",
        payload_off="OFF",
        off_delay=off_delay_s,
    )
    kw_id = f"{room}_{device}_keyword"
    keyword = _base(
        home, "keyword", root, kw_id, f"{room} {device} voice command", availability_topic
    )
    keyword.update(
        event_types=KEYWORDS,
        value_template=(
            f"{{% if value_json.device == '{device}' %}}"
            "{{ {'event_type': value_json.label, 'score': value_json.score} | tojson }}"
            "{% endif %}"
        ),
    )
    return [
        _config(prefix, "binary_sensor", home, alarm_id, alarm),
        _config(prefix, "event", home, kw_id, keyword),
    ]


def occupancy_config(
    home: str, room: str, *, root: str, prefix: str, availability_topic: str | None
) -> DiscoveryConfig:
    object_id = f"{room}_occupancy"
    body = _base(home, "occupancy", root, object_id, f"{room} occupancy", availability_topic)
    body.update(
        device_class="occupancy",
        value_template=(
            f"{{% if value_json.room == '{room}' %}}"
            "{{ 'ON' if value_json.label == 'occupied' else 'OFF' }}{% endif %}"
        ),
        payload_on="ON",
        payload_off="OFF",
    )
    return _config(prefix, "binary_sensor", home, object_id, body)


def anomaly_config(
    home: str, room: str, device: str, *, root: str, prefix: str, availability_topic: str | None
) -> DiscoveryConfig:
    object_id = f"{room}_{device}_anomaly"
    name = f"{room} {device} anomaly score"
    body = _base(home, "sensor_anomaly", root, object_id, name, availability_topic)
    body.update(
        state_class="measurement",
        value_template=(
            f"{{% if value_json.device == '{device}' %}}{{{{ value_json.score | round(3) }}}}"
            "{% endif %}"
        ),
    )
    return _config(prefix, "sensor", home, object_id, body)
