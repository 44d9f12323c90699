"""Units foreign ecosystems report in, and conversion to the metric registry's units.

Only conversions that a documented payload needs are here: °F and K to °C (Tasmota ``TempUnit``,
Home Assistant ``unit_of_measurement``, Shelly Gen1 H&T set to °F), Wh, watt-minutes and MWh to
kWh (Shelly Gen2 ``aenergy.total``, Shelly Gen1 ``relay/<n>/energy``, Shelly EM, Home Assistant),
kW to W. A unit homeedge cannot convert is an error, never a silently wrong number.
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
