"""`DeviceTable` and the decoder's admission (pure, a fake clock): the cap refuses new devices
and only them, idle devices are forgotten and are new again, microphones have their own cap, an
adapter's message keeps its admitted devices' part and dead-letters the rest."""

from __future__ import annotations

import numpy as np

from gateway.device_table import DeviceTable
from gateway.ingest import Adapted, AudioIn, AvailabilityChange, MessageDecoder, ReadingsIn, StateIn
from gateway.records import DeadLetter, Reading
from schemas.audio import encode_audio_frame
from schemas.telemetry import encode_telemetry
from tests.adapter_fakes import FnAdapter

TS0 = 1764403200.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def table(clock: Clock, *, max_devices: int = 3, max_microphones: int = 1) -> DeviceTable:
    evicted: list[int] = []
    t = DeviceTable(
        max_devices=max_devices,
        max_microphones=max_microphones,
        idle_s=60.0,
        clock=clock,
        on_evicted=evicted.append,
    )
    t.evictions = evicted  # type: ignore[attr-defined]
    return t


def test_the_cap_refuses_new_devices_only_and_idle_ones_are_forgotten_then_new_again() -> None:
    clock = Clock()
    t = table(clock)
    assert all(t.admit("h", d) for d in ("a", "b", "c"))
    assert not t.admit("h", "d")  # full
    assert not t.admit("other-home", "a")  # a device is (home, device)
    clock.now += 30
    assert t.admit("h", "a") and t.admit("h", "b")  # known devices keep working
    assert len(t) == 3 and ("h", "d") not in t
    clock.now += 31  # c idle for 61 s, a and b for 31 s
    assert t.admit("h", "d")  # c was forgotten to make room
    assert ("h", "c") not in t and len(t) == 3 and t.evicted == 1
    assert not t.admit("h", "e")
    clock.now += 61
    assert t.sweep() == 3 and len(t) == 0  # a quiet gateway forgets too
    assert t.admit("h", "c")  # forgotten: new again, admitted while there is room
    assert t.evictions == [1, 3]  # type: ignore[attr-defined]


def test_the_forgotten_devices_are_named_to_the_callback() -> None:
    clock = Clock()
    gone: list[list[tuple[str, str]]] = []
    t = DeviceTable(
        max_devices=3, max_microphones=1, idle_s=60.0, clock=clock, on_forgotten=gone.append
    )
    t.admit("h", "a")
    clock.now += 30
    t.admit("h", "b")
    clock.now += 31
    assert t.sweep() == 1 and gone == [[("h", "a")]]
    clock.now += 60
    t.admit("h2", "c")  # a new device's admission evicts too
    assert gone == [[("h", "a")], [("h", "b")]]


def test_microphones_need_a_microphone_slot_of_their_own() -> None:
    clock = Clock()
    t = table(clock, max_devices=5, max_microphones=1)
    assert t.admit("h", "mic-1", audio=True)
    assert t.admit("h", "sensor", audio=False)
    assert not t.admit("h", "mic-2", audio=True)  # a new device's audio: no microphone slot
    assert ("h", "mic-2") not in t
    assert not t.admit("h", "sensor", audio=True)  # a known sensor starting to send audio
    assert t.admit("h", "sensor")  # its other messages still pass
    assert "microphones" in t.refusal(audio=True) and t.microphones == 1
    clock.now += 61
    assert t.admit("h", "mic-2", audio=True)  # mic-1 forgotten, its slot is free
    assert t.microphones == 1


def telemetry(root: str, device: str) -> tuple[str, bytes]:
    return f"{root}/h/lab/{device}/telemetry", encode_telemetry(TS0, {"temperature": 21.0})


