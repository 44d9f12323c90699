"""Backpressure against the real cloud on SQLite and PostgreSQL: a saturated cloud answers 503
with Retry-After (JSON error body) instead of holding the request, stores nothing twice, and the
gateway's real uplink waits as told and then delivers each batch exactly once.

Saturation is made for real: an upload whose body is still arriving holds the worker's only
in-flight slot; a lock held by another database session stalls the ingest transaction that
holds the pool's only connection; a PostgreSQL statement_timeout cancels a statement waiting on
a lock.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from cloud.app import create_app
from cloud.db import batches
from cloud.web import ENGINE_KEY, UPLOAD_GATE_KEY
from gateway.db import make_engine as make_gateway_engine
from gateway.sync import outbox
from gateway.sync.http import CloudSession
from gateway.sync.metrics import SyncMetrics
from gateway.sync.settings import UplinkSettings
from gateway.sync.tables import outbox as outbox_table
from gateway.sync.uplink import Uplink, parse_retry_after, thread_run_db
from schemas.batch import BatchPrivacy, BatchStats
from tests.test_cloud_api import (
    GW1_TOKEN,
    GW2_TOKEN,
    T0,
    AiohttpClient,
    gzip_body,
    make_aggregate,
    make_batch,
    make_config,
    post,
    row_counts,
    upload_headers,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}"
    return str(request.getfixturevalue("pg_url"))


def _plain_pg(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


@asynccontextmanager
async def database_locked(url: str, table: str = "batches") -> AsyncIterator[None]:
    """Another session holds a write lock until the block ends: the database is "behind"."""
    if url.startswith("sqlite"):
        # isolation_level=None: BEGIN is ours. EXCLUSIVE (under WAL, like IMMEDIATE) takes the
        # database's one write lock; readers go on, writers wait for busy_timeout.
        conn = sqlite3.connect(url.split("///", 1)[1], isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    conn = await asyncpg.connect(_plain_pg(url))
    tx = conn.transaction()
    await tx.start()
    await conn.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
    try:
        yield
    finally:
        await tx.rollback()
        await conn.close()


def _error(payload: Any) -> tuple[str, str]:
    return payload["error"]["code"], payload["error"]["message"]


async def test_uploads_past_max_in_flight_get_503_before_their_body_is_read(
    aiohttp_client: AiohttpClient, db_url: str
) -> None:
    config = make_config(db_url, ingest={"max_in_flight": 1, "retry_after_s": 2})
    client = await aiohttp_client(create_app(config))
    gate = client.server.app[UPLOAD_GATE_KEY]  # type: ignore[union-attr]
    slow_body = gzip_body(make_batch(seq=1))
    more = asyncio.Event()

    async def trickle() -> AsyncIterator[bytes]:
        yield slow_body[:10]  # the upload is admitted and its body is being read ...
        await more.wait()  # ... and stays so until the test lets it finish
        yield slow_body[10:]

    slow = asyncio.create_task(
        client.post("/api/v1/batches", data=trickle(), headers=upload_headers())
    )
    await wait_for(lambda: gate.in_flight == 1, within=10, what="the slow upload in flight")
    second = make_batch(seq=2)
    resp = await client.post("/api/v1/batches", data=gzip_body(second), headers=upload_headers())
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "2"
    assert resp.content_type == "application/json"
    code, message = _error(await resp.json())
    assert code == "overloaded" and "max_in_flight" in message
    more.set()
    assert (await slow).status == 201
    assert gate.in_flight == 0
    # The refused batch was not stored; resent after the wait, it is stored once.
    assert await row_counts(client) == (1, 3)
    assert (await post(client, second))[0] == 201
    assert await row_counts(client) == (2, 6)
    metrics = await (await client.get("/metrics")).text()
    assert 'homeedge_cloud_unavailable_total{reason="overloaded"} 1.0' in metrics


async def test_no_free_connection_within_pool_timeout_is_503(
    aiohttp_client: AiohttpClient, db_url: str
) -> None:
    config = make_config(
        db_url,
        database={"pool_size": 1, "max_overflow": 0, "pool_timeout_s": 0.3},
        ingest={"retry_after_s": 3},
        # The storage upkeep and the analytics would take the pool's one connection at start.
        retention={"interval_s": 0},
        analytics_interval_s=0,
    )
    client = await aiohttp_client(create_app(config))
    first, second = make_batch(seq=1), make_batch(seq=2)
    async with database_locked(db_url):
        # The first upload's transaction takes the only connection and waits on the lock.
        stalled = asyncio.create_task(post(client, first))
        await asyncio.sleep(0.5)
        assert not stalled.done()
        resp = await client.post(
            "/api/v1/batches", data=gzip_body(second), headers=upload_headers()
        )
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "3"
        code, message = _error(await resp.json())
        assert code == "database_busy" and "pool_timeout_s" in message
    assert (await stalled)[0] == 201  # the lock is gone: the stalled one commits
    assert (await post(client, second))[0] == 201
    assert (await post(client, second))[0] == 200  # and a resend is a duplicate, not a row more
    assert await row_counts(client) == (2, 6)


@pytest.mark.parametrize("table", ["batches", "aggregates"])
async def test_a_statement_timeout_is_503_and_stores_nothing(
    aiohttp_client: AiohttpClient, pg_url: str, table: str
) -> None:
    # "aggregates": the COPY on the raw asyncpg connection is the statement cancelled, so the
    # error arrives as asyncpg's own, not SQLAlchemy's.
    config = make_config(pg_url, database={"statement_timeout_s": 0.3})
    client = await aiohttp_client(create_app(config))
    batch = make_batch(seq=1)
    async with database_locked(pg_url, table):
        started = time.monotonic()
        resp = await client.post("/api/v1/batches", data=gzip_body(batch), headers=upload_headers())
        waited = time.monotonic() - started
        assert resp.status == 503, await resp.text()
        assert resp.headers["Retry-After"] == "5"
        code, message = _error(await resp.json())
        assert code == "database_busy" and "statement_timeout_s" in message
        assert waited < 10  # answered, not held until the lock went away
    assert await row_counts(client) == (0, 0)
    assert (await post(client, batch))[0] == 201
    assert await row_counts(client) == (1, 3)


# --- the gateway's uplink against a saturated cloud -----------------------------------------


class RecordingSleep:
    """The uplink's sleep: records each delay, runs `on_first` at the first one (the cloud
    recovers while the gateway waits), then sleeps a token time so the loop turns."""

    def __init__(self, on_first: Callable[[], Awaitable[None]]) -> None:
        self.delays: list[float] = []
        self._on_first = on_first

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if len(self.delays) == 1:
            await self._on_first()
        if len(self.delays) > 20:
            raise AssertionError("the uplink keeps retrying")
        await asyncio.sleep(0.01)


def _gateway_outbox(tmp_path: Path, settings: UplinkSettings, n: int) -> Any:
    engine = make_gateway_engine(tmp_path / "gateway.db")
    now = time.time()
    for i in range(n):
        with engine.begin() as conn:
            outbox.enqueue(
                conn,
                [make_aggregate(T0 + 60 * (3 * i + j)) for j in range(3)],
                now=now,
                gateway="gw-1",
                settings=settings,
                privacy=BatchPrivacy(min_window_count=5),
                stats=BatchStats(),
            )
    return engine


def _uplink(settings: UplinkSettings, engine: Any, sleep: RecordingSleep) -> Uplink:
    return Uplink(
        settings,
        run_db=thread_run_db(engine),
        metrics=SyncMetrics(CollectorRegistry()),
        rng=random.Random(3),
        sleep=sleep,
    )


def _settings(url: str, **kw: Any) -> UplinkSettings:
    values: dict[str, Any] = {
        "url": url,
        "token": GW1_TOKEN,
        "backoff_min_s": 0.1,
        "backoff_max_s": 1.0,
        "catchup_batches_per_s": 1000.0,
        "catchup_burst": 1000,
        "retry_after_jitter": 0.5,
        "retry_after_max_s": 30.0,
        **kw,
    }
    return UplinkSettings.model_validate(values)


async def _stored_ids(client: TestClient[Any, Any]) -> list[str]:
    engine = client.server.app[ENGINE_KEY]  # type: ignore[union-attr]
    async with engine.connect() as conn:
        return list((await conn.execute(select(batches.c.batch_id))).scalars())


def _outbox_rows(engine: Any) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(select(outbox_table.c.batch_id, outbox_table.c.status)).all()
    return {r.batch_id: r.status for r in rows}


async def test_the_uplink_waits_retry_after_then_delivers_each_batch_once(
    aiohttp_client: AiohttpClient, db_url: str, tmp_path: Path
) -> None:
    # The cloud's only in-flight slot is held by another gateway's upload that is still
    # sending its body: this gateway's first send is refused with Retry-After 4.
    config = make_config(db_url, ingest={"max_in_flight": 1, "retry_after_s": 4})
    client = await aiohttp_client(create_app(config))
    gate = client.server.app[UPLOAD_GATE_KEY]  # type: ignore[union-attr]
    other = gzip_body(make_batch(seq=1, gateway="gw-2", aggs=[make_aggregate(T0 + 86400)]))
    more = asyncio.Event()

    async def trickle() -> AsyncIterator[bytes]:
        yield other[:10]
        await more.wait()
        yield other[10:]

    hog = asyncio.create_task(
        client.post("/api/v1/batches", data=trickle(), headers=upload_headers(GW2_TOKEN))
    )
    await wait_for(lambda: gate.in_flight == 1, within=10, what="the slow upload in flight")

    async def cloud_recovers() -> None:
        more.set()
        assert (await hog).status == 201

    settings = _settings(str(client.make_url("")))
    engine = _gateway_outbox(tmp_path, settings, 3)
    sleep = RecordingSleep(cloud_recovers)
    uplink = _uplink(settings, engine, sleep)
    async with CloudSession() as session:
        acked = await uplink.drain(session)
    assert acked == 3
    # One wait, as the cloud asked: at least 4 s, at most 4 * (1 + jitter); the batch stayed
    # pending meanwhile and went first once the cloud took uploads again.
    assert len(sleep.delays) == 1
    assert 4.0 <= sleep.delays[0] <= 6.0
    assert uplink.metrics.retry_after_waits._value.get() == 1
    sent = _outbox_rows(engine)
    assert sorted(sent.values()) == ["sent"] * 3
    stored = await _stored_ids(client)
    assert len(stored) == len(set(stored)) == 4  # the other gateway's and our three, once each
    assert set(sent) <= set(stored)
    assert await row_counts(client) == (4, 10)
    engine.dispose()


async def test_the_uplink_outlasts_a_database_behind_on_postgres(
    aiohttp_client: AiohttpClient, pg_url: str, tmp_path: Path
) -> None:
    # The database is behind (a lock holds the batches table): the ingest statement runs into
    # the statement timeout, the cloud answers 503 + Retry-After, the uplink waits, resends.
    config = make_config(pg_url, database={"statement_timeout_s": 0.3}, ingest={"retry_after_s": 2})
    client = await aiohttp_client(create_app(config))
    settings = _settings(str(client.make_url("")))
    engine = _gateway_outbox(tmp_path, settings, 2)
    lock = database_locked(pg_url)
    await lock.__aenter__()

    async def database_catches_up() -> None:
        await lock.__aexit__(None, None, None)

    sleep = RecordingSleep(database_catches_up)
    try:
        async with CloudSession() as session:
            assert await _uplink(settings, engine, sleep).drain(session) == 2
    finally:
        if not sleep.delays:
            await lock.__aexit__(None, None, None)
    assert len(sleep.delays) == 1 and 2.0 <= sleep.delays[0] <= 3.0
    assert sorted(_outbox_rows(engine).values()) == ["sent", "sent"]
    assert await row_counts(client) == (2, 6)
    engine.dispose()


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("7", now=now) == 7.0
    assert parse_retry_after(" 2.5 ", now=now) == 2.5
    assert parse_retry_after("-3", now=now) == 0.0
    # RFC 9110's example format, 30 s after `now`.
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 30))
    assert parse_retry_after(date, now=now) == pytest.approx(30.0)
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after("nan", now=now) is None


def test_a_retry_after_wait_is_jittered_and_bounded(tmp_path: Path) -> None:
    settings = _settings("http://cloud.invalid", retry_after_max_s=10.0, retry_after_jitter=0.5)
    uplink = Uplink(
        settings,
        run_db=thread_run_db(make_gateway_engine(tmp_path / "gateway.db")),
        metrics=SyncMetrics(CollectorRegistry()),
        rng=random.Random(1),
    )
    waits = [uplink.retry_after_delay(4.0) for _ in range(200)]
    assert all(4.0 <= w <= 6.0 for w in waits)
    assert max(waits) - min(waits) > 1.0  # spread out, not one instant for the whole fleet
    assert uplink.retry_after_delay(3600.0) == 10.0  # bounded
    assert uplink.retry_after_delay(0.0) >= settings.backoff_min_s  # never a busy loop
