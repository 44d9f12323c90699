"""The ingest decoder (pure): every input becomes readings, a state, an audio frame or a dead
letter with the right reason; adapters are consulted for foreign topics."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.ingest import (
    Adapted,
    AudioIn,
    AvailabilityChange,
    Ignored,
    MessageDecoder,
    ReadingsIn,
    StateIn,
)
from gateway.records import DeadLetter, Reading
from schemas.audio import encode_audio_frame
from schemas.state import Availability
from schemas.telemetry import encode_telemetry
from tests.adapter_fakes import FnAdapter

ROOT = "unit"
T = "unit/h1/kitchen/thermostat-1/telemetry"
NOW = 1764403300.0


def decode_all(topic: str, payload: bytes, *adapters: FnAdapter) -> list[object]:
    decoder = MessageDecoder(topic_root=ROOT, adapters=adapters, max_dead_letter_bytes=100)
    return list(decoder.decode(topic, payload, NOW))


def decode(topic: str, payload: bytes, *adapters: FnAdapter) -> object:
    """The one item a message without side items decodes to."""
    items = decode_all(topic, payload, *adapters)
    assert len(items) == 1, items
    return items[0]


def test_telemetry_becomes_one_reading_per_metric() -> None:
    out = decode(T, encode_telemetry(1764403200.5, {"temperature": 21.5, "humidity": 40}, seq=7))
    assert isinstance(out, ReadingsIn)
    assert sorted((r.metric, r.value, r.seq, r.ts) for r in out.readings) == [
        ("humidity", 40.0, 7, 1764403200.5),
        ("temperature", 21.5, 7, 1764403200.5),
    ]
    assert {(r.home, r.room, r.device, r.received_at) for r in out.readings} == {
        ("h1", "kitchen", "thermostat-1", NOW)
    }
    assert [(s.home, s.device, s.at) for s in out.seen] == [("h1", "thermostat-1", NOW)]


def test_state_and_audio() -> None:
    state = decode("unit/h1/hall/door-2/state", b"offline")
    assert isinstance(state, StateIn) and state.availability is Availability.OFFLINE
    frame = encode_audio_frame(1764403200.0, 3, np.zeros(1600, dtype=np.int16))
    audio = decode("unit/h1/hall/microphone-1/audio", frame)
    assert isinstance(audio, AudioIn)
    assert (audio.device, audio.frame.seq, len(audio.frame.samples)) == ("microphone-1", 3, 1600)


def test_gateway_output_topics_are_ignored() -> None:
    assert isinstance(decode("unit/h1/gateway/status", b"online"), Ignored)
    assert isinstance(decode("unit/h1/gateway/events/model", b"{}"), Ignored)
    # Local actions' notifications (gateway_notify_topic) come back on <root>/# too.
    assert isinstance(decode("unit/gw-1/gateway/notify", b"{}"), Ignored)


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (T, b"{not json", "invalid_json"),
        (T, b'{"ts": 1764403200}', "validation"),  # missing readings
        (T, b'{"ts": "yesterday", "readings": {"temperature": 1}}', "validation"),
        (T, b'{"ts": 1764403200, "readings": {"temperature": "hot"}}', "validation"),
        (T, b'{"ts": 1764403200, "readings": {"temperature": 1e999}}', "validation"),
        (T, b'{"ts": 1764403200, "readings": {"temperature": NaN}}', "invalid_json"),
        (T, b'{"ts": 1764403200, "readings": {}}', "validation"),
        (
            T,
            b'{"ts": 1764403200, "readings": {"t": 1}, "pad": "' + b"x" * 17000 + b'"}',
            "oversized",
        ),
        ("unit/h1/kitchen/telemetry", b"{}", "bad_topic"),
        ("unit/h1/kitchen/thermostat-1/video", b"{}", "bad_topic"),
        ("unit/h1/kit chen/thermostat-1/telemetry", b"{}", "bad_topic"),
        ("unit/h1/hall/microphone-1/audio", b"RIFF" + bytes(40), "bad_header"),
        ("unit/h1/hall/microphone-1/audio", b"HEAF", "bad_header"),
        ("unit/h1/hall/door-2/state", b"maybe", "validation"),
    ],
)
def test_bad_inputs_become_dead_letters(topic: str, payload: bytes, reason: str) -> None:
    out = decode(topic, payload)
    assert isinstance(out, DeadLetter), out
    assert (out.reason, out.topic, out.received_at) == (reason, topic, NOW)
    assert out.detail
    # Kept, cut to the configured size; of an audio frame only the header (raw audio is never
    # stored).
    keep = 24 if topic.endswith("/audio") else 100
    assert out.payload == payload[:keep]


def test_cut_payload_is_said_in_the_detail() -> None:
    out = decode(T, b"x" * 500)
    assert isinstance(out, DeadLetter) and len(out.payload) == 100
    assert "cut from 500 to 100 bytes" in out.detail


def fake_adapter(topic: str, payload: bytes, received_at: float) -> list[Reading] | DeadLetter:
    name = topic.split("/")[1]
    if payload == b"ignore":
        return []
    if payload == b"refuse":
        return DeadLetter(topic, payload, "adapter_validation", "refused", received_at)
    value = float(payload)  # raises on garbage: the decoder turns that into a dead letter
    return [Reading("h1", "lab", name, "temperature", received_at, value, None, received_at)]


def test_adapter_hook() -> None:
    adapter = FnAdapter("fake/+/temp", fake_adapter)
    out = decode("fake/probe-1/temp", b"19.5", adapter)
    assert isinstance(out, ReadingsIn)
    assert [(r.device, r.value) for r in out.readings] == [("probe-1", 19.5)]
    assert [s.device for s in out.seen] == ["probe-1"]
    empty = decode("fake/probe-1/temp", b"ignore", adapter)
    assert isinstance(empty, ReadingsIn) and empty.readings == []
    refused = decode("fake/probe-1/temp", b"refuse", adapter)
    assert isinstance(refused, DeadLetter) and refused.reason == "adapter_validation"
    broken = decode("fake/probe-1/temp", b"warm", adapter)
    assert isinstance(broken, DeadLetter) and broken.reason == "adapter_error"
    assert "ValueError" in broken.detail
    unknown = decode("other/thing", b"1", adapter)
    assert isinstance(unknown, DeadLetter) and unknown.reason == "unknown_topic"


def test_adapter_availability_is_stored_ahead_of_the_message() -> None:
    def adapt(topic: str, payload: bytes, at: float) -> Adapted:
        change = AvailabilityChange("fake", "h1", "lab", "plug-1", False, at - 1)
        return Adapted([], [change])

    state, message = decode_all("fake/plug-1/LWT", b"Offline", FnAdapter("fake/+/LWT", adapt))
    assert state == StateIn("h1", "lab", "plug-1", Availability.OFFLINE, NOW - 1)
    assert isinstance(message, ReadingsIn) and message.readings == [] and message.seen == []


def test_one_route_per_topic_first_adapter_wins() -> None:
    calls: list[str] = []

    def first(topic: str, payload: bytes, at: float) -> list[Reading]:
        calls.append("first")
        return []

    def second(topic: str, payload: bytes, at: float) -> list[Reading]:
        calls.append("second")
        return []

    decoder = MessageDecoder(
        topic_root=ROOT,
        adapters=[FnAdapter("a/#", first, "a"), FnAdapter("a/+/b", second, "b")],
    )
    for _ in range(3):
        decoder.decode("a/x/b", b"1", NOW)
    decoder.decode("a", b"1", NOW)  # "a/#" also matches its parent level
    assert calls == ["first"] * 4
    assert decoder.adapters.filters == ["a/#", "a/+/b"]
