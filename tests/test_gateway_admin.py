"""The admin HTTP server on its own: routes, status codes, HEAD, malformed, idle and slow
clients, failing health functions and the connection limit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from gateway import admin
from gateway.admin import AdminServer, HealthFn, create_admin_app

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def state() -> dict[str, Any]:
    return {"status": "ok", "mqtt_connected": True}


@pytest.fixture
async def server(state: dict[str, Any]) -> AsyncIterator[AdminServer]:
    async with serving(lambda: dict(state)) as srv:
        yield srv


@contextlib.asynccontextmanager
async def serving(health: HealthFn, **kwargs: Any) -> AsyncIterator[AdminServer]:
    registry = CollectorRegistry()
    Counter("probe_things", "things counted", registry=registry).inc(3)
    srv = AdminServer(
        create_admin_app(health=health, registry=registry), host="127.0.0.1", port=0, **kwargs
    )
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


async def exchange(port: int, request: bytes) -> tuple[str, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    raw = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status, headers, body


async def test_healthz_follows_status(server: AdminServer, state: dict[str, Any]) -> None:
    status, headers, body = await exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"].startswith("application/json")
    assert int(headers["content-length"]) == len(body)
    assert json.loads(body) == state
    state["status"] = "degraded"
    status, _, body = await exchange(server.port, b"GET /healthz?x=1 HTTP/1.0\r\n\r\n")
    assert status == "HTTP/1.1 503 Service Unavailable"
    assert json.loads(body)["status"] == "degraded"


async def test_metrics_head_and_errors(server: AdminServer) -> None:
    status, headers, body = await exchange(server.port, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert status.endswith("200 OK") and headers["content-type"].startswith("text/plain")
    assert b"probe_things_total 3.0" in body
    status, headers, body = await exchange(server.port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert status.endswith("200 OK") and int(headers["content-length"]) > 0 and body == b""
    status, _, _ = await exchange(server.port, b"GET /nope HTTP/1.1\r\n\r\n")
    assert status.endswith("404 Not Found")
    status, headers, _ = await exchange(server.port, b"POST /healthz HTTP/1.1\r\n\r\n")
    assert status.endswith("405 Method Not Allowed") and headers["allow"] == "GET, HEAD"
    status, _, _ = await exchange(server.port, b"nonsense\r\n\r\n")
    assert status.endswith("400 Bad Request")
    status, _, _ = await exchange(server.port, b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n")
    assert status.endswith("400 Bad Request")


async def open_idle(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client that starts a request head and never ends it.

    No wait for the server to take it: the server accepts connections in the order they were
    made, and its handler takes a slot before its first await, so a client opened after this
    one is handled after this one holds its slot (which is what the tests then check)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\n")
    await writer.drain()
    return reader, writer


async def served(port: int, request: bytes) -> str:
    """The status line of the first attempt the server does not refuse (closed unanswered)."""
    for _ in range(200):
        with contextlib.suppress(ConnectionError):
            status, _, _ = await exchange(port, request)
            if status:
                return status
        await asyncio.sleep(0.05)
    pytest.fail("every attempt was refused")


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def test_large_body_gets_the_405(
    server: AdminServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unread body is drained after the reply: closing a socket with input unread sends RST,
    which resets a client still sending before it reads its reply."""
    for size in (300_000, 8_000_000):  # the second is more than the socket buffers hold
        if size > admin.DISCARD_MAX_BYTES:
            # Drained whole, ended only by the client's EOF (our own EOF must have let it read).
            monkeypatch.setattr(admin, "DISCARD_MAX_BYTES", 2 * size)
            monkeypatch.setattr(admin, "DISCARD_TIMEOUT_S", 3600.0)
        head = b"POST /healthz HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % size
        status, headers, _ = await exchange(server.port, head + b"x" * size)
        assert status == "HTTP/1.1 405 Method Not Allowed"
        assert headers["allow"] == "GET, HEAD"


async def test_bare_lf_line_endings(server: AdminServer, state: dict[str, Any]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /healthz HTTP/1.1\nHost: x\r\n\n")
    await writer.drain()
    raw = await reader.read()
    await close(writer)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert json.loads(raw.partition(b"\r\n\r\n")[2]) == state


@pytest.mark.parametrize("failure", ["raises", "not JSON"])
async def test_failing_health_answers_500(failure: str, caplog: pytest.LogCaptureFixture) -> None:
    def health() -> dict[str, Any]:
        if failure == "raises":
            raise RuntimeError("health part broke")
        return {"status": "ok", "part": object()}  # an add_health callback's stray value

    async with serving(health) as srv:
        status, headers, body = await exchange(srv.port, b"GET /healthz HTTP/1.1\r\n\r\n")
    assert status == "HTTP/1.1 500 Internal Server Error"
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body) == {"status": "error"}
    assert any(r.exc_info and r.name == "gateway.admin" for r in caplog.records)


async def test_stop_drops_idle_clients(
    server: AdminServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(admin, "REQUEST_TIMEOUT_S", 3600.0)  # only stop() can drop the client
    reader, writer = await open_idle(server.port)
    # The idle client does not hold up another one.
    assert await served(server.port, b"GET /healthz HTTP/1.1\r\n\r\n") == "HTTP/1.1 200 OK"
    assert not reader.at_eof()
    await server.stop()
    assert await reader.read() == b""
    await close(writer)
    # Cancelling the connection is no "Unhandled exception in client_connected_cb" (Python 3.11).
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_idle_client_times_out(server: AdminServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin, "REQUEST_TIMEOUT_S", 0.2)
    reader, writer = await open_idle(server.port)
    assert await reader.read() == b""
    await close(writer)


async def test_connection_limit(state: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin, "REQUEST_TIMEOUT_S", 3600.0)
    async with serving(lambda: dict(state), max_connections=2) as srv:
        idle = [await open_idle(srv.port) for _ in range(2)]
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        assert await reader.read() == b""  # refused at once, not left waiting for its head
        await close(writer)
        for _, idle_writer in idle:
            await close(idle_writer)
        # The slots are freed once the idle clients are gone.
        assert await served(srv.port, b"GET /healthz HTTP/1.1\r\n\r\n") == "HTTP/1.1 200 OK"


async def test_client_that_does_not_read_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reply the client never reads would hold its slot for good without the write timeout."""
    monkeypatch.setattr(admin, "WRITE_TIMEOUT_S", 0.2)
    blob = "x" * 16_000_000  # more than the socket buffers hold

    async with serving(lambda: {"status": "ok", "blob": blob}, max_connections=1) as srv:
        loop = asyncio.get_running_loop()
        with socket.socket() as stuck:
            stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stuck.setblocking(False)
            await loop.sock_connect(stuck, ("127.0.0.1", srv.port))
            await loop.sock_sendall(stuck, b"GET /healthz HTTP/1.1\r\n\r\n")
            # Served once the stuck reply is aborted; the client never reads a byte of it.
            status = await served(srv.port, b"HEAD /healthz HTTP/1.1\r\n\r\n")
        assert status == "HTTP/1.1 200 OK"


async def test_fetch_health_reads_the_port_file_and_gives_empty_until_there_is_an_answer(
    server: AdminServer, state: dict[str, Any], tmp_path: Any
) -> None:
    port_file = tmp_path / "admin.port"
    assert await asyncio.to_thread(admin.fetch_health, port_file) == {}  # no file yet
    port_file.write_text(f"{server.port}\n")
    assert await asyncio.to_thread(admin.fetch_health, port_file) == state
    state["status"] = "degraded"  # a 503 is not a health body to act on
    assert await asyncio.to_thread(admin.fetch_health, port_file) == {}
