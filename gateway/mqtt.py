"""The MQTT side of ingest: a paho-mqtt 2.x client that acknowledges only what is committed.

Threads and hand-offs (why paho and not aiomqtt: aiomqtt cannot delay a QoS 1 acknowledgement):

1. paho's network thread (``loop_start``) receives a PUBLISH, decodes and validates it right
   there (`gateway.ingest.MessageDecoder`, ~µs per message) and hands the result, tagged with an
   ack token ``(connection generation, mid)``, to the writer thread's bounded queue. When that
   queue is full the network thread waits (backpressure): it stops reading the socket, TCP
   fills, and the broker keeps the rest queued in our session; its window of un-acked messages
   (``max_inflight_messages`` / MQTT 5 Receive Maximum) also caps what reaches us.
2. the writer thread commits a batch, then calls `MqttBridge.ack_many` with the batch's tokens.
   The PUBACKs of a batch are queued as one outgoing packet that paho's network thread sends
   (as ``client.ack`` does for one; queueing from another thread is paho's threaded use), so a
   batch of 1000 acks costs one wake-up and one ``send`` instead of 1000 of each.
3. every time the connection drops or is made, the generation goes up (under a lock shared with
   `ack_many`). An ack whose generation is not the current one is skipped: the broker redelivers
   that message on the new connection (persistent session), the unique indexes ignore the
   duplicate row, and the redelivered copy is acked. A mid of an old connection could name a
   different message on the new one, so acking it would be wrong.

Session: a fixed client id and ``clean_session=False`` (3.1.1) or ``clean_start=False`` with a
session expiry and a Receive Maximum (5), so messages published while the gateway is down wait
at the broker. Availability: the gateway's status topic carries a retained ``online`` (birth,
published after the subscription is granted) and ``offline`` as the last will and at shutdown.

Reconnects are paho's own loop; the delay before each attempt is set by us (exponential between
``reconnect_min_s`` and ``reconnect_max_s`` with "equal jitter", reset after a successful
CONNACK), so a broker that is down is retried without a busy loop or a thundering herd.

Two private paho 2.x hooks are used for speed (paho is pinned <3; every test connection runs
through them): `_Client._create_socket` (buffered reads) and ``_packet_queue`` (batched acks).
"""

from __future__ import annotations

import logging
import random
import socket
import struct
import threading
import time
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.config import MqttConfig
from gateway.ingest import AudioIn, Ignored, Ingested, MessageDecoder, ReadingsIn, StateIn
from gateway.monitoring import GatewayMetrics
from gateway.writer import AckToken, Writer
from schemas.state import Availability, encode_state

log = logging.getLogger(__name__)

_RECV_CHUNK = 256 * 1024
_PUBACK = struct.Struct("!BBH")


