"""What the gateway accepts as a reading, whatever its source (native telemetry or an adapter).

The decoder (`gateway.ingest.MessageDecoder`) runs every reading through `ReadingChecks` after
the payload itself was decoded; a reading that fails is a dead letter:

- ``ts_out_of_range``: its time is more than ``[ingest] max_clock_skew_s`` ahead of the
  gateway's receive time, or more than ``max_age_s`` behind it. One reading from 2099 would
  otherwise hold its device's inference window open for good (every later reading piling up in
  memory) and sit above the aggregation watermark, where retention never deletes it.
- ``out_of_range``: its value is outside the metric's plausible range (the registry's,
  `schemas.metrics`, or ``[ingest.ranges.<metric>] min``/``max``), or is exactly one of the
  metric's sensor error values (``error_values``; by default a DS18B20's 85.0, its power-on
  value, and -127.0, its "no sensor" value, for temperature). A metric neither the registry
  nor the config gives a range is accepted as it is.

A message keeps its good readings: its rejected ones become one dead letter per reason (the
message's payload, the detail naming each rejected reading), stored before the message's
readings, so a bad field never costs the rest of the message. A message whose readings are all
rejected is only dead letters.

Defaults, and why:

- ``max_clock_skew_s = 300``: devices set their clocks by NTP (milliseconds off), so minutes
  are already a badly set clock; 300 s is also one default inference sensor window
  (``[inference] sensor_window_s``), so an accepted reading from the future moves its device's
  window at most one window ahead. The gateway's own clock is the reference: it must be right
  too (NTP; a board without a real-time clock that boots without network runs behind).
- ``max_age_s = 7 days``: the broker keeps the gateway's session, and so queues its messages,
  for ``[mqtt] session_expiry_s`` (7 days by default) while the gateway is down; what it
  delivers on reconnect, and what a device buffered through the same outage, is still
  accepted. It is shorter than ``[storage] retention_s`` (30 days): an accepted old reading is
  counted late by the aggregation (its window was aggregated already) while that window's
  late-reading tally is still kept. Every accepted reading is at most `max_clock_skew_s` ahead
  of the receive time, so the aggregation watermark passes it soon and retention can delete it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.records import Reading
from schemas.metrics import METRICS
from schemas.telemetry import TS_MAX, TS_MIN

DEFAULT_MAX_CLOCK_SKEW_S = 300.0
DEFAULT_MAX_AGE_S = 7 * 86400.0
# Exact values sensors report when they have no measurement (checked before the range):
# a DS18B20 reads 85.0 °C after a power-on reset, and its libraries report -127.0 °C for a
# missing or unreadable sensor.
DEFAULT_ERROR_VALUES: Mapping[str, tuple[float, ...]] = {"temperature": (85.0, -127.0)}
# Rejected readings named in one dead letter's detail; the rest are counted.
_DETAILS_PER_DEAD_LETTER = 8


class MetricRange(BaseModel):
    """``[ingest.ranges.<metric>]``: the plausible range of one metric, overriding the
    registry's (an unset bound keeps the registry's, or none for a metric it does not know)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min: float | None = Field(
        default=None, allow_inf_nan=False, description="lowest plausible value (inclusive)"
    )
    max: float | None = Field(
        default=None, allow_inf_nan=False, description="highest plausible value (inclusive)"
    )
    error_values: tuple[float, ...] | None = Field(
        default=None,
        description="exact values rejected as sensor errors even inside the range; default: "
        "85.0 and -127.0 for temperature (DS18B20), none for other metrics; [] for none "
        "(a sauna at 85 °C)",
    )

    @model_validator(mode="after")
    def _check(self) -> MetricRange:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) is greater than max ({self.max:g})")
        if self.error_values is not None and not all(map(math.isfinite, self.error_values)):
            raise ValueError("error_values must be finite numbers")
        return self


@dataclass(frozen=True, slots=True)
class Bounds:
    """The accepted values of one metric."""

    low: float
    high: float
    errors: frozenset[float]


