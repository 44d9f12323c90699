"""Who may call the cloud: gateway tokens (uploads), the read token and the dashboard's
session cookie (reads).

`setup_credentials(app, config)` stores digests of the configured tokens in the app; the
checks below raise `ApiError` (401) for a caller without the credential.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from aiohttp import web

from cloud.config import CloudConfig
from cloud.web import ApiError

# sha256(token) -> gateway id: a dict lookup on a digest leaks nothing usable about the token.
GATEWAY_TOKENS_KEY = web.AppKey("gateway_tokens", dict[bytes, str])
READ_TOKEN_KEY = web.AppKey("read_token", bytes)
# The dashboard's session cookie holds a value derived from the read token (never the token):
# stateless, the same in every worker process, and void once the token changes.
SESSION_COOKIE = "homeedge_session"
READ_SESSION_KEY = web.AppKey("read_session", str)

# A session cookie is "<issued unix s>.<HMAC(session key, issued)>": the server checks its age,
# so a leaked cookie stops working after SESSION_MAX_AGE_S even if a browser keeps it.
SESSION_MAX_AGE_S = 12 * 3600
_SESSION_CLOCK_SKEW_S = 60


def setup_credentials(app: web.Application, config: CloudConfig) -> None:
    app[GATEWAY_TOKENS_KEY] = {
        _digest(token.get_secret_value()): gateway for gateway, token in config.gateways.items()
    }
    app[READ_TOKEN_KEY] = _digest(config.read_token.get_secret_value())
    app[READ_SESSION_KEY] = session_value(config.read_token.get_secret_value())


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _bearer(request: web.Request) -> bytes:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "missing Authorization: Bearer <token>")
    return _digest(token.strip())


def authenticated_gateway(request: web.Request) -> str:
    presented = _bearer(request)
    gateway = request.app[GATEWAY_TOKENS_KEY].get(presented)
    if gateway is None:
        raise ApiError(401, "unauthorized", "unknown gateway token")
    return gateway


def is_read_token(app: web.Application, token: str) -> bool:
    return hmac.compare_digest(_digest(token), app[READ_TOKEN_KEY])


def session_value(read_token: str) -> str:
    """The key that signs dashboard sessions (derived from the read token, never the token)."""
    return hmac.new(read_token.encode(), b"homeedge dashboard session", "sha256").hexdigest()


def issue_session(app: web.Application, now: float | None = None) -> str:
    issued = str(int(time.time() if now is None else now))
    mac = hmac.new(app[READ_SESSION_KEY].encode(), issued.encode(), "sha256").hexdigest()
    return f"{issued}.{mac}"


def valid_session(app: web.Application, cookie: str, now: float | None = None) -> bool:
    issued, _, mac = cookie.partition(".")
    if not issued.isdigit() or len(issued) > 12:
        return False
    expected = hmac.new(app[READ_SESSION_KEY].encode(), issued.encode(), "sha256").hexdigest()
    if not hmac.compare_digest(mac.encode(), expected.encode()):
        return False
    age = (time.time() if now is None else now) - int(issued)
    return -_SESSION_CLOCK_SKEW_S <= age <= SESSION_MAX_AGE_S


def require_reader(request: web.Request) -> None:
    """The read token as a Bearer credential, or (without an Authorization header) the
    dashboard's session cookie."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie is not None and "Authorization" not in request.headers:
        if valid_session(request.app, cookie):
            return
        raise ApiError(401, "unauthorized", "invalid or expired session; log in again")
    if not hmac.compare_digest(_bearer(request), request.app[READ_TOKEN_KEY]):
        raise ApiError(401, "unauthorized", "invalid read token")
