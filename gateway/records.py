"""Value objects that flow through the gateway's ingest path.

Every input (native homeedge telemetry or a foreign ecosystem's payload through an adapter)
becomes `Reading`s or a `DeadLetter` before anything is stored.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reading:
    """One metric value of one device at one time: a row of the `readings` table."""

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
