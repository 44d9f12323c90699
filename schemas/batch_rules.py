"""The rules a batch obeys beyond its wire shape: the privacy contract and plausible values.

`schemas.batch` says what a batch looks like; this module says what its values may be. The
gateway's privacy filter produces batches that follow these rules and its outbox drops an
aggregate that breaks one (`aggregate_violation`); the cloud checks every upload against them
before storing it (`batch_violation`, 422 naming the rule), as defense in depth against a buggy
or compromised gateway. Both import the rules from here, so they cannot drift apart.

Privacy:

- ``home_not_pseudonym``: the home is a keyed pseudonym, an optional prefix of up to 16 of
  ``[A-Za-z0-9_.-]`` then 20 to 48 lower-case hex digits (`PSEUDONYM`), never a home id. At
  least 20 digits (80 bits): pseudonyms of a large fleet do not collide, and the 12- and
  16-digit hardware addresses homes get named after (MAC, Zigbee IEEE) do not pass for one.
- ``room_class_unknown`` / ``device_class_unknown``: rooms and devices appear only as one of
  `RoomClass` / `schemas.metrics.DeviceClass`, never as a free-text name.
- ``health_not_noised``: a health metric (``health=True`` in the registry, e.g. heart rate) is
  released only ``noised``, never as an exact ``aggregate``.
- ``window_too_small``: a window's count is at least the larger of the cloud's floor
  (`MIN_WINDOW_COUNT` by default) and the ``min_window_count`` the batch itself declares. For a
  noised window this is the released (noisy, rounded) count. An *event* aggregate (a metric
  of ``kind=event`` in `schemas.metrics`: alarms, keywords, anomalies) carrying no order
  statistics is held to a count of at least `MIN_EVENT_COUNT` (1) instead: its count is the
  number of events in the window, which is what the cloud is meant to learn (one alarm heard),
  while the floor exists so that the statistics of a measured quantity do not expose single
  readings. An event aggregate that carries min, max, std, p50 or p95 is held to the normal
  floor, so the relaxed rule never releases a single reading's value.
- ``event_sum_not_count``: an event aggregate without order statistics has ``sum == count``
  and ``mean == 1`` (each event is one reading of 1; the zero decisions stay at home), so it
  says nothing but its count.
- ``noised_order_statistics`` / ``noised_without_epsilon``: a noised aggregate carries no min,
  max, std, p50 or p95 (they would expose single readings) and names the epsilon it spent.

Plausibility:

- ``min_above_max``: min <= max when both are present.
- ``tiny_statistic``: mean and std are 0 or at least `TINY` in magnitude: the rollups square
  them, and PostgreSQL refuses a product that underflows to zero (no sensor reads 1e-160).
- ``unit_not_printable``: a unit has no control or formatting characters (NUL, bidi overrides,
  zero-width marks): it ends up in dashboards and logs.
- ``window_in_future`` / ``created_in_future``: no window ends, and no batch was made, later
  than the receiver's clock plus `MAX_CLOCK_SKEW_S` (one gateway with a wrong clock must not
  move time ranges the whole fleet is analysed in).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from schemas.batch import Batch, WindowAggregate
from schemas.metrics import METRICS, DeviceClass, MetricKind


class RoomClass(StrEnum):
    """The only thing the cloud learns about a room."""

    KITCHEN = "kitchen"
    LIVING = "living"
    BEDROOM = "bedroom"
    BATHROOM = "bathroom"
    OFFICE = "office"
    HALL = "hall"
    GARAGE = "garage"
    OUTDOOR = "outdoor"
    OTHER = "other"


PSEUDONYM_PREFIX = r"[A-Za-z0-9_.\-]{0,16}"
PSEUDONYM_HEX_MIN = 20
PSEUDONYM_HEX_MAX = 48
PSEUDONYM = re.compile(rf"^{PSEUDONYM_PREFIX}[0-9a-f]{{{PSEUDONYM_HEX_MIN},{PSEUDONYM_HEX_MAX}}}$")
MIN_WINDOW_COUNT = 5
MIN_EVENT_COUNT = 1
MAX_CLOCK_SKEW_S = 300.0
ORDER_STATISTICS = ("min", "max", "std", "p50", "p95")
TINY = 1e-150

ROOM_CLASSES = frozenset(c.value for c in RoomClass)
DEVICE_CLASSES = frozenset(c.value for c in DeviceClass)
HEALTH_METRICS = frozenset(m.name for m in METRICS.values() if m.health)
EVENT_METRICS = frozenset(m.name for m in METRICS.values() if m.kind is MetricKind.EVENT)


class Rule(StrEnum):
    """A rule a batch broke; the value is the cloud's error code."""

    HOME_NOT_PSEUDONYM = "home_not_pseudonym"
    ROOM_CLASS_UNKNOWN = "room_class_unknown"
    DEVICE_CLASS_UNKNOWN = "device_class_unknown"
    HEALTH_NOT_NOISED = "health_not_noised"
    WINDOW_TOO_SMALL = "window_too_small"
    EVENT_SUM_NOT_COUNT = "event_sum_not_count"
    NOISED_ORDER_STATISTICS = "noised_order_statistics"
    NOISED_WITHOUT_EPSILON = "noised_without_epsilon"
    MIN_ABOVE_MAX = "min_above_max"
    TINY_STATISTIC = "tiny_statistic"
    UNIT_NOT_PRINTABLE = "unit_not_printable"
    WINDOW_IN_FUTURE = "window_in_future"
    CREATED_IN_FUTURE = "created_in_future"


