"""The gateway's admin HTTP endpoint: ``/healthz``, Prometheus ``/metrics`` and the local status
page (``/``, ``/status`` and its JSON under ``/api/status/``; `gateway.status`).

``/healthz`` answers 200 when the body's ``status`` is ``"ok"``, else 503 (``"degraded"``:
load balancers and watchdogs act on the status code); the gateway's body (`gateway.health`)
carries ``checks`` with the reason and since when of each failing one, and ``mqtt_connected``,
``mqtt_subscribed``, ``writer_alive``, ``queue_depth``. A health function that raises (or
returns what JSON cannot encode) gives 500 ``{"status": "error"}``, logged.

A few read-only GET endpoints on a local port do not need a web framework: this is a small
HTTP/1.1 server on `asyncio.start_server` (one request per connection, answered with
``Connection: close``). aiohttp's server would pull its whole client and server stack into every
gateway (~9 MB resident of a ~120 MB process); only bundle updates and webhooks import aiohttp,
when they run (the uplink posts with http.client).
Every stage is bounded: connections in flight, the time to send the request head, to send the
reply, to drain what the client still sends and to close.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from gateway import status as status_page

log = logging.getLogger(__name__)

HealthFn = Callable[[], dict[str, Any]]

# A client that does not send its request head within this time is dropped.
REQUEST_TIMEOUT_S = 10.0
# A client that does not take the reply within this time (or its close) is cut off (RST).
WRITE_TIMEOUT_S = 10.0
# Longest request line or header line; the request head as a whole is bounded by MAX_HEADERS.
MAX_LINE = 8192
MAX_HEADERS = 100
# Connections served at once; more are closed as soon as they are accepted.
MAX_CONNECTIONS = 32
# After the reply, what the client still sends (a body we do not read, the rest of an oversized
# head) is read and dropped, up to this much for at most this long: closing a socket with unread
# input makes the kernel send RST, which can destroy the reply before the client reads it.
DISCARD_MAX_BYTES = 1 << 20
DISCARD_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()


STATUS_API = "/api/status/"
STATUS_ROUTES = tuple(STATUS_API + what for what in ("devices", "events", "dead-letters"))
PAGE_ROUTES = ("/", "/status")


@dataclass(frozen=True)
class AdminApp:
    """What the admin endpoint serves: the gateway's health, its metrics registry and, given a
    `status_page.StatusReader`, the local status page."""

    health: HealthFn
    registry: CollectorRegistry
    status: status_page.StatusReader | None = None

    def routes(self) -> tuple[str, ...]:
        fixed = ("/healthz", "/metrics")
        if self.status is None:
            return fixed
        return fixed + PAGE_ROUTES + tuple(status_page.STATIC_FILES) + STATUS_ROUTES

    def blocking(self, path: str) -> bool:
        """Whether answering `path` reads the database (the server runs it in a thread)."""
        return self.status is not None and path.split("?", 1)[0].startswith(STATUS_API)

    def handle(self, method: str, path: str) -> Response:
        """The response to one request (method and target as sent; only the status API reads
        its query string)."""
        route, _, query = path.partition("?")
        if route not in self.routes():
            return _error(HTTPStatus.NOT_FOUND)
        if method not in ("GET", "HEAD"):
            return _error(HTTPStatus.METHOD_NOT_ALLOWED, headers=(("Allow", "GET, HEAD"),))
        if route == "/healthz":
            body = self.health()
            status = HTTPStatus.OK if body.get("status") == "ok" else HTTPStatus.SERVICE_UNAVAILABLE
            return _json(status, body)
        if route == "/metrics":
            return Response(HTTPStatus.OK, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        assert self.status is not None
        if route.startswith(STATUS_API):
            return self._status_api(route.removeprefix(STATUS_API), query)
        name, ctype = status_page.STATIC_FILES.get(route, status_page.PAGE)
        return Response(
            HTTPStatus.OK,
            _static(name),
            ctype,
            (("Content-Security-Policy", status_page.CSP), ("Cache-Control", "no-cache")),
        )

    def _status_api(self, what: str, query: str) -> Response:
        assert self.status is not None
        try:
            limit = status_page.parse_limit(query)
        except ValueError:
            return _json(
                HTTPStatus.BAD_REQUEST,
                {"error": {"code": "bad_limit", "message": "limit must be an integer"}},
            )
        if what == "devices":
            body = self.status.devices()
        elif what == "events":
            body = self.status.events(limit)
        else:
            body = self.status.dead_letters(limit)
        return _json(HTTPStatus.OK, body, no_store=True)


_STATIC_CACHE: dict[str, bytes] = {}


def _static(name: str) -> bytes:
    """A file of the status page, read once per process (a few kB; never per request)."""
    body = _STATIC_CACHE.get(name)
    if body is None:
        body = _STATIC_CACHE[name] = (status_page.STATIC_DIR / name).read_bytes()
    return body


def _json(status: HTTPStatus, body: dict[str, Any], *, no_store: bool = False) -> Response:
    headers = (("Cache-Control", "no-store"),) if no_store else ()
    return Response(status, json.dumps(body).encode(), "application/json; charset=utf-8", headers)


def _error(status: HTTPStatus, *, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, f"{status.value}: {status.phrase}".encode(), "text/plain", headers)


def fetch_health(port_file: Path, *, timeout: float = 2.0) -> dict[str, Any]:
    """The /healthz body of the gateway whose admin port `port_file` holds (``[admin]
    port_file``); ``{}`` while there is no file yet, no answer or not a 200. A blocking client
    for scripts and tests that run the gateway as a child process, never for the event loop."""
    import urllib.request  # not at import: the gateway itself never needs a client

    try:
        url = f"http://127.0.0.1:{port_file.read_text().strip()}/healthz"
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return dict(json.load(resp))
    except (OSError, ValueError):
        return {}


def create_admin_app(
    *,
    health: HealthFn,
    registry: CollectorRegistry,
    status: status_page.StatusReader | None = None,
) -> AdminApp:
    return AdminApp(health, registry, status)


class AdminServer:
    """Runs the admin app on host:port (port 0 picks a free one; see `port`)."""

    def __init__(
        self, app: AdminApp, *, host: str, port: int, max_connections: int = MAX_CONNECTIONS
    ) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.port = port

    async def start(self) -> int:
        self._server = await asyncio.start_server(
            self._connection, self._host, self._port, limit=MAX_LINE
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info(
            "admin HTTP on http://%s:%d (%s)", self._host, self.port, ", ".join(self._app.routes())
        )
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
        if len(self._connections) >= self._max_connections:
            writer.close()  # over the limit: refused before reading anything
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            pass  # stop(): end quietly (3.11's start_server logs a cancelled handler as an error)
        finally:
            writer.close()
            try:
                async with asyncio.timeout(WRITE_TIMEOUT_S):
                    await writer.wait_closed()
            except TimeoutError:
                writer.transport.abort()
            except ConnectionError:
                pass
            self._connections.discard(task)  # the slot is held until the socket is closed

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                method, target = await _read_head(reader)
        except (ValueError, asyncio.LimitOverrunError, asyncio.IncompleteReadError):
            method, response = "GET", _error(HTTPStatus.BAD_REQUEST)
        except (TimeoutError, ConnectionError):
            return  # the client never finished its request or went away: nothing to answer
        else:
            try:
                if self._app.blocking(target):  # database reads: off the event loop
                    response = await asyncio.to_thread(self._app.handle, method, target)
                else:
                    response = self._app.handle(method, target)
            except Exception:  # a failing health part must not cost the reply
                log.exception("admin %s %s failed", method, target)
                response = _json(HTTPStatus.INTERNAL_SERVER_ERROR, {"status": "error"})
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                writer.write(_encode(response, head_only=method == "HEAD"))
                await writer.drain()
                writer.write_eof()
        except TimeoutError:
            writer.transport.abort()  # the client does not read: drop the reply, free the slot
            return
        except ConnectionError:
            return
        await _discard_input(reader)


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, str]:
    """The request line's method and target; the header lines are read and ignored."""
    parts = (await _read_line(reader)).decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ValueError("bad request line")
    for _ in range(MAX_HEADERS):
        if not await _read_line(reader):
            return parts[0], parts[1]
    raise ValueError("too many header lines")


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    """One line of the head without its CRLF or bare LF (both occur in the wild)."""
    return (await reader.readuntil(b"\n")).removesuffix(b"\n").removesuffix(b"\r")


async def _discard_input(reader: asyncio.StreamReader) -> None:
    """Read and drop the client's input until it closes, up to a byte and a time bound."""
    left = DISCARD_MAX_BYTES
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(DISCARD_TIMEOUT_S):
            while left > 0 and (chunk := await reader.read(min(left, 65536))):
                left -= len(chunk)


def _encode(response: Response, *, head_only: bool) -> bytes:
    status = HTTPStatus(response.status)
    extra = "".join(f"{name}: {value}\r\n" for name, value in response.headers)
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n"
        f"{extra}"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    return head if head_only else head + response.body
