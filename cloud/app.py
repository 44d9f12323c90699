"""The cloud HTTP service's composition root: `create_app(config)` wires the middlewares, the
routes and the app-scoped resources (database engine, batch writer, analytics task).

Routes (all JSON; every 4xx/5xx body is ``{"error": {"code": ..., "message": ...}}``):

- ``POST /api/v1/batches``    gateway upload, ``Authorization: Bearer <gateway token>``
- ``GET  /api/v1/aggregates`` time series, ``Authorization: Bearer <read_token>``
- ``GET  /api/v1/gateways``   per-gateway health (sequence gaps, lag), read token
- ``/api/v1/analytics/...``   fleet analytics, read token (see `cloud.analytics.handlers`)
- ``GET  /``                  the dashboard (see `cloud.dashboard`); the read token or its
                              session cookie
- ``GET  /healthz``           liveness + database check, no credential
- ``GET  /metrics``           Prometheus text format, no credential

The core handlers live in `cloud.api`, what handlers share in `cloud.web` and `cloud.auth`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from cloud.analytics.handlers import setup_analytics
from cloud.api import ROUTES
from cloud.auth import setup_credentials
from cloud.config import CloudConfig
from cloud.dashboard import setup_dashboard
from cloud.db import make_engine, upgrade_to_head
from cloud.ingest import BatchWriter
from cloud.metrics import CloudMetrics
from cloud.web import BATCH_WRITER_KEY, CONFIG_KEY, ENGINE_KEY, METRICS_KEY, MIDDLEWARES


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


async def _batch_writer(app: web.Application) -> AsyncIterator[None]:
    # After _database: cleanup_ctx tears down in reverse, so every batch the writer accepted is
    # committed (or has failed) before the engine is disposed.
    writer = app[BATCH_WRITER_KEY] = BatchWriter(app[ENGINE_KEY])
    yield
    await writer.aclose()


def create_app(config: CloudConfig) -> web.Application:
    """The cloud service for `config`; the database is opened and migrated on start-up."""
    app = web.Application(middlewares=MIDDLEWARES, client_max_size=config.max_body_bytes)
    app[CONFIG_KEY] = config
    app[METRICS_KEY] = CloudMetrics()
    setup_credentials(app, config)
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_batch_writer)
    setup_analytics(app)  # after _database: its background task needs the engine
    setup_dashboard(app)
    return app
