"""The cloud HTTP service: `create_app(config)`, its middlewares and its request handlers.

Routes (all JSON; every 4xx/5xx body is ``{"error": {"code": ..., "message": ...}}``):

- ``POST /api/v1/batches``    gateway upload, ``Authorization: Bearer <gateway token>``
- ``GET  /api/v1/aggregates`` time series, ``Authorization: Bearer <read_token>``
- ``GET  /api/v1/gateways``   per-gateway health (sequence gaps, lag), read token
- ``/api/v1/analytics/...``   fleet analytics, read token (see `cloud.analytics.handlers`)
- ``GET  /``                  the dashboard (see `cloud.dashboard`); the read token or its
                              session cookie
- ``GET  /healthz``           liveness + database check, no credential
- ``GET  /metrics``           Prometheus text format, no credential
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine

from cloud.analytics.rollups import rollup_series, served_by_rollups
from cloud.config import CloudConfig
from cloud.db import make_engine, upgrade_to_head
from cloud.ingest import BatchConflict, BodySize, StoreOutcome, store_batch
from cloud.metrics import CloudMetrics
from cloud.queries import (
    FILTER_COLUMNS,
    GROUP_COLUMNS,
    Bucket,
    SeriesQuery,
    TooManyPoints,
    gateway_status,
    query_series,
)
from cloud.responses import (
    ErrorBody,
    ErrorDetail,
    GatewaysResponse,
    Health,
    SeriesResponse,
    StoreResult,
)
from schemas.batch import decode_batch
from schemas.errors import PayloadError

log = logging.getLogger(__name__)

CONFIG_KEY = web.AppKey("config", CloudConfig)
ENGINE_KEY = web.AppKey("engine", AsyncEngine)
METRICS_KEY = web.AppKey("metrics", CloudMetrics)
# sha256(token) -> gateway id: a dict lookup on a digest leaks nothing usable about the token.
GATEWAY_TOKENS_KEY = web.AppKey("gateway_tokens", dict[bytes, str])
READ_TOKEN_KEY = web.AppKey("read_token", bytes)
# The dashboard's session cookie holds a value derived from the read token (never the token):
# stateless, the same in every worker process, and void once the token changes.
SESSION_COOKIE = "homeedge_session"
READ_SESSION_KEY = web.AppKey("read_session", str)

REQUEST_ID = web.RequestKey("request_id", str)
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_METRIC_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation",
    503: "unavailable",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error answer: HTTP status, a machine-readable code and a human message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(payload), status=status, content_type="application/json"
    )


def error_response(status: int, code: str, message: str) -> web.Response:
    response = json_response(ErrorBody(ErrorDetail(code, message)), status=status)
    if status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


# --- middlewares (outermost first) ---------------------------------------------------------


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Take the caller's X-Request-Id when it is sane, else make one; echo it back."""
    given = request.headers.get("X-Request-Id", "")
    request_id = given if _REQUEST_ID_RE.match(given) else uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    response = await handler(request)
    response.headers["X-Request-Id"] = request_id
    return response


@web.middleware
async def latency_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    response = await handler(request)
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    request.app[METRICS_KEY].request_seconds.labels(
        request.method, route, str(response.status)
    ).observe(time.perf_counter() - started)
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as JSON, including aiohttp's own 404, 405 and 413."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _ERROR_CODES.get(exc.status, f"http_{exc.status}")
        if exc.status == 404:
            message = f"nothing at {request.path}"
        elif exc.status == 405:
            message = f"{request.method} is not allowed on {request.path}"
        else:
            message = exc.text or exc.reason
        response = error_response(exc.status, code, message)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except (DBAPIError, PoolTimeout, OSError) as exc:
        if not _database_unavailable(exc):
            return _internal_error(request)
        # The database is down or overloaded: a 503 tells a gateway to retry later.
        log.warning("request %s %s: database unavailable: %s", request.method, request.path, exc)
        response = error_response(503, "database_unavailable", "the database does not answer")
        response.headers["Retry-After"] = "5"
        return response
    except Exception:  # the request's top level: log with its id, answer 500, keep serving
        return _internal_error(request)


