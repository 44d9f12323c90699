"""Property-based tests (hypothesis) of the ingest decoder and the format adapters: for arbitrary
topics and payloads, decoding never raises, the last item is the message's own, every reading
it lets through is finite, plausible, inside the time bounds and well named, and every dead
letter has a documented reason. Bounded to a few seconds (max_examples, no deadline)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.adapters import ADAPTER_TYPES, AdapterRegistry, AdapterSettings, BaseAdapter
from gateway.ingest import (
    Adapted,
    AudioIn,
    Ignored,
    Ingested,
    MessageDecoder,
    ReadingsIn,
    StateIn,
)
from gateway.records import DeadLetter, Reading
from schemas.metrics import METRIC_NAME, METRICS
from schemas.telemetry import TS_MAX, TS_MIN
from schemas.topics import GATEWAY_SEGMENT, valid_segment
from tests.fixtures.adapters.support import load

ROOT = "homeedge"
NOW = 1764403300.0
SKEW, AGE = 300.0, 7 * 86400.0
MAX_DL = 512
# The dead-letter reasons documented in gateway/ingest.py's docstring and the README.
# ``adapter_error`` (an adapter raised) and ``internal_error`` (the decoder raised) are
# documented too, but are bugs: the built-in adapters and the decoder must never produce them.
REASONS = frozenset(
    {
        "invalid_json",
        "validation",
        "non_finite",
        "oversized",
        "too_deep",
        "bad_header",
        "bad_samples",
        "bad_topic",
        "unknown_topic",
        "adapter_invalid_json",
        "adapter_validation",
        "adapter_unit",
        "adapter_oversized",
        "adapter_too_deep",
        "adapter_template",
        "ts_out_of_range",
        "out_of_range",
    }
)
ADAPTER_REASONS = frozenset(r for r in REASONS if r.startswith("adapter_"))
ERROR_VALUES = {"temperature": (85.0, -127.0)}

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def all_adapters() -> AdapterRegistry:
    return AdapterRegistry.from_settings(
        AdapterSettings.model_validate(
            {
                "zigbee2mqtt": {"enabled": True},
                "tasmota": {"enabled": True},
                "shelly": {"enabled": True},
                "ha_statestream": {"enabled": True},
            }
        )
    )


# -- strategies ----------------------------------------------------------------------------

KEYS = [
    *METRICS,
    "ts",
    "seq",
    "readings",
    "last_seen",
    "Time",
    "StatusSNS",
    "ENERGY",
    "Power",
    "Total",
    "Temperature",
    "Humidity",
    "DS18B20",
    "AM2301",
    "BME280",
    "TempUnit",
    "method",
    "params",
    "switch:0",
    "apower",
    "aenergy",
    "total",
    "temperature:0",
    "tC",
    "humidity:0",
    "rh",
    "illuminance_lux",
    "contact",
    "occupancy",
    "state",
    "linkquality",
    "temp\n",
    "Temp",
    "",
]
plausible_times = st.one_of(
    st.floats(NOW - 8 * 86400, NOW + 3600),
    st.sampled_from([4070908800.0, 959817600.0, TS_MIN, NOW - AGE, NOW + SKEW, NOW]),
)
times = st.one_of(plausible_times, st.floats(allow_nan=True, allow_infinity=True))
iso_times = plausible_times.map(lambda t: datetime.fromtimestamp(t, UTC).isoformat())
numbers = st.one_of(
    st.floats(-300, 1500),
    st.sampled_from([85.0, -127.0, 900.0, -1e9, 0.0, 1.0, 100.0, 1e15, 1e16, -0.0]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**70), 2**70),
)
scalars = st.one_of(
    numbers,
    st.booleans(),
    st.none(),
    st.sampled_from(["ON", "OFF", "on", "open", "true", "online", "offline", "21.5", "°F", "W"]),
    iso_times,
    plausible_times.map(lambda t: int(t * 1000)),
    st.text(max_size=12),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), inner, max_size=6),
    ),
    max_leaves=24,
)
good_names = st.one_of(st.sampled_from(sorted(METRICS)), st.from_regex(r"\A[a-z][a-z0-9_]{0,8}\Z"))
metric_names = st.one_of(
    good_names, st.sampled_from(["pm25", "temp\n", "Temp", "", "a" * 65, "t\u00e9"])
)
telemetry_objects = st.fixed_dictionaries(
    {
        "ts": st.one_of(plausible_times, times),
        "readings": st.one_of(
            st.dictionaries(good_names, numbers, min_size=1, max_size=5),
            st.dictionaries(metric_names, numbers, max_size=5),
        ),
    },
    optional={"seq": st.integers(-1, 2**64), "extra": json_values},
)


def encode(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


deep = st.integers(1, 3000).map(lambda n: b'{"ts": 1764403300, "x": ' + b"[" * n + b"]" * n + b"}")
payloads = st.one_of(
    telemetry_objects.map(encode),
    json_values.map(encode),
    st.binary(max_size=64),
    st.sampled_from(
        [
            b"online",
            b"offline",
            b"true",
            b"21.5",
            b'"21.5"',
            b'"temperature"',
            b'"\xb0C"',
            rb'{"ts": 1764403300, "readings": {"temperature": 1}, "x": "\ud800"}',
            b'{"ts": 1764403300, "readings": {"temperature": 1}, "x": "\xed\xa0\x80"}',
        ]
    ),
    deep,
    st.text(max_size=40).map(str.encode),
)
good_segments = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.\-]{0,8}\Z")
segments = st.one_of(
    good_segments,
    st.sampled_from(["gateway", "status", "events", "kitchen\n", ""]),
    st.text(alphabet="abcz019_.-/+# \n", max_size=10),
)
kinds = st.sampled_from(["telemetry", "telemetry", "state", "audio", "video", ""])
device_topics = st.tuples(segments, segments, segments, kinds).map(lambda p: "/".join([ROOT, *p]))
topics = st.one_of(
    device_topics,
    st.tuples(segments, segments).map(lambda p: f"{ROOT}/{p[0]}/gateway/{p[1]}"),
    segments.map(lambda s: f"zigbee2mqtt/{s}"),
    st.tuples(segments, st.sampled_from(["SENSOR", "STATE", "LWT"])).map(
        lambda p: f"tele/{p[0]}/{p[1]}"
    ),
    segments.map(lambda s: f"shellies/{s}/sensor/temperature"),
    segments.map(lambda s: f"{s}/events/rpc"),
    segments.map(lambda s: f"homeassistant/sensor/{s}/state"),
    st.text(max_size=30),
)
good_device_topics = st.tuples(good_segments, good_segments, good_segments).map(
    lambda p: "/".join([ROOT, *p, "telemetry"])
)
native = st.tuples(good_device_topics, st.one_of(telemetry_objects.map(encode), payloads))

# The adapters' recorded traffic (tests/fixtures/adapters), with numbers, times and numeric
# text replaced by drawn ones: realistic shapes, so most messages reach the value checks.
FIXTURES = [m for eco in ADAPTER_TYPES for section in load(eco).values() for m in section]
leaf_numbers = st.one_of(numbers, plausible_times, plausible_times.map(lambda t: t * 1000))


def _number_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _mutate(value: Any, draw: st.DrawFn) -> Any:
    if isinstance(value, bool) or value is None or not draw(st.booleans()):
        return value
    if isinstance(value, int | float):
        return draw(leaf_numbers)
    if isinstance(value, str):
        if _number_text(value):
            return repr(float(draw(leaf_numbers)))
        return draw(iso_times) if value[:2] == "20" else value
    if isinstance(value, dict):
        return {k: _mutate(v, draw) for k, v in value.items()}
    if isinstance(value, list):
        return [_mutate(v, draw) for v in value]
    return value


@st.composite
def fixture_messages(draw: st.DrawFn) -> tuple[str, bytes]:
    message = draw(st.sampled_from(FIXTURES))
    try:
        value = json.loads(message.payload)
    except ValueError:
        text = message.payload.decode("utf-8", "replace")
        if _number_text(text) and draw(st.booleans()):
            return message.topic, repr(float(draw(leaf_numbers))).encode()
        return message.topic, message.payload
    return message.topic, encode(_mutate(value, draw))


messages = st.lists(
    st.one_of(fixture_messages(), fixture_messages(), st.tuples(topics, payloads)),
    min_size=1,
    max_size=8,
)


# -- properties ----------------------------------------------------------------------------


def check_reading(r: Reading, received_at: float) -> None:
    assert METRIC_NAME.match(r.metric), r
    assert math.isfinite(r.value) and math.isfinite(r.ts), r
    assert received_at - AGE <= r.ts <= received_at + SKEW, r
    known = METRICS.get(r.metric)
    if known is not None:
        assert known.low <= r.value <= known.high, r
    assert r.value not in ERROR_VALUES.get(r.metric, ()), r
    for segment in (r.home, r.room, r.device):
        assert valid_segment(segment), r
    assert r.room != GATEWAY_SEGMENT, r


def check_items(items: list[Ingested], payload: bytes, received_at: float) -> None:
    assert items, "no item"
    *side, own = items
    assert isinstance(own, ReadingsIn | StateIn | AudioIn | Ignored | DeadLetter), own
    # Before the message's own item only what it carries along: availability and the dead
    # letters of its rejected readings.
    assert all(isinstance(i, StateIn | DeadLetter) for i in side), items
    event(type(own).__name__ + (" with readings" if getattr(own, "readings", None) else ""))
    for item in items:
        if isinstance(item, DeadLetter):
            event(f"dead letter {item.reason}")
        if isinstance(item, ReadingsIn):
            for r in item.readings:
                check_reading(r, received_at)
        elif isinstance(item, DeadLetter):
            assert item.reason in REASONS, item
            assert item.detail and isinstance(item.detail, str), item
            assert len(item.payload) <= MAX_DL and payload.startswith(item.payload), item


@PROPERTY
@given(st.lists(st.one_of(native, st.tuples(topics, payloads)), min_size=1, max_size=4))
def test_the_native_decoder_never_raises_and_lets_only_good_readings_through(
    batch: list[tuple[str, bytes]],
) -> None:
    decoder = MessageDecoder(topic_root=ROOT, max_dead_letter_bytes=MAX_DL)
    for topic, payload in batch:
        check_items(decoder.decode(topic, payload, NOW), payload, NOW)


@PROPERTY
@given(
    st.tuples(good_segments, st.one_of(good_segments, st.just(GATEWAY_SEGMENT)), good_segments),
    telemetry_objects,
    st.one_of(st.just(NOW), st.floats(NOW - 86400, NOW + 86400), st.floats(TS_MIN, TS_MAX)),
)
def test_telemetry_on_a_device_topic_is_readings_or_a_documented_dead_letter(
    where: tuple[str, str, str], message: dict[str, Any], received_at: float
) -> None:
    home, room, device = where
    topic = f"{ROOT}/{home}/{room}/{device}/telemetry"
    payload = encode(message)
    items = MessageDecoder(topic_root=ROOT, max_dead_letter_bytes=MAX_DL).decode(
        topic, payload, received_at
    )
    check_items(items, payload, received_at)
    if room == GATEWAY_SEGMENT:
        assert [type(i) for i in items] == [DeadLetter] and items[0].reason == "bad_topic"


@PROPERTY
@given(messages, st.sampled_from([NOW, NOW + 86400 * 30, TS_MIN + AGE]))
def test_the_decoder_with_every_adapter_never_raises_and_lets_only_good_readings_through(
    batch: list[tuple[str, bytes]], received_at: float
) -> None:
    registry = all_adapters()
    decoder = MessageDecoder(topic_root=ROOT, adapters=list(registry), max_dead_letter_bytes=MAX_DL)
    for topic, payload in batch:
        check_items(decoder.decode(topic, payload, received_at), payload, received_at)


def check_adapter_output(out: Adapted | DeadLetter, received_at: float) -> None:
    if isinstance(out, DeadLetter):
        assert out.reason in ADAPTER_REASONS, out
        assert out.detail
        return
    assert isinstance(out, Adapted)
    for r in out.readings:
        # Adapters check types, units and finiteness; ranges and time bounds are the
        # decoder's (gateway.validation), so only the adapters' own guarantees here.
        assert METRIC_NAME.match(r.metric), r
        assert math.isfinite(r.value) and abs(r.value) <= 1e15, r
        assert r.ts == received_at or TS_MIN <= r.ts < TS_MAX, r
        assert valid_segment(r.home) and valid_segment(r.room) and valid_segment(r.device), r


@PROPERTY
@given(messages)
def test_every_adapter_on_its_own_never_raises(batch: list[tuple[str, bytes]]) -> None:
    adapters: list[BaseAdapter[Any]] = list(all_adapters())
    for topic, payload in batch:
        for adapter in adapters:
            check_adapter_output(adapter.adapt(topic, payload, NOW), NOW)
