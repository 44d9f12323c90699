"""The contract: topics, telemetry, audio frames, state, batch, generated JSON Schemas."""

from __future__ import annotations

import numpy as np
import pytest

from schemas import PayloadError, TopicError
from schemas.audio import HEADER_SIZE, decode_audio_frame, encode_audio_frame
from schemas.batch import Batch, WindowAggregate, decode_batch, encode_batch
from schemas.generate import generated_files
from schemas.metrics import METRICS, DeviceClass, infer_device_class, metric
from schemas.state import Availability, decode_state, encode_state
from schemas.telemetry import decode_telemetry, encode_telemetry
from schemas.topics import (
    DeviceTopic,
    Kind,
    device_subscription,
    device_topic,
    gateway_events_topic,
    parse_device_topic,
)


def test_topic_round_trip_with_nested_root() -> None:
    topic = device_topic("home-1", "kitchen", "thermostat-1", Kind.TELEMETRY, root="t/abc")
    assert topic == "t/abc/home-1/kitchen/thermostat-1/telemetry"
    assert parse_device_topic(topic, root="t/abc") == DeviceTopic(
        "home-1", "kitchen", "thermostat-1", Kind.TELEMETRY
    )
    assert device_subscription(Kind.AUDIO, root="t/abc") == "t/abc/+/+/+/audio"


@pytest.mark.parametrize(
    "topic",
    [
        "homeedge/h/r/d",
        "homeedge/h/r/d/telemetry/extra",
        "homeedge/h/r/d/video",
        "other/h/r/d/telemetry",
        "homeedge/h//d/telemetry",
        "homeedge/h/gateway/events/telemetry",
        "homeedge/h/r/d+x/telemetry",
    ],
)
def test_bad_topics_are_rejected(topic: str) -> None:
    with pytest.raises(TopicError):
        parse_device_topic(topic)


def test_builders_refuse_wildcards_and_reserved_room() -> None:
    with pytest.raises(TopicError):
        device_topic("h", "r", "#", Kind.STATE)
    with pytest.raises(TopicError):
        device_topic("h", "gateway", "d", Kind.STATE)
    assert gateway_events_topic("h", "alarm") == "homeedge/h/gateway/events/alarm"


def test_telemetry_round_trip() -> None:
    payload = encode_telemetry(1764403200.25, {"temperature": 21.5, "custom_metric": 3}, seq=7)
    msg = decode_telemetry(payload)
    assert msg.ts == 1764403200.25
    assert msg.seq == 7
    assert msg.readings == {"temperature": 21.5, "custom_metric": 3.0}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "invalid_json"),
        (b'{"ts": 1764403200, "readings": {"t": NaN}}', "invalid_json"),
        (b'{"ts": 1764403200, "readings": {"t": 1e999}}', "validation"),
        (b'{"ts": "now", "readings": {"t": 1}}', "validation"),
        (b'{"readings": {"t": 1}}', "validation"),
        (b'{"ts": 1764403200, "readings": {}}', "validation"),
        (b'{"ts": 1764403200, "readings": {"t": "warm"}}', "validation"),
        (b'{"ts": 1764403200, "readings": {"t": true}}', "validation"),
        (b'{"ts": 1764403200, "seq": -1, "readings": {"t": 1}}', "validation"),
        (b'{"ts": 12, "readings": {"t": 1}}', "validation"),
        (b'{"ts": 1764403200, "readings": {"Bad Name": 1}}', "validation"),
        (b"[1, 2]", "validation"),
        (b"\xff\xfe", "invalid_json"),
    ],
)
def test_bad_telemetry_names_its_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as info:
        decode_telemetry(payload)
    assert info.value.reason == reason


def test_oversized_telemetry() -> None:
    with pytest.raises(PayloadError) as info:
        decode_telemetry(b" " * 20000 + b"{}")
    assert info.value.reason == "oversized"


def test_audio_frame_round_trip_is_binary() -> None:
    samples = (np.sin(np.arange(1600) / 5) * 10000).astype(np.int16)
    payload = encode_audio_frame(1764403200.0, 3, samples)
    assert len(payload) == HEADER_SIZE + 3200
    frame = decode_audio_frame(payload)
    assert frame.seq == 3
    assert frame.ts == 1764403200.0
    assert np.array_equal(frame.samples, samples)
    assert frame.duration == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda p: p[:10], "bad_header"),
        (lambda p: b"XXXX" + p[4:], "bad_header"),
        (lambda p: p + b"\x00", "bad_samples"),
        (lambda p: p[:HEADER_SIZE], "bad_samples"),
        (lambda p: p + b"\x00" * 70000, "oversized"),
    ],
)
def test_bad_audio_frames(mutate, reason: str) -> None:  # type: ignore[no-untyped-def]
    good = encode_audio_frame(1764403200.0, 1, np.zeros(160, dtype=np.int16))
    with pytest.raises(PayloadError) as info:
        decode_audio_frame(mutate(good))
    assert info.value.reason == reason


def test_state_payloads() -> None:
    assert decode_state(encode_state(Availability.OFFLINE)) is Availability.OFFLINE
    with pytest.raises(PayloadError):
        decode_state(b"maybe")


def test_metric_registry() -> None:
    heart = metric("heart_rate")
    assert heart is not None and heart.health and heart.unit == "bpm"
    assert metric("no_such_metric") is None
    assert {"temperature", "humidity", "co2", "light", "motion", "power", "energy"} <= set(METRICS)
    assert infer_device_class("air-quality-3") is DeviceClass.AIR_QUALITY
    assert infer_device_class("thermostat-1") is DeviceClass.THERMOSTAT
    assert infer_device_class("lamp") is DeviceClass.GENERIC


def test_batch_round_trip_and_rejects_unknown_fields() -> None:
    agg = WindowAggregate(
        window_start=1764403200.0,
        window_s=60,
        home="p-abc",
        room_class="kitchen",
        device_class="thermostat",
        metric="temperature",
        unit="°C",
        policy="aggregate",
        count=60,
        sum=1290.0,
        mean=21.5,
    )
    batch = Batch(
        batch_id="0" * 32, gateway="gw-1", seq=1, created_at=1764403300.0, aggregates=[agg]
    )
    assert decode_batch(encode_batch(batch)) == batch
    with pytest.raises(PayloadError):
        decode_batch(encode_batch(batch).replace(b'"seq":1', b'"seq":1,"device":"x"'))


def test_checked_in_json_schemas_match_the_code() -> None:
    for path, text in generated_files().items():
        assert path.read_text(encoding="utf-8") == text, f"{path} drifted: run make schemas"