def metric_bounds(ranges: Mapping[str, MetricRange]) -> dict[str, Bounds]:
    """Every metric with a bound: the registry's ranges and error values, `ranges` over them."""
    out: dict[str, Bounds] = {}
    for name in METRICS.keys() | ranges.keys():
        known = METRICS.get(name)
        override = ranges.get(name, MetricRange())
        low = override.min if override.min is not None else known.low if known else -math.inf
        high = override.max if override.max is not None else known.high if known else math.inf
        errors = override.error_values
        if errors is None:
            errors = DEFAULT_ERROR_VALUES.get(name, ())
        out[name] = Bounds(low, high, frozenset(errors))
    return out


def _utc(ts: float) -> str:
    if not TS_MIN <= ts <= TS_MAX:
        return "not a plausible time"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class ReadingChecks:
    """The checks of one gateway configuration (pure; safe from any thread)."""

    def __init__(
        self,
        *,
        max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        ranges: Mapping[str, MetricRange] | None = None,
    ) -> None:
        self.max_clock_skew_s = max_clock_skew_s
        self.max_age_s = max_age_s
        self.bounds = metric_bounds(ranges or {})

    def ts_problem(self, ts: float, received_at: float) -> str | None:
        """Why a reading at `ts` received at `received_at` is refused, or None."""
        ahead = ts - received_at
        if ahead > self.max_clock_skew_s:
            return (
                f"ts {ts!r} ({_utc(ts)}) is {ahead:.0f} s ahead of the gateway clock "
                f"(max_clock_skew_s = {self.max_clock_skew_s:g})"
            )
        if -ahead > self.max_age_s:
            return (
                f"ts {ts!r} ({_utc(ts)}) is {-ahead:.0f} s older than its receive time "
                f"(max_age_s = {self.max_age_s:g})"
            )
        if not math.isfinite(ts):  # NaN passes both comparisons
            return f"ts {ts!r} is not a number"
        return None

    def value_problem(self, metric: str, value: float) -> str | None:
        """Why `value` is refused for `metric`, or None."""
        bounds = self.bounds.get(metric)
        if bounds is None:
            return None
        if value in bounds.errors:
            return f"{metric} = {value!r} is a sensor error value"
        if not bounds.low <= value <= bounds.high:
            return (
                f"{metric} = {value!r} is outside its plausible range "
                f"[{bounds.low:g}, {bounds.high:g}]"
            )
        return None

    def problem(self, reading: Reading, received_at: float) -> tuple[str, str] | None:
        """(reason, detail) when `reading` is refused, else None."""
        ts = self.ts_problem(reading.ts, received_at)
        if ts is not None:
            return "ts_out_of_range", f"{reading.device}/{reading.metric}: {ts}"
        value = self.value_problem(reading.metric, reading.value)
        if value is not None:
            return "out_of_range", f"{reading.device}: {value}"
        return None

    def split(
        self, readings: list[Reading], received_at: float
    ) -> tuple[list[Reading], Rejections]:
        """The readings to keep (`readings` itself when all pass) and what was refused."""
        rejected = Rejections()
        kept: list[Reading] | None = None
        for i, reading in enumerate(readings):
            problem = self.problem(reading, received_at)
            if problem is None:
                if kept is not None:
                    kept.append(reading)
                continue
            if kept is None:
                kept = readings[:i]
            rejected.add(*problem)
        return (readings if kept is None else kept), rejected


class Rejections:
    """Refused readings of one message, by reason (in the order first seen)."""

    __slots__ = ("_by_reason",)

    def __init__(self) -> None:
        self._by_reason: dict[str, list[str]] = {}

    def __bool__(self) -> bool:
        return bool(self._by_reason)

    def add(self, reason: str, detail: str) -> None:
        self._by_reason.setdefault(reason, []).append(detail)

    def dead_letter_details(self) -> list[tuple[str, str]]:
        """One (reason, detail) per reason, the detail naming the first few readings."""
        out = []
        for reason, details in self._by_reason.items():
            text = "; ".join(details[:_DETAILS_PER_DEAD_LETTER])
            if len(details) > _DETAILS_PER_DEAD_LETTER:
                text += f" (and {len(details) - _DETAILS_PER_DEAD_LETTER} more)"
            out.append((reason, text))
        return out
