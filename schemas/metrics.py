"""The metric registry: units and plausible ranges of the metrics homeedge knows.

An unknown metric name is still stored by the gateway; the registry only adds meaning (unit,
range, sensitivity) where it has some. The range is what the privacy filter uses to bound a
reading's influence when it adds noise, and the gateway's ingest check (`gateway.validation`)
rejects a reading outside it as ``out_of_range``: so a range is what real devices can report,
not what a room usually sees (a sensor's own limits, a house's largest supply, solar export).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

# \Z, not $: "$" also matches before a final newline.
METRIC_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}\Z")


class DeviceClass(StrEnum):
    """Kinds of device the simulators make and the gateway groups aggregates by."""

    THERMOSTAT = "thermostat"
    AIR_QUALITY = "air_quality"
    MOTION = "motion"
    DOOR = "door"
    PLUG = "plug"
    WEARABLE = "wearable"
    MICROPHONE = "microphone"
    GENERIC = "generic"


@dataclass(frozen=True, slots=True)
class Metric:
    """A known metric: unit, plausible range, and whether it is personal health data."""

    name: str
    unit: str
    low: float
    high: float
    description: str
    health: bool = False

    def plausible(self, value: float) -> bool:
        return self.low <= value <= self.high


_ALL = (
    Metric("temperature", "°C", -55.0, 125.0, "air temperature"),  # DS18B20/SHT limits
    Metric("humidity", "%", 0.0, 100.0, "relative humidity"),
    Metric("co2", "ppm", 0.0, 10000.0, "CO2 concentration"),
    Metric("light", "lx", 0.0, 200000.0, "illuminance"),  # direct sun: ~120 klx
    Metric("motion", "", 0.0, 1.0, "motion detected (0/1)"),
    # Negative: a meter exporting (solar); 50 kW: a 3-phase 63 A supply is ~44 kW.
    Metric("power", "W", -50000.0, 50000.0, "active power"),
    Metric("energy", "kWh", 0.0, 1000000.0, "cumulative energy"),
    Metric("heart_rate", "bpm", 20.0, 250.0, "heart rate", health=True),
    Metric("battery", "%", 0.0, 100.0, "battery level"),
    Metric("door", "", 0.0, 1.0, "door open (0/1)"),
)

METRICS: Mapping[str, Metric] = MappingProxyType({m.name: m for m in _ALL})


def metric(name: str) -> Metric | None:
    """The registry entry for `name`, or None for a metric homeedge does not know."""
    return METRICS.get(name)


def infer_device_class(device: str) -> DeviceClass:
    """Device class from a device id of the form ``<class>-<n>`` (the simulators' convention)."""
    head = device.rsplit("-", 1)[0].replace("-", "_").lower()
    try:
        return DeviceClass(head)
    except ValueError:
        return DeviceClass.GENERIC
