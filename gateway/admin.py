"""The gateway's admin HTTP endpoint (aiohttp): ``/healthz`` and Prometheus ``/metrics``.

``/healthz`` answers 200 with ``{"status": "ok", ...}`` when the MQTT session is up and the
writer thread runs, else 503 with ``"status": "degraded"``; the body always carries
``mqtt_connected``, ``mqtt_subscribed``, ``writer_alive`` and ``queue_depth``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

HealthFn = Callable[[], dict[str, Any]]

HEALTH: web.AppKey[HealthFn] = web.AppKey("health")
REGISTRY = web.AppKey("registry", CollectorRegistry)


async def healthz(request: web.Request) -> web.Response:
    body = request.app[HEALTH]()
    return web.json_response(body, status=200 if body.get("status") == "ok" else 503)


async def metrics(request: web.Request) -> web.Response:
    payload = generate_latest(request.app[REGISTRY])
    return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_admin_app(*, health: HealthFn, registry: CollectorRegistry) -> web.Application:
    app = web.Application()
    app[HEALTH] = health
    app[REGISTRY] = registry
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


class AdminServer:
    """Runs the admin app on host:port (port 0 picks a free one; see `port`)."""

    def __init__(self, app: web.Application, *, host: str, port: int) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.port = port

    async def start(self) -> int:
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        log.info("admin HTTP on http://%s:%d (/healthz, /metrics)", self._host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
