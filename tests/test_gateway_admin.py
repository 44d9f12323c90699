"""The admin HTTP server on its own: routes, status codes, HEAD, malformed and idle clients."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from gateway.admin import AdminServer, create_admin_app

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def state() -> dict[str, Any]:
    return {"status": "ok", "mqtt_connected": True}


@pytest.fixture
async def server(state: dict[str, Any]) -> AsyncIterator[AdminServer]:
    registry = CollectorRegistry()
    Counter("probe_things", "things counted", registry=registry).inc(3)
    srv = AdminServer(
        create_admin_app(health=lambda: dict(state), registry=registry), host="127.0.0.1", port=0
    )
    await srv.start()
    yield srv
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
    status, _, _ = await exchange(server.port, b"POST /healthz HTTP/1.1\r\n\r\n")
    assert status.endswith("405 Method Not Allowed")
    status, _, _ = await exchange(server.port, b"nonsense\r\n\r\n")
    assert status.endswith("400 Bad Request")
    status, _, _ = await exchange(server.port, b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n")
    assert status.endswith("400 Bad Request")


async def test_stop_drops_idle_clients(server: AdminServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\n")  # the head never ends
    await writer.drain()
    await asyncio.sleep(0.1)
    await server.stop()
    assert await reader.read() == b""
    writer.close()
    await writer.wait_closed()
