"""The simulators against a real Mosquitto: what an independent subscriber receives."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiomqtt

from devices.fleet import Fleet, FleetConfig
from devices.world import World
from schemas.audio import decode_audio_frame
from schemas.metrics import METRICS, DeviceClass
from schemas.state import Availability, decode_state
from schemas.telemetry import decode_telemetry
from schemas.topics import Kind, parse_device_topic
from tests.conftest import MosquittoBroker

Received = list[tuple[str, bytes, bool]]


async def _collect(
    broker: MosquittoBroker,
    topic_filter: str,
    until: Callable[[Received], bool],
    *,
    within: float = 20.0,
    ready: asyncio.Event | None = None,
) -> Received:
    """Subscribe (QoS 1) and gather (topic, payload, retain) until `until` holds."""
    got: Received = []
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        await client.subscribe(topic_filter, qos=1)
        if ready is not None:
            ready.set()
        async with asyncio.timeout(within):
            async for msg in client.messages:
                assert isinstance(msg.payload, bytes | bytearray)
                got.append((str(msg.topic), bytes(msg.payload), bool(msg.retain)))
                if until(got):
                    break
    return got


async def test_fleet_publishes_valid_telemetry_audio_and_state(
    mosquitto: MosquittoBroker, topic_root: str, tmp_path: Path
) -> None:
    truth_file = tmp_path / "truth.jsonl"
    config = FleetConfig(
        broker=mosquitto.url,
        topic_root=topic_root,
        homes=1,
        seed=3,
        rate=10.0,
        count=5,
        # A simulated week per second of wall clock: faults happen within the run.
        start=1764374400.0,
        speed=600_000.0,
        catch_up=False,
        anomaly_rate=20.0,
        ground_truth=truth_file,
    )
    fleet = Fleet(config)
    devices = fleet.stats.devices
    ready = asyncio.Event()
    expected = devices * (5 + 2)  # five messages, online and offline

    collector = asyncio.create_task(
        _collect(mosquitto, f"{topic_root}/#", lambda got: len(got) >= expected, ready=ready)
    )
    await ready.wait()
    stats = await fleet.run()
    got = await collector

    assert stats.published == devices * 5 and stats.failed == 0
    by_kind: dict[Kind, int] = {k: 0 for k in Kind}
    states: dict[str, list[Availability]] = {}
    for topic, payload, _retain in got:
        where = parse_device_topic(topic, root=topic_root)
        by_kind[where.kind] += 1
        if where.kind is Kind.TELEMETRY:
            msg = decode_telemetry(payload)
            assert msg.seq is not None
            assert all(METRICS[name].plausible(v) for name, v in msg.readings.items())
        elif where.kind is Kind.AUDIO:
            assert decode_audio_frame(payload).duration == 0.5
        else:
            states.setdefault(where.device, []).append(decode_state(payload))
    assert by_kind[Kind.AUDIO] >= 5 and by_kind[Kind.TELEMETRY] >= 5 * (devices - 2)
    assert len(states) == devices
    assert all(s == [Availability.ONLINE, Availability.OFFLINE] for s in states.values())

    lines = [json.loads(line) for line in truth_file.read_text().splitlines()]
    assert len(lines) == stats.truths > 0
    assert {"spike", "stuck", "drift"} & {line["kind"] for line in lines}
    for line in lines:
        assert set(line) == {"home", "room", "device", "metric", "start", "end", "kind"}
        assert line["home"] == "home-001" and line["start"] <= line["end"]


async def test_state_is_retained_online_and_the_last_will_says_offline_after_a_kill(
    mosquitto: MosquittoBroker, topic_root: str
) -> None:
    devices = len(World(homes=1, seed=2).devices)
    state_filter = f"{topic_root}/+/+/+/state"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "devices",
        "--broker",
        mosquitto.url,
        "--topic-root",
        topic_root,
        "--homes",
        "1",
        "--seed",
        "2",
        "--progress",
        "0",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    watching = asyncio.Event()

    def all_offline(got: Received) -> bool:
        return sum(p == b"offline" for _, p, _ in got) >= devices

    live = asyncio.create_task(
        _collect(mosquitto, state_filter, all_offline, within=30, ready=watching)
    )
    try:
        await watching.wait()
        # A late subscriber sees every device's retained `online`.
        deadline = time.monotonic() + 20
        retained: Received = []
        while time.monotonic() < deadline:
            retained = await _collect(mosquitto, state_filter, lambda got: len(got) >= devices)
            if all(r and p == b"online" for _, p, r in retained):
                break
            await asyncio.sleep(0.2)  # some devices were still connecting
        assert len(retained) == devices
        assert all(r and p == b"online" for _, p, r in retained)
        proc.send_signal(signal.SIGKILL)  # no DISCONNECT: the broker publishes the wills
        await asyncio.wait_for(proc.wait(), 10)
        got = await live
    finally:
        live.cancel()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    offline = {t for t, p, _ in got if p == b"offline"}
    assert len(offline) == devices
    # The wills are retained too: what a newcomer reads now is `offline`.
    after = await _collect(mosquitto, state_filter, lambda got: len(got) >= devices)
    assert all(r and p == b"offline" for _, p, r in after), after


async def test_shared_connection_publishes_the_same_world(
    mosquitto: MosquittoBroker, topic_root: str
) -> None:
    config = FleetConfig(
        broker=mosquitto.url,
        topic_root=topic_root,
        homes=2,
        seed=1,
        rate=20.0,
        count=3,
        shared_connection=True,
    )
    fleet = Fleet(config)
    expected = fleet.stats.devices * 3
    microphones = sum(d.device_class is DeviceClass.MICROPHONE for d in fleet.world.devices)
    ready = asyncio.Event()
    collector = asyncio.create_task(
        _collect(
            mosquitto,
            f"{topic_root}/+/+/+/telemetry",
            lambda got: len(got) >= expected - 3 * microphones,
            ready=ready,
        )
    )
    await ready.wait()
    stats = await fleet.run()
    got = await collector
    assert stats.published == expected
    homes = {parse_device_topic(t, root=topic_root).home for t, _, _ in got}
    assert homes == {"home-001", "home-002"}


async def test_devices_reconnect_after_the_broker_restarts(
    mosquitto: MosquittoBroker, topic_root: str
) -> None:
    config = FleetConfig(broker=mosquitto.url, topic_root=topic_root, homes=1, rate=5.0)
    fleet = Fleet(config)
    stop = asyncio.Event()
    run = asyncio.create_task(fleet.run(stop))

    async def until(condition: Callable[[], bool]) -> None:
        for _ in range(600):
            if condition():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"not reached in 30 s: {fleet.stats}")

    devices = fleet.stats.devices
    try:
        await until(lambda: fleet.stats.connects == devices)
        await asyncio.to_thread(mosquitto.restart, 1.0)
        await until(lambda: fleet.stats.connects == 2 * devices)
        before = fleet.stats.published

        # Every device publishes again on its new connection.
        def everyone(got: Received) -> bool:
            return len({t.rsplit("/", 2)[-2] for t, _, _ in got if "/state" not in t}) == devices

        after = await _collect(mosquitto, f"{topic_root}/+/+/+/+", everyone)
        assert fleet.stats.published > before and fleet.stats.connected == devices
        assert all(parse_device_topic(t, root=topic_root) for t, _, _ in after)
    finally:
        stop.set()
        await run
    assert fleet.stats.connected == 0
