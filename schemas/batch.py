"""The batch format: what a gateway uploads to the cloud (``POST /api/v1/batches``).

A batch is JSON, gzip-compressed on the wire (``Content-Encoding: gzip``), authenticated with the
gateway's bearer token. It carries only window aggregates that passed the gateway's privacy
filter: the home appears as a keyed pseudonym, rooms and devices only as categories, and no raw
reading, device id or audio byte is ever part of it.

`batch_id` is unique: the cloud stores a batch id once, so a gateway may resend the same body
freely (200); the same id with another body is refused (409). `seq` increases by one per batch
of a gateway, so the cloud can report gaps. What the values may be (pseudonyms, room and device
classes, noised health metrics, window counts, times) is `schemas.batch_rules`.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Literal

import msgspec

from schemas.errors import PayloadError

BATCH_VERSION = 1
MAX_AGGREGATES_PER_BATCH = 5000
MAX_BATCH_BYTES = 4 * 1024 * 1024  # decompressed

# msgspec matches a pattern with Python's re.search, where "$" also matches before a final
# newline: "(?!\n)" rejects that and keeps the pattern valid ECMA-262 for the JSON Schema.
NAME_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$(?!\n)"
METRIC_PATTERN = r"^[a-z][a-z0-9_]{0,63}$(?!\n)"
Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
# A window's names: the same patterns in the JSON Schema, but checked by `decode_batch` once per
# distinct value rather than by msgspec in every window (a batch repeats a handful of names
# thousands of times; the per-field regex was two thirds of decoding a 300-window batch).
WindowName = Annotated[str, msgspec.Meta(extra_json_schema={"pattern": NAME_PATTERN})]
MetricName = Annotated[str, msgspec.Meta(extra_json_schema={"pattern": METRIC_PATTERN})]
Finite = Annotated[float, msgspec.Meta(ge=-1e15, le=1e15)]
# JSON integers have no size, the cloud's columns do: a count beyond its column is a 422 here,
# not an overflow in the database (BIGINT and INTEGER, as on PostgreSQL).
Count64 = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Count32 = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]


class Policy(StrEnum):
    """Per-metric uplink policy."""

    LOCAL = "local"  # never leaves the home
    AGGREGATE = "aggregate"  # window aggregates, exact
    NOISED = "noised"  # Laplace noise on count and sum, within a per-home epsilon budget


class WindowAggregate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Statistics of one metric over one tumbling window of one (home, room class, device class).

    For ``noised`` aggregates, `count`, `sum` and `mean` are noised and the order statistics
    (min, max, std, p50, p95) are omitted, since they would leak single readings. `home` is a
    pseudonym, `room_class` and `device_class` come from fixed vocabularies (the rules are in
    `schemas.batch_rules`).
    """

    window_start: Annotated[float, msgspec.Meta(ge=0, le=4102444800.0)]
    window_s: Annotated[int, msgspec.Meta(ge=1, le=86400)]
    home: WindowName
    room_class: WindowName
    device_class: WindowName
    metric: MetricName
    unit: Annotated[str, msgspec.Meta(max_length=16)]
    policy: Literal["aggregate", "noised"]
    count: Finite
    sum: Finite
    mean: Finite
    min: Finite | None = None
    max: Finite | None = None
    std: Finite | None = None
    p50: Finite | None = None
    p95: Finite | None = None
    epsilon: Annotated[float, msgspec.Meta(gt=0, le=100)] | None = None


class BatchPrivacy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the privacy filter did for this batch."""

    epsilon_spent: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    suppressed_windows: Count32 = 0
    refused_noised: Count32 = 0
    min_window_count: Count32 = 0


class BatchStats(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Traffic the gateway took in for the windows of this batch (for the bandwidth report)."""

    ingested_messages: Count64 = 0
    ingested_bytes: Count64 = 0


class Batch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One upload."""

    batch_id: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{32}$(?!\n)", description="uuid4 hex")]
    gateway: Name
    seq: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
    created_at: Annotated[float, msgspec.Meta(ge=0, le=4102444800.0)]
    aggregates: Annotated[list[WindowAggregate], msgspec.Meta(max_length=MAX_AGGREGATES_PER_BATCH)]
    privacy: BatchPrivacy = BatchPrivacy()
    stats: BatchStats = BatchStats()
    version: Literal[1] = 1


_decoder = msgspec.json.Decoder(Batch)
_encoder = msgspec.json.Encoder()


def encode_batch(batch: Batch) -> bytes:
    return _encoder.encode(batch)


_WINDOW_NAMES = (
    ("home", re.compile(NAME_PATTERN)),
    ("room_class", re.compile(NAME_PATTERN)),
    ("device_class", re.compile(NAME_PATTERN)),
    ("metric", re.compile(METRIC_PATTERN)),
)


def decode_batch(payload: bytes) -> Batch:
    """Decode and validate a batch body (already decompressed)."""
    if len(payload) > MAX_BATCH_BYTES:
        raise PayloadError("oversized", f"{len(payload)} bytes > limit {MAX_BATCH_BYTES}")
    try:
        batch = _decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise PayloadError("validation", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise PayloadError("invalid_json", str(exc)) from None
    _check_window_names(batch)
    return batch


def _check_window_names(batch: Batch) -> None:
    """The windows' names against their patterns (`WindowName`), each distinct value once;
    the error says what msgspec would have."""
    for field, pattern in _WINDOW_NAMES:
        good: set[str] = set()
        for i, a in enumerate(batch.aggregates):
            value = getattr(a, field)
            if value in good:
                continue
            # search, as msgspec matches a pattern (its "(?!\n)" refuses a final newline).
            if pattern.search(value) is None:
                raise PayloadError(
                    "validation",
                    f"Expected `str` matching regex {pattern.pattern!r} - at "
                    f"`$.aggregates[{i}].{field}`",
                )
            good.add(value)
