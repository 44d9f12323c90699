"""The gateway as a good MQTT citizen, against a real Mosquitto: retained birth published only
once its subscription is in place, last will on an abrupt loss, ``offline`` at a clean stop,
reconnection paced by the backoff (never a busy loop) while the broker is down, and shared
subscriptions that split one stream between the gateways of a group.

(SIGTERM's flush-and-offline is tested in tests/test_gateway_durability.py.)"""

from __future__ import annotations

import asyncio
import socket
import threading
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.app import Gateway
from gateway.config import AdminConfig, GatewayConfig, MqttConfig, StorageConfig
from schemas.telemetry import encode_telemetry
from schemas.topics import device_topic
from tests.conftest import MosquittoBroker
from tests.test_gateway_ingest import (
    TS0,
    Publisher,
    gateway_config,
    metric_value,
    query,
    rows,
)
from tests.test_mqtt_security import RecordingBackoff
from tests.waiting import wait_for


class StatusWatcher:
    """Records every payload on the gateway's status topic, and publishes a telemetry message
    the moment it sees ``online`` (a device that waits for the gateway before talking)."""

    def __init__(self, port: int, status_topic: str, on_online: tuple[str, bytes]) -> None:
        self.seen: list[bytes] = []
        self._cond = threading.Condition()
        self._on_online = on_online
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"w-{uuid.uuid4()}")
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(status_topic, qos=1)
        self.client.loop_start()
        assert subscribed.wait(10), "the watcher could not subscribe"

    def _on_message(self, client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        if msg.payload == b"online" and not self.seen:
            client.publish(*self._on_online, qos=1)
        with self._cond:
            self.seen.append(bytes(msg.payload))
            self._cond.notify_all()

    def wait(self, count: int, timeout: float = 20.0) -> list[bytes]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.seen) >= count, timeout)
            return list(self.seen)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def test_birth_after_subscribe_will_on_loss_offline_at_stop(
    tmp_path: Path, mosquitto: MosquittoBroker, topic_root: str
) -> None:
    config = gateway_config(tmp_path, mosquitto, topic_root)
    gw = Gateway(config)
    topic = device_topic("h1", "hall", "thermo-1", "telemetry", root=topic_root)
    # The watcher subscribes before the gateway exists, and publishes at QoS 1 the instant it
    # sees the birth. The gateway's session is brand new: had the birth preceded the SUBACK,
    # the broker would have had no subscription to route that message to, and it would be lost.
    first = encode_telemetry(TS0, {"temperature": 20.5}, seq=1)
    watcher = StatusWatcher(mosquitto.port, gw.status_topic, (topic, first))
    try:
        async with gw:
            assert watcher.wait(1) == [b"online"]
            await wait_for(lambda: rows(gw) == 1, what="the message sent on seeing the birth")
            # An abrupt loss (no DISCONNECT): the broker publishes the last will, and the
            # gateway reconnects and announces itself again.
            await asyncio.to_thread(gw.mqtt._client.socket().shutdown, socket.SHUT_RDWR)
            assert watcher.wait(3) == [b"online", b"offline", b"online"]
            await wait_for(lambda: gw.mqtt.connected, what="reconnection")
        assert watcher.wait(4) == [b"online", b"offline", b"online", b"offline"]
    finally:
        watcher.close()
    assert query(config.storage.path, "SELECT device, value FROM readings") == [("thermo-1", 20.5)]


