"""The core API's handlers and routes: batch uploads, time series, gateway health, liveness
and metrics (the analytics and dashboard routes live in `cloud.analytics.handlers` and
`cloud.dashboard`).

- ``POST /api/v1/batches``    gateway upload, ``Authorization: Bearer <gateway token>``
- ``GET  /api/v1/aggregates`` time series, ``Authorization: Bearer <read_token>``
- ``GET  /api/v1/gateways``   per-gateway health (sequence gaps, lag), read token
- ``GET  /healthz``           liveness + database check, no credential
- ``GET  /metrics``           Prometheus text format; ``Bearer <metrics_token>`` when one is set
"""

from __future__ import annotations

import logging
import math
import os
import re
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from cloud.analytics.rollups import rollup_series, served_by_rollups
from cloud.auth import authenticated_gateway, require_metrics_reader, require_reader
from cloud.backpressure import Overloaded
from cloud.bodies import read_body
from cloud.ingest import BatchConflict, Body, StoreOutcome
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
from cloud.web import (
    BATCH_WRITER_KEY,
    CONFIG_KEY,
    ENGINE_KEY,
    METRICS_KEY,
    UPLOAD_GATE_KEY,
    ApiError,
    Handler,
    json_response,
)
from schemas.batch import decode_batch
from schemas.batch_rules import batch_violation
from schemas.errors import PayloadError

log = logging.getLogger(__name__)

_METRIC_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}\Z")  # \Z: "$" matches before a final newline
BATCH_MEDIA_TYPES = frozenset({"application/json"})


async def post_batch(request: web.Request) -> web.Response:
    metrics = request.app[METRICS_KEY]
    try:
        gateway = authenticated_gateway(request)
    except ApiError:
        metrics.batches_rejected.labels("unauthorized").inc()
        raise
    try:
        # Before the body is read: an overloaded worker spends nothing on what it refuses.
        with request.app[UPLOAD_GATE_KEY].admit():
            return await _store_upload(request, gateway)
    except Overloaded:
        metrics.batches_rejected.labels("overloaded").inc()
        raise


async def _store_upload(request: web.Request, gateway: str) -> web.Response:
    metrics = request.app[METRICS_KEY]
    try:
        # At most max_body_bytes both on the wire and inflated (cloud.bodies).
        body = await read_body(
            request, media_types=BATCH_MEDIA_TYPES, limit=request.app[CONFIG_KEY].max_body_bytes
        )
    except ApiError as exc:
        metrics.batches_rejected.labels("oversized" if exc.status == 413 else exc.code).inc()
        raise
    try:
        batch = decode_batch(body.data)
    except PayloadError as exc:
        metrics.batches_rejected.labels(exc.reason).inc()
        status = {"invalid_json": 400, "oversized": 413}.get(exc.reason, 422)
        raise ApiError(status, exc.reason, exc.detail) from None
    if batch.gateway != gateway:
        metrics.batches_rejected.labels("forbidden").inc()
        raise ApiError(
            403, "forbidden", f"token of gateway {gateway!r} cannot upload for {batch.gateway!r}"
        )
    # The batch contract's rules (privacy, plausible values, times), whatever the gateway did.
    config = request.app[CONFIG_KEY]
    violation = batch_violation(
        batch,
        now=time.time(),
        max_skew_s=config.max_clock_skew_s,
        min_window_count=config.min_window_count,
    )
    if violation is not None:
        metrics.batches_rejected.labels(violation.rule.value).inc()
        log.warning("batch %s of %s refused: %s", batch.batch_id, gateway, violation)
        detail = ErrorDetail(violation.rule.value, str(violation), aggregate=violation.index)
        return json_response(ErrorBody(detail), status=422)
    size = Body.of(body.data, wire=body.wire_bytes)
    try:
        outcome = await request.app[BATCH_WRITER_KEY].store(batch, size)
    except BatchConflict as exc:
        metrics.batches_rejected.labels(exc.code).inc()
        raise ApiError(409, exc.code, str(exc)) from None
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
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ApiError(400, "bad_query", f"{name} must be unix seconds, got {raw[:40]!r}")
    return value


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
    require_metrics_reader(request)
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
