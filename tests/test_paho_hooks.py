"""Each private paho hook of `gateway.paho_hooks`, checked against the installed paho and a real
Mosquitto, so a paho release that moves one fails here (paho is pinned to one minor series)."""

from __future__ import annotations

import gc
import inspect
import threading
import time
import weakref
from importlib.metadata import version

import paho.mqtt.client as paho
import pytest

from gateway.config import MqttConfig
from gateway.ingest import MessageDecoder
from gateway.monitoring import GatewayMetrics
from gateway.mqtt import MqttBridge
from gateway.paho_hooks import HookedClient, _BufferedSocket
from tests.conftest import MosquittoBroker


def test_paho_is_the_pinned_minor_series() -> None:
    assert version("paho-mqtt").startswith("2.2."), version("paho-mqtt")


def test_the_private_names_the_hooks_use_exist_with_their_signatures() -> None:
    assert list(inspect.signature(paho.Client._create_socket).parameters) == ["self"]
    assert list(inspect.signature(paho.Client._ssl_wrap_socket).parameters) == [
        "self",
        "tcp_sock",
    ]
    assert list(inspect.signature(paho.Client._packet_queue).parameters)[:5] == [
        "self",
        "command",
        "packet",
        "mid",
        "qos",
    ]
    assert list(inspect.signature(paho.Client._handle_publish).parameters) == ["self"]
    assert list(inspect.signature(paho.Client.loop_read).parameters) == ["self", "max_packets"]
    client = HookedClient(paho.CallbackAPIVersion.VERSION2, client_id="hooks")
    for name in ("_ssl_context", "_host", "_connect_timeout", "_protocol", "_sock"):
        assert hasattr(client, name), name
    assert {"command", "packet"} <= set(client._in_packet)


def _connected(client: HookedClient, port: int) -> threading.Event:
    up = threading.Event()
    client.on_connect = lambda *_a: up.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert up.wait(10), "no CONNACK"
    return up


def _subscribed(client: paho.Client, topic: str) -> None:
    """Subscribe at QoS 1 and wait for the SUBACK: from then on the broker drops nothing."""
    done = threading.Event()
    client.on_subscribe = lambda *_a: done.set()
    client.subscribe(topic, qos=1)
    assert done.wait(10), "no SUBACK"


def test_plain_tcp_reads_are_buffered_and_batched_acks_reach_the_broker(
    mosquitto: MosquittoBroker, topic_root: str
) -> None:
    """`_create_socket` gives paho a `_BufferedSocket`; `ack_many` (``_packet_queue``) sends
    PUBACKs the broker accepts: with acks held, a QoS 1 message is redelivered on the next
    session; once acked in a batch, it is not."""
    topic = f"{topic_root}/hooks"
    received: list[tuple[int, bool]] = []
    got = threading.Event()

    def on_message(_c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        received.append((msg.mid, msg.dup))
        got.set()

    def session() -> HookedClient:
        c = HookedClient(
            paho.CallbackAPIVersion.VERSION2,
            client_id=f"hooks-{topic_root}",
            clean_session=False,
            manual_ack=True,
        )
        c.on_message = on_message
        _connected(c, mosquitto.port)
        _subscribed(c, topic)
        return c

    sub = session()
    assert isinstance(sub.socket(), _BufferedSocket)
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"pub-{topic_root}")
    _connected(pub, mosquitto.port)
    pub.publish(topic, b"x", qos=1).wait_for_publish(10)
    assert got.wait(10)
    sub.disconnect()  # not acked: the broker keeps the message in the session
    sub.loop_stop()
    got.clear()
    sub = session()
    assert got.wait(10), "an un-acked message must be redelivered"
    sub.ack_many([received[-1][0]])
    time.sleep(0.3)
    sub.disconnect()
    sub.loop_stop()
    got.clear()
    received.clear()
    sub = session()
    pub.publish(topic, b"marker", qos=1).wait_for_publish(10)
    assert got.wait(10)
    assert len(received) == 1 and received[0][1] is False, received  # only the marker
    for c in (sub, pub):
        c.disconnect()
        c.loop_stop()


def test_a_closed_bridge_frees_its_client_without_a_garbage_collection() -> None:
    """No reference cycle between bridge and client, so paho closes its sockets when the
    bridge goes, not at some later collection (this is why ``_reset_sockets`` is not needed)."""
    bridge = MqttBridge(
        MqttConfig(),
        client_id="unit",
        status_topic="homeedge/gw/gateway/status",
        decoder=MessageDecoder(topic_root="homeedge"),
        writer=None,  # type: ignore[arg-type]  # never used: nothing is received
        metrics=GatewayMetrics(),
    )
    client = weakref.ref(bridge._client)
    bridge.close()
    gc.disable()
    try:
        del bridge
        assert client() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("scheme", ["plain"])
