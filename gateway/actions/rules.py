"""Pure rule logic of local actions: does a rule match an event (`matches`), may it fire now
(`RateLimiter`), is it quiet (`quiet`), and what a notification says (`notification`).

No I/O here: `gateway.actions.runner` calls these on the event loop for each event.
"""

from __future__ import annotations

import datetime
import uuid
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Any

from gateway.actions.settings import QuietHours, RateLimit, Rule
from gateway.records import EdgeEvent, EventKind
from schemas.notify import Notification


def matches(rule: Rule, event: EdgeEvent) -> bool:
    """True when every selector the rule gives holds for `event`."""
    return (
        (rule.kinds is None or event.kind in rule.kinds)
        and (rule.labels is None or event.label in rule.labels)
        and (rule.models is None or event.model in rule.models)
        and (rule.homes is None or event.home in rule.homes)
        and (rule.rooms is None or event.room in rule.rooms)
        and (rule.devices is None or event.device in rule.devices)
        and event.score >= rule.min_score
    )


def local_time(ts: float, tz: datetime.tzinfo | None) -> datetime.datetime:
    """`ts` as an aware datetime in `tz` (None: the system's local time)."""
    moment = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    return moment.astimezone(tz) if tz is not None else moment.astimezone()


def quiet(
    rule: Rule, event: EdgeEvent, default: QuietHours | None, tz: datetime.tzinfo | None
) -> bool:
    """True when the rule's notifications are silenced for `event` (see
    `gateway.actions.settings`: alarms ignore quiet hours unless the rule says otherwise)."""
    hours = rule.quiet_hours or default
    if hours is None:
        return False
    ignore = rule.ignore_quiet_hours
    if ignore is None:
        ignore = event.kind == EventKind.ALARM
    if ignore:
        return False
    return hours.contains(local_time(event.ts, tz).time().replace(tzinfo=None))


class RateLimiter:
    """Sliding-window limits of every rule: at most ``count`` firings in any ``per_s`` seconds
    per key (`RateLimit.scope`). Keys are bounded: past `max_keys` the least recently used is
    forgotten (it may then fire again early, never more than its limit per remembered span)."""

    def __init__(self, *, max_keys: int = 10_000) -> None:
        self._fired: OrderedDict[tuple[str, ...], deque[float]] = OrderedDict()
        self._max_keys = max_keys

    @staticmethod
    def key(rule: Rule, limit: RateLimit, event: EdgeEvent) -> tuple[str, ...]:
        if limit.scope == "rule":
            return (rule.name,)
        where = event.room if limit.scope == "room" else event.device
        return (rule.name, event.home, where, event.label)

    def allow(self, rule: Rule, event: EdgeEvent, now: float) -> bool:
        """Whether `rule` may fire for `event` at monotonic time `now`; counts it if so."""
        limit = rule.rate_limit
        if limit is None:
            return True
        key = self.key(rule, limit, event)
        fired = self._fired.get(key)
        if fired is None:
            fired = self._fired[key] = deque(maxlen=limit.count)
            if len(self._fired) > self._max_keys:
                self._fired.popitem(last=False)
        else:
            self._fired.move_to_end(key)
        if len(fired) == limit.count and now - fired[0] < limit.per_s:
            return False
        fired.append(now)
        return True


def notification(
    rule: Rule,
    event: EdgeEvent,
    fields: Sequence[str],
    tz: datetime.tzinfo | None,
    *,
    notification_id: str | None = None,
) -> Notification:
    """The notification (`schemas.notify`): ``id`` (the same on every retry, for the receiver
    to drop duplicates), ``rule``, and of the event only its `fields`."""
    values: dict[str, Any] = {
        "kind": str(event.kind),
        "label": event.label,
        "room": event.room,
        "time": local_time(event.ts, tz).isoformat(timespec="seconds"),
        "ts": round(event.ts, 3),
        "score": round(event.score, 4),
        "home": event.home,
        "device": event.device,
        "model": event.model,
    }
    chosen = {name: values[name] for name in fields}
    return Notification(id=notification_id or uuid.uuid4().hex, rule=rule.name, **chosen)
