"""The uplink against a real aiohttp server written here: order, retries, backoff bounds,
parking of rejected batches, duplicates, gzip on the wire, pacing."""

from __future__ import annotations

import asyncio
import gzip
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry
from sqlalchemy import Connection, Engine, select

from gateway.backoff import Backoff
from gateway.sync import counters
from gateway.sync.http import CloudSession
from gateway.sync.metrics import SyncMetrics
from gateway.sync.settings import UplinkSettings
from gateway.sync.tables import outbox
from gateway.sync.uplink import RunDb, TokenBucket, Uplink, thread_run_db
from schemas.batch import decode_batch
from tests.conftest import free_port
from tests.test_sync_outbox import put
from tests.test_sync_windows import T0, make_db
from tests.waiting import wait_for

T = TypeVar("T")
TOKEN = "gw-secret-token"


@dataclass
class FakeCloud:
    """Stores batches idempotently; `script` gives the status of the n-th request (else 201)."""

    script: dict[int, int] = field(default_factory=dict)
    reject_seq: set[int] = field(default_factory=set)
    stored: dict[str, int] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)
    requests: int = 0
    problems: list[str] = field(default_factory=list)
    wire_sizes: dict[int, tuple[int, int]] = field(default_factory=dict)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if request.headers.get("Content-Encoding") != "gzip":
            self.problems.append("not gzip")
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.problems.append("bad token")
        # aiohttp inflates a gzip request body as it reads it; Content-Length is the wire size.
        body = await request.read()
        batch = decode_batch(body)
        self.wire_sizes[batch.seq] = (request.content_length or 0, len(body))
        status = self.script.get(self.requests)
        if status is not None:
            return web.json_response(
                {"error": {"code": "unavailable", "message": "try later"}}, status=status
            )
        if batch.seq in self.reject_seq:
            return web.json_response(
                {"error": {"code": "validation", "message": "bad window"}}, status=422
            )
        if batch.batch_id in self.stored:
            return web.json_response({"status": "duplicate"}, status=200)
        self.stored[batch.batch_id] = batch.seq
        self.order.append(batch.seq)
        return web.json_response({"status": "stored"}, status=201)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/v1/batches", self.handle)
        return app


