"""Simulated gateways for the rollout tests and bench/rollout.py: each polls a real cloud's
``/api/v1/gateway/desired`` over HTTP with its own token and ETag, "applies" the version it is
given (no models: the rollout protocol is what is under test), soaks, and reports as the
contract says; one told to fail reports failed and reverts by itself, as a real gateway does.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import aiohttp

HEALTH_OK = {
    "models_loaded": True,
    "warmed_up": True,
    "inference_errors": 0,
    "dropped_frames": 0,
    "ingest_ok": True,
    "sync_ok": True,
}


@dataclass
class SimGateway:
    name: str
    token: str
    base: str
    running: int | None = None
    fail_versions: set[int] = field(default_factory=set)
    # Versions after whose `applied` report it goes silent (never reports healthy).
    hang_versions: set[int] = field(default_factory=set)
    poll_s: float = 0.05
    # What it ran, in order (None: the built-in models); the polls, and the bytes they carried.
    history: list[int | None] = field(default_factory=list)
    polls: int = 0
    not_modified: int = 0
    busy: int = 0  # 503 answers (the cloud's backpressure), retried
    _etag: str | None = None
    _failed: set[int] = field(default_factory=set)
    _task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.history.append(self.running)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def report(
        self,
        http: aiohttp.ClientSession,
        rollout: str | None,
        state: str,
        *,
        staged: int | None = None,
        reason: str = "",
        health: dict[str, Any] | None = None,
    ) -> None:
        body = {
            "rollout": rollout,
            "running_version": self.running,
            "staged_version": staged,
            "state": state,
            "reason": reason,
            "health": health or HEALTH_OK,
        }
        # A busy cloud (503) is retried, as a real gateway's backoff would.
        url = f"{self.base}/api/v1/gateway/report"
        for _ in range(100):
            async with http.post(url, json=body, headers=self.headers) as r:
                if r.status != 503:
                    assert r.status == 200, await r.text()
                    return
            self.busy += 1
            await asyncio.sleep(self.poll_s)
        raise AssertionError(f"{self.name}: the cloud stayed busy")

    async def poll_once(self, http: aiohttp.ClientSession) -> None:
        headers = dict(self.headers)
        if self._etag is not None:
            headers["If-None-Match"] = self._etag
        async with http.get(f"{self.base}/api/v1/gateway/desired", headers=headers) as r:
            self.polls += 1
            if r.status == 304:
                self.not_modified += 1
                return
            if r.status == 503:  # busy: the next poll asks again
                self.busy += 1
                return
            assert r.status == 200, await r.text()
            desired = await r.json()
            self._etag = r.headers["ETag"]
        await self.act(http, desired)

    async def act(self, http: aiohttp.ClientSession, desired: dict[str, Any]) -> None:
        rollout, back = desired["rollout"], desired["rollback_to"]
        if back is not None:
            target = back or None
            if target != self.running:
                self.running = target
                self.history.append(target)
                await self.report(http, rollout, "rolled_back", reason="asked back by the cloud")
            return
        version = desired["version"]
        if version is None or version == self.running or version in self._failed:
            return
        await self.report(http, rollout, "downloading", staged=version)
        await self.report(http, rollout, "staged", staged=version)
        previous = self.running
        self.running = version
        self.history.append(version)
        await self.report(http, rollout, "applied")
        if version in self.hang_versions:
            return
        await asyncio.sleep(desired["soak_s"])
        if version in self.fail_versions:
            self._failed.add(version)
            bad = dict(HEALTH_OK, inference_errors=3)
            await self.report(http, rollout, "failed", reason="3 inference errors", health=bad)
            self.running = previous
            self.history.append(previous)
            await self.report(http, rollout, "rolled_back", reason="3 inference errors")
            return
        await self.report(http, rollout, "healthy")

    async def run(self) -> None:
        async with aiohttp.ClientSession() as http:
            while True:
                await self.poll_once(http)
                await asyncio.sleep(self.poll_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=f"sim-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
