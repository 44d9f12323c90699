"""Units foreign ecosystems report in, and conversion to the metric registry's units.

Only conversions that a documented payload needs are here: °F and K to °C (Tasmota ``TempUnit``,
Home Assistant ``unit_of_measurement``, Shelly Gen1 H&T set to °F), Wh, watt-minutes and MWh to
kWh (Shelly Gen2 ``aenergy.total``, Shelly Gen1 ``relay/<n>/energy``, Shelly EM, Home Assistant),
kW to W, and the pressure, electrical, particulate and volume units of the registry's newer
metrics (Pa/kPa/mmHg/inHg to hPa, mV to V, mA to A, mg/m³ to µg/m³, ppm to ppb, L/ft³/US gal to m³).
A unit homeedge cannot convert is an error, never a silently wrong number.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType

from schemas.metrics import metric

# Spellings seen in the wild -> one canonical spelling.
_ALIASES = MappingProxyType(
    {
        "°C": "°C",
        "C": "°C",
        "℃": "°C",
        "degC": "°C",
        "°F": "°F",
        "F": "°F",
        "℉": "°F",
        "degF": "°F",
        "K": "K",
        "W": "W",
        "kW": "kW",
        "Wh": "Wh",
        "kWh": "kWh",
        "MWh": "MWh",
        "Wmin": "Wmin",
        "%": "%",
        "lx": "lx",
        "lux": "lx",
        "ppm": "ppm",
        "bpm": "bpm",
        "hPa": "hPa",
        "mbar": "hPa",
        "Pa": "Pa",
        "kPa": "kPa",
        "mmHg": "mmHg",
        "inHg": "inHg",
        "V": "V",
        "mV": "mV",
        "A": "A",
        "mA": "mA",
        "VA": "VA",
        "var": "var",
        "VAr": "var",
        "kVA": "kVA",
        "Hz": "Hz",
        "ppb": "ppb",
        "µg/m³": "µg/m³",
        "μg/m³": "µg/m³",  # Greek mu, as Home Assistant writes it
        "ug/m3": "µg/m³",
        "µg/m3": "µg/m³",
        "mg/m³": "mg/m³",
        "mg/m3": "mg/m³",
        "dB": "dB",
        "dBA": "dB",
        "dB(A)": "dB",
        "m³": "m³",
        "m3": "m³",
        "L": "L",
        "l": "L",
        "ft³": "ft³",
        "ft3": "ft³",
        "gal": "gal",
        "": "",
    }
)

_CONVERSIONS: MappingProxyType[tuple[str, str], Callable[[float], float]] = MappingProxyType(
    {
        ("°F", "°C"): lambda v: (v - 32.0) * 5.0 / 9.0,
        ("K", "°C"): lambda v: v - 273.15,
        ("Wh", "kWh"): lambda v: v / 1000.0,
        ("Wmin", "kWh"): lambda v: v / 60000.0,
        ("MWh", "kWh"): lambda v: v * 1000.0,
        ("kW", "W"): lambda v: v * 1000.0,
        ("Pa", "hPa"): lambda v: v / 100.0,
        ("kPa", "hPa"): lambda v: v * 10.0,
        ("mmHg", "hPa"): lambda v: v * 1.333223684,
        ("inHg", "hPa"): lambda v: v * 33.86388158,
        ("mV", "V"): lambda v: v / 1000.0,
        ("mA", "A"): lambda v: v / 1000.0,
        ("kVA", "VA"): lambda v: v * 1000.0,
        ("mg/m³", "µg/m³"): lambda v: v * 1000.0,
        ("ppm", "ppb"): lambda v: v * 1000.0,  # a VOC sensor reporting ppm (Zigbee2MQTT)
        ("L", "m³"): lambda v: v / 1000.0,
        ("ft³", "m³"): lambda v: v * 0.028316846592,
        ("gal", "m³"): lambda v: v * 0.003785411784,  # US gallon, as Home Assistant's
        ("%", ""): lambda v: v / 100.0,  # Home Assistant's power_factor in %, ours a ratio
    }
)


class UnitError(ValueError):
    """A value in a unit that cannot be converted to its metric's unit."""


def normalize_unit(unit: str) -> str | None:
    """The canonical spelling of `unit`, or None when homeedge does not know it."""
    return _ALIASES.get(unit.strip())


def to_metric_unit(value: float, unit: str | None, metric_name: str) -> float:
    """`value` (in `unit`, None meaning "already right") in the registry unit of `metric_name`.

    A metric outside the registry has no unit to convert to: its values are kept as they are.
    """
    if unit is None:
        return value
    known = metric(metric_name)
    if known is None:
        return value
    source = normalize_unit(unit)
    if source is None:
        raise UnitError(f"{metric_name}: unknown unit {unit!r}")
    target = known.unit
    if source == target:
        return value
    convert = _CONVERSIONS.get((source, target))
    if convert is None:
        raise UnitError(f"{metric_name}: cannot convert {unit!r} to {target!r}")
    return convert(value)
