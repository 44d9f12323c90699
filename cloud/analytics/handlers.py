"""The analytics API (``/api/v1/analytics/...``, read credential) and its background task.

`setup_analytics(app)` adds the routes and a cleanup_ctx entry that starts the periodic run on
start-up and cancels it on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from cloud.analytics.bandwidth import bandwidth_report, overview
from cloud.analytics.models import (
    AnomaliesResponse,
    ClustersResponse,
    EventsResponse,
    FleetReport,
    RollupsReport,
    RunResult,
)
from cloud.analytics.rollups import newest_window_end, report_since, rollup_metrics
from cloud.analytics.runner import AnalyticsSettings, SnapshotCache, run_once, run_periodically
from cloud.auth import require_reader
from cloud.config import CloudConfig
from cloud.web import CONFIG_KEY, ENGINE_KEY, ApiError, Handler, json_response

log = logging.getLogger(__name__)

CACHE_KEY = web.AppKey("analytics_cache", SnapshotCache)
TASK_KEY = web.AppKey("analytics_task", asyncio.Task[None])


def settings_of(config: CloudConfig) -> AnalyticsSettings:
    return AnalyticsSettings(
        lookback_days=config.analytics_lookback_days,
        cluster_k=config.cluster_k,
        cluster_k_max=config.cluster_k_max,
        anomaly_threshold=config.anomaly_threshold,
        anomaly_top=config.anomaly_top,
        cluster_sample_homes=config.cluster_sample_homes,
    )


def _only(request: web.Request, *names: str) -> dict[str, str]:
    return {name: request.query[name] for name in names if request.query.get(name)}


async def get_rollups(request: web.Request) -> web.Response:
    require_reader(request)
    engine = request.app[ENGINE_KEY]
    data_end = await newest_window_end(engine)
    since = report_since(data_end, request.app[CONFIG_KEY].analytics_lookback_days)
    return json_response(
        RollupsReport(data_end=data_end, metrics=await rollup_metrics(engine, since), since=since)
    )


async def get_fleet(request: web.Request) -> web.Response:
    require_reader(request)
    snapshot = await request.app[CACHE_KEY].get()
    wanted = _only(request, "metric", "device_class")
    home = request.query.get("home")
    stats = [s for s in snapshot.fleet if all(getattr(s, k) == v for k, v in wanted.items())]
    homes = [
        s
        for s in snapshot.standings
        if all(getattr(s, k) == v for k, v in wanted.items()) and (not home or s.home == home)
    ]
    return json_response(
        FleetReport(snapshot.computed_at, snapshot.since, snapshot.until, stats, homes)
    )


async def get_clusters(request: web.Request) -> web.Response:
    require_reader(request)
    snapshot = await request.app[CACHE_KEY].get()
    return json_response(ClustersResponse(snapshot.computed_at, snapshot.clusters))


async def get_anomalies(request: web.Request) -> web.Response:
    require_reader(request)
    flagged_only = request.query.get("flagged", "false")
    if flagged_only not in ("true", "false"):
        raise ApiError(400, "bad_query", "flagged must be true or false")
    snapshot = await request.app[CACHE_KEY].get()
    wanted = _only(request, "home", "metric")
    found = [
        a
        for a in snapshot.anomalies
        if all(getattr(a, k) == v for k, v in wanted.items())
        and (flagged_only == "false" or a.flagged)
    ]
    threshold = request.app[CONFIG_KEY].anomaly_threshold
    return json_response(AnomaliesResponse(snapshot.computed_at, threshold, found))


async def get_events(request: web.Request) -> web.Response:
    require_reader(request)
    snapshot = await request.app[CACHE_KEY].get()
    report = snapshot.events
    home = request.query.get("home")
    if home:
        report = type(report)(
            days=[d for d in report.days if d.home == home],
            timeline=[p for p in report.timeline if p.home == home],
            alarms_per_home_day=report.alarms_per_home_day,
            speech_share=report.speech_share,
        )
    return json_response(EventsResponse(snapshot.computed_at, report))


async def get_bandwidth(request: web.Request) -> web.Response:
    require_reader(request)
    return json_response(await bandwidth_report(request.app[ENGINE_KEY]))


async def get_overview(request: web.Request) -> web.Response:
    require_reader(request)
    config = request.app[CONFIG_KEY]
    snapshot = await request.app[CACHE_KEY].get()
    return json_response(
        await overview(
            request.app[ENGINE_KEY],
            list(config.gateways),
            snapshot,
            now=time.time(),
            online_after_s=config.online_after_s,
            poll_s=config.dashboard_poll_s,
        )
    )


async def post_run(request: web.Request) -> web.Response:
    require_reader(request)
    snapshot = await run_once(request.app[ENGINE_KEY], settings_of(request.app[CONFIG_KEY]))
    assert snapshot.computed_at is not None
    return json_response(
        RunResult(snapshot.computed_at, snapshot.duration_s, len(snapshot.clusters.assignments))
    )


ANALYTICS_ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/api/v1/analytics/rollups", get_rollups),
    ("GET", "/api/v1/analytics/fleet", get_fleet),
    ("GET", "/api/v1/analytics/clusters", get_clusters),
    ("GET", "/api/v1/analytics/anomalies", get_anomalies),
    ("GET", "/api/v1/analytics/events", get_events),
    ("GET", "/api/v1/analytics/bandwidth", get_bandwidth),
    ("GET", "/api/v1/analytics/overview", get_overview),
    ("POST", "/api/v1/analytics/run", post_run),
)


async def _analytics_task(app: web.Application) -> AsyncIterator[None]:
    # After the database context (cleanup_ctx order): the engine exists and is migrated.
    config = app[CONFIG_KEY]
    cache = app[CACHE_KEY] = SnapshotCache(app[ENGINE_KEY])
    task: asyncio.Task[None] | None = None
    if config.analytics_interval_s > 0:
        task = asyncio.create_task(
            run_periodically(
                app[ENGINE_KEY], settings_of(config), config.analytics_interval_s, cache
            ),
            name="analytics",
        )
        app[TASK_KEY] = task
        log.info("analytics every %.0f s", config.analytics_interval_s)
    yield
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        log.info("analytics stopped")


def setup_analytics(app: web.Application) -> None:
    for method, path, handler in ANALYTICS_ROUTES:
        app.router.add_route(method, path, handler)
    app.cleanup_ctx.append(_analytics_task)
