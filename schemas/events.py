"""Inference events: the JSON the gateway publishes on ``<root>/<home>/gateway/events/<model>``.

QoS 1, not retained. One message per event::

    {"model": "alarm", "version": "1.0+954d9ed2a4", "home": "home-1", "room": "kitchen",
     "device": "microphone-1", "label": "smoke_t3", "score": 0.97,
     "window_start": 1764403196.0, "window_end": 1764403200.0, "ts": 1764403200.03}

- ``model``/``version``: the model that decided (its manifest).
- ``home``/``room``/``device``: the source (local names: events never leave the home).
- ``label``: what was found. alarm: ``smoke_t3``/``co_t4``; keyword: ``lights_on``/
  ``lights_off``/``stop``; vad: ``speech``/``quiet`` (10 s summaries, score = speech share);
  occupancy: ``occupied``/``empty`` (on change); sensor_anomaly: ``anomaly``/``normal`` (every
  window; score = fault probability).
- ``score``: 0..1, the model's confidence or share.
- ``window_start``/``window_end``: the input's time span (Unix seconds UTC, device clock).
- ``ts``: when the gateway decided (gateway clock).

Never contains audio.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class InferenceEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One inference event."""

    model: Name
    version: Annotated[str, msgspec.Meta(max_length=64)]
    home: Name
    room: Name
    device: Name
    label: Name
    score: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
    window_start: float
    window_end: float
    ts: float


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(InferenceEvent)


def encode_event(event: InferenceEvent) -> bytes:
    return _encoder.encode(event)


def decode_event(payload: bytes) -> InferenceEvent:
    return _decoder.decode(payload)