class Sleeps:
    """Records requested delays and sleeps a tiny bit (the loop still turns)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if len(self.delays) > 100:
            raise AssertionError("the uplink keeps retrying")  # fail fast instead of spinning
        await asyncio.sleep(0)


def make_uplink(
    engine: Engine, url: str, sleeps: Sleeps, run_db: RunDb | None = None, **kw: object
) -> Uplink:
    settings = UplinkSettings.model_validate(
        {
            "url": url,
            "token": TOKEN,
            "backoff_min_s": 0.5,
            "backoff_max_s": 4.0,
            "catchup_batches_per_s": 1000.0,
            "catchup_burst": 1000,
            **kw,
        }
    )
    return Uplink(
        settings,
        run_db=run_db if run_db is not None else thread_run_db(engine),
        metrics=SyncMetrics(CollectorRegistry()),
        rng=random.Random(7),
        sleep=sleeps,
        clock=lambda: 1_700_000_400.0,
    )


def statuses(engine: Engine) -> dict[int, tuple[str, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(select(outbox.c.seq, outbox.c.status, outbox.c.last_error)).all()
    return {r.seq: (r.status, r.last_error) for r in rows}


async def start(cloud: FakeCloud) -> TestServer:
    server = TestServer(cloud.app())
    await server.start_server()
    return server


async def test_retries_then_sends_each_batch_once_in_order(tmp_path: Path) -> None:
    engine = make_db(tmp_path)
    put(engine, 5, UplinkSettings())
    cloud = FakeCloud(script={1: 500, 2: 503, 3: 500, 5: 429})
    server = await start(cloud)
    sleeps = Sleeps()
    uplink = make_uplink(engine, str(server.make_url("")), sleeps)
    try:
        async with CloudSession() as session:
            acked = await uplink.drain(session)
    finally:
        await server.close()
    assert cloud.problems == []
    assert acked == 5 and cloud.order == [1, 2, 3, 4, 5]
    # what travelled is the stored gzip body, smaller than the JSON it inflates to
    with engine.connect() as conn:
        for seq, body_gz in conn.execute(select(outbox.c.seq, outbox.c.body_gz)):
            wire, inflated = cloud.wire_sizes[seq]
            assert wire == len(body_gz) < inflated == len(gzip.decompress(body_gz))
    assert all(status == "sent" for status, _ in statuses(engine).values())
    m = uplink.metrics
    assert m.retries._value.get() == 4 and m.sent._value.get() == 5
    assert m.depth == 0
    # full jitter within [min, min * 2^n] and never above the cap
    retry_delays = [d for d in sleeps.delays if d >= 0.5]
    assert len(retry_delays) == 4
    assert all(0.5 <= d <= 4.0 for d in retry_delays)
    assert retry_delays[0] <= 0.5 * 1 + 1e-9 and retry_delays[1] <= 1.0 and retry_delays[2] <= 2.0


async def test_rejected_batch_parked_and_duplicate_acknowledged(tmp_path: Path) -> None:
    engine = make_db(tmp_path)
    put(engine, 3, UplinkSettings())
    cloud = FakeCloud(reject_seq={2})
    server = await start(cloud)
    sleeps = Sleeps()
    uplink = make_uplink(engine, str(server.make_url("")), sleeps)
    try:
        async with CloudSession() as session:
            assert await uplink.drain(session) == 2
            # the cloud already has seq 3 (say our ack was lost): a resend is a 200 duplicate
            with engine.begin() as conn:
                conn.execute(outbox.update().where(outbox.c.seq == 3).values(status="pending"))
            assert await uplink.drain(session) == 1
    finally:
        await server.close()
    st = statuses(engine)
    assert st[1][0] == "sent" and st[3][0] == "sent"
    assert st[2][0] == "rejected" and "422 validation: bad window" in (st[2][1] or "")
    assert cloud.order == [1, 3]
    m = uplink.metrics
    assert m.rejected._value.get() == 1 and m.duplicates._value.get() == 1
    assert m.retries._value.get() == 0


async def test_connection_errors_retry_until_the_cloud_is_up(tmp_path: Path) -> None:
    engine = make_db(tmp_path)
    put(engine, 2, UplinkSettings())
    cloud = FakeCloud()
    port = free_port()  # nothing listens there yet
    runner = web.AppRunner(cloud.app())
    await runner.setup()

    class StartAfterTwo(Sleeps):
        async def __call__(self, delay: float) -> None:
            await super().__call__(delay)
            if len(self.delays) == 2:
                await web.TCPSite(runner, "127.0.0.1", port).start()

    sleeps = StartAfterTwo()
    uplink = make_uplink(engine, f"http://127.0.0.1:{port}", sleeps)
    try:
        async with CloudSession() as session:
            assert await uplink.drain(session) == 2
    finally:
        await runner.cleanup()
    assert cloud.order == [1, 2] and uplink.metrics.retries._value.get() == 2


async def test_run_task_sends_on_notify_and_closes_its_session(tmp_path: Path) -> None:
    engine = make_db(tmp_path)
    cloud = FakeCloud()
    server = await start(cloud)
    thread_db = thread_run_db(engine)
    calls = 0

    async def counted(fn: Callable[[Connection], T]) -> T:
        nonlocal calls
        result = await thread_db(fn)
        calls += 1
        return result

    uplink = make_uplink(
        engine, str(server.make_url("")), Sleeps(), run_db=counted, send_interval_s=3600
    )
    task = asyncio.create_task(uplink.run())
    try:
        # The first pass has read the empty outbox: what is put now is sent only on notify
        # (the next poll is an hour away).
        await wait_for(lambda: calls >= 1, what="the run task's first pass")
        put(engine, 2, UplinkSettings())
        uplink.notify()
        await wait_for(lambda: len(cloud.order) >= 2, what="both batches in the cloud")
        assert cloud.order == [1, 2]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await server.close()


async def test_token_bucket_paces_a_backlog() -> None:
    now = [0.0]
    slept: list[float] = []

    async def fake_sleep(d: float) -> None:
        slept.append(d)
        now[0] += d

    bucket = TokenBucket(10.0, 3, clock=lambda: now[0], sleep=fake_sleep)
    for _ in range(23):
        await bucket.acquire()
    # 3 free, then 20 at 10/s
    assert now[0] == pytest.approx(2.0)
    assert len(slept) == 20


def test_backoff_bounds() -> None:
    b = Backoff(0.5, 8.0, random.Random(1))
    delays = [b.next_delay() for _ in range(40)]
    assert all(0.5 <= d <= 8.0 for d in delays)
    assert delays[0] == 0.5  # uniform(0.5, 0.5)
    assert max(delays[10:]) > 4.0  # the cap is reached, not just the floor
    b.reset()
    assert b.next_delay() == 0.5


@pytest.mark.parametrize("status", [401, 403, 404, 405, 413])
async def test_link_errors_retry_instead_of_parking(tmp_path: Path, status: int) -> None:
    # A rotated token, a wrong path or a proxy says nothing about the batch: parking it would
    # walk the whole backlog into `rejected` (and delete it after the TTL).
    engine = make_db(tmp_path)
    put(engine, 3, UplinkSettings())
    cloud = FakeCloud(script={1: status, 2: status, 3: status})
    server = await start(cloud)
    uplink = make_uplink(engine, str(server.make_url("")), Sleeps())
    health: list[tuple[str | None, str | None]] = []
    original = uplink._run_db

    async def spy(fn):  # type: ignore[no-untyped-def]
        health.append((uplink.last_status, uplink.last_error))
        return await original(fn)

    uplink._run_db = spy  # type: ignore[method-assign]
    try:
        async with CloudSession() as session:
            assert await uplink.drain(session) == 3
    finally:
        await server.close()
    assert cloud.order == [1, 2, 3]
    assert all(st == "sent" for st, _ in statuses(engine).values())
    m = uplink.metrics
    assert m.rejected._value.get() == 0 and m.retries._value.get() == 3
    assert m.send_failures.labels(status=str(status))._value.get() == 3
    # while failing, /healthz showed the status and a hint naming the setting to check
    seen = [(s, e) for s, e in health if s is not None]
    assert seen and seen[0][0] == str(status)
    assert "uplink." in (seen[0][1] or "") or "proxy" in (seen[0][1] or "")
    assert uplink.last_error is None and uplink.last_status is None


async def test_a_redirect_is_not_followed_and_the_batch_is_kept(tmp_path: Path) -> None:
    # An http -> https style redirect: a client that follows it resends the POST as a GET (405).
    engine = make_db(tmp_path)
    put(engine, 2, UplinkSettings())
    cloud = FakeCloud()
    hits: list[str] = []

    async def moved(request: web.Request) -> web.Response:
        hits.append(request.method)
        raise web.HTTPMovedPermanently("/elsewhere/api/v1/batches")

    async def elsewhere(request: web.Request) -> web.Response:
        hits.append("followed " + request.method)
        return web.Response(status=405)

    app = web.Application()
    app.router.add_post("/old/api/v1/batches", moved)
    app.router.add_route("*", "/elsewhere/api/v1/batches", elsewhere)
    redirecting = TestServer(app)
    await redirecting.start_server()

    class Rotate(Sleeps):
        async def __call__(self, delay: float) -> None:
            await super().__call__(delay)
            if len(self.delays) == 2:  # the operator fixes uplink.url
                uplink._url = str(good.make_url("/api/v1/batches"))

    good = await start(cloud)
    sleeps = Rotate()
    uplink = make_uplink(engine, str(redirecting.make_url("/old")), sleeps)
    try:
        async with CloudSession() as session:
            assert await uplink.drain(session) == 2
    finally:
        await redirecting.close()
        await good.close()
    assert hits == ["POST", "POST"]  # never followed
    assert cloud.order == [1, 2] and uplink.metrics.rejected._value.get() == 0
    assert uplink.metrics.send_failures.labels(status="301")._value.get() == 2
    with engine.connect() as conn:
        errors = conn.execute(select(outbox.c.attempts)).scalars().all()
    assert errors == [3, 1]


@pytest.mark.parametrize("status", [400, 409, 422])
async def test_only_bad_batch_answers_park(tmp_path: Path, status: int) -> None:
    engine = make_db(tmp_path)
    put(engine, 2, UplinkSettings())
    cloud = FakeCloud(script={1: status})
    server = await start(cloud)
    uplink = make_uplink(engine, str(server.make_url("")), Sleeps())
    try:
        async with CloudSession() as session:
            assert await uplink.drain(session) == 1
    finally:
        await server.close()
    st = statuses(engine)
    assert st[1][0] == "rejected" and st[2][0] == "sent"
    assert uplink.metrics.send_failures.labels(status=str(status))._value.get() == 1


async def test_a_batch_failing_forever_expires_and_unblocks_the_rest(tmp_path: Path) -> None:
    engine = make_db(tmp_path)
    s = UplinkSettings(outbox_ttl_s=100.0)
    put(engine, 1, s, now=T0)
    put(engine, 1, s, now=T0 + 60)  # younger: must still go once the head is given up
    cloud = FakeCloud()
    failing = cloud.handle

    async def poison_head(request: web.Request) -> web.Response:
        body = await request.read()
        if decode_batch(body).seq == 1:
            return web.json_response({"error": {"code": "boom", "message": "x"}}, status=500)
        return await failing(request)

    app = web.Application()
    app.router.add_post("/api/v1/batches", poison_head)
    server = TestServer(app)
    await server.start_server()
    now = [T0 + 10]

    class Clocked(Sleeps):
        async def __call__(self, delay: float) -> None:
            await super().__call__(delay)
            now[0] += 20.0

    uplink = make_uplink(engine, str(server.make_url("")), Clocked(), outbox_ttl_s=100.0)
    uplink._clock = lambda: now[0]
    try:
        async with CloudSession() as session:
            assert await uplink.drain(session) == 1
    finally:
        await server.close()
    assert cloud.order == [2]
    assert uplink.metrics.dropped.labels(reason="ttl")._value.get() == 1
    assert statuses(engine) == {2: ("sent", None)}
    with engine.connect() as conn:
        assert counters.read_all(conn)["outbox_expired"] == 1


async def test_retrying_stops_when_the_batch_was_dropped_for_room(tmp_path: Path) -> None:
    engine = make_db(tmp_path)
    s = UplinkSettings(outbox_max_rows=2)
    put(engine, 2, s)
    cloud = FakeCloud(script={1: 503})

    class DropMeanwhile(Sleeps):
        async def __call__(self, delay: float) -> None:
            await super().__call__(delay)
            if len(self.delays) == 1:  # a pass enqueues into the full outbox: seq 1 dropped
                await asyncio.to_thread(put, engine, 1, s)

    server = await start(cloud)
    uplink = make_uplink(engine, str(server.make_url("")), DropMeanwhile())
    try:
        async with CloudSession() as session:
            assert await uplink.drain(session) == 2
    finally:
        await server.close()
    assert cloud.order == [2, 3] and cloud.requests == 3  # seq 1 was not sent again
    assert set(statuses(engine)) == {2, 3}
