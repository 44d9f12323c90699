"""Serving the signed update repository (`cloud.release` builds it) to the gateways, and keeping
its timestamp fresh.

- ``GET /api/v1/updates/metadata/{name}``  root.json, <N>.root.json, timestamp.json,
  snapshot.json, targets.json; no credential (the metadata is signed, its signatures are what a
  gateway trusts)
- ``GET /api/v1/updates/targets/{path}``   the bundles (``bundles/bundle-<v>.tar.gz``)

Both read from ``[updates] repository_dir``; without one they answer 404 JSON. A name that is
not a role's file is a 404, a target path with anything but plain segments of
``[A-Za-z0-9._-]`` (``..``, an empty segment, a backslash, a NUL) a 400, and a path is also
checked to resolve inside the targets directory, so no request reaches the keys beside it.

Caching: the unversioned metadata changes in place (a new timestamp every few hours), so it is
``no-cache`` with an ETag (a revalidation costs a 304); ``<N>.root.json`` and the bundles never
change once written (a bundle's version is never reused), so caches may keep them a day.

When the cloud holds the online keys, a background task runs `cloud.release.refresh` every
``refresh_interval_s``, so the timestamp never expires while the cloud runs (several workers
may run it: the repository's file lock orders them, and a fresh timestamp is left alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from cloud.tasks import raise_if_cancelling
from cloud.web import CONFIG_KEY, ApiError, Handler

log = logging.getLogger(__name__)

_METADATA_NAME = re.compile(
    r"^(?:(?:root|timestamp|snapshot|targets)|[1-9][0-9]{0,9}\.root)\.json\Z"
)
_SEGMENT = re.compile(r"^[A-Za-z0-9_.\-]{1,128}\Z")
_MAX_TARGET_PATH = 512
METADATA_CACHE = "no-cache"
IMMUTABLE_CACHE = "public, max-age=86400"


def _repository(request: web.Request) -> Path:
    repo = request.app[CONFIG_KEY].updates.repository_dir
    if repo is None:
        raise ApiError(404, "not_found", "no update repository is configured")
    return Path(repo)


def _file_response(path: Path, content_type: str, cache: str) -> web.FileResponse:
    response = web.FileResponse(path, headers={"Content-Type": content_type})
    response.headers["Cache-Control"] = cache
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


async def get_metadata(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if not _METADATA_NAME.match(name):
        raise ApiError(404, "not_found", f"no metadata named {name[:80]!r}")
    path = _repository(request) / "metadata" / name
    if not await asyncio.to_thread(path.is_file):
        raise ApiError(404, "not_found", f"no metadata {name}")
    cache = METADATA_CACHE if name[0].isalpha() else IMMUTABLE_CACHE
    return _file_response(path, "application/json", cache)


def target_file(targets_dir: Path, target: str) -> Path:
    """The file of target path `target` inside `targets_dir`; ApiError 400 for a path that
    is not plain segments, 404 for one that is not a file there."""
    segments = target.split("/")
    if len(target) > _MAX_TARGET_PATH or not all(
        _SEGMENT.match(s) and s not in (".", "..") for s in segments
    ):
        raise ApiError(
            400, "bad_path", "a target path is /-separated segments of [A-Za-z0-9._-], no .."
        )
    base = targets_dir.resolve()
    path = (base / target).resolve()
    # Resolving follows links: whatever a link in the directory says, nothing outside is served.
    if not path.is_relative_to(base) or not path.is_file():
        raise ApiError(404, "not_found", f"no target {target}")
    return path


async def get_target(request: web.Request) -> web.StreamResponse:
    target = request.match_info["path"]
    targets_dir = _repository(request) / "targets"
    path = await asyncio.to_thread(target_file, targets_dir, target)
    content_type = "application/gzip" if path.name.endswith(".gz") else "application/octet-stream"
    return _file_response(path, content_type, IMMUTABLE_CACHE)


ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/api/v1/updates/metadata/{name}", get_metadata),
    ("GET", "/api/v1/updates/targets/{path:.+}", get_target),
)


async def refresh_periodically(
    repo: Path, keys: Path | None, interval_s: float, stop: asyncio.Event
) -> None:
    """`cloud.release.refresh` now and every `interval_s` until `stop` is set (in a thread: it
    signs and fsyncs; stopping waits for it rather than leaving the thread behind)."""
    from cloud.release import refresh

    while not stop.is_set():
        try:
            if await asyncio.to_thread(refresh, repo, keys_dir=keys):
                log.info("update repository re-signed (%s)", repo)
        except Exception:  # the next run tries again; serving never depends on this task
            raise_if_cancelling()
            log.exception("update repository refresh failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


def setup_updates(app: web.Application) -> None:
    """The routes, and the refresh task when the cloud holds the online keys."""
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)

    async def refresher(app: web.Application) -> AsyncIterator[None]:
        settings = app[CONFIG_KEY].updates
        task = None
        stop = asyncio.Event()
        repo = settings.repository_dir
        keys = settings.keys_dir or (repo / "keys" if repo is not None else None)
        if (
            repo is not None
            and settings.refresh_interval_s > 0
            and keys is not None
            and (keys / "timestamp.pem").exists()
        ):
            task = asyncio.create_task(
                refresh_periodically(repo, keys, settings.refresh_interval_s, stop),
                name="updates-refresh",
            )
        yield
        if task is not None:
            stop.set()
            await task

    app.cleanup_ctx.append(refresher)
