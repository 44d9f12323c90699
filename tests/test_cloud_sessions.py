"""Dashboard sessions are revocable: a logout ends a session in every worker process and across
restarts (the sessions live in the database), on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from typing import Any

from aiohttp.test_utils import TestClient
from sqlalchemy import func, select

from cloud.app import create_app
from cloud.auth import SESSION_KEY
from cloud.db import sessions
from cloud.sessions import SESSION_COOKIE, open_session
from cloud.web import ENGINE_KEY
from tests.test_cloud_api import READ_TOKEN, AiohttpClient, db_url, make_config

__all__ = ["db_url"]  # the fixture, imported for pytest


async def log_in(client: TestClient[Any, Any]) -> str:
    resp = await client.post("/login", data={"token": READ_TOKEN}, allow_redirects=False)
    assert resp.status == 303
    cookie = resp.cookies[SESSION_COOKIE]
    assert int(cookie["max-age"]) == 12 * 3600
    client.session.cookie_jar.clear()  # cookies only as each request sends them below
    return cookie.value


async def reads(client: TestClient[Any, Any], cookie: str) -> int:
    resp = await client.get("/api/v1/gateways", headers={"Cookie": f"{SESSION_COOKIE}={cookie}"})
    return resp.status


async def session_rows(client: TestClient[Any, Any]) -> int:
    engine = client.server.app[ENGINE_KEY]  # type: ignore[union-attr]
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(sessions)) or 0)


async def test_logout_ends_the_session_in_every_worker_and_across_restarts(
    aiohttp_client: AiohttpClient, db_url: str
) -> None:
    config = make_config(db_url, analytics_interval_s=0)
    # Two apps on one database: two worker processes behind one port, as far as sessions go.
    first = await aiohttp_client(create_app(config))
    second = await aiohttp_client(create_app(config))
    ended, kept = await log_in(first), await log_in(second)
    assert ended != kept and READ_TOKEN not in ended
    for client in (first, second):
        assert [await reads(client, ended), await reads(client, kept)] == [200, 200]

    resp = await second.post(
        "/logout", headers={"Cookie": f"{SESSION_COOKIE}={ended}"}, allow_redirects=False
    )
    assert resp.status == 303
    assert resp.cookies[SESSION_COOKIE].value == ""  # the browser's copy is cleared too
    for client in (first, second):
        assert await reads(client, ended) == 401, "the logged-out cookie still reads"
        assert await reads(client, kept) == 200
    body = await (
        await first.get("/api/v1/gateways", headers={"Cookie": f"{SESSION_COOKIE}={ended}"})
    ).json()
    assert body["error"]["code"] == "unauthorized"

    # A restart keeps what the database holds: the live session still reads, the ended one not.
    await first.close()
    await second.close()
    restarted = await aiohttp_client(create_app(config))
    assert [await reads(restarted, ended), await reads(restarted, kept)] == [401, 200]
    # Logging out with no cookie, or with one that names no session, changes nothing.
    for headers in ({}, {"Cookie": f"{SESSION_COOKIE}=not-a-session"}):
        resp = await restarted.post("/logout", headers=headers, allow_redirects=False)
        assert resp.status == 303
    assert await reads(restarted, kept) == 200

    # A new read token ends every session at once.
    await restarted.close()
    rotated = await aiohttp_client(
        create_app(
            make_config(db_url, analytics_interval_s=0, read_token="a-new-read-token-0123456")
        )
    )
    assert await reads(rotated, kept) == 401


async def test_expired_sessions_are_refused_and_purged_at_the_next_login(
    aiohttp_client: AiohttpClient, db_url: str
) -> None:
    client = await aiohttp_client(create_app(make_config(db_url, analytics_interval_s=0)))
    app = client.server.app
    assert app is not None
    stale = await open_session(app[ENGINE_KEY], app[SESSION_KEY], now=time.time() - 13 * 3600)
    assert await reads(client, stale) == 401
    assert await session_rows(client) == 1
    fresh = await log_in(client)
    assert await session_rows(client) == 1  # the stale row went, the new one came
    assert await reads(client, fresh) == 200
