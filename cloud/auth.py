"""Who may call the cloud: gateway tokens (uploads), the read token and the dashboard's
session cookie (reads), and the optional metrics token (/metrics).

`setup_credentials(app, config)` stores digests of the configured tokens in the app; the
checks below raise `ApiError` (401) for a caller without the credential. A session cookie is
looked up in the database (`cloud.sessions`) by `session_middleware`, before the handler runs,
so the checks themselves stay synchronous.

Header values arrive as aiohttp decodes them: UTF-8, with any other byte kept as a lone
surrogate. They are hashed as the bytes that were sent, so a non-UTF-8 byte is just a wrong
credential (401), never an encoding error.
"""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

from cloud.config import CloudConfig
from cloud.sessions import SESSION_COOKIE, session_is_open, session_key
from cloud.web import ENGINE_KEY, ApiError, Handler

# sha256(token) -> gateway id: a dict lookup on a digest leaks nothing usable about the token.
GATEWAY_TOKENS_KEY = web.AppKey("gateway_tokens", dict[bytes, str])
READ_TOKEN_KEY = web.AppKey("read_token", bytes)
# Absent when no metrics_token is configured: /metrics then needs no credential.
METRICS_TOKEN_KEY = web.AppKey("metrics_token", bytes)
SESSION_KEY = web.AppKey("session_key", bytes)
# Set by session_middleware: whether the request's session cookie names an open session.
SESSION_OPEN = web.RequestKey("session_open", bool)


def setup_credentials(app: web.Application, config: CloudConfig) -> None:
    app[GATEWAY_TOKENS_KEY] = {
        _digest(token.get_secret_value()): gateway for gateway, token in config.gateways.items()
    }
    app[READ_TOKEN_KEY] = _digest(config.read_token.get_secret_value())
    app[SESSION_KEY] = session_key(config.read_token.get_secret_value())
    if config.metrics_token is not None:
        app[METRICS_TOKEN_KEY] = _digest(config.metrics_token.get_secret_value())


def _digest(token: str) -> bytes:
    # surrogateescape: the bytes the client sent, whatever they were (see the module docstring).
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def presented_token(request: web.Request) -> bytes | None:
    """The digest of the request's Bearer token, or None without one."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return _digest(token.strip())


def token_digest(token: str) -> bytes:
    """What `presented_token` gives for `token`, for comparing with hmac.compare_digest."""
    return _digest(token)


def _bearer(request: web.Request) -> bytes:
    presented = presented_token(request)
    if presented is None:
        raise ApiError(401, "unauthorized", "missing Authorization: Bearer <token>")
    return presented


def authenticated_gateway(request: web.Request) -> str:
    presented = _bearer(request)
    gateway = request.app[GATEWAY_TOKENS_KEY].get(presented)
    if gateway is None:
        raise ApiError(401, "unauthorized", "unknown gateway token")
    return gateway


def is_read_token(app: web.Application, token: str) -> bool:
    return hmac.compare_digest(_digest(token), app[READ_TOKEN_KEY])


def _uses_session(request: web.Request) -> bool:
    # An Authorization header wins: a script with a stale cookie jar still gets its token
    # checked, and never a cookie answer.
    return SESSION_COOKIE in request.cookies and "Authorization" not in request.headers


def require_reader(request: web.Request) -> None:
    """The read token as a Bearer credential, or (without an Authorization header) the
    dashboard's session cookie."""
    if _uses_session(request):
        if request.get(SESSION_OPEN, False):
            return
        raise ApiError(401, "unauthorized", "invalid, expired or ended session; log in again")
    if not hmac.compare_digest(_bearer(request), request.app[READ_TOKEN_KEY]):
        raise ApiError(401, "unauthorized", "invalid read token")


def require_metrics_reader(request: web.Request) -> None:
    """The metrics token as a Bearer credential, when one is configured."""
    expected = request.app.get(METRICS_TOKEN_KEY)
    if expected is not None and not hmac.compare_digest(_bearer(request), expected):
        raise ApiError(401, "unauthorized", "invalid metrics token")


@web.middleware
async def session_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Look the session cookie up (one primary-key read) for `require_reader`; runs inside
    `error_middleware`, so a database that does not answer is a 503 like anywhere else."""
    if _uses_session(request):
        request[SESSION_OPEN] = await session_is_open(
            request.app[ENGINE_KEY], request.app[SESSION_KEY], request.cookies[SESSION_COOKIE]
        )
    return await handler(request)
