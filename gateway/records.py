"""Value objects that flow through the gateway's ingest path.

Every input (native homeedge telemetry or a foreign ecosystem's payload through an adapter)
becomes `Reading`s or a `DeadLetter` before anything is stored.
"""

from __future__ import annotations

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
    """An input that could not be used, kept with the reason (a row of `dead_letters`)."""

    topic: str
    payload: bytes
    reason: str
    detail: str
    received_at: float
