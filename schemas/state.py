"""Availability: the retained ``online``/``offline`` payload on a ``state`` topic.

Devices set ``offline`` as their last will and publish ``online`` (retained) after connecting.
"""

from __future__ import annotations

from enum import StrEnum

from schemas.errors import PayloadError


class Availability(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


def decode_state(payload: bytes) -> Availability:
    """Parse an availability payload; raise `PayloadError` otherwise."""
    try:
        return Availability(payload.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise PayloadError(
            "validation", f"state payload {payload[:32]!r} is not online/offline"
        ) from None


def encode_state(state: Availability) -> bytes:
    return state.value.encode("ascii")
