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
CONNACK), so a broker that is down is retried without a busy loop or a thundering herd. The
same schedule paces a broker that answers but refuses us (bad credentials: one ERROR line per
attempt naming the CONNACK reason) and a TLS handshake that fails (the verification error is
logged); every attempt is counted (``mqtt_connect_attempts``, ``mqtt_connect_failures{reason}``).

Security: username/password (``mqtt.username``/``mqtt.password``) and TLS (``mqtts://`` or a
``[mqtt.tls]`` table): the broker's certificate is verified against ``tls.ca_file`` (or the
system store) and must name the url's host unless ``tls.insecure``; an optional client
certificate and key authenticate the gateway itself.

Shared subscriptions: with ``mqtt.shared_group`` every filter is subscribed as
``$share/<group>/<filter>``, so gateways of one group split the stream between them (the
broker gives each message to one member). Each member needs its own client id (its session).

Side items: a format adapter may report something to store besides the message's readings
(a foreign device's availability). `MqttBridge.put_side_item` queues it, from the network
thread during decoding, AHEAD of the message, so it is committed no later than the message is
acked; if it cannot be queued (shutting down) the message is not queued either, and so not acked.

Private paho 2.x hooks (paho is pinned <3; every test connection runs through them):
`_Client._create_socket` (buffered reads; keeps the connect error for the log),
``_packet_queue`` (batched acks), `_Client._ssl_wrap_socket` (closes a socket whose TLS
handshake failed, which paho leaks) and ``_reset_sockets`` (at close).
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
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

from gateway.config import MqttConfig, TlsConfig
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


def build_tls_context(tls: TlsConfig | None) -> ssl.SSLContext:
    """A client context that verifies the broker: against ``tls.ca_file`` or the system store,
    host name checked unless ``tls.insecure``; with the client certificate when configured.
    Raises `OSError`/`ssl.SSLError` when a file is missing or unusable."""
    tls = tls or TlsConfig()
    ctx = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file) if tls.ca_file else None
    )
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.insecure:
        ctx.check_hostname = False  # the chain is still verified (verify_mode stays REQUIRED)
    if tls.cert_file is not None:
        ctx.load_cert_chain(
            str(tls.cert_file),
            str(tls.key_file) if tls.key_file else None,
            tls.key_password.get_secret_value() if tls.key_password else None,
        )
    return ctx


