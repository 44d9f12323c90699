"""The gateway's one MQTT session: ingest that acknowledges only what is committed, and
everything the gateway publishes (status, events, Home Assistant discovery).

One identity: a single paho-mqtt 2.x client with a fixed client id carries the subscriptions,
the retained availability (``online`` birth after the subscription is granted, ``offline`` as
the last will and at shutdown) and every outgoing message (`MqttBridge.publish`), on one
reconnect schedule (`gateway.backoff.Backoff`). So whatever Home Assistant reads as the
gateway's availability is the state of the very connection that publishes its entities.

Threads and hand-offs (why paho and not aiomqtt: aiomqtt cannot delay a QoS 1 acknowledgement):

1. paho's network thread (``loop_start``) receives a PUBLISH, decodes and validates it right
   there (`gateway.ingest.MessageDecoder`, ~µs per message) and collects the items to store,
   the last one tagged with an ack token ``(connection generation, mid)``; after each burst of
   packets it read (`gateway.paho_hooks`: up to 64 packets per ``select``) it hands them ALL
   to the writer thread's bounded queue as one entry (one lock, one wake-up per burst instead
   of per message; nothing is acked before its commit either way). When that queue is full
   the network thread waits (backpressure): it stops reading the socket, TCP fills, and the
   broker keeps the rest queued in our session; its window of un-acked messages
   (``max_inflight_messages`` / MQTT 5 Receive Maximum) also caps what reaches us. Items
   ahead of the last (an adapter's availability report) carry no token: they are queued in
   the same entry, so they commit no later than the message is acked; an entry that cannot
   be queued (shutting down) is dropped whole, so none of its messages is acked (the broker
   redelivers them).
2. the writer thread commits a batch, then calls `MqttBridge.ack_many` with the batch's tokens;
   their PUBACKs leave as one packet (`gateway.paho_hooks`).
3. every time the connection drops or is made, the generation goes up (under a lock shared with
   `ack_many`). An ack whose generation is not the current one is skipped: the broker redelivers
   that message on the new connection (persistent session), the unique indexes ignore the
   duplicate row, and the redelivered copy is acked. A mid of an old connection could name a
   different message on the new one, so acking it would be wrong.
4. a message with the DUP flag (redelivered) or the RETAIN flag (a retained message replayed
   because we subscribed) may have been stored already: the decoder marks it (`as_replay`), so
   a dead letter is not stored or counted twice and a retained message does not move the
   device's ``last_seen``.

Publishing (`publish`, from any thread): QoS 1 through paho's outgoing queue, bounded by
``mqtt.publish_queue`` for events and discovery (status messages are never refused); paho
sends what waits once connected and sends again what was in flight when a connection dropped
(persistent session), so events are delivered at least once; a full queue drops the new
message, counted (``mqtt_published{outcome}``) and logged at most every 10 s (`gateway.logs`).

Session: ``clean_session=False`` (3.1.1) or ``clean_start=False`` with a session expiry and a
Receive Maximum (5), so messages published while the gateway is down wait at the broker.

Reconnects are paho's own loop; the delay before each attempt is set by us from the gateway's
`Backoff` (exponential between ``reconnect_min_s`` and ``reconnect_max_s`` with jitter, reset
after a successful CONNACK), so a broker that is down is retried without a busy loop or a
thundering herd. The same schedule paces a broker that answers but refuses us (bad
credentials: one ERROR line per attempt naming the CONNACK reason) and a TLS handshake that
fails (the verification error is logged); every attempt is counted (``mqtt_connect_attempts``,
``mqtt_connect_failures{reason}``).

Security: username/password (``mqtt.username``/``mqtt.password``) and TLS (``mqtts://`` or a
``[mqtt.tls]`` table): the broker's certificate is verified against ``tls.ca_file`` (or the
system store) and must name the url's host unless ``tls.insecure``; an optional client
certificate and key authenticate the gateway itself.

Filters claimed at run time (`gateway.ingest.TopicClaims`: Home Assistant discovery's state
and availability topics) are subscribed when claimed and again on every new connection, and
unsubscribed when released; their SUBACKs are told apart from the connection's main one.

Shared subscriptions: with ``mqtt.shared_group`` every filter is subscribed as
``$share/<group>/<filter>``, so gateways of one group split the stream between them (the
broker gives each message to one member). Each member needs its own client id (its session).

paho's private names are used only in `gateway.paho_hooks`.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.backoff import Backoff
from gateway.config import MqttConfig, TlsConfig
from gateway.ingest import AudioIn, Ignored, MessageDecoder, ReadingsIn, StateIn
from gateway.logs import RateLimitedLog
from gateway.monitoring import GatewayMetrics
from gateway.paho_hooks import HookedClient, describe_connect_error
from gateway.writer import AckToken, QueuedMessage, Writer
from schemas.state import Availability, encode_state

log = logging.getLogger(__name__)

# A burst's hand-off holds at most this many messages (paho_hooks._READ_BURST packets, and what
# one packet's adapter items add): one queue entry, one wake-up of the writer.
_HANDOFF_MAX = 256

__all__ = ["MqttBridge", "build_tls_context", "describe_connect_error"]


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


def _connack_hint(reason: ReasonCode) -> str:
    # 3.1.1 return codes 4/5 arrive as the MQTT 5 reason codes 134/135.
    if reason.value in (134, 135):
        return " (check mqtt.username/mqtt.password and the broker's password file and ACL)"
    return ""


class MqttBridge:
    """Connects paho's network thread to the `Writer`; see the module docstring."""

    def __init__(
        self,
        config: MqttConfig,
        *,
        client_id: str,
        status_topic: str,
        decoder: MessageDecoder,
        writer: Writer,
        metrics: GatewayMetrics,
        backoff: Backoff | None = None,
    ) -> None:
        self._config = config
        self._status_topic = status_topic
        filters = [f"{config.topic_root}/#", *decoder.adapters.filters]
        if config.shared_group is not None:
            filters = [f"$share/{config.shared_group}/{f}" for f in filters]
        self._filters = filters
        self._share = f"$share/{config.shared_group}/" if config.shared_group is not None else ""
        # SUBSCRIBE packets of filters claimed at run time (discovery), by mid: their SUBACK is
        # not the connection's main one (which publishes the birth).
        self._claim_mids: dict[int, str] = {}
        self._main_mid: int | None = None
        decoder.adapters.watch_claims(self._subscribe_claimed, self._unsubscribe_claimed)
        self._decoder = decoder
        self._writer = writer
        self._metrics = metrics
        self._lock = threading.Lock()
        self._generation = 0
        # An Event, not a bool, so the gauge below reads it without holding the bridge (a
        # bridge <-> metrics cycle would keep the client and its sockets until a GC).
        self._link_up = threading.Event()
        self._down_since: float | None = time.time()
        self._ever_connected = False
        self._consuming = True
        # Decoded messages of the current read burst, handed to the writer in one queue entry
        # (network thread only; see the module docstring).
        self._pending: list[QueuedMessage] = []
        self._kinds: list[type] = []  # of the burst's messages, for the received counters
        self._backoff = backoff or Backoff(config.reconnect_min_s, config.reconnect_max_s)
        self._refused = False
        self._drop_log = RateLimitedLog(log)
        self._decode_log = RateLimitedLog(log)
        self._published = metrics.published.labels("queued")
        self._publish_dropped = metrics.published.labels("dropped")
        self._subscribed = threading.Event()
        self._subscribing: list[str] = list(filters)
        self._kind_counters = {
            ReadingsIn: metrics.received.labels("readings"),
            AudioIn: metrics.received.labels("audio"),
            StateIn: metrics.received.labels("state"),
            Ignored: metrics.received.labels("ignored"),
        }
        self._dead_counter = metrics.received.labels("dead_letter")
        self._v5 = config.protocol == "5"
        self._client = HookedClient(
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
        self._client.on_read_burst = self._hand_off
        self._client.on_publish_received = self._on_publish
        self._schedule_retry()
        metrics.watch_connected(self._link_up.is_set)

    @property
    def connected(self) -> bool:
        return self._link_up.is_set()

    @property
    def down_since(self) -> float | None:
        """When the session to the broker was lost (or the bridge made); None while it is up."""
        return self._down_since

    @property
    def pending_subscriptions(self) -> int:
        """Subscriptions to filters claimed at run time that the broker has not granted yet."""
        return len(self._claim_mids)

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

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Queue a QoS 1 message on the gateway's session (any thread); False when dropped.
        See the module docstring."""
        # Bounded here, not by paho's max_queued_messages: that would also refuse the status
        # messages (birth, offline), leaving the will's "offline" retained while we are up.
        if self._client.outgoing() >= self._config.publish_queue:
            self._publish_dropped.inc()
            self._drop_log.warning(
                "outgoing MQTT queue full (%d): dropped a message for %s",
                self._config.publish_queue,
                topic,
            )
            return False
        self._client.publish(topic, payload, qos=1, retain=retain)
        self._published.inc()
        return True

    def stop_consuming(self) -> None:
        """Messages arriving from now on are not stored and not acked (they are redelivered
        on the next connection of this session)."""
        self._consuming = False

    def close(self, timeout: float = 5.0) -> None:
        """Publish ``offline``, disconnect cleanly and end the network thread (blocking).

        Acks queued before this call leave before the DISCONNECT (paho sends packets in order)."""
        self._consuming = False
        if self._link_up.is_set():
            info = self._client.publish(
                self._status_topic, encode_state(Availability.OFFLINE), qos=1, retain=True
            )
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as exc:
                log.warning("could not publish offline status: %s", exc)
        self._client.disconnect()
        self._client.loop_stop()
        self._decoder.adapters.unwatch_claims(self._subscribe_claimed)
        # Our bound-method callbacks make client and bridge a reference cycle; without them the
        # client is freed (and paho closes its sockets) as soon as the bridge is, not at some
        # later garbage collection.
        for name in (
            "on_connect",
            "on_pre_connect",
            "on_connect_fail",
            "on_disconnect",
            "on_subscribe",
            "on_message",
            "on_read_burst",
            "on_publish_received",
        ):
            setattr(self._client, name, None)

    # -- acks (writer thread) --------------------------------------------------------------

    def ack_many(self, tokens: Sequence[AckToken]) -> None:
        """Acknowledge committed messages of the current connection; skip older ones."""
        with self._lock:
            if self._link_up.is_set():
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

    def _schedule_retry(self) -> float:
        """Draw the delay before paho's next connection attempt from the backoff."""
        delay = self._backoff.next_delay()
        # paho doubles from min up to max; min == max makes it use exactly our jittered delay.
        self._client.reconnect_delay_set(delay, delay)  # type: ignore[arg-type]  # seconds, float
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
            self._metrics.connect_failures.labels("refused").inc()
            log.error(
                "broker %s refused the connection: %s (reason code %d)%s (attempt %d); "
                "retrying in %.1fs",
                self._config.url,
                reason,
                reason.value,
                _connack_hint(reason),
                self._backoff.attempt,
                self._schedule_retry(),
            )
            return
        with self._lock:
            self._generation += 1
            self._link_up.set()
        self._down_since = None
        if self._ever_connected:
            self._metrics.reconnects.inc()
        self._ever_connected = True
        self._backoff.reset()
        self._schedule_retry()
        log.info(
            "connected to %s (session present: %s); subscribing to %s",
            self._config.url,
            flags.session_present,
            self._filters,
        )
        # Subscribing again on a resumed session is harmless and covers a broker that lost it.
        self._subscribing = [
            *self._filters,
            *(self._share + f for f in self._decoder.adapters.claimed),
        ]
        _, self._main_mid = client.subscribe([(f, self._config.qos) for f in self._subscribing])

    def _on_connect_fail(self, _client: paho.Client, _userdata: Any) -> None:
        label, text = self._client.last_connect_error or describe_connect_error(None)
        self._metrics.connect_failures.labels(label).inc()
        # A broker that is down is routine (WARNING); a TLS failure needs a person (ERROR).
        log.log(
            logging.ERROR if label == "tls" else logging.WARNING,
            "cannot connect to broker %s: %s (attempt %d); retrying in %.1fs",
            self._config.url,
            text,
            self._backoff.attempt,
            self._schedule_retry(),
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
            self._link_up.clear()
        if self._down_since is None:
            self._down_since = time.time()
        self._subscribed.clear()
        if self._refused:  # a refused CONNACK: logged and paced in _on_connect already
            self._refused = False
        elif self._consuming:
            self._schedule_retry()
            log.warning("disconnected from broker: %s; reconnecting", reason)

    def _on_subscribe(
        self,
        client: paho.Client,
        _userdata: Any,
        _mid: int,
        reasons: list[ReasonCode],
        _props: Properties | None,
    ) -> None:
        claimed = self._claim_mids.pop(_mid, None)
        if claimed is not None or _mid != self._main_mid:
            if any(r.is_failure for r in reasons):
                log.error("broker refused the subscription to %s", claimed)
            return
        failed = [f for f, r in zip(self._subscribing, reasons, strict=False) if r.is_failure]
        if failed:
            log.error("broker refused subscriptions %s", failed)
        client.publish(self._status_topic, encode_state(Availability.ONLINE), qos=1, retain=True)
        self._subscribed.set()

    def _subscribe_claimed(self, topic_filter: str) -> None:
        """An adapter claimed a filter (decoding thread, connected): subscribe now. When not
        connected the next connection subscribes to every claimed filter anyway."""
        if not self._link_up.is_set():
            return
        result, mid = self._client.subscribe(self._share + topic_filter, self._config.qos)
        if result == paho.MQTT_ERR_SUCCESS and mid is not None:
            self._claim_mids[mid] = topic_filter

    def _unsubscribe_claimed(self, topic_filter: str) -> None:
        if self._link_up.is_set():
            self._client.unsubscribe(self._share + topic_filter)

    def _on_message(self, _client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        # paho's own path (MQTT 5, QoS 2): the 3.1.1 stream comes through `_on_publish`.
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = "<topic is not UTF-8>"
        self._take(topic, bytes(msg.payload), msg.qos, msg.mid, bool(msg.retain), bool(msg.dup))

    def _on_publish(
        self, topic: bytes, payload: bytes, qos: int, mid: int, retain: bool, dup: bool
    ) -> None:
        """A PUBLISH read by `HookedClient`'s lean handler (no MQTTMessage made)."""
        try:
            text = topic.decode()
        except UnicodeDecodeError:
            text = "<topic is not UTF-8>"
        self._take(text, payload, qos, mid, retain, dup)

    def _take(
        self, topic: str, payload: bytes, qos: int, mid: int, retain: bool, dup: bool
    ) -> None:
        if not self._consuming:
            return  # not acked: the broker delivers it again on our next connection
        received_at = time.time()
        try:
            items = self._decoder.decode(
                topic, payload, received_at, retained=retain, redelivered=dup
            )
        except Exception as exc:  # a decoder bug: keep the message, never kill paho's thread
            self._decode_log.error("decoding a message on %s failed", topic, exc_info=True)
            items = [self._decoder.dead(topic, payload, "internal_error", repr(exc), received_at)]
        item = items[-1]
        # Dead letters are counted by reason when committed; here only as received (counted
        # per burst in `_hand_off`: a counter's inc takes a lock).
        self._kinds.append(type(item))
        pending = self._pending
        if len(items) > 1:  # side items (an adapter's availability): no ack of their own
            pending.extend([(None, side) for side in items[:-1]])
        pending.append(((self._generation, mid) if qos > 0 else None, item))
        if len(pending) >= _HANDOFF_MAX:
            self._hand_off()

    def _hand_off(self) -> None:
        """Queue the messages collected since the last hand-off for the writer, all or none
        (network thread; after each read burst, `HookedClient.on_read_burst`). None queued
        (shutting down): none is acked, the broker redelivers them."""
        kinds = self._kinds
        if kinds:
            self._kinds = []
            for kind, n in Counter(kinds).items():
                self._kind_counters.get(kind, self._dead_counter).inc(n)
                if kind is AudioIn:
                    self._metrics.audio_frames.inc(n)
        pending = self._pending
        if pending:
            self._pending = []
            self._writer.put_messages(pending, self._stopped)

    def _stopped(self) -> bool:
        return not self._consuming