class _BufferedSocket:
    """A plain TCP socket whose reads are served from one large ``recv``.

    paho reads a packet with several tiny ``recv`` calls (fixed header, length bytes, body)
    and one ``select`` each: at 20k msg/s that is most of the network thread's time. paho
    already supports sockets that buffer (TLS): when ``pending()`` is non-zero it reads without
    waiting in ``select``. Everything else is delegated to the real socket.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, bufsize: int) -> bytes:
        if self._pos >= len(self._buf):
            data = self._sock.recv(_RECV_CHUNK)  # BlockingIOError when empty, as paho expects
            if not data:
                return data
            self._buf, self._pos = data, 0
        chunk = self._buf[self._pos : self._pos + bufsize]
        self._pos += len(chunk)
        return chunk

    def pending(self) -> int:
        return len(self._buf) - self._pos

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _Client(paho.Client):
    """paho's client with `_BufferedSocket` on plain TCP connections (a private hook of paho
    2.x, pinned <3 in pyproject; the ingest tests exercise it on every connection)."""

    def _create_socket(self) -> Any:
        sock = super()._create_socket()
        if type(sock) is socket.socket:
            return _BufferedSocket(sock)
        return sock

    def ack_many(self, mids: Sequence[int]) -> None:
        """Queue the PUBACKs of `mids` as ONE outgoing packet, so they leave in one ``send``
        (``ack()`` costs a wake-up and a ``send`` per message). Same bytes as paho's PUBACK
        (3.1.1 and 5: a 2-byte body means "success, no properties")."""
        if mids:
            packet = b"".join([_PUBACK.pack(paho.PUBACK, 2, mid) for mid in mids])
            self._packet_queue(paho.PUBACK, packet, 0, 1)


class MqttBridge:
    """Connects paho's network thread to the `Writer`; see the module docstring."""

    def __init__(
        self,
        config: MqttConfig,
        *,
        client_id: str,
        status_topic: str,
        extra_filters: Sequence[str],
        decoder: MessageDecoder,
        writer: Writer,
        metrics: GatewayMetrics,
    ) -> None:
        self._config = config
        self._status_topic = status_topic
        self._filters = [f"{config.topic_root}/#", *extra_filters]
        self._decoder = decoder
        self._writer = writer
        self._metrics = metrics
        self._lock = threading.Lock()
        self._generation = 0
        self._connected = False
        self._ever_connected = False
        self._consuming = True
        self._attempt = 0
        self._subscribed = threading.Event()
        self._kind_counters = {
            ReadingsIn: metrics.received.labels("readings"),
            AudioIn: metrics.received.labels("audio"),
            StateIn: metrics.received.labels("state"),
            Ignored: metrics.received.labels("ignored"),
        }
        self._dead_counter = metrics.received.labels("dead_letter")
        self._v5 = config.protocol == "5"
        self._client = _Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=None if self._v5 else False,
            protocol=MQTTProtocolVersion.MQTTv5 if self._v5 else MQTTProtocolVersion.MQTTv311,
            manual_ack=True,
        )
        if config.username is not None:
            self._client.username_pw_set(config.username, config.password)
        self._client.will_set(status_topic, encode_state(Availability.OFFLINE), qos=1, retain=True)
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._set_delay()
        metrics.watch_connected(lambda: self._connected)

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def subscribed(self) -> threading.Event:
        """Set once the subscription of the current connection is granted."""
        return self._subscribed

    def start(self) -> None:
        """Connect in the background (retrying until the broker answers)."""
        props = None
        if self._v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self._config.session_expiry_s
            props.ReceiveMaximum = self._config.receive_maximum
        self._client.connect_async(
            self._config.host,
            self._config.port,
            keepalive=self._config.keepalive,
            clean_start=False if self._v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=props,
        )
        self._client.loop_start()

    def stop_consuming(self) -> None:
        """Messages arriving from now on are not stored and not acked (they are redelivered
        on the next connection of this session)."""
        self._consuming = False

    def close(self, timeout: float = 5.0) -> None:
        """Publish ``offline``, disconnect cleanly and end the network thread (blocking).

        Acks queued before this call leave before the DISCONNECT (paho sends packets in order)."""
        self._consuming = False
        if self._connected:
            info = self._client.publish(
                self._status_topic, encode_state(Availability.OFFLINE), qos=1, retain=True
            )
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as exc:
                log.warning("could not publish offline status: %s", exc)
        self._client.disconnect()
        self._client.loop_stop()

    # -- acks (writer thread) --------------------------------------------------------------

    def ack_many(self, tokens: Sequence[AckToken]) -> None:
        """Acknowledge committed messages of the current connection; skip older ones."""
        with self._lock:
            if self._connected:
                gen = self._generation
                mids = [mid for token_gen, mid in tokens if token_gen == gen]
                self._client.ack_many(mids)
            else:
                mids = []
        sent = len(mids)
        if sent:
            self._metrics.acks.inc(sent)
        if sent < len(tokens):
            self._metrics.stale_acks.inc(len(tokens) - sent)

    # -- paho callbacks (network thread) ---------------------------------------------------

    def _set_delay(self) -> None:
        low, high = self._config.reconnect_min_s, self._config.reconnect_max_s
        cap = min(high, low * 2 ** min(self._attempt, 30))
        delay = cap / 2 + random.uniform(0, cap / 2)
        # paho doubles from min up to max; min == max makes it use exactly our jittered delay.
        self._client.reconnect_delay_set(delay, delay)

    def _on_connect(
        self,
        client: paho.Client,
        _userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.error("broker refused the connection: %s", reason)
            self._attempt += 1
            self._set_delay()
            return
        with self._lock:
            self._generation += 1
            self._connected = True
        if self._ever_connected:
            self._metrics.reconnects.inc()
        self._ever_connected = True
        self._attempt = 0
        self._set_delay()
        log.info(
            "connected to %s (session present: %s); subscribing to %s",
            self._config.url,
            flags.session_present,
            self._filters,
        )
        # Subscribing again on a resumed session is harmless and covers a broker that lost it.
        client.subscribe([(f, self._config.qos) for f in self._filters])

    def _on_connect_fail(self, _client: paho.Client, _userdata: Any) -> None:
        self._attempt += 1
        self._set_delay()
        log.warning("cannot reach broker %s (attempt %d)", self._config.url, self._attempt)

    def _on_disconnect(
        self,
        _client: paho.Client,
        _userdata: Any,
        _flags: paho.DisconnectFlags,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        with self._lock:
            self._generation += 1
            self._connected = False
        self._subscribed.clear()
        if self._consuming:
            self._attempt += 1
            self._set_delay()
            log.warning("disconnected from broker: %s; reconnecting", reason)

    def _on_subscribe(
        self,
        client: paho.Client,
        _userdata: Any,
        _mid: int,
        reasons: list[ReasonCode],
        _props: Properties | None,
    ) -> None:
        failed = [f for f, r in zip(self._filters, reasons, strict=False) if r.is_failure]
        if failed:
            log.error("broker refused subscriptions %s", failed)
        client.publish(self._status_topic, encode_state(Availability.ONLINE), qos=1, retain=True)
        self._subscribed.set()

    def _on_message(self, _client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        if not self._consuming:
            return  # not acked: the broker delivers it again on our next connection
        received_at = time.time()
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = "<topic is not UTF-8>"
        payload = bytes(msg.payload)
        try:
            item: Ingested = self._decoder.decode(topic, payload, received_at)
        except Exception as exc:  # a decoder bug: keep the message, never kill paho's thread
            log.exception("decoding a message on %s failed", topic)
            item = self._decoder.dead(topic, payload, "internal_error", repr(exc), received_at)
        # Dead letters are counted by reason when committed; here only as received.
        self._kind_counters.get(type(item), self._dead_counter).inc()
        if type(item) is AudioIn:
            self._metrics.audio_frames.inc()
        token = (self._generation, msg.mid) if msg.qos > 0 else None
        self._writer.put_message(token, item, self._stopped)

    def _stopped(self) -> bool:
        return not self._consuming