def describe_connect_error(exc: BaseException | None) -> tuple[str, str]:
    """(failure reason label, readable text) of an exception raised while connecting."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "tls", (
            f"TLS: the broker's certificate failed verification ({exc.verify_message}); "
            "check mqtt.tls.ca_file and that the certificate names the url's host"
        )
    if isinstance(exc, ssl.SSLError):
        return "tls", f"TLS handshake failed: {exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "unreachable", "connection refused (is the broker listening on that port?)"
    if exc is None:
        return "unreachable", "connection failed"
    return "unreachable", f"{type(exc).__name__}: {exc}"


def _connack_hint(reason: ReasonCode) -> str:
    # 3.1.1 return codes 4/5 arrive as the MQTT 5 reason codes 134/135.
    if reason.value in (134, 135):
        return " (check mqtt.username/mqtt.password and the broker's password file and ACL)"
    return ""


class _Client(paho.Client):
    """paho's client with `_BufferedSocket` on plain TCP connections (a private hook of paho
    2.x, pinned <3 in pyproject; the ingest tests exercise it on every connection). It also
    keeps the exception of a failed connection attempt, which paho swallows, for the log."""

    last_connect_error: BaseException | None = None

    def _create_socket(self) -> Any:
        try:
            sock = super()._create_socket()
        except OSError as exc:  # ssl.SSLError is an OSError; paho then calls on_connect_fail
            self.last_connect_error = exc
            raise
        self.last_connect_error = None
        if type(sock) is socket.socket:
            return _BufferedSocket(sock)
        return sock

    def _ssl_wrap_socket(self, tcp_sock: socket.socket) -> ssl.SSLSocket:
        # paho's version leaks the TLS socket when the handshake fails (a ResourceWarning and
        # an fd per retry until collected); the host name is checked by our context
        # (`build_tls_context`), so the handshake is all there is to do.
        ctx = self._ssl_context
        if ctx is None:
            raise ValueError("TLS is not configured")
        ssl_sock = ctx.wrap_socket(
            tcp_sock, server_hostname=self._host, do_handshake_on_connect=False
        )
        try:
            ssl_sock.settimeout(self._connect_timeout)
            ssl_sock.do_handshake()
        except BaseException:
            ssl_sock.close()
            raise
        return ssl_sock

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
        filters = [f"{config.topic_root}/#", *extra_filters]
        if config.shared_group is not None:
            filters = [f"$share/{config.shared_group}/{f}" for f in filters]
        self._filters = filters
        self._decoder = decoder
        self._writer = writer
        self._metrics = metrics
        self._lock = threading.Lock()
        self._generation = 0
        self._connected = False
        self._ever_connected = False
        self._consuming = True
        self._attempt = 0
        self._refused = False
        self._side_failed = False
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
            password = config.password.get_secret_value() if config.password else None
            self._client.username_pw_set(config.username, password)
        if config.use_tls:
            self._client.tls_set_context(build_tls_context(config.tls))
        self._client.will_set(status_topic, encode_state(Availability.OFFLINE), qos=1, retain=True)
        self._client.on_connect = self._on_connect
        self._client.on_pre_connect = self._on_pre_connect
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

    def put_side_item(self, item: Ingested) -> None:
        """Queue `item` (no ack of its own) ahead of the message being decoded; only from code
        the decoder runs on the network thread (an adapter's callback). See the module docstring."""
        if not self._writer.put_message(None, item, self._stopped):
            self._side_failed = True

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
        # paho closes its wake-up socket pair only in __del__, which a reference cycle (our
        # bound-method callbacks) delays to some later garbage collection: close it now.
        self._client._reset_sockets()

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

    def _set_delay(self) -> float:
        low, high = self._config.reconnect_min_s, self._config.reconnect_max_s
        cap = min(high, low * 2 ** min(self._attempt, 30))
        delay = cap / 2 + random.uniform(0, cap / 2)
        # paho doubles from min up to max; min == max makes it use exactly our jittered delay.
        self._client.reconnect_delay_set(delay, delay)
        return delay

    def _on_pre_connect(self, _client: paho.Client, _userdata: Any) -> None:
        self._metrics.connect_attempts.inc()

    def _on_connect(
        self,
        client: paho.Client,
        _userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        if reason.is_failure:
            # paho closes the socket and calls on_disconnect next, then waits our delay.
            self._refused = True
            self._attempt += 1
            self._metrics.connect_failures.labels("refused").inc()
            log.error(
                "broker %s refused the connection: %s (reason code %d)%s (attempt %d); "
                "retrying in %.1fs",
                self._config.url,
                reason,
                reason.value,
                _connack_hint(reason),
                self._attempt,
                self._set_delay(),
            )
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
        label, text = describe_connect_error(self._client.last_connect_error)
        self._metrics.connect_failures.labels(label).inc()
        # A broker that is down is routine (WARNING); a TLS failure needs a person (ERROR).
        log.log(
            logging.ERROR if label == "tls" else logging.WARNING,
            "cannot connect to broker %s: %s (attempt %d); retrying in %.1fs",
            self._config.url,
            text,
            self._attempt,
            self._set_delay(),
        )

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
        if self._refused:  # a refused CONNACK: logged and paced in _on_connect already
            self._refused = False
        elif self._consuming:
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
        self._side_failed = False
        try:
            item: Ingested = self._decoder.decode(topic, payload, received_at)
        except Exception as exc:  # a decoder bug: keep the message, never kill paho's thread
            log.exception("decoding a message on %s failed", topic)
            item = self._decoder.dead(topic, payload, "internal_error", repr(exc), received_at)
        # Dead letters are counted by reason when committed; here only as received.
        self._kind_counters.get(type(item), self._dead_counter).inc()
        if type(item) is AudioIn:
            self._metrics.audio_frames.inc()
        if self._side_failed:
            return  # its side item was not queued: leave the message un-acked (redelivered)
        token = (self._generation, msg.mid) if msg.qos > 0 else None
        self._writer.put_message(token, item, self._stopped)

    def _stopped(self) -> bool:
        return not self._consuming