@dataclass(frozen=True, slots=True)
class Violation:
    """The first rule a batch breaks: which, at which aggregate (None: the batch itself), why."""

    rule: Rule
    index: int | None
    message: str

    def __str__(self) -> str:
        where = "batch" if self.index is None else f"aggregates[{self.index}]"
        return f"{where}: {self.message}"


def is_pseudonym(home: str) -> bool:
    return PSEUDONYM.match(home) is not None


def must_be_noised(metric: str) -> bool:
    """True for a health metric: released only noised (or kept local)."""
    return metric in HEALTH_METRICS


def has_order_statistics(a: WindowAggregate) -> bool:
    return (
        a.min is not None
        or a.max is not None
        or a.std is not None
        or a.p50 is not None
        or a.p95 is not None
    )


def aggregate_violation(
    a: WindowAggregate,
    *,
    min_count: float,
    latest_end: float,
    good_homes: set[str] | None = None,
    good_units: set[str] | None = None,
) -> tuple[Rule, str] | None:
    """The first rule `a` breaks and why, or None.

    `min_count` is the smallest count allowed, `latest_end` the latest window end (the clock
    plus its skew). `good_homes` / `good_units` remember values already found valid, so a batch
    of many windows of the same homes checks each once (the caller owns the sets).
    """
    home = a.home
    if good_homes is None or home not in good_homes:
        if PSEUDONYM.match(home) is None:
            return Rule.HOME_NOT_PSEUDONYM, (
                f"home {home!r} is not a pseudonym (a prefix of up to 16 characters, then "
                f"{PSEUDONYM_HEX_MIN}-{PSEUDONYM_HEX_MAX} lower-case hex digits)"
            )
        if good_homes is not None:
            good_homes.add(home)
    if a.room_class not in ROOM_CLASSES:
        return Rule.ROOM_CLASS_UNKNOWN, (
            f"room_class {a.room_class!r} is not one of {', '.join(RoomClass)}"
        )
    if a.device_class not in DEVICE_CLASSES:
        return Rule.DEVICE_CLASS_UNKNOWN, (
            f"device_class {a.device_class!r} is not one of {', '.join(DeviceClass)}"
        )
    noised = a.policy == "noised"
    if not noised and a.metric in HEALTH_METRICS:
        return Rule.HEALTH_NOT_NOISED, f"{a.metric} is health data: released noised only"
    floor = min_count
    if a.metric in EVENT_METRICS and not has_order_statistics(a):
        floor = MIN_EVENT_COUNT
        if not noised and (a.sum != a.count or a.mean != 1.0):
            return Rule.EVENT_SUM_NOT_COUNT, (
                f"{a.metric} is an event count: sum {a.sum:g} and mean {a.mean:g} must be "
                f"{a.count:g} and 1"
            )
    if a.count < floor:
        what = "event count" if floor != min_count else "window count"
        return Rule.WINDOW_TOO_SMALL, f"count {a.count:g} is below the minimum {what} {floor:g}"
    if noised:
        if has_order_statistics(a):
            present = [name for name in ORDER_STATISTICS if getattr(a, name) is not None]
            return Rule.NOISED_ORDER_STATISTICS, (
                f"a noised aggregate carries {', '.join(present)} (order statistics expose "
                "single readings)"
            )
        if a.epsilon is None:
            return Rule.NOISED_WITHOUT_EPSILON, "a noised aggregate does not name its epsilon"
    elif a.min is not None and a.max is not None and a.min > a.max:
        return Rule.MIN_ABOVE_MAX, f"min {a.min:g} is above max {a.max:g}"
    mean, std = a.mean, a.std
    if (mean and -TINY < mean < TINY) or (std and -TINY < std < TINY):
        return Rule.TINY_STATISTIC, (
            f"mean {mean:g} / std {std} is nonzero but below {TINY:g} in magnitude (send 0)"
        )
    unit = a.unit
    if good_units is None or unit not in good_units:
        if not unit.isprintable():
            return Rule.UNIT_NOT_PRINTABLE, (f"unit {unit!r} has control or formatting characters")
        if good_units is not None:
            good_units.add(unit)
    end = a.window_start + a.window_s
    if end > latest_end:
        return Rule.WINDOW_IN_FUTURE, (
            f"the window ends at {end:.0f}, later than the receiver's clock plus its skew "
            f"({latest_end:.0f})"
        )
    return None


def batch_violation(
    batch: Batch,
    *,
    now: float,
    max_skew_s: float = MAX_CLOCK_SKEW_S,
    min_window_count: int = MIN_WINDOW_COUNT,
) -> Violation | None:
    """The first rule `batch` breaks, or None; one pass over its aggregates.

    `now` is the receiver's clock; `min_window_count` its floor of the window count (a batch
    that declares a higher one is held to that).
    """
    latest = now + max_skew_s
    if batch.created_at > latest:
        return Violation(
            Rule.CREATED_IN_FUTURE,
            None,
            f"created_at {batch.created_at:.0f} is later than the receiver's clock plus its "
            f"skew ({latest:.0f})",
        )
    return first_violation(
        batch.aggregates,
        min_count=max(min_window_count, batch.privacy.min_window_count),
        latest_end=latest,
    )


def first_violation(
    aggregates: Iterable[WindowAggregate], *, min_count: float, latest_end: float
) -> Violation | None:
    """The first aggregate of `aggregates` that breaks a rule, as a `Violation`, or None."""
    homes: set[str] = set()
    units: set[str] = set()
    for index, a in enumerate(aggregates):
        broken = aggregate_violation(
            a, min_count=min_count, latest_end=latest_end, good_homes=homes, good_units=units
        )
        if broken is not None:
            return Violation(broken[0], index, broken[1])
    return None
