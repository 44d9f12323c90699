"""The demo's embedded broker (amqtt in its own process) does what the gateway needs."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator

import aiomqtt
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import free_port, wait_port


@pytest.fixture
def embedded_broker() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "devices.broker", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, timeout=20)
        yield port
    finally:
        proc.terminate()
        try:
            assert proc.wait(10) == 0  # SIGTERM is a clean stop
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _client(port: int, identifier: str, *, clean: bool = True) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=identifier,
        clean_session=clean,
        protocol=aiomqtt.ProtocolVersion.V311,
    )


async def _receive(client: aiomqtt.Client, n: int) -> list[bytes]:
    out: list[bytes] = []
    async with asyncio.timeout(10):
        async for msg in client.messages:
            assert isinstance(msg.payload, bytes | bytearray)
            out.append(bytes(msg.payload))
            if len(out) >= n:
                return out
    return out


async def test_relays_qos1_and_queues_for_a_persistent_session(embedded_broker: int) -> None:
    port = embedded_broker
    async with _client(port, "sub-1", clean=False) as sub:
        await sub.subscribe("t/#", qos=1)
        async with _client(port, "pub-1") as pub:
            await pub.publish("t/live", b"hello", qos=1)
            assert await _receive(sub, 1) == [b"hello"]
    # The subscriber is away: a persistent session must queue its QoS 1 messages (amqtt's own
    # anonymous auth would drop them; devices.broker's OpenAuthPlugin keeps them).
    async with _client(port, "pub-1") as pub:
        for i in range(20):
            await pub.publish("t/queued", str(i).encode(), qos=1)
    async with _client(port, "sub-1", clean=False) as sub:
        got = await _receive(sub, 20)
    assert got == [str(i).encode() for i in range(20)]


def test_retained_state_and_last_will(embedded_broker: int) -> None:
    port = embedded_broker
    device = paho.Client(CallbackAPIVersion.VERSION2, client_id="dev-1")
    device.will_set("h/r/d/state", b"offline", qos=1, retain=True)
    device.connect("127.0.0.1", port, keepalive=30)
    device.loop_start()
    device.publish("h/r/d/state", b"online", qos=1, retain=True).wait_for_publish(5)
    device.loop_stop()

    def retained_state() -> list[tuple[bytes, bool]]:
        got: list[tuple[bytes, bool]] = []
        watcher = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"w-{time.monotonic()}")
        watcher.on_message = lambda _c, _u, m: got.append((m.payload, m.retain))
        watcher.connect("127.0.0.1", port)
        watcher.subscribe("h/+/+/state", qos=1)
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            watcher.loop(0.1)
        watcher.disconnect()
        return got

    assert retained_state()[0] == (b"online", True)
    sock = device.socket()
    assert sock is not None
    sock.close()  # vanish without DISCONNECT: the broker must publish the will
    deadline = time.monotonic() + 10
    state = retained_state()
    while state[0][0] != b"offline" and time.monotonic() < deadline:
        time.sleep(0.1)
        state = retained_state()
    assert state[0] == (b"offline", True)
