"""The gateway's admin HTTP endpoint: ``/healthz`` and Prometheus ``/metrics``.

``/healthz`` answers 200 with ``{"status": "ok", ...}`` when the MQTT session is up and the
writer thread runs, else 503 with ``"status": "degraded"``; the body always carries
``mqtt_connected``, ``mqtt_subscribed``, ``writer_alive`` and ``queue_depth``.

Two read-only GET endpoints on a local port do not need a web framework: this is a small
HTTP/1.1 server on `asyncio.start_server` (one request per connection, answered with
``Connection: close``). aiohttp's server would pull its whole client and server stack into every
gateway (~9 MB resident of a ~120 MB process); the uplink imports aiohttp only when it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

HealthFn = Callable[[], dict[str, Any]]

# A client that does not send its request head within this time is dropped.
REQUEST_TIMEOUT_S = 10.0
# Longest request line or header line; the request head as a whole is bounded by MAX_HEADERS.
MAX_LINE = 8192
MAX_HEADERS = 100


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str


@dataclass(frozen=True)
class AdminApp:
    """What the admin endpoint serves: the gateway's health and its metrics registry."""

    health: HealthFn
    registry: CollectorRegistry

    def handle(self, method: str, path: str) -> Response:
        """The response to one request (method and target as sent, query string ignored)."""
        route = path.split("?", 1)[0]
        if route not in ("/healthz", "/metrics"):
            return _error(HTTPStatus.NOT_FOUND)
        if method not in ("GET", "HEAD"):
            return _error(HTTPStatus.METHOD_NOT_ALLOWED)
        if route == "/healthz":
            body = self.health()
            status = HTTPStatus.OK if body.get("status") == "ok" else HTTPStatus.SERVICE_UNAVAILABLE
            return Response(status, json.dumps(body).encode(), "application/json; charset=utf-8")
        return Response(HTTPStatus.OK, generate_latest(self.registry), CONTENT_TYPE_LATEST)


def _error(status: HTTPStatus) -> Response:
    return Response(status, f"{status.value}: {status.phrase}".encode(), "text/plain")


def create_admin_app(*, health: HealthFn, registry: CollectorRegistry) -> AdminApp:
    return AdminApp(health, registry)


class AdminServer:
    """Runs the admin app on host:port (port 0 picks a free one; see `port`)."""

    def __init__(self, app: AdminApp, *, host: str, port: int) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.port = port

    async def start(self) -> int:
        self._server = await asyncio.start_server(
            self._connection, self._host, self._port, limit=MAX_LINE
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("admin HTTP on http://%s:%d (/healthz, /metrics)", self._host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    method, target = await _read_head(reader)
            except (ValueError, asyncio.LimitOverrunError, asyncio.IncompleteReadError):
                response = _error(HTTPStatus.BAD_REQUEST)
                method = "GET"
            else:
                response = self._app.handle(method, target)
            writer.write(_encode(response, head_only=method == "HEAD"))
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass  # the client went away or never finished its request: nothing to answer
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, str]:
    """The request line's method and target; the header lines are read and ignored."""
    parts = (await reader.readuntil(b"\r\n")).decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ValueError("bad request line")
    for _ in range(MAX_HEADERS):
        if await reader.readuntil(b"\r\n") == b"\r\n":
            return parts[0], parts[1]
    raise ValueError("too many header lines")


def _encode(response: Response, *, head_only: bool) -> bytes:
    status = HTTPStatus(response.status)
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    return head if head_only else head + response.body
