"""The Home Assistant entity of each stored metric, and the configs announcing it.

`ENTITY_OF` maps the registry's metrics (`schemas.metrics`) to HA's platform, device class,
state class and display name; the unit is the registry's, so HA shows what the gateway stores
(HA's sensor docs list the units each device class accepts; the registry's are among them).
Metrics not in the table (health data such as ``heart_rate``, the ``inference_*`` results,
which `gateway.inference.discovery` announces as their own entities, and unknown names) get
no entity.

A sensor's state topic carries the value as a plain number (``21.5``); a binary sensor's
carries ``1`` or ``0`` (``payload_on``/``payload_off``), as the gateway stores motion and
door. Both are published by `gateway.homeassistant.states` on
``<root>/<gateway_id>/gateway/states/<home>/<device>/<metric>``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from gateway.homeassistant import naming
from gateway.homeassistant.naming import DiscoveryConfig
from schemas.metrics import METRICS

Component = Literal["sensor", "binary_sensor"]


@dataclass(frozen=True, slots=True)
class EntitySpec:
    component: Component
    name: str
    device_class: str | None = None
    state_class: str | None = "measurement"
    diagnostic: bool = False


def _s(name: str, device_class: str | None, state_class: str = "measurement") -> EntitySpec:
    return EntitySpec("sensor", name, device_class, state_class)


ENTITY_OF: dict[str, EntitySpec] = {
    "temperature": _s("Temperature", "temperature"),
    "humidity": _s("Humidity", "humidity"),
    "co2": _s("CO2", "carbon_dioxide"),
    "light": _s("Illuminance", "illuminance"),
    "power": _s("Power", "power"),
    "energy": _s("Energy", "energy", "total_increasing"),
    # Reset at midnight: total_increasing takes a drop as a new cycle.
    "energy_today": _s("Energy today", "energy", "total_increasing"),
    "energy_yesterday": _s("Energy yesterday", "energy", "total"),
    "battery": EntitySpec("sensor", "Battery", "battery", "measurement", diagnostic=True),
    "battery_voltage": EntitySpec(
        "sensor", "Battery voltage", "voltage", "measurement", diagnostic=True
    ),
    "pressure": _s("Pressure", "atmospheric_pressure"),
    "voltage": _s("Voltage", "voltage"),
    "current": _s("Current", "current"),
    "apparent_power": _s("Apparent power", "apparent_power"),
    "reactive_power": _s("Reactive power", "reactive_power"),
    "power_factor": _s("Power factor", "power_factor"),
    "frequency": _s("Frequency", "frequency"),
    "voc": _s("VOC", "volatile_organic_compounds_parts"),
    "formaldehyde": _s("Formaldehyde", None),
    "pm1": _s("PM1", "pm1"),
    "pm25": _s("PM2.5", "pm25"),
    "pm10": _s("PM10", "pm10"),
    "noise": _s("Noise", "sound_pressure"),
    "water": _s("Water", "water", "total_increasing"),
    "gas": _s("Gas", "gas", "total_increasing"),
    "device_temperature": EntitySpec(
        "sensor", "Device temperature", "temperature", "measurement", diagnostic=True
    ),
    "motion": EntitySpec("binary_sensor", "Motion", "motion", None),
    "door": EntitySpec("binary_sensor", "Door", "door", None),
}


def state_payload(metric: str, value: float) -> bytes:
    """What the state topic carries: ``1``/``0`` for a binary sensor, else the number."""
    spec = ENTITY_OF.get(metric)
    if spec is not None and spec.component == "binary_sensor":
        return b"1" if value >= 0.5 else b"0"
    return f"{value:.10g}".encode()


def metric_config(
    *,
    gateway_id: str,
    home: str,
    room: str,
    device: str,
    metric: str,
    prefix: str,
    state_topic: str,
    status_topic: str | None,
    expire_after_s: int | None = None,
) -> DiscoveryConfig | None:
    """The discovery config of one device's metric, or None when the metric has no entity."""
    spec = ENTITY_OF.get(metric)
    known = METRICS.get(metric)
    if spec is None or known is None:
        return None
    body: dict[str, Any] = {
        "name": spec.name,
        **naming.entity_ids(spec.component, gateway_id, home, device, metric),
        "state_topic": state_topic,
        "device": naming.device_block(gateway_id, home, room, device),
        "origin": naming.origin(),
        "qos": 1,
        **naming.availability(status_topic),
    }
    if spec.device_class is not None:
        body["device_class"] = spec.device_class
    if spec.diagnostic:
        body["entity_category"] = "diagnostic"
    if expire_after_s:
        body["expire_after"] = expire_after_s
    if spec.component == "binary_sensor":
        body.update(payload_on="1", payload_off="0")
    else:
        if spec.state_class is not None:
            body["state_class"] = spec.state_class
        if known.unit:
            body["unit_of_measurement"] = known.unit
    topic = naming.discovery_topic(prefix, spec.component, gateway_id, home, device, metric)
    return DiscoveryConfig(topic, json.dumps(body, sort_keys=True).encode())


def gateway_config(*, gateway_id: str, prefix: str, status_topic: str) -> DiscoveryConfig:
    """The gateway's own device, through its connectivity entity: the status topic itself
    (``online``/``offline``, retained, the last will), so it has no availability of its own."""
    body: dict[str, Any] = {
        "name": "Status",
        **naming.entity_ids("binary_sensor", gateway_id, "status"),
        "state_topic": status_topic,
        "device_class": "connectivity",
        "entity_category": "diagnostic",
        "payload_on": "online",
        "payload_off": "offline",
        "qos": 1,
        "device": naming.gateway_device(gateway_id),
        "origin": naming.origin(),
    }
    topic = naming.discovery_topic(prefix, "binary_sensor", gateway_id, "status")
    return DiscoveryConfig(topic, json.dumps(body, sort_keys=True).encode())
