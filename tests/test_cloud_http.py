"""The cloud's HTTP layer against hostile and broken clients, on real sockets.

Most tests run the production server (`cloud.server.start`: the app behind `CloudRunner`) on a
free port and talk raw HTTP/1.1 over asyncio streams, because what they send is what a well
behaved client library refuses to send: non-UTF-8 header bytes, broken chunking, header bytes
trickled one at a time, bodies that stop half way. The gzip bomb test runs `python -m cloud`
and reads the server process's CPU time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import threading
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import psutil
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.app import create_app
from cloud.server import start
from tests.gzip_bombs import gzip_bomb, inflate_cpu_s
from tests.test_cloud_api import (
    GW1_TOKEN,
    READ_TOKEN,
    AiohttpClient,
    db_url,
    gzip_body,
    make_batch,
    make_config,
    row_counts,
    upload_headers,
)
from tests.test_cloud_workers import cloud_process

READ_AUTH = f"Authorization: Bearer {READ_TOKEN}\r\n".encode()
GW_AUTH = f"Authorization: Bearer {GW1_TOKEN}\r\n".encode()

__all__ = ["db_url"]  # the fixture, imported for pytest


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        assert self.headers.get("content-type", "").startswith("application/json"), self
        return json.loads(self.body)


async def read_answer(reader: asyncio.StreamReader, within: float = 30.0) -> Answer:
    async with asyncio.timeout(within):
        status_line = await reader.readline()
        assert status_line.startswith(b"HTTP/1."), status_line
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Answer(int(status_line.split()[1]), headers, body)


async def closed_by_server(reader: asyncio.StreamReader, within: float = 30.0) -> bool:
    """Read (and drop) until the server closes; False if it is still open after `within` s."""
    try:
        async with asyncio.timeout(within):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


@dataclass
class Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()


class Server:
    def __init__(self, port: int) -> None:
        self.port = port
        self._open: list[Connection] = []

    async def connect(self) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        conn = Connection(reader, writer)
        self._open.append(conn)
        return conn

    async def exchange(self, request: bytes) -> Answer:
        conn = await self.connect()
        await conn.send(request)
        return await read_answer(conn.reader)

    async def aclose(self) -> None:
        for conn in self._open:
            conn.close()
            with contextlib.suppress(ConnectionError):
                await conn.writer.wait_closed()


ServeCloud = Callable[..., Awaitable[Server]]


@pytest.fixture
async def serve_cloud(tmp_path: Path) -> AsyncIterator[ServeCloud]:
    """Start the production server with config overrides; stopped after the test."""
    runners: list[web.AppRunner] = []
    servers: list[Server] = []

    async def serve(**overrides: Any) -> Server:
        overrides.setdefault("analytics_interval_s", 0)
        db = tmp_path / f"cloud-{len(runners)}.db"
        runner, port = await start(make_config(f"sqlite+aiosqlite:///{db}", **overrides))
        runners.append(runner)
        servers.append(Server(port))
        return servers[-1]

    yield serve
    for server in servers:
        await server.aclose()
    for runner in runners:
        await runner.cleanup()


def _get(path: str, *headers: bytes) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n".encode() + b"".join(headers) + b"\r\n"


def _post(path: str, body: bytes, *headers: bytes) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n".encode()
    return head + b"".join(headers) + b"\r\n" + body


# --- what aiohttp's parser refuses is JSON too ----------------------------------------------


PARSER_REFUSALS = {
    "bad chunk size": b"POST /api/v1/batches HTTP/1.1\r\nHost: t\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
    "header line past max_header_bytes": _get("/healthz", b"X-Big: " + b"a" * 9000 + b"\r\n"),
    "more than max_headers fields": _get(
        "/healthz", *(f"X-{i}: v\r\n".encode() for i in range(100))
    ),
    "control byte in the method": b"G\x01T / HTTP/1.1\r\nHost: t\r\n\r\n",
    "non-ASCII byte in the path": b"GET /assets/\xff HTTP/1.1\r\nHost: t\r\n\r\n",
    "both Content-Length and chunked": b"POST /login HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("name", list(PARSER_REFUSALS))
async def test_requests_the_parser_refuses_get_a_json_400_and_a_closed_connection(
    serve_cloud: ServeCloud, name: str
) -> None:
    server = await serve_cloud()
    conn = await server.connect()
    await conn.send(PARSER_REFUSALS[name])
    answer = await read_answer(conn.reader)
    assert answer.status == 400, (name, answer)
    error = answer.json()["error"]
    assert error["code"] == "bad_request" and error["message"], name
    # The parser cannot find the next request after an error: the server hangs up.
    assert await closed_by_server(conn.reader, within=10)


# --- input bytes never reach a 500 ----------------------------------------------------------


async def test_non_utf8_credentials_are_a_401_never_a_500(serve_cloud: ServeCloud) -> None:
    server = await serve_cloud()
    bad_bearer = b"Authorization: Bearer \xff\xfe\x80token\r\n"
    for request in (
        _get("/api/v1/gateways", bad_bearer),
        _get("/api/v1/aggregates?metric=temperature", bad_bearer),
        _get("/api/v1/analytics/overview", bad_bearer),
        _post("/api/v1/batches", b"{}", bad_bearer, b"Content-Type: application/json\r\n"),
        _get("/api/v1/gateways", b"Authorization: \xc3\x28\r\n"),
        _get("/api/v1/gateways", b"Cookie: homeedge_session=\xff\xfe\r\n"),
    ):
        answer = await server.exchange(request)
        assert answer.status == 401, (request[:60], answer)
        assert answer.json()["error"]["code"] == "unauthorized"
    # The dashboard: a bad credential is no credential, so the login form.
    for header in (bad_bearer, b"Cookie: homeedge_session=\xff.\xfe\r\n"):
        answer = await server.exchange(_get("/", header))
        assert answer.status == 200 and b'action="/login"' in answer.body


@pytest.fixture
def threaded_cloud(tmp_path: Path) -> Iterator[int]:
    """The production server in a thread of its own (for synchronous, hypothesis-driven tests)."""
    config = make_config(f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}", analytics_interval_s=0)
    ready: list[int] = []
    started = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def main() -> None:
        runner, port = await start(config)
        ready.append(port)
        started.set()
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(30), "the server did not start"
    try:
        yield ready[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


def _sync_exchange(port: int, request: bytes) -> tuple[int, str, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    content_type = next(
        (v for n, _, v in (x.partition(":") for x in lines[1:]) if n.lower() == "content-type"), ""
    )
    return int(lines[0].split()[1]), content_type.strip(), body


ROUTES = [
    "GET /",
    "GET /healthz",
    "GET /metrics",
    "GET /api/v1/gateways",
    "GET /api/v1/aggregates?metric=temperature",
    "GET /api/v1/analytics/fleet",
    "POST /api/v1/batches",
    "POST /login",
    "POST /logout",
]
HEADERS = ["Authorization", "Cookie", "Content-Type", "Content-Encoding", "X-Request-Id"]
# Header value bytes: anything but CR, LF and NUL (which end or break the header line).
VALUE = st.binary(max_size=40).map(
    lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b"")
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    route=st.sampled_from(ROUTES),
    header=st.sampled_from(HEADERS),
    prefix=st.sampled_from([b"", b"Bearer ", b"homeedge_session=", b"gzip", b"text/plain; "]),
    value=VALUE,
    body=st.binary(max_size=64),
)
def test_no_header_or_body_bytes_reach_a_500(
    threaded_cloud: int, route: str, header: str, prefix: bytes, value: bytes, body: bytes
) -> None:
    method, path = route.split(" ")
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n".encode()
        + f"{header}: ".encode()
        + prefix
        + value
        + f"\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    status, content_type, answer = _sync_exchange(threaded_cloud, request)
    assert status < 500, (request, answer)
    if status >= 400 and not (path == "/login" and status in (400, 401)):
        assert content_type.startswith("application/json"), (request, content_type)
        assert json.loads(answer)["error"]["code"]


async def test_malformed_login_forms_are_a_4xx_json_error(serve_cloud: ServeCloud) -> None:
    server = await serve_cloud()
    form = b"Content-Type: application/x-www-form-urlencoded\r\n"
    cases = {
        "raw non-UTF-8": (_post("/login", b"token=\xff\xfe", form), 400, "bad_form"),
        "percent-encoded non-UTF-8": (_post("/login", b"token=%ff%fe", form), 400, "bad_form"),
        "too many fields": (_post("/login", b"&".join([b"a=1"] * 20), form), 400, "bad_form"),
        "multipart without boundary": (
            _post("/login", b"abc", b"Content-Type: multipart/form-data\r\n"),
            415,
            "unsupported_media_type",
        ),
        "truncated multipart": (
            _post(
                "/login",
                b"--XX\r\nContent-Disposition: form-data; na",
                b"Content-Type: multipart/form-data; boundary=XX\r\n",
            ),
            415,
            "unsupported_media_type",
        ),
        "unknown charset": (
            _post(
                "/login",
                b"token=x",
                b"Content-Type: application/x-www-form-urlencoded; charset=no-such\r\n",
            ),
            415,
            "unsupported_charset",
        ),
        "oversized form": (_post("/login", b"token=" + b"a" * 5000, form), 413, None),
        "not gzip although it says so": (
            _post("/login", b"token=x", form, b"Content-Encoding: gzip\r\n"),
            400,
            "bad_encoding",
        ),
    }
    for name, (request, status, code) in cases.items():
        answer = await server.exchange(request)
        assert answer.status == status, (name, answer)
        error = answer.json()["error"]
        assert code is None or error["code"] == code, (name, error)
    # A gzipped, well-formed form still logs in.
    body = gzip.compress(f"token={READ_TOKEN}".encode())
    answer = await server.exchange(_post("/login", body, form, b"Content-Encoding: gzip\r\n"))
    assert answer.status == 303 and "homeedge_session=" in answer.headers["set-cookie"]


# JSON integers are unbounded; the columns they land in are BIGINT or INTEGER.
TOO_LARGE = {
    "seq": ("seq", 2**63),
    "stats.ingested_bytes": ("stats", {"ingested_bytes": 2**63}),
    "stats.ingested_messages": ("stats", {"ingested_messages": 10**30}),
    "privacy.suppressed_windows": ("privacy", {"suppressed_windows": 2**31}),
    "privacy.min_window_count": ("privacy", {"min_window_count": 2**31}),
}


def _batch_json(**fields: Any) -> bytes:
    doc = msgspec.to_builtins(make_batch())
    doc.update(fields)
    return json.dumps(doc).encode()


async def test_integers_beyond_their_columns_are_a_422_and_the_largest_fit_is_stored(
    aiohttp_client: AiohttpClient, db_url: str
) -> None:
    client = await aiohttp_client(create_app(make_config(db_url, analytics_interval_s=0)))
    headers = {**upload_headers(), "Content-Encoding": "identity"}
    for name, (field, value) in TOO_LARGE.items():
        resp = await client.post(
            "/api/v1/batches", data=_batch_json(**{field: value}), headers=headers
        )
        assert resp.status == 422, (name, await resp.text())
        error = (await resp.json())["error"]
        assert error["code"] == "validation" and name.split(".")[-1] in error["message"], name
    assert await row_counts(client) == (0, 0)
    # The bounds are the columns' own: the largest values are stored, on SQLite and PostgreSQL.
    largest = _batch_json(
        seq=2**63 - 1,
        stats={"ingested_messages": 2**63 - 1, "ingested_bytes": 2**63 - 1},
        privacy={"suppressed_windows": 2**31 - 1, "refused_noised": 2**31 - 1},
    )
    resp = await client.post("/api/v1/batches", data=largest, headers=headers)
    assert resp.status == 201, await resp.text()
    assert await row_counts(client) == (1, 3)


# --- Content-Encoding and Content-Type ------------------------------------------------------


async def test_encodings_but_gzip_and_identity_and_other_media_types_are_415(
    serve_cloud: ServeCloud,
) -> None:
    server = await serve_cloud()
    url = f"http://127.0.0.1:{server.port}"
    plain = msgspec.json.encode(msgspec.to_builtins(make_batch()))
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        for encoding, body in (
            ("br", b"\x0b\x02\x80{}\x03"),
            ("deflate", zlib.compress(plain)),
            ("zstd", b"(\xb5/\xfd"),
            ("gzip, gzip", gzip.compress(gzip.compress(plain))),
        ):
            headers = {**upload_headers(), "Content-Encoding": encoding}
            async with http.post(f"{url}/api/v1/batches", data=body, headers=headers) as resp:
                assert resp.status == 415, encoding
                assert (await resp.json())["error"]["code"] == "unsupported_encoding"
            # Whatever the route: /healthz reads no body but refuses the encoding all the same.
            async with http.get(f"{url}/healthz", headers={"Content-Encoding": encoding}) as resp:
                assert resp.status == 415, encoding
        headers = {**upload_headers(), "Content-Type": "text/plain"}
        async with http.post(
            f"{url}/api/v1/batches", data=gzip_body(make_batch()), headers=headers
        ) as resp:
            assert resp.status == 415
            assert (await resp.json())["error"]["code"] == "unsupported_media_type"
        # gzip and identity are taken.
        for headers, body in (
            (upload_headers(), gzip_body(make_batch())),
            ({**upload_headers(), "Content-Encoding": "identity"}, plain),
        ):
            async with http.post(f"{url}/api/v1/batches", data=body, headers=headers) as resp:
                assert resp.status == 201, await resp.text()


# --- the gzip bomb --------------------------------------------------------------------------


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_gzip_bomb_is_never_inflated_unread_and_inflated_within_the_limit_when_read(
    tmp_path: Path,
) -> None:
    bomb = gzip_bomb(1024)  # 1 GiB of zeros in about 1 MB
    assert len(bomb) < 1_200_000
    inflating_one = inflate_cpu_s(bomb)
    extra = "analytics_interval_s = 0\n"  # lingering_s keeps its default, 2 s
    with cloud_process(
        tmp_path, "bombed", f"sqlite+aiosqlite:///{tmp_path / 'c.db'}", extra=extra
    ) as port:
        url = f"http://127.0.0.1:{port}"
        server = Server(port)
        health = await server.exchange(_get("/healthz"))
        pid = health.json()["pid"]
        cpu_before = psutil.Process(pid).cpu_times()

        async def send_bomb(head: bytes, *, wait_close: bool = True) -> tuple[Answer, bool]:
            conn = await server.connect()
            request = head + f"Content-Length: {len(bomb)}\r\n\r\n".encode()
            await conn.send(request + bomb)
            answer = await read_answer(conn.reader)
            return answer, wait_close and await closed_by_server(conn.reader)

        gz = b"Content-Encoding: gzip\r\nContent-Type: application/json\r\n"
        unread = [
            b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + gz,
            b"GET / HTTP/1.1\r\nHost: t\r\n" + gz,
            b"POST /api/v1/batches HTTP/1.1\r\nHost: t\r\n" + gz,  # no token: 401 unread
            b"GET /metrics HTTP/1.1\r\nHost: t\r\n" + gz,
        ]
        bombs = [asyncio.create_task(send_bomb(head)) for head in unread]
        # While the bombs are on the wire, /healthz answers.
        assert (await server.exchange(_get("/healthz"))).status == 200
        answers = await asyncio.gather(*bombs)
        assert [a.status for a, _ in answers] == [200, 200, 401, 200]
        # No connection is kept alive after an unread body: each was closed by the server.
        assert all(closed for _, closed in answers)
        # The bomb a route reads: refused once max_body_bytes are inflated, not after a GiB.
        read_bomb, _ = await send_bomb(
            b"POST /api/v1/batches HTTP/1.1\r\nHost: t\r\n" + gz + GW_AUTH, wait_close=False
        )
        assert read_bomb.status == 413
        assert read_bomb.json()["error"]["code"] == "payload_too_large"
        cpu_after = psutil.Process(pid).cpu_times()
        async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as resp:
            metrics = await resp.text()
        await server.aclose()
    spent = cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system
    # Five bombs handled for less CPU than a quarter of inflating one (inflating them all would
    # cost five times that): CPU time, not wall time, so a busy machine does not change it.
    assert spent < 0.25 * inflating_one, (spent, inflating_one)
    inflated = _metric(metrics, 'homeedge_cloud_request_body_bytes_total{stage="inflated"}')
    assert inflated == 0  # the 413 is raised before its partial output is counted
    assert _metric(metrics, 'homeedge_cloud_batches_rejected_total{reason="oversized"}') == 1


async def test_an_unread_body_still_arriving_ends_the_connection(serve_cloud: ServeCloud) -> None:
    server = await serve_cloud(http={"lingering_s": 0.5})
    conn = await server.connect()
    # 50 MB announced, 64 KiB sent: /healthz answers without reading, then the server closes
    # the connection instead of waiting for (or draining) the rest.
    await conn.send(
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 50000000\r\n\r\n" + bytes(65536)
    )
    answer = await read_answer(conn.reader)
    assert answer.status == 200
    assert answer.headers["connection"] == "close"

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            for _ in range(200):
                await conn.send(bytes(1024))
                await asyncio.sleep(0.05)

    sender = asyncio.create_task(trickle())
    try:
        assert await closed_by_server(conn.reader, within=30)
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)


# --- slow clients ---------------------------------------------------------------------------


async def test_clients_that_trickle_or_idle_are_cut_after_the_header_timeout(
    serve_cloud: ServeCloud,
) -> None:
    server = await serve_cloud(http={"header_timeout_s": 1})
    slow = [await server.connect() for _ in range(20)]
    idle = [await server.connect() for _ in range(5)]  # never send a byte
    for conn in slow:
        await conn.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ")

    async def trickle(conn: Connection) -> None:
        with contextlib.suppress(ConnectionError):
            for _ in range(600):  # one header byte every 0.1 s: a minute at most
                await conn.send(b"a")
                await asyncio.sleep(0.1)

    tricklers = [asyncio.create_task(trickle(conn)) for conn in slow]
    try:
        # Meanwhile a well-behaved client is served.
        assert (await server.exchange(_get("/healthz"))).status == 200
        closed = await asyncio.gather(
            *(closed_by_server(conn.reader, within=30) for conn in slow + idle)
        )
        assert all(closed), closed
    finally:
        for task in tricklers:
            task.cancel()
        await asyncio.gather(*tricklers, return_exceptions=True)


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/api/v1/batches", GW_AUTH + b"Content-Type: application/json\r\n"),
        ("/login", b"Content-Type: application/x-www-form-urlencoded\r\n"),
    ],
)
async def test_a_body_that_stops_arriving_is_a_408(
    serve_cloud: ServeCloud, path: str, headers: bytes
) -> None:
    server = await serve_cloud(http={"body_timeout_s": 1, "lingering_s": 0.2})
    conn = await server.connect()
    await conn.send(
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 3000\r\n".encode()
        + headers
        + b"\r\n"
        + b"{"
    )
    answer = await read_answer(conn.reader)
    assert answer.status == 408
    assert answer.json()["error"]["code"] == "body_timeout"
    assert await closed_by_server(conn.reader)


# --- /metrics behind a token ----------------------------------------------------------------


async def test_metrics_need_the_metrics_token_once_one_is_set(serve_cloud: ServeCloud) -> None:
    open_server = await serve_cloud()
    assert (await open_server.exchange(_get("/metrics"))).status == 200
    server = await serve_cloud(metrics_token="metrics-token-0123456789")
    for header in (b"", READ_AUTH, b"Authorization: Bearer metrics-token-012345678x\r\n"):
        answer = await server.exchange(_get("/metrics", header))
        assert answer.status == 401, header
        assert answer.json()["error"]["code"] == "unauthorized"
    answer = await server.exchange(
        _get("/metrics", b"Authorization: Bearer metrics-token-0123456789\r\n")
    )
    assert answer.status == 200 and b"homeedge_cloud_request_seconds" in answer.body