def _database_unavailable(exc: Exception) -> bool:
    if not isinstance(exc, DBAPIError):
        return True  # a pool timeout or a socket error
    # Connecting failed (no statement ran), the connection broke, or the server said so.
    return (
        exc.statement is None
        or exc.connection_invalidated
        or isinstance(exc, OperationalError | InterfaceError)
    )


def _internal_error(request: web.Request) -> web.Response:
    """Called from an except block: logs the traceback with the request id."""
    request_id = request.get(REQUEST_ID, "-")
    log.exception("request %s %s failed (request id %s)", request.method, request.path, request_id)
    return error_response(500, "internal", f"internal error (request id {request_id})")


# --- credentials ---------------------------------------------------------------------------


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


# A session cookie is "<issued unix s>.<HMAC(session key, issued)>": the server checks its age,
# so a leaked cookie stops working after SESSION_MAX_AGE_S even if a browser keeps it.
SESSION_MAX_AGE_S = 12 * 3600
_SESSION_CLOCK_SKEW_S = 60


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


# --- handlers ------------------------------------------------------------------------------


async def post_batch(request: web.Request) -> web.Response:
    metrics = request.app[METRICS_KEY]
    try:
        gateway = authenticated_gateway(request)
    except ApiError:
        metrics.batches_rejected.labels("unauthorized").inc()
        raise
    try:
        # aiohttp undoes Content-Encoding: gzip and stops at client_max_size (decompressed).
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        metrics.batches_rejected.labels("oversized").inc()
        raise
    except web.RequestPayloadError as exc:  # e.g. Content-Encoding: gzip on a non-gzip body
        metrics.batches_rejected.labels("bad_encoding").inc()
        raise ApiError(400, "bad_encoding", f"cannot read the body: {exc}") from None
    try:
        batch = decode_batch(body)
    except PayloadError as exc:
        metrics.batches_rejected.labels(exc.reason).inc()
        status = {"invalid_json": 400, "oversized": 413}.get(exc.reason, 422)
        raise ApiError(status, exc.reason, exc.detail) from None
    if batch.gateway != gateway:
        metrics.batches_rejected.labels("forbidden").inc()
        raise ApiError(
            403, "forbidden", f"token of gateway {gateway!r} cannot upload for {batch.gateway!r}"
        )
    size = BodySize(wire=request.content_length or len(body), decoded=len(body))
    try:
        outcome = await store_batch(request.app[ENGINE_KEY], batch, size)
    except BatchConflict as exc:
        metrics.batches_rejected.labels("conflict").inc()
        raise ApiError(409, "conflict", str(exc)) from None
    if outcome is StoreOutcome.DUPLICATE:
        metrics.batches_duplicate.inc()
        return json_response(StoreResult("duplicate", batch.batch_id), status=200)
    metrics.batches_stored.inc()
    metrics.aggregate_rows.inc(len(batch.aggregates))
    log.debug("stored batch %s seq %d of %s", batch.batch_id, batch.seq, gateway)
    return json_response(StoreResult("stored", batch.batch_id), status=201)


def _float_param(request: web.Request, name: str) -> float | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise ApiError(400, "bad_query", f"{name} must be unix seconds, got {raw!r}") from None


