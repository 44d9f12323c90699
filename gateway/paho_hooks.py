"""The gateway's paho-mqtt client: the only module that touches paho's private names.

Each hook exists because paho 2.2 has no public equivalent; paho is pinned to the 2.2 minor
series in pyproject (``paho-mqtt>=2.2,<2.3``) and ``tests/test_paho_hooks.py`` checks each hook
against the installed paho, so an upgrade that moves them fails there first, not in a home.

- ``_create_socket`` (override): plain TCP connections get `_BufferedSocket`, which serves
  paho's many tiny ``recv`` calls from one large read (most of the network thread's time at
  20k msg/s otherwise). It also records why a connection attempt failed, which paho swallows
  before ``on_connect_fail``, so the log can say "refused" or name the TLS error.
- ``_ssl_wrap_socket`` (override, reads ``_ssl_context``, ``_host``, ``_connect_timeout``):
  paho's own version leaks the TLS socket when the handshake fails (a ResourceWarning and an fd
  per retry until collected).
- ``_packet_queue`` (called): the PUBACKs of a committed batch leave as ONE queued packet, so
  a batch of 1000 acks costs one wake-up and one ``send`` instead of 1000 of each.
- ``_sock`` (read) in `HookedClient.loop_read`: paho 2.2 reads ONE packet per ``select`` while
  nothing of ours is in flight (its packet budget is the count of in-flight QoS 1/2 messages,
  which a subscriber that acks QoS 1 never has), so a stream paid a ``select`` and a pass of
  paho's loop per message; the override keeps reading while the buffered socket still holds
  bytes (at most `_READ_BURST` packets, so the loop still writes queued acks and keeps the
  connection alive between bursts) and then calls `HookedClient.on_read_burst`, where the
  gateway hands the burst's messages to the writer in one go.
- ``_handle_publish`` (override, reads ``_in_packet`` and ``_protocol``): with MQTT 3.1.1 a
  QoS 0/1 PUBLISH goes straight to `HookedClient.on_publish_received` as (topic bytes,
  payload, qos, mid, retain, dup): paho's own handler builds an MQTTMessage (with a
  MQTTMessageInfo and its Condition), formats a debug line and walks its topic-filter tree
  for every message, a third of the network thread's time per message. MQTT 5 (properties),
  QoS 2 and anything malformed take paho's own path, which reaches ``on_message``.
- ``_out_messages`` (read): how many QoS 1 messages wait for their PUBACK, so the gateway can
  bound its events and discovery without paho's ``max_queued_messages``, which would bound the
  status messages (birth, ``offline``) too and drop them behind a queue of events.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as paho

_RECV_CHUNK = 256 * 1024
# Packets read per pass of paho's loop at most (see the module docstring): large enough that a
# select per burst costs nothing, small enough that a burst takes ~1 ms, so acks queued by the
# writer meanwhile leave without waiting long.
_READ_BURST = 64
_PUBACK = struct.Struct("!BBH")


class _BufferedSocket:
    """A plain TCP socket whose reads are served from one large ``recv``.

    paho reads a packet with several tiny ``recv`` calls (fixed header, length bytes, body)
    and one ``select`` each. paho already supports sockets that buffer (TLS): when
    ``pending()`` is non-zero it reads without waiting in ``select``. Everything else is
    delegated to the real socket.
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


def _nothing() -> int:
    return 0


class HookedClient(paho.Client):
    """paho's client with the hooks of the module docstring."""

    # Why the last connection attempt failed, as (failure reason label, readable text); None
    # after a successful socket. Text, not the exception: its traceback's frames would hold
    # the client, a reference cycle that delays closing paho's sockets to some later GC.
    last_connect_error: tuple[str, str] | None = None
    # Called (network thread) after each burst of packets `loop_read` handled, even when the
    # burst ended in an error: the gateway flushes what its on_message collected.
    on_read_burst: Callable[[], None] | None = None

    # (topic, payload, qos, mid, retain, dup) of each 3.1.1 QoS 0/1 PUBLISH (network thread),
    # instead of on_message; see `_handle_publish`.
    on_publish_received: Callable[[bytes, bytes, int, int, bool, bool], None] | None = None

    def _handle_publish(self) -> paho.MQTTErrorCode:
        take = self.on_publish_received
        if take is None or self._protocol == paho.MQTTv5:
            return super()._handle_publish()
        header = self._in_packet["command"]
        packet = self._in_packet["packet"]
        qos = (header & 0x06) >> 1
        size = len(packet)
        start = 2 + (((packet[0] << 8) | packet[1]) if size >= 2 else 0)
        end = start + 2 if qos else start  # the mid follows the topic at QoS > 0
        if qos > 1 or size < 2 or start == 2 or end > size:
            return super()._handle_publish()  # QoS 2, or malformed: paho's own handling
        mid = ((packet[start] << 8) | packet[start + 1]) if qos else 0
        take(
            bytes(packet[2:start]),
            bytes(packet[end:]),
            qos,
            mid,
            bool(header & 1),
            bool(header & 8),
        )
        return paho.MQTTErrorCode.MQTT_ERR_SUCCESS

    def loop_read(self, max_packets: int = 1) -> paho.MQTTErrorCode:
        try:
            for _ in range(_READ_BURST):
                rc = super().loop_read(max_packets)
                sock = self._sock
                # pending(): bytes already read from the kernel (`_BufferedSocket`, TLS).
                if rc or sock is None or not getattr(sock, "pending", _nothing)():
                    return rc
            return rc
        finally:
            hook = self.on_read_burst
            if hook is not None:
                hook()

    def _create_socket(self) -> Any:
        try:
            sock = super()._create_socket()
        except OSError as exc:  # ssl.SSLError is an OSError; paho then calls on_connect_fail
            self.last_connect_error = describe_connect_error(exc)
            raise
        self.last_connect_error = None
        if type(sock) is socket.socket:
            return _BufferedSocket(sock)
        return sock

    def _ssl_wrap_socket(self, tcp_sock: socket.socket) -> ssl.SSLSocket:
        # The host name is checked by our context (`gateway.mqtt.build_tls_context`), so the
        # handshake is all there is to do.
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

    def outgoing(self) -> int:
        """Outgoing QoS > 0 messages not yet acknowledged by the broker (queued or in flight)."""
        return len(self._out_messages)

    def ack_many(self, mids: Sequence[int]) -> None:
        """Queue the PUBACKs of `mids` as ONE outgoing packet. Same bytes as paho's PUBACK
        (3.1.1 and 5: a 2-byte body means "success, no properties")."""
        if mids:
            packet = b"".join([_PUBACK.pack(paho.PUBACK, 2, mid) for mid in mids])
            self._packet_queue(paho.PUBACK, packet, 0, 1)