async def test_broker_down_is_retried_on_the_backoff_schedule(
    tmp_path: Path, mosquitto: MosquittoBroker, topic_root: str
) -> None:
    low, high = 0.1, 1.0
    config = gateway_config(tmp_path, mosquitto, topic_root)
    assert (config.mqtt.reconnect_min_s, config.mqtt.reconnect_max_s) == (low, high)
    backoff = RecordingBackoff(low, high)
    async with Gateway(config, mqtt_backoff=backoff) as gw:
        assert await asyncio.to_thread(gw.mqtt.subscribed.wait, 20)
        name = "homeedge_gateway_mqtt_connect_attempts_total"
        before = metric_value(gw, name)
        drawn_before = len(backoff.drawn)
        await asyncio.to_thread(mosquitto.stop)
        await wait_for(lambda: metric_value(gw, name) - before >= 3, what="three retries")
        during = metric_value(gw, name) - before
        drawn = len(backoff.drawn) - drawn_before
        unreachable = metric_value(
            gw, "homeedge_gateway_mqtt_connect_failures_total", {"reason": "unreachable"}
        )
        await asyncio.to_thread(mosquitto.start)
        await wait_for(lambda: gw.mqtt.connected, within=30, what="reconnection")
        assert await asyncio.to_thread(gw.mqtt.subscribed.wait, 20)
        pub = Publisher(mosquitto.port)
        try:
            pub.publish(
                device_topic("h1", "lab", "plug-1", "telemetry", root=topic_root),
                encode_telemetry(TS0, {"power": 5.0}, seq=1),
            )
            await wait_for(lambda: rows(gw) == 1, what="a message after the broker came back")
        finally:
            pub.close()
        assert metric_value(gw, "homeedge_gateway_mqtt_reconnects_total") == 1
    # Each retry waited a delay drawn from the schedule (no busy loop), growing within bounds,
    # and the schedule started again after the successful reconnect.
    assert 3 <= during <= drawn, (during, drawn)
    assert unreachable >= during - 1
    backoff.assert_on_schedule()
    assert backoff.drawn[-1][0] == 0, "reset after the reconnect"


def _shared_config(
    tmp_path: Path, broker: MosquittoBroker, root: str, name: str, proto: str
) -> GatewayConfig:
    return GatewayConfig(
        gateway_id=name,
        mqtt=MqttConfig(
            url=broker.url,
            topic_root=root,
            client_id=f"{name}-{root}",  # each member has its own persistent session
            shared_group="homeedge",
            protocol=proto,  # type: ignore[arg-type]
            reconnect_min_s=0.1,
            reconnect_max_s=1.0,
        ),
        storage=StorageConfig(path=tmp_path / f"{name}.db"),
        admin=AdminConfig(port=0),
    )


def markers(gw: Gateway) -> int:
    sql = "SELECT count(*) FROM readings WHERE device = 'marker-1'"
    return int(query(gw.config.storage.path, sql)[0][0])


@pytest.mark.parametrize("proto", ["3.1.1", "5"])
async def test_shared_subscription_splits_the_stream(
    tmp_path: Path, mosquitto: MosquittoBroker, topic_root: str, proto: str
) -> None:
    total = 400
    a = Gateway(_shared_config(tmp_path, mosquitto, topic_root, "gw-a", proto))
    b = Gateway(_shared_config(tmp_path, mosquitto, topic_root, "gw-b", proto))
    async with a, b:
        for gw in (a, b):
            assert await asyncio.to_thread(gw.mqtt.subscribed.wait, 20)
        pub = Publisher(mosquitto.port)
        try:
            for seq in range(total):
                device = f"thermo-{seq % 4}"
                pub.publish(
                    device_topic("h1", "lab", device, "telemetry", root=topic_root),
                    encode_telemetry(TS0 + seq, {"temperature": 20.0}, seq=seq),
                )
            await asyncio.to_thread(pub.wait_acked, 30)
            await wait_for(lambda: rows(a) + rows(b) >= total, what="the whole stream")
            # Would anything arrive twice? Markers, sent after the whole stream was acked,
            # until each member has stored one: the broker hands out one publisher's messages
            # in the order it got them and each member's session delivers in that order, the
            # writer commits in arrival order; so a member that stored a marker has stored
            # every stream message the broker ever routed to it.
            marker = device_topic("h1", "lab", "marker-1", "telemetry", root=topic_root)

            async def send_marker(n: int) -> None:
                pub.publish(marker, encode_telemetry(TS0 + total + n, {"power": 1.0}, seq=n))
                await wait_for(lambda: markers(a) + markers(b) > n, what=f"marker {n}")

            for n in range(20):
                await send_marker(n)
                if markers(a) and markers(b):
                    break
            assert markers(a) and markers(b), "the markers all went to one member"
        finally:
            pub.close()
    sql = "SELECT device, seq FROM readings WHERE device != 'marker-1'"
    got_a = set(query(a.config.storage.path, sql))
    got_b = set(query(b.config.storage.path, sql))
    assert got_a and got_b, (len(got_a), len(got_b))  # both took part
    assert not got_a & got_b  # no message went to both
    assert got_a | got_b == {(f"thermo-{s % 4}", s) for s in range(total)}


def test_shared_group_must_be_one_topic_level() -> None:
    with pytest.raises(ValueError, match="topic level"):
        MqttConfig(shared_group="a/b")
