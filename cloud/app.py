"""The cloud HTTP service's composition root: `create_app(config)` wires the middlewares, the
routes and the app-scoped resources (database engine, batch writer, analytics task).

Routes (all JSON; every 4xx/5xx body is ``{"error": {"code": ..., "message": ...}}``):

- ``POST /api/v1/batches``    gateway upload, ``Authorization: Bearer <gateway token>``
- ``GET  /api/v1/aggregates`` time series, ``Authorization: Bearer <read_token>``
- ``GET  /api/v1/gateways``   per-gateway health (sequence gaps, lag), read token
- ``/api/v1/analytics/...``   fleet analytics, read token (see `cloud.analytics.handlers`)
- ``/api/v1/updates/...``     the signed update repository, no credential (`cloud.updates`)
- ``/api/v1/rollouts...``, ``/api/v1/gateway/desired|report``, ``/api/v1/fleet/versions``
                              fleet rollouts (`cloud.fleet.handlers`)
- ``GET  /``                  the dashboard (see `cloud.dashboard`); the read token or its
                              session cookie
- ``GET  /api/v1/openapi.json`` this API's OpenAPI document; ``/api/v1/docs`` a page to
                              browse it; no credential (see `cloud.apidocs`)
- ``GET  /healthz``           liveness + database check, no credential
- ``GET  /metrics``           Prometheus text format; ``Bearer <metrics_token>`` when one is set

The core handlers live in `cloud.api`, what handlers share in `cloud.web`, `cloud.auth` and
`cloud.bodies`; `cloud.protocol` answers what never reaches the app (parser errors).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from cloud.analytics.handlers import setup_analytics
from cloud.api import ROUTES
from cloud.apidocs import setup_apidocs
from cloud.auth import session_middleware, setup_credentials
from cloud.backpressure import UploadGate, engine_options
from cloud.bodies import body_middleware
from cloud.config import CloudConfig, HttpLimits
from cloud.dashboard import setup_dashboard
from cloud.db import dispose, make_engine, upgrade_to_head
from cloud.fleet.handlers import setup_fleet
from cloud.ingest import BatchWriter
from cloud.metrics import CloudMetrics
from cloud.storage import setup_storage_upkeep
from cloud.updates import setup_updates
from cloud.web import (
    BATCH_WRITER_KEY,
    CONFIG_KEY,
    ENGINE_KEY,
    METRICS_KEY,
    UPLOAD_GATE_KEY,
    error_middleware,
    latency_middleware,
    request_id_middleware,
)

# Outermost first. body_middleware sits outside error_middleware so that it sees every answer,
# errors included, when it ends keep-alive after an unread body; session_middleware inside it,
# so that a session lookup the database cannot answer is a 503.
MIDDLEWARES = (
    request_id_middleware,
    latency_middleware,
    body_middleware,
    error_middleware,
    session_middleware,
)


async def migrate(url: str) -> None:
    """Bring the schema at `url` to head on an engine of its own: a migration may run longer
    than the serving engine's statement_timeout allows, and needs none of its pool."""
    engine = make_engine(url)
    try:
        await upgrade_to_head(engine)
    finally:
        await dispose(engine)


async def _database(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG_KEY]
    await migrate(config.database_url)
    # The serving engine: a bounded pool and statement time, so a database that falls behind
    # is answered 503 + Retry-After (cloud.backpressure) instead of holding requests.
    engine = make_engine(
        config.database_url, **engine_options(config.database_url, config.database)
    )
    app[ENGINE_KEY] = engine
    yield
    await dispose(engine)


async def _batch_writer(app: web.Application) -> AsyncIterator[None]:
    # After _database: cleanup_ctx tears down in reverse, so every batch the writer accepted is
    # committed (or has failed) before the engine is disposed.
    writer = app[BATCH_WRITER_KEY] = BatchWriter(app[ENGINE_KEY])
    yield
    await writer.aclose()


def handler_args(limits: HttpLimits) -> dict[str, Any]:
    """aiohttp's per-connection settings for `limits`."""
    return {
        # Never inflate a body as it arrives: only a route that reads it does, within its limit
        # (cloud.bodies), so an unread gzip bomb costs nothing.
        "auto_decompress": False,
        # The timer runs from the connection's start (and from each answer) until a request's
        # head is complete; data arriving does not reset it, so a client trickling header
        # bytes is cut as surely as an idle one.
        "keepalive_timeout": limits.header_timeout_s,
        "lingering_time": limits.lingering_s,
        "max_line_size": limits.max_header_bytes,
        "max_field_size": limits.max_header_bytes,
        "max_headers": limits.max_headers,
    }


def create_app(config: CloudConfig) -> web.Application:
    """The cloud service for `config`; the database is opened and migrated on start-up."""
    app = web.Application(
        middlewares=MIDDLEWARES,
        client_max_size=config.max_body_bytes,
        # handler_args reach every runner's connections, the test client's included.
        handler_args=handler_args(config.http),
    )
    app[CONFIG_KEY] = config
    app[METRICS_KEY] = CloudMetrics()
    app[UPLOAD_GATE_KEY] = UploadGate(config.ingest.max_in_flight, config.ingest.retry_after_s)
    setup_credentials(app, config)
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_batch_writer)
    setup_storage_upkeep(app)  # after _database: partitions and retention need the engine
    setup_analytics(app)  # after _database: its background task needs the engine
    setup_updates(app)
    setup_fleet(app)  # after _database: its scheduler needs the engine
    setup_dashboard(app)
    setup_apidocs(app)
    return app
