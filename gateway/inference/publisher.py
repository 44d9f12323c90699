"""`EventPublisher`: the inference engine's own MQTT connection (aiomqtt) for events and discovery.

A bounded queue feeds one client; when the broker goes away the client reconnects with backoff
and the message in hand is sent again (QoS 1, so at least once). A full queue drops the new
message, logs and counts it: events are real-time signals, stale ones lose their value.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlparse

import aiomqtt

log = logging.getLogger(__name__)


class EventSink(Protocol):
    def submit(self, topic: str, payload: bytes, *, retain: bool = False) -> bool: ...


@dataclass(frozen=True, slots=True)
class _Message:
    topic: str
    payload: bytes
    retain: bool


class EventPublisher:
    """Publishes queued messages on its own aiomqtt client; run `run()` as a background task."""

    def __init__(
        self,
        url: str,
        *,
        client_id: str,
        qos: int = 1,
        queue_size: int = 1000,
        username: str | None = None,
        password: str | None = None,
        reconnect_s: float = 1.0,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("mqtt", "mqtts", "tcp") or not parsed.hostname:
            raise ValueError(f"event publisher needs an mqtt[s]://host:port url, got {url!r}")
        self.host = parsed.hostname
        # Same default as the ingest connection (MqttConfig.port): TLS without a port means 8883.
        tls = parsed.scheme == "mqtts" or tls_context is not None
        self.port = parsed.port or (8883 if tls else 1883)
        self.tls_context = tls_context
        self.client_id = client_id
        self.qos = qos
        self.username = username
        self.password = password
        self.reconnect_s = reconnect_s
        self._queue: asyncio.Queue[_Message] = asyncio.Queue(maxsize=queue_size)
        self.connected = asyncio.Event()
        self.published = 0
        self.dropped = 0

    def submit(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        try:
            self._queue.put_nowait(_Message(topic, payload, retain))
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning(
                "event queue full (%d): dropped a message for %s", self._queue.maxsize, topic
            )
            return False
        return True

    async def run(self) -> None:
        pending: _Message | None = None
        while True:
            try:
                async with aiomqtt.Client(
                    self.host,
                    self.port,
                    identifier=self.client_id,
                    username=self.username,
                    password=self.password,
                    tls_context=self.tls_context,
                ) as client:
                    self.connected.set()
                    while True:
                        if pending is None:
                            pending = await self._queue.get()
                        await client.publish(
                            pending.topic, pending.payload, qos=self.qos, retain=pending.retain
                        )
                        self.published += 1
                        pending = None
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                log.warning(
                    "event publisher lost the broker (%s); retrying in %.1fs", exc, self.reconnect_s
                )
                await asyncio.sleep(self.reconnect_s)
