"""Home Assistant MQTT discovery for inference results.

Retained configs under ``<prefix>/<component>/homeedge_<gateway>/<object>/config``
(`gateway.homeassistant.naming`: ids that include the gateway id, one HA device per homeedge
device ``via_device`` the gateway's). Every entity reads the gateway's event topic of its model,
keeps only its own source via the value template, and is available while the gateway's status
topic says ``online``: the caller passes that topic (the one the gateway's MQTT session really
publishes, `gateway.host.GatewayHost.status_topic`); without one the entities carry no
availability. Entities:

- alarm: ``binary_sensor`` (device_class smoke) per microphone, auto-off after a delay;
- keyword: ``event`` per microphone (event types lights_on, lights_off, stop);
- occupancy: ``binary_sensor`` (device_class occupancy) per room, on the gateway's device
  (a room is no device);
- sensor_anomaly: ``sensor`` (score 0..1) per sensor device.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.homeassistant import naming
from gateway.homeassistant.naming import DiscoveryConfig
from schemas.topics import gateway_events_topic

KEYWORDS = ["lights_on", "lights_off", "stop"]

__all__ = [
    "KEYWORDS",
    "DiscoveryConfig",
    "anomaly_config",
    "microphone_configs",
    "occupancy_config",
]


def _base(
    component: str,
    gateway_id: str,
    home: str,
    model: str,
    root: str,
    parts: tuple[str, ...],
    name: str,
    device: dict[str, Any],
    availability_topic: str | None,
) -> dict[str, Any]:
    return {
        "name": name,
        **naming.entity_ids(component, gateway_id, *parts),
        "state_topic": gateway_events_topic(home, model, root=root),
        "device": device,
        "origin": naming.origin(),
        **naming.availability(availability_topic),
    }


def _config(
    prefix: str, component: str, gateway_id: str, parts: tuple[str, ...], body: dict[str, Any]
) -> DiscoveryConfig:
    topic = naming.discovery_topic(prefix, component, gateway_id, *parts)
    return DiscoveryConfig(topic, json.dumps(body, sort_keys=True).encode())


def microphone_configs(
    home: str,
    room: str,
    device: str,
    *,
    gateway_id: str,
    root: str,
    prefix: str,
    off_delay_s: int,
    availability_topic: str | None,
) -> list[DiscoveryConfig]:
    """The alarm binary_sensor and the keyword event of one microphone."""
    dev = naming.device_block(gateway_id, home, room, device)
    alarm_parts = (home, device, "alarm")
    alarm = _base(
        "binary_sensor",
        gateway_id,
        home,
        "alarm",
        root,
        alarm_parts,
        "Smoke/CO alarm",
        dev,
        availability_topic,
    )
    alarm.update(
        device_class="smoke",
        value_template=(f"{{% if value_json.device == '{device}' %}}ON{{% endif %}}"),
        payload_on="ON",
        payload_off="OFF",
        off_delay=off_delay_s,
    )
    kw_parts = (home, device, "keyword")
    keyword = _base(
        "event",
        gateway_id,
        home,
        "keyword",
        root,
        kw_parts,
        "Voice command",
        dev,
        availability_topic,
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
        _config(prefix, "binary_sensor", gateway_id, alarm_parts, alarm),
        _config(prefix, "event", gateway_id, kw_parts, keyword),
    ]


def occupancy_config(
    home: str,
    room: str,
    *,
    gateway_id: str,
    root: str,
    prefix: str,
    availability_topic: str | None,
) -> DiscoveryConfig:
    parts = (home, "room", room, "occupancy")
    body = _base(
        "binary_sensor",
        gateway_id,
        home,
        "occupancy",
        root,
        parts,
        f"{room} occupancy",
        naming.gateway_device(gateway_id),
        availability_topic,
    )
    body.update(
        device_class="occupancy",
        value_template=(
            f"{{% if value_json.room == '{room}' %}}"
            "{{ 'ON' if value_json.label == 'occupied' else 'OFF' }}{% endif %}"
        ),
        payload_on="ON",
        payload_off="OFF",
    )
    return _config(prefix, "binary_sensor", gateway_id, parts, body)


def anomaly_config(
    home: str,
    room: str,
    device: str,
    *,
    gateway_id: str,
    root: str,
    prefix: str,
    availability_topic: str | None,
) -> DiscoveryConfig:
    parts = (home, device, "anomaly")
    body = _base(
        "sensor",
        gateway_id,
        home,
        "sensor_anomaly",
        root,
        parts,
        "Anomaly score",
        naming.device_block(gateway_id, home, room, device),
        availability_topic,
    )
    body.update(
        state_class="measurement",
        value_template=(
            f"{{% if value_json.device == '{device}' %}}{{{{ value_json.score | round(3) }}}}"
            "{% endif %}"
        ),
    )
    return _config(prefix, "sensor", gateway_id, parts, body)
