"""What every cloud request handler shares: the typed app keys of the app's state, JSON answers,
`ApiError`, and the middlewares that give each request an id, time it and turn every error into
``{"error": {"code": ..., "message": ...}}`` (`cloud.app` puts them in order, with those of
`cloud.bodies` and `cloud.auth`).

Handlers import from here (and from `cloud.auth`), never from `cloud.app`, which wires them.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine

from cloud.backpressure import Overloaded, UploadGate, busy_reason, is_busy
from cloud.config import CloudConfig
from cloud.ingest import BatchWriter
from cloud.metrics import CloudMetrics
from cloud.responses import ErrorBody, ErrorDetail

log = logging.getLogger(__name__)

CONFIG_KEY = web.AppKey("config", CloudConfig)
ENGINE_KEY = web.AppKey("engine", AsyncEngine)
# Set while the app runs, between the engine's set-up and its disposal (see `cloud.app`).
BATCH_WRITER_KEY = web.AppKey("batch_writer", BatchWriter)
METRICS_KEY = web.AppKey("metrics", CloudMetrics)
UPLOAD_GATE_KEY = web.AppKey("upload_gate", UploadGate)

REQUEST_ID = web.RequestKey("request_id", str)
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}\Z")  # \Z: "$" matches before a final newline
_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
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


def error_code(status: int) -> str:
    """The generic code of an HTTP error status (handlers usually name a more precise one)."""
    return _ERROR_CODES.get(status, f"http_{status}")


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
    except Overloaded as exc:
        return _unavailable(request, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = error_code(exc.status)
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
        if is_busy(exc):
            log.warning("request %s %s: %s", request.method, request.path, busy_reason(exc))
            return _unavailable(request, "database_busy", busy_reason(exc))
        if not _database_unavailable(exc):
            return _internal_error(request)
        # The database is down: a 503 tells a gateway to retry later.
        log.warning("request %s %s: database unavailable: %s", request.method, request.path, exc)
        return _unavailable(request, "database_unavailable", "the database does not answer")
    except Exception as exc:  # the request's top level: log with its id, answer 500, keep serving
        if is_busy(exc):  # asyncpg's own error, from the raw connection's COPY
            log.warning("request %s %s: %s", request.method, request.path, busy_reason(exc))
            return _unavailable(request, "database_busy", busy_reason(exc))
        return _internal_error(request)


def _unavailable(request: web.Request, code: str, message: str) -> web.Response:
    """503 with the configured Retry-After (whole seconds, RFC 9110 section 10.2.3)."""
    response = error_response(503, code, message)
    retry_after = request.app[CONFIG_KEY].ingest.retry_after_s
    response.headers["Retry-After"] = str(retry_after)
    request.app[METRICS_KEY].unavailable.labels(code).inc()
    return response


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