def test_the_decoder_admits_every_native_kind_and_dead_letters_the_refused() -> None:
    clock = Clock()
    t = table(clock, max_devices=2, max_microphones=1)
    dec = MessageDecoder(topic_root="r", devices=t)
    frame = encode_audio_frame(TS0, 0, np.zeros(1600, np.int16))
    assert isinstance(dec.decode(*telemetry("r", "a"), TS0)[-1], ReadingsIn)
    assert isinstance(dec.decode("r/h/lab/m/audio", frame, TS0)[-1], AudioIn)
    [dead] = dec.decode("r/h/lab/m2/audio", frame, TS0)  # max_microphones = 1
    assert isinstance(dead, DeadLetter) and dead.reason == "too_many_devices"
    assert dead.payload == frame[:24] and "samples not kept" in dead.detail  # never raw audio
    [dead] = dec.decode(*telemetry("r", "c"), TS0)
    assert isinstance(dead, DeadLetter) and dead.reason == "too_many_devices"
    assert "devices.max_devices" in dead.detail and dead.topic == "r/h/lab/c/telemetry"
    [dead] = dec.decode("r/h/lab/c/state", b"online", TS0)
    assert isinstance(dead, DeadLetter) and dead.reason == "too_many_devices"
    [state] = dec.decode("r/h/lab/a/state", b"online", TS0)
    assert isinstance(state, StateIn)
    # A bad message stays what it was: no slot is taken for it.
    [bad] = dec.decode("r/h/lab/zz/telemetry", b"{", TS0)
    assert isinstance(bad, DeadLetter) and bad.reason != "too_many_devices"
    assert len(t) == 2


def test_an_adapters_message_keeps_the_admitted_devices_and_dead_letters_the_rest() -> None:
    clock = Clock()
    t = table(clock, max_devices=2)
    t.admit("h", "known")

    def adapt(topic: str, payload: bytes, at: float) -> Adapted:
        readings = [
            Reading("h", "lab", d, "power", TS0, 1.0, None, at) for d in ("known", "new", "newer")
        ]
        changes = [AvailabilityChange("fake", "h", "lab", "newer", True, at)]
        return Adapted(readings, changes)

    dec = MessageDecoder(topic_root="r", adapters=[FnAdapter("eco/#", adapt)], devices=t)
    dead, *rest = dec.decode("eco/x", b"payload", TS0)
    # In the items' order: the availability of "newer" took the last slot, so "new" is refused.
    assert isinstance(dead, DeadLetter) and dead.reason == "too_many_devices"
    assert dead.detail.startswith("h/new: ") and dead.payload == b"payload"
    state, readings = rest
    assert isinstance(state, StateIn) and state.device == "newer"
    assert isinstance(readings, ReadingsIn)
    assert [r.device for r in readings.readings] == ["known", "newer"]
    assert [s.device for s in readings.seen] == ["known", "newer"]

    def only_new(topic: str, payload: bytes, at: float) -> Adapted:
        return Adapted([Reading("h", "lab", "other", "power", TS0, 1.0, None, at)])

    dec = MessageDecoder(topic_root="r", adapters=[FnAdapter("eco/#", only_new)], devices=t)
    [dead] = dec.decode("eco/y", b"p", TS0)  # nothing left: the message is the dead letter
    assert isinstance(dead, DeadLetter) and dead.reason == "too_many_devices"


def test_retained_replays_take_no_slot_so_a_new_device_still_gets_in() -> None:
    # After a reconnect the broker replays every retained topic (statestream states, stale
    # last wills): old state, not devices heard now.
    clock = Clock()
    t = table(clock, max_devices=2)
    dec = MessageDecoder(topic_root="r", devices=t)
    for d in range(10):
        *_, item = dec.decode(*telemetry("r", f"old-{d}"), TS0, retained=True)
        assert isinstance(item, ReadingsIn)  # stored, like any replay
        [state] = dec.decode(f"r/h/lab/gone-{d}/state", b"offline", TS0, retained=True)
        assert isinstance(state, StateIn)

    def adapt(topic: str, payload: bytes, at: float) -> Adapted:
        return Adapted([Reading("h", "lab", topic[4:], "power", TS0, 1.0, None, at)])

    eco = MessageDecoder(topic_root="r", adapters=[FnAdapter("eco/#", adapt)], devices=t)
    for d in range(10):
        *_, item = eco.decode(f"eco/entity-{d}", b"1", TS0, retained=True)
        assert isinstance(item, ReadingsIn)
    assert len(t) == 0
    assert isinstance(dec.decode(*telemetry("r", "live-1"), TS0)[-1], ReadingsIn)
    assert isinstance(eco.decode("eco/live-2", b"1", TS0)[-1], ReadingsIn)
    assert len(t) == 2
