"""The metric registry: units and plausible ranges of the metrics homeedge knows.

An unknown metric name is still stored by the gateway; the registry only adds meaning (unit,
range, sensitivity) where it has some. The range is what the privacy filter uses to bound a
reading's influence when it adds noise, and the gateway's ingest check (`gateway.validation`)
rejects a reading outside it as ``out_of_range``: so a range is what real devices can report,
not what a room usually sees (a sensor's own limits, a house's largest supply, solar export).

A metric's `kind` says what its readings are. A ``measure`` is a measured quantity (a
temperature, a share): its window statistics describe the readings, and a window of few
readings would expose single values, so the batch contract's minimum window count applies. An
``event`` metric's readings are decisions, 1 for an event (an alarm heard, a command
recognised, a window flagged) and 0 for a decision that found none: its window aggregate is the
count of events (`schemas.batch_rules`), which is the statistic the cloud is meant to learn, so
one alarm is released as a count of 1 and the zero decisions stay at home.

`default_policy` is the metric's uplink policy unless a home's ``[privacy] policies`` names it
(`gateway.sync.settings`): ``local`` for what would tell the cloud more than the household
expects (room occupancy says when the home is empty).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Literal

# \Z, not $: "$" also matches before a final newline.
METRIC_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}\Z")


class MetricKind(StrEnum):
    """What a metric's readings are (see the module docstring)."""

    MEASURE = "measure"
    EVENT = "event"


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
    """A known metric: unit, plausible range, whether it is personal health data, what its
    readings are (`kind`) and its uplink policy unless a home's config names one."""

    name: str
    unit: str
    low: float
    high: float
    description: str
    health: bool = False
    kind: MetricKind = MetricKind.MEASURE
    default_policy: Literal["aggregate", "local"] = "aggregate"  # health: noised, always

    def plausible(self, value: float) -> bool:
        return self.low <= value <= self.high


EVENT = MetricKind.EVENT

_ALL = (
    Metric("temperature", "°C", -55.0, 125.0, "air temperature"),  # DS18B20/SHT limits
    Metric("humidity", "%", 0.0, 100.0, "relative humidity"),
    Metric("co2", "ppm", 0.0, 10000.0, "CO2 concentration"),
    Metric("light", "lx", 0.0, 200000.0, "illuminance"),  # direct sun: ~120 klx
    Metric("motion", "", 0.0, 1.0, "motion detected (0/1)"),
    # Negative: a meter exporting (solar); 50 kW: a 3-phase 63 A supply is ~44 kW.
    Metric("power", "W", -50000.0, 50000.0, "active power"),
    Metric("energy", "kWh", 0.0, 1000000.0, "cumulative energy"),
    # Tasmota's ENERGY day counters (reset at midnight): kWh like energy, but not cumulative.
    Metric("energy_today", "kWh", 0.0, 1000000.0, "energy used since midnight"),
    Metric("energy_yesterday", "kWh", 0.0, 1000000.0, "energy used yesterday"),
    Metric("heart_rate", "bpm", 20.0, 250.0, "heart rate", health=True),
    Metric("battery", "%", 0.0, 100.0, "battery level"),
    # A battery-powered device's cell voltage (Zigbee2MQTT reports it in mV): never "voltage".
    Metric("battery_voltage", "V", 0.0, 100.0, "a device's battery voltage"),
    Metric("door", "", 0.0, 1.0, "door open (0/1)"),
    # Barometric: the lowest and highest sea-level pressures recorded are ~870 and ~1084 hPa;
    # a station pressure in the mountains reads lower.
    Metric("pressure", "hPa", 300.0, 1100.0, "air pressure"),
    Metric("voltage", "V", 0.0, 500.0, "mains voltage (RMS)"),  # a device's battery: not this
    # 1000 A: a Shelly Pro 3EM-400 measures up to 400 A per phase (its page's current_limit_a
    # "120A or 400A for Pro3EM400"), and a three-phase meter's total_current sums the phases.
    Metric("current", "A", 0.0, 1000.0, "mains current (RMS)"),
    Metric("apparent_power", "VA", 0.0, 50000.0, "apparent power"),
    Metric("reactive_power", "var", -50000.0, 50000.0, "reactive power"),
    Metric("power_factor", "", -1.0, 1.0, "power factor"),
    Metric("frequency", "Hz", 0.0, 100.0, "mains frequency"),
    Metric("voc", "ppb", 0.0, 100000.0, "volatile organic compounds"),
    Metric("formaldehyde", "µg/m³", 0.0, 10000.0, "formaldehyde concentration"),
    Metric("pm1", "µg/m³", 0.0, 2000.0, "particulate matter < 1 µm"),
    Metric("pm25", "µg/m³", 0.0, 2000.0, "particulate matter < 2.5 µm"),
    Metric("pm10", "µg/m³", 0.0, 2000.0, "particulate matter < 10 µm"),
    Metric("noise", "dB", 0.0, 150.0, "sound level"),
    # Cumulative meter readings, like energy.
    Metric("water", "m³", 0.0, 1000000.0, "cumulative water volume"),
    Metric("gas", "m³", 0.0, 1000000.0, "cumulative gas volume"),
    Metric("device_temperature", "°C", -55.0, 150.0, "a device's own (chip) temperature"),
    # The gateway's own inference results (gateway.inference.results). They say what happened
    # in a room, never who or what was said. Alarm, keyword and anomaly are events: alarm and
    # keyword write one reading (1) per detection, anomaly one flag (1 or 0) per scored sensor
    # window, and only the count of events leaves the home. Speech is a measured share, one
    # reading per summary (10 s by default). Occupancy stays local unless a home opts in.
    Metric("inference_alarm", "", 0.0, 1.0, "smoke/CO alarm heard (1 per alarm)", kind=EVENT),
    Metric("inference_keyword", "", 0.0, 1.0, "voice command (1 per command)", kind=EVENT),
    Metric("inference_speech", "", 0.0, 1.0, "share of audio blocks with speech in a summary"),
    Metric("inference_anomaly", "", 0.0, 1.0, "sensor window anomalous (1, else 0)", kind=EVENT),
    Metric("inference_occupancy", "", 0.0, 1.0, "room occupied (0/1)", default_policy="local"),
)

METRICS: Mapping[str, Metric] = MappingProxyType({m.name: m for m in _ALL})


def metric(name: str) -> Metric | None:
    """The registry entry for `name`, or None for a metric homeedge does not know."""
    return METRICS.get(name)


def is_event(name: str) -> bool:
    """True for an event metric (`MetricKind.EVENT`): its aggregate is a count of events."""
    known = METRICS.get(name)
    return known is not None and known.kind is MetricKind.EVENT


def infer_device_class(device: str) -> DeviceClass:
    """Device class from a device id of the form ``<class>-<n>`` (the simulators' convention)."""
    head = device.rsplit("-", 1)[0].replace("-", "_").lower()
    try:
        return DeviceClass(head)
    except ValueError:
        return DeviceClass.GENERIC
