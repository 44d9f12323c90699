"""The fleet API: rollouts for the operator, desired state and reports for the gateways.

Operator (``Authorization: Bearer <updates.operator_token>`` for writes; reads also take the
read token or the dashboard's session):

- ``POST /api/v1/rollouts``                       create (and start) a rollout
- ``GET  /api/v1/rollouts``, ``/api/v1/rollouts/{id}`` list; one with per-wave progress
- ``POST /api/v1/rollouts/{id}/pause|resume|abort``
- ``PUT  /api/v1/gateways/{id}/tags``             the gateway's tags (rollouts select by them)
- ``GET  /api/v1/fleet/versions``                 each gateway's running/staged version

Gateways (their uplink token, as for uploads):

- ``GET  /api/v1/gateway/desired``   what to run; an ETag, and 304 to a matching If-None-Match
- ``POST /api/v1/gateway/report``    where it is with a rollout, and its health
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

import msgspec
from aiohttp import web

from cloud.auth import authenticated_gateway, presented_token, require_reader, token_digest
from cloud.bodies import read_body
from cloud.fleet.models import CreateRollout, Ok, Report, RolloutsResponse, TagsBody
from cloud.fleet.scheduler import run_periodically
from cloud.fleet.store import (
    RolloutError,
    act,
    bundle_target,
    create_rollout,
    desired_for,
    fleet_versions,
    gateway_tags,
    list_rollouts,
    record_report,
    rollout_detail,
    set_tags,
)
from cloud.web import CONFIG_KEY, ENGINE_KEY, ApiError, Handler, json_response

log = logging.getLogger(__name__)

# Absent when no operator token is configured: then no rollout can be written.
OPERATOR_TOKEN_KEY = web.AppKey("operator_token", bytes)
T = TypeVar("T")
MAX_FLEET_BODY_BYTES = 64 * 1024
JSON_TYPES = frozenset({"application/json"})


def require_operator(request: web.Request) -> None:
    expected = request.app.get(OPERATOR_TOKEN_KEY)
    if expected is None:
        raise ApiError(403, "forbidden", "rollouts are off: set updates.operator_token")
    presented = presented_token(request)
    if presented is None:
        raise ApiError(401, "unauthorized", "missing Authorization: Bearer <operator token>")
    if not hmac.compare_digest(presented, expected):
        raise ApiError(401, "unauthorized", "invalid operator token")


def require_fleet_reader(request: web.Request) -> None:
    """The operator token, or whatever `require_reader` takes."""
    expected = request.app.get(OPERATOR_TOKEN_KEY)
    presented = presented_token(request)
    if expected is not None and presented is not None and hmac.compare_digest(presented, expected):
        return
    require_reader(request)


async def _decode(request: web.Request, kind: type[T], code: str) -> T:
    body = await read_body(request, media_types=JSON_TYPES, limit=MAX_FLEET_BODY_BYTES)
    try:
        return msgspec.json.decode(body.data, type=kind)
    except msgspec.ValidationError as exc:
        # msgspec names the field: "Expected `int`, got `str` - at `$.version`".
        raise ApiError(400, code, str(exc)) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, "invalid_json", f"the body is not JSON: {exc}") from None


def _rollout_error(exc: RolloutError) -> ApiError:
    return ApiError(exc.status, exc.code, exc.message)


def _bundle_in_repository(repo: Path, version: int) -> bool:
    try:
        targets = json.loads((repo / "metadata" / "targets.json").read_bytes())
    except (OSError, ValueError):
        return False
    return bundle_target(version) in targets.get("signed", {}).get("targets", {})


async def post_rollout(request: web.Request) -> web.Response:
    require_operator(request)
    spec = await _decode(request, CreateRollout, "bad_rollout")
    config = request.app[CONFIG_KEY]
    if spec.canary_count is not None and spec.canary_share is not None:
        raise ApiError(400, "bad_rollout", "canary_count, canary_share: give one, not both")
    if spec.max_failures is not None and spec.max_failure_share is not None:
        raise ApiError(400, "bad_rollout", "max_failures, max_failure_share: give one, not both")
    if not spec.gateways and not spec.tags:
        raise ApiError(400, "bad_rollout", "gateways, tags: name at least one gateway or tag")
    for i, gateway in enumerate(spec.gateways):
        if gateway not in config.gateways:
            raise ApiError(400, "bad_rollout", f"gateways[{i}]: unknown gateway {gateway!r}")
    repo = config.updates.repository_dir
    if repo is None:
        raise ApiError(409, "conflict", "no update repository: set updates.repository_dir")
    if not await asyncio.to_thread(_bundle_in_repository, repo, spec.version):
        raise ApiError(
            422,
            "unknown_bundle",
            f"version: bundle {spec.version} is not in the update repository "
            f"(python -m cloud.release bundle --version {spec.version})",
        )
    engine = request.app[ENGINE_KEY]
    targets = list(dict.fromkeys(spec.gateways))
    if spec.tags:
        wanted = set(spec.tags)
        tagged = await gateway_tags(engine)
        targets += sorted(
            g
            for g, tags in tagged.items()
            if g in config.gateways and g not in targets and wanted & set(tags)
        )
    if not targets:
        raise ApiError(422, "no_gateways", "tags: no configured gateway has any of these tags")
    try:
        rollout_id = await create_rollout(engine, spec, targets)
    except RolloutError as exc:
        raise _rollout_error(exc) from None
    log.info("rollout %s of version %d to %d gateways", rollout_id, spec.version, len(targets))
    detail = await rollout_detail(engine, rollout_id)
    response = json_response(detail, status=201)
    response.headers["Location"] = f"/api/v1/rollouts/{rollout_id}"
    return response


async def get_rollouts(request: web.Request) -> web.Response:
    require_fleet_reader(request)
    return json_response(RolloutsResponse(await list_rollouts(request.app[ENGINE_KEY])))


async def get_rollout(request: web.Request) -> web.Response:
    require_fleet_reader(request)
    rollout_id = request.match_info["id"]
    detail = await rollout_detail(request.app[ENGINE_KEY], rollout_id[:64])
    if detail is None:
        raise ApiError(404, "not_found", f"no rollout {rollout_id[:64]!r}")
    return json_response(detail)


def _action(action: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        require_operator(request)
        rollout_id = request.match_info["id"][:64]
        engine = request.app[ENGINE_KEY]
        try:
            state = await act(engine, rollout_id, action)
        except RolloutError as exc:
            raise _rollout_error(exc) from None
        log.info("rollout %s: %s -> %s", rollout_id, action, state)
        return json_response(await rollout_detail(engine, rollout_id))

    handler.__name__ = f"post_rollout_{action}"
    return handler


async def put_tags(request: web.Request) -> web.Response:
    require_operator(request)
    gateway = request.match_info["id"]
    if gateway not in request.app[CONFIG_KEY].gateways:
        raise ApiError(404, "not_found", f"no configured gateway {gateway[:64]!r}")
    body = await _decode(request, TagsBody, "bad_tags")
    tags = await set_tags(request.app[ENGINE_KEY], gateway, body.tags)
    return json_response({"gateway": gateway, "tags": tags})


async def get_fleet_versions(request: web.Request) -> web.Response:
    require_fleet_reader(request)
    configured = request.app[CONFIG_KEY].gateways
    return json_response(await fleet_versions(request.app[ENGINE_KEY], configured))


def _etag_matches(header: str, etag: str) -> bool:
    candidates = {c.strip().removeprefix("W/") for c in header.split(",")}
    return etag in candidates or "*" in candidates


async def get_desired(request: web.Request) -> web.Response:
    gateway = authenticated_gateway(request)
    desired = await desired_for(request.app[ENGINE_KEY], gateway)
    body = msgspec.json.encode(desired)
    etag = '"' + hashlib.sha256(body).hexdigest()[:24] + '"'
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
    if _etag_matches(request.headers.get("If-None-Match", ""), etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type="application/json", headers=headers)


async def post_report(request: web.Request) -> web.Response:
    gateway = authenticated_gateway(request)
    report = await _decode(request, Report, "bad_report")
    await record_report(request.app[ENGINE_KEY], gateway, report)
    log.debug("report of %s: %s on %s", gateway, report.state, report.rollout)
    return json_response(Ok(ok=True))


ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("POST", "/api/v1/rollouts", post_rollout),
    ("GET", "/api/v1/rollouts", get_rollouts),
    ("GET", "/api/v1/rollouts/{id}", get_rollout),
    ("POST", "/api/v1/rollouts/{id}/pause", _action("pause")),
    ("POST", "/api/v1/rollouts/{id}/resume", _action("resume")),
    ("POST", "/api/v1/rollouts/{id}/abort", _action("abort")),
    ("PUT", "/api/v1/gateways/{id}/tags", put_tags),
    ("GET", "/api/v1/fleet/versions", get_fleet_versions),
    ("GET", "/api/v1/gateway/desired", get_desired),
    ("POST", "/api/v1/gateway/report", post_report),
)


def setup_fleet(app: web.Application) -> None:
    """The routes, the operator credential, and the rollout scheduler (call after the
    database's cleanup_ctx entry: the scheduler needs the engine)."""
    config = app[CONFIG_KEY]
    if config.updates.operator_token is not None:
        app[OPERATOR_TOKEN_KEY] = token_digest(config.updates.operator_token.get_secret_value())
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)

    async def scheduler(app: web.Application) -> AsyncIterator[None]:
        settings = app[CONFIG_KEY].updates
        task = None
        stop = asyncio.Event()
        # Without a repository no rollout can be created: no task, no pooled connection used.
        if settings.scheduler_interval_s > 0 and settings.repository_dir is not None:
            task = asyncio.create_task(
                run_periodically(
                    app[ENGINE_KEY],
                    settings.scheduler_interval_s,
                    settings.report_grace_s,
                    settings.offline_after_s,
                    stop,
                ),
                name="rollout-scheduler",
            )
        yield
        if task is not None:
            stop.set()  # the run in flight ends first (see run_periodically)
            await task

    app.cleanup_ctx.append(scheduler)
