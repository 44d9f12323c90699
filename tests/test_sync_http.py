"""The uplink's HTTP client (`gateway.sync.http.CloudSession`) against real servers: TLS is
verified, a server that never answers is a bounded failure, a keep-alive connection the server
dropped while idle is replaced without failing the request."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path

import pytest
from aiohttp import web

from gateway.sync.http import CloudSession, CloudUnreachable
from tests.conftest import free_port
from tests.test_mqtt_security import _issue, _make_ca, _write_cert, _write_key


async def _serve(app: web.Application, *, ssl_context: ssl.SSLContext | None = None, **kw: float):  # type: ignore[no-untyped-def]
    runner = web.AppRunner(app, **kw)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_context)
    await site.start()
    return runner, port


def _app(seen: list[bytes]) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        seen.append(await request.read())
        return web.json_response({"status": "stored"}, status=201)

    app = web.Application()
    app.router.add_post("/api/v1/batches", handle)
    return app


async def test_https_verifies_the_certificate_chain_and_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca, ca_key = _make_ca("homeedge test CA")
    cert, key = _issue(ca, ca_key, "localhost", server=True)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(
        _write_cert(tmp_path / "server.pem", cert), _write_key(tmp_path / "server.key", key)
    )
    seen: list[bytes] = []
    runner, port = await _serve(_app(seen), ssl_context=server_ctx)
    # The same server on 127.0.0.2, an address the certificate does not name.
    other_port = free_port()
    await web.TCPSite(runner, "127.0.0.2", other_port, ssl_context=server_ctx).start()
    url = f"https://127.0.0.1:{port}/api/v1/batches"
    try:
        # The system store does not know the test CA: refused before anything is sent.
        async with CloudSession(timeout_s=5) as session:
            with pytest.raises(CloudUnreachable, match="CERTIFICATE_VERIFY_FAILED"):
                await session.post(url, b"x", {})
        ca_file = _write_cert(tmp_path / "ca.pem", ca)
        # A private CA as the README says: SSL_CERT_FILE in the gateway's environment.
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
        async with CloudSession(timeout_s=5) as session:
            assert (await session.post(url, b"batch", {})).status == 201
        monkeypatch.delenv("SSL_CERT_FILE")
        trusting = ssl.create_default_context(cafile=str(ca_file))
        async with CloudSession(timeout_s=5, ssl_context=trusting) as session:
            assert (await session.post(url, b"again", {})).status == 201
            # The certificate names localhost and 127.0.0.1, not this: the host is checked too.
            with pytest.raises(CloudUnreachable, match="CERTIFICATE_VERIFY_FAILED"):
                await session.post(f"https://127.0.0.2:{other_port}/api/v1/batches", b"x", {})
    finally:
        await runner.cleanup()
    assert seen == [b"batch", b"again"]


async def test_a_server_that_never_answers_is_a_timeout() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def hang(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # read nothing, answer nothing

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with CloudSession(timeout_s=0.3) as session:
            with pytest.raises(CloudUnreachable, match="TimeoutError"):
                await session.post(f"http://127.0.0.1:{port}/api/v1/batches", b"x", {})
    finally:
        for w in accepted:
            w.close()
        server.close()
        await server.wait_closed()
    assert len(accepted) == 1


async def test_a_keepalive_connection_dropped_while_idle_is_replaced() -> None:
    seen: list[bytes] = []
    # The server closes idle connections after 50 ms; the client would keep them for 15 s.
    runner, port = await _serve(_app(seen), keepalive_timeout=0.05)
    url = f"http://127.0.0.1:{port}/api/v1/batches"
    try:
        async with CloudSession(timeout_s=5) as session:
            assert (await session.post(url, b"first", {})).status == 201
            await asyncio.sleep(0.3)
            assert (await session.post(url, b"second", {})).status == 201
    finally:
        await runner.cleanup()
    assert seen == [b"first", b"second"]


async def test_connection_refused_is_unreachable() -> None:
    async with CloudSession(timeout_s=2) as session:
        with pytest.raises(CloudUnreachable, match="ConnectionRefusedError"):
            await session.post(f"http://127.0.0.1:{free_port()}/api/v1/batches", b"x", {})


async def test_a_request_reset_on_a_reused_connection_is_sent_once_more() -> None:
    """The race the idle check cannot see: the server drops the connection as the request
    arrives. The POST is retried once on a new connection (safe: the upload is idempotent)."""
    seen: list[tuple[int, bytes]] = []  # (connection number, request body)
    writers: list[asyncio.StreamWriter] = []
    ok = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = len(writers)
        writers.append(writer)
        while await reader.readline() != b"":  # the request line
            length = 0
            while (header := await reader.readline()) not in (b"\r\n", b""):
                if header.lower().startswith(b"content-length:"):
                    length = int(header.split(b":")[1])
            seen.append((number, await reader.readexactly(length)))
            if seen[-1] == (0, b"second"):
                writer.transport.abort()  # a reset, no answer
                return
            writer.write(ok)
            await writer.drain()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/api/v1/batches"
    try:
        async with CloudSession(timeout_s=5) as session:
            assert (await session.post(url, b"first", {})).status == 201
            assert (await session.post(url, b"second", {})).status == 201
    finally:
        for w in writers:
            w.close()
            with contextlib.suppress(ConnectionError):
                await w.wait_closed()
        server.close()
        await server.wait_closed()
    assert seen == [(0, b"first"), (0, b"second"), (1, b"second")]