def test_connect_errors_are_kept_as_text(scheme: str) -> None:
    client = HookedClient(paho.CallbackAPIVersion.VERSION2, client_id="hooks")
    with pytest.raises(OSError):
        client.connect("127.0.0.1", 9)  # discard port: nothing listens
    assert client.last_connect_error is not None
    label, text = client.last_connect_error
    assert label == "unreachable" and "refused" in text


def test_a_full_event_queue_never_refuses_the_status_messages() -> None:
    """Events and discovery are bounded by ``mqtt.publish_queue`` (through the ``outgoing``
    hook); birth and ``offline`` go through paho's queue unbounded, so a backlog of events from
    an outage cannot leave the will's ``offline`` retained while the gateway is up."""
    metrics = GatewayMetrics()
    bridge = MqttBridge(
        MqttConfig(publish_queue=2),
        client_id="unit",
        status_topic="homeedge/gw/gateway/status",
        decoder=MessageDecoder(topic_root="homeedge"),
        writer=None,  # type: ignore[arg-type]  # never used: nothing is received
        metrics=metrics,
    )
    try:
        # Not connected: QoS 1 messages wait in paho's queue for the connection.
        accepted = [bridge.publish("homeedge/h1/gateway/events/x", b"{}") for _ in range(5)]
        assert accepted == [True, True, False, False, False]
        assert bridge._client.outgoing() == 2
        status = bridge._client.publish("homeedge/gw/gateway/status", b"online", 1, True)
        # Queued for the connection (paho says NO_CONN while it is down), not refused.
        assert status.rc != paho.MQTT_ERR_QUEUE_SIZE
        assert bridge._client.outgoing() == 3
        dropped = metrics.registry.get_sample_value(
            "homeedge_gateway_mqtt_published_total", {"outcome": "dropped"}
        )
        assert dropped == 3
    finally:
        bridge.close()


@pytest.mark.parametrize("protocol", [paho.MQTTv311, paho.MQTTv5])
def test_publishes_reach_the_lean_handler_with_3_1_1_and_on_message_with_5(
    mosquitto: MosquittoBroker, topic_root: str, protocol: paho.MQTTProtocolVersion
) -> None:
    """`_handle_publish`: with 3.1.1, QoS 0 and 1 messages (retained, redelivered, empty
    payload) reach ``on_publish_received`` with the same fields paho's MQTTMessage has; with
    MQTT 5 they take paho's path to ``on_message``. Either way a read burst ends in
    ``on_read_burst``."""
    topic = f"{topic_root}/lean/\u00e9"
    got: list[tuple[bytes, bytes, int, bool, bool]] = []
    mids: list[int] = []
    bursts = threading.Event()
    done = threading.Event()

    def lean(t: bytes, payload: bytes, qos: int, mid: int, retain: bool, dup: bool) -> None:
        got.append((t, payload, qos, retain, dup))
        mids.append(mid)
        if len(got) == 4:
            done.set()

    def on_message(_c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        lean(
            msg.topic.encode(),
            bytes(msg.payload),
            msg.qos,
            msg.mid,
            bool(msg.retain),
            bool(msg.dup),
        )

    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"pub-{topic_root}")
    _connected(pub, mosquitto.port)
    pub.publish(topic, b"kept", qos=1, retain=True).wait_for_publish(10)
    sub = HookedClient(
        paho.CallbackAPIVersion.VERSION2,
        client_id=f"lean-{topic_root}",
        protocol=protocol,
        manual_ack=True,
    )
    if protocol == paho.MQTTv311:
        sub.on_publish_received = lean
    sub.on_message = on_message
    sub.on_read_burst = bursts.set
    _connected(sub, mosquitto.port)
    _subscribed(sub, topic)
    pub.publish(topic, b'{"x": 1}', qos=1).wait_for_publish(10)
    pub.publish(topic, b"", qos=1).wait_for_publish(10)
    pub.publish(topic, b"q0", qos=0).wait_for_publish(10)
    assert done.wait(10), got
    assert got == [
        (topic.encode(), b"kept", 1, True, False),
        (topic.encode(), b'{"x": 1}', 1, False, False),
        (topic.encode(), b"", 1, False, False),
        (topic.encode(), b"q0", 0, False, False),
    ]
    assert all(m > 0 for m in mids[:3]) and mids[3] == 0 and len(set(mids[:3])) == 3
    assert bursts.is_set()
    pub.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)  # clear the retained one
    for c in (sub, pub):
        c.disconnect()
        c.loop_stop()
