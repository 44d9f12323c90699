"""Dashboard sessions in the cloud database: opened at login, looked up on each request that
carries the cookie, deleted at logout.

The cookie is 32 random bytes (URL-safe base64). The `sessions` table keys a session by
HMAC(session key, cookie), the session key being derived from the read token: the table holds
nothing a browser could present, and a new read token voids every session. Because the state is
in the database, a logout ends the session in every worker process and survives restarts.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from cloud.db import sessions

SESSION_COOKIE = "homeedge_session"
# The server-side lifetime: the row's expiry, whatever the browser keeps.
SESSION_MAX_AGE_S = 12 * 3600
# secrets.token_urlsafe(32): 43 characters of the URL-safe base64 alphabet. Anything else is no
# session of ours, and is refused before it reaches a hash or the database.
_COOKIE_RE = re.compile(r"^[A-Za-z0-9_\-]{43}$")


def session_key(read_token: str) -> bytes:
    """The key sessions are keyed under (derived from the read token, never the token)."""
    return hmac.new(read_token.encode(), b"homeedge dashboard session", hashlib.sha256).digest()


def _digest(key: bytes, cookie: str) -> str:
    return hmac.new(key, cookie.encode("ascii"), hashlib.sha256).hexdigest()


def well_formed(cookie: str) -> bool:
    return _COOKIE_RE.match(cookie) is not None


async def open_session(engine: AsyncEngine, key: bytes, now: float | None = None) -> str:
    """Store a new session and return its cookie value; expired sessions are purged on the way
    (a login is rare, so the table never grows past the sessions of the last 12 hours)."""
    now = time.time() if now is None else now
    cookie = secrets.token_urlsafe(32)
    async with engine.begin() as conn:
        await conn.execute(delete(sessions).where(sessions.c.expires_at <= now))
        await conn.execute(
            insert(sessions).values(
                digest=_digest(key, cookie), issued_at=now, expires_at=now + SESSION_MAX_AGE_S
            )
        )
    return cookie


async def session_is_open(
    engine: AsyncEngine, key: bytes, cookie: str, now: float | None = None
) -> bool:
    if not well_formed(cookie):
        return False
    async with engine.connect() as conn:
        expires_at = await conn.scalar(
            select(sessions.c.expires_at).where(sessions.c.digest == _digest(key, cookie))
        )
    return expires_at is not None and float(expires_at) > (time.time() if now is None else now)


async def close_session(engine: AsyncEngine, key: bytes, cookie: str) -> None:
    """End the session (nothing happens for a cookie that names none)."""
    if not well_formed(cookie):
        return
    async with engine.begin() as conn:
        await conn.execute(delete(sessions).where(sessions.c.digest == _digest(key, cookie)))