def parse_series_query(request: web.Request) -> SeriesQuery:
    q = request.query
    metric = q.get("metric", "")
    if not _METRIC_RE.match(metric):
        raise ApiError(400, "bad_query", "metric is required (lower-case name, e.g. temperature)")
    try:
        bucket = Bucket(q.get("bucket", "raw"))
    except ValueError:
        choices = ", ".join(b.value for b in Bucket)
        raise ApiError(400, "bad_query", f"bucket must be one of {choices}") from None
    group_by: tuple[str, ...] = SeriesQuery.group_by
    if "group_by" in q:
        group_by = tuple(name for name in q["group_by"].split(",") if name)
        unknown = [name for name in group_by if name not in GROUP_COLUMNS]
        if unknown or len(set(group_by)) != len(group_by):
            raise ApiError(
                400, "bad_query", f"group_by takes distinct names from {', '.join(GROUP_COLUMNS)}"
            )
    filters = {name: q[name] for name in FILTER_COLUMNS if q.get(name)}
    return SeriesQuery(
        metric=metric,
        bucket=bucket,
        group_by=group_by,
        filters=filters,
        start=_float_param(request, "start"),
        end=_float_param(request, "end"),
    )


async def get_aggregates(request: web.Request) -> web.Response:
    require_reader(request)
    query = parse_series_query(request)
    # Hour/day buckets on bucket edges come from the rollups: the same answer, far fewer rows.
    read = rollup_series if served_by_rollups(query) else query_series
    try:
        series = await read(request.app[ENGINE_KEY], query)
    except TooManyPoints as exc:
        raise ApiError(400, "too_many_points", str(exc)) from None
    return json_response(
        SeriesResponse(
            metric=query.metric,
            bucket=query.bucket.value,
            group_by=list(query.group_by),
            filters=query.filters,
            start=query.start,
            end=query.end,
            series=series,
        )
    )


async def get_gateways(request: web.Request) -> web.Response:
    require_reader(request)
    now = time.time()
    configured = list(request.app[CONFIG_KEY].gateways)
    statuses = await gateway_status(request.app[ENGINE_KEY], configured, now=now)
    return json_response(GatewaysResponse(now=now, gateways=statuses))


async def get_healthz(request: web.Request) -> web.Response:
    async with request.app[ENGINE_KEY].connect() as conn:
        await conn.execute(text("SELECT 1"))  # errors become 503 in error_middleware
    return json_response(Health(status="ok", database="ok", pid=os.getpid()))


async def get_metrics(request: web.Request) -> web.Response:
    response = web.Response(body=generate_latest(request.app[METRICS_KEY].registry))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


# Method, path, handler: the single list both the router and the OpenAPI test read.
ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("POST", "/api/v1/batches", post_batch),
    ("GET", "/api/v1/aggregates", get_aggregates),
    ("GET", "/api/v1/gateways", get_gateways),
    ("GET", "/healthz", get_healthz),
    ("GET", "/metrics", get_metrics),
)


async def _database(app: web.Application) -> AsyncIterator[None]:
    engine = make_engine(app[CONFIG_KEY].database_url)
    try:
        await upgrade_to_head(engine)
    except BaseException:
        await engine.dispose()
        raise
    app[ENGINE_KEY] = engine
    yield
    await engine.dispose()


def create_app(config: CloudConfig) -> web.Application:
    """The cloud service for `config`; the database is opened and migrated on start-up."""
    app = web.Application(
        middlewares=[request_id_middleware, latency_middleware, error_middleware],
        client_max_size=config.max_body_bytes,
    )
    app[CONFIG_KEY] = config
    app[METRICS_KEY] = CloudMetrics()
    app[GATEWAY_TOKENS_KEY] = {
        _digest(token.get_secret_value()): gateway for gateway, token in config.gateways.items()
    }
    app[READ_TOKEN_KEY] = _digest(config.read_token.get_secret_value())
    app[READ_SESSION_KEY] = session_value(config.read_token.get_secret_value())
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    app.cleanup_ctx.append(_database)
    # Imported here: those modules build on this one's helpers (errors, credentials, keys).
    from cloud.analytics.handlers import setup_analytics
    from cloud.dashboard import setup_dashboard

    setup_analytics(app)  # after _database: its background task needs the engine
    setup_dashboard(app)
    return app
