"""Value objects that flow through the gateway's ingest path.

Every input (native homeedge telemetry or a foreign ecosystem's payload through an adapter)
becomes `Reading`s or a `DeadLetter` before anything is stored. What edge inference decides
reaches the other plug-ins as `EdgeEvent`s (`gateway.host.GatewayHost.on_event`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from schemas.events import InferenceEvent


class Reading(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One metric value of one device at one time: a row of the `readings` table.

    A msgspec struct, not a dataclass: the ingest path makes one per stored metric, and a
    struct is made in C (~5x faster than a frozen dataclass) and encodes as the row array the
    writer's INSERT unpacks (`gateway.writer`), without building a tuple per row first.
    ``gc=False``: it holds only strings and numbers, so it can never be part of a cycle."""

    home: str
    room: str
    device: str
    metric: str
    ts: float
    value: float
    seq: int | None
    received_at: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An input that could not be used, kept with the reason (a row of `dead_letters`).

    One row per message and reason, identified by `dead_letter_digest` of its topic, reason and
    (stored) payload (a message whose readings fail two checks gives two dead letters):
    the same bad message arriving again fresh adds 1 to the row's ``count``; a `replay` (a copy
    the broker may have delivered before: an MQTT redelivery, DUP flag, or a retained message
    replayed on subscribing) is stored only when no row has its digest yet, and never counted.
    """

    topic: str
    payload: bytes
    reason: str
    detail: str
    received_at: float
    replay: bool = False


def dead_letter_digest(topic: str, reason: str, payload: bytes) -> bytes:
    """A dead letter's identity: the first 16 bytes of SHA-256 over topic, NUL, reason, NUL,
    payload.

    The payload is the one stored (cut to ``storage.max_dead_letter_bytes``), so every row of
    the table can be checked against it; `gateway.schema`'s version 2 migration computed the
    same for the rows it found (a test holds the two together)."""
    return hashlib.sha256(topic.encode() + b"\0" + reason.encode() + b"\0" + payload).digest()[:16]


class EventKind(StrEnum):
    """What an `EdgeEvent` is about, whatever model decided it (model names are configurable)."""

    ALARM = "alarm"  # a smoke (smoke_t3) or CO (co_t4) alarm heard
    KEYWORD = "keyword"  # a spoken command: lights_on, lights_off, stop
    ANOMALY = "anomaly"  # a sensor window judged faulty (anomaly) or not (normal)
    OCCUPANCY = "occupancy"  # a room became occupied or empty
    SPEECH = "speech"  # a speech-share summary (speech, quiet)


@dataclass(frozen=True, slots=True)
class EdgeEvent:
    """One inference event, as published on ``<root>/<home>/gateway/events/<model>``
    (`schemas.events.InferenceEvent`) plus its `kind`. Never carries audio."""

    kind: EventKind
    model: str
    home: str
    room: str
    device: str
    label: str
    score: float
    window_start: float
    window_end: float
    ts: float  # when the gateway decided (gateway clock, Unix seconds)

    @classmethod
    def of(cls, kind: EventKind, event: InferenceEvent) -> EdgeEvent:
        """The published `event` as the other plug-ins get it."""
        return cls(
            kind,
            event.model,
            event.home,
            event.room,
            event.device,
            event.label,
            event.score,
            event.window_start,
            event.window_end,
            event.ts,
        )
