"""The telemetry payload: a UTF-8 JSON object a device publishes on its ``telemetry`` topic.

    {"ts": 1764403200.5, "seq": 42, "readings": {"temperature": 21.4, "humidity": 40}}

- ``ts``: Unix seconds UTC (number), required, between 2000-01-01 and 2100-01-01.
- ``seq``: per-device counter (integer >= 0), optional; with it the gateway stores a redelivered
  message once.
- ``readings``: metric name -> finite number, at least one entry. Unknown metric names are kept.

A reading's identity at the gateway (what makes a redelivered message a duplicate): with a
``seq``, (home, device, metric, ts, seq), so ``ts`` may repeat (a stuck clock, a clock stepping
back, several messages within one clock tick are all kept) and so may ``seq`` with another
``ts`` (a device that restarts its counter at 0 after a reboot keeps its new readings); without
one, (home, device, metric, ts), so two messages of a device with the same ``ts`` are one. A
QoS 1 redelivery carries the same bytes, so the same ``ts`` and ``seq``: it is stored once
either way. What ``seq`` must not do is repeat with the same ``ts`` for two different readings
(a counter reset together with a clock reset); omit it if the device cannot guarantee that
(``ts`` alone then dedupes redeliveries).

Unknown top-level fields are ignored, so devices may add fields without breaking older gateways;
the payload may nest at most `MAX_JSON_DEPTH` (32) levels (``too_deep`` otherwise). Decoding uses
msgspec (compiled, validating in one pass).
"""

from __future__ import annotations

import math
from typing import Annotated

import msgspec

from schemas.errors import PayloadError
from schemas.json_input import decode_error_detail, nesting_problem

MAX_TELEMETRY_BYTES = 16 * 1024
TS_MIN = 946684800.0  # 2000-01-01
TS_MAX = 4102444800.0  # 2100-01-01
MAX_SEQ = 2**63 - 1

# msgspec matches a pattern with Python's re.search, where "$" also matches before a final
# newline: "(?!\n)" rejects "temp\n" and keeps the pattern valid ECMA-262 for the JSON Schema.
MetricName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,63}$(?!\n)")]
Value = Annotated[float, msgspec.Meta(ge=-1e15, le=1e15)]


class Telemetry(msgspec.Struct, frozen=True):
    """One telemetry message."""

    ts: Annotated[float, msgspec.Meta(ge=TS_MIN, le=TS_MAX, description="Unix seconds, UTC")]
    readings: Annotated[
        dict[MetricName, Value],
        msgspec.Meta(min_length=1, max_length=64, description="metric name -> value"),
    ]
    seq: Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ, description="per-device counter")] | None = (
        None
    )


_decoder = msgspec.json.Decoder(Telemetry)
_encoder = msgspec.json.Encoder()


def decode_telemetry(payload: bytes, *, max_bytes: int = MAX_TELEMETRY_BYTES) -> Telemetry:
    """Decode and validate a telemetry payload; raise `PayloadError` with the reason."""
    if len(payload) > max_bytes:
        raise PayloadError("oversized", f"{len(payload)} bytes > limit {max_bytes}")
    too_deep = nesting_problem(payload)
    if too_deep is not None:
        raise PayloadError("too_deep", too_deep)
    try:
        msg = _decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise PayloadError("validation", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise PayloadError("invalid_json", decode_error_detail(payload, str(exc))) from None
    # JSON has no NaN/inf literals, but a huge exponent decodes to inf; the range check above
    # rejects that, and this keeps the guarantee explicit.
    for name, value in msg.readings.items():
        if not math.isfinite(value):
            raise PayloadError("non_finite", f"readings.{name} is not finite")
    return msg


def encode_telemetry(ts: float, readings: dict[str, float], seq: int | None = None) -> bytes:
    """Encode a telemetry payload (what devices publish)."""
    msg = Telemetry(ts=ts, readings=readings, seq=seq)
    return _encoder.encode(msg)
