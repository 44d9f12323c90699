"""Notifications of the gateway's local actions (``[actions]``): the JSON published on
``<root>/<gateway_id>/gateway/notify`` (`schemas.topics.gateway_notify_topic`; QoS 1, not
retained) and POSTed to webhooks. One message per rule firing::

    {"id": "9f1c0d2e...", "rule": "alarms", "kind": "alarm", "label": "smoke_t3",
     "room": "hall", "time": "2026-12-03T18:02:11+01:00", "ts": 1796317331.2, "score": 0.97,
     "home": "home-1", "device": "microphone-1", "model": "alarm"}

- ``id``: random, the same on every retry of a webhook (also its ``Idempotency-Key`` header),
  and on the notify topic and webhook copies of one firing.
- ``rule``: the rule that fired (the owner's name for it; built-in: ``alarms``, ``anomalies``).
- The rest is the event, each field present only when the rule's field list names it: the
  notify topic has all of them, a webhook by default ``kind``, ``label``, ``room``, ``time``
  and ``score`` (no home or device names: a webhook may leave the home).
- ``kind``: alarm, keyword, anomaly, occupancy, speech; ``label``: as in `schemas.events`.
- ``time``: when the gateway decided, ISO 8601 in the configured time zone with its offset;
  ``ts`` the same as Unix seconds.

Never contains audio.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class Notification(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One notification; fields other than ``id`` and ``rule`` may be absent."""

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    rule: Name
    kind: Name | None = None
    label: Name | None = None
    room: Name | None = None
    time: Annotated[str, msgspec.Meta(max_length=40)] | None = None
    ts: float | None = None
    score: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None
    home: Name | None = None
    device: Name | None = None
    model: Name | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Notification)


def encode_notification(notification: Notification) -> bytes:
    return _encoder.encode(notification)


def decode_notification(payload: bytes) -> Notification:
    return _decoder.decode(payload)
