"""Staged rollouts against a real running cloud (SQLite and PostgreSQL) and ten simulated
gateways that poll and report over real HTTP (`tests.fleet_sim`): the canary, waves growing by
the factor, a failure halting the rollout and asking that wave back, pause, resume, abort, and
one scheduler at a time on PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from cloud.fleet import scheduler, store
from cloud.fleet.models import CreateRollout, GatewayHealth, Report
from cloud.fleet.scheduler import SCHEDULER_LOCK_KEY, run_once
from cloud.release import add_bundle, init_repository
from cloud.server import start
from cloud.web import ENGINE_KEY
from tests.conftest import PG_DSN
from tests.fleet_sim import SimGateway
from tests.test_cloud_api import READ_TOKEN, db_url, make_config
from tests.waiting import wait_for

__all__ = ["db_url"]  # the fixture, imported for pytest

MODELS_DIR = Path(__file__).resolve().parent.parent / "gateway" / "models"
OPERATOR_TOKEN = "operator-token-0123456789abcdef"
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
READ = {"Authorization": f"Bearer {READ_TOKEN}"}
NAMES = [f"gw-{i:02d}" for i in range(10)]


def token_of(name: str) -> str:
    return f"{name}-token-0123456789abcdef"


@dataclass
class Fleet:
    base: str
    app: web.Application
    sims: dict[str, SimGateway]
    http: aiohttp.ClientSession

    @property
    def engine(self) -> AsyncEngine:
        return self.app[ENGINE_KEY]

    async def call(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, **kw: Any
    ) -> tuple[int, Any]:
        async with self.http.request(
            method, f"{self.base}{path}", headers=OPERATOR if headers is None else headers, **kw
        ) as r:
            body = await r.json() if r.content_type == "application/json" else None
            return r.status, body

    async def rollout(self, **spec: Any) -> dict[str, Any]:
        status, body = await self.call("POST", "/api/v1/rollouts", json=spec)
        assert status == 201, body
        return dict(body)

    async def detail(self, rollout_id: str) -> dict[str, Any]:
        status, body = await self.call("GET", f"/api/v1/rollouts/{rollout_id}", headers=READ)
        assert status == 200, body
        return dict(body)

    async def wait_state(self, rollout_id: str, state: str, within: float = 30.0) -> dict[str, Any]:
        seen: dict[str, Any] = {}

        async def poll() -> None:
            while True:
                seen.update(await self.detail(rollout_id))
                if seen["state"] == state:
                    return
                for sim in self.sims.values():
                    task = sim._task
                    if task is not None and task.done():
                        task.result()  # a simulated gateway's failure shows here
                await asyncio.sleep(0.05)

        try:
            await asyncio.wait_for(poll(), within)
        except TimeoutError:
            raise AssertionError(f"rollout not {state} within {within}s: {seen}") from None
        return seen


StartFleet = Callable[..., Awaitable[Fleet]]


@pytest.fixture
async def start_fleet(tmp_path: Path) -> AsyncIterator[StartFleet]:
    """A cloud serving a repository with bundles 1 to 3 and ten simulated gateways on v1."""
    repo = tmp_path / "repo"
    init_repository(repo, tmp_path / "offline")
    for version in (1, 2, 3):
        add_bundle(repo, version, models_dir=MODELS_DIR, models=["vad"])
    runners: list[web.AppRunner] = []
    fleets: list[Fleet] = []

    async def start_one(url: str, *, run: bool = True, **updates: Any) -> Fleet:
        settings = {
            "repository_dir": str(repo),
            "operator_token": OPERATOR_TOKEN,
            "scheduler_interval_s": 0.05,
            "report_grace_s": 5.0,
            **updates,
        }
        config = make_config(
            url,
            analytics_interval_s=0,
            gateways={name: token_of(name) for name in NAMES},
            updates=settings,
        )
        runner, port = await start(config)
        runners.append(runner)
        base = f"http://127.0.0.1:{port}"
        sims = {name: SimGateway(name, token_of(name), base, running=1) for name in NAMES}
        fleet = Fleet(base, runner.app, sims, aiohttp.ClientSession())
        fleets.append(fleet)
        for sim in sims.values():
            await sim.report(fleet.http, None, "healthy")  # the cloud learns they run v1
            if run:
                sim.start()
        return fleet

    yield start_one
    for fleet in fleets:
        for sim in fleet.sims.values():
            await sim.stop()
        await fleet.http.close()
    for runner in runners:
        await runner.cleanup()


async def test_a_canary_of_two_with_one_failure_halts_and_asks_that_wave_back(
    db_url: str, start_fleet: StartFleet
) -> None:
    fleet = await start_fleet(db_url)
    fleet.sims["gw-00"].fail_versions.add(2)
    created = await fleet.rollout(
        version=2, gateways=NAMES, canary_count=2, wave_factor=2, soak_s=0.2
    )
    assert [w["size"] for w in created["waves"]] == [2, 4, 4]
    assert created["waves"][0]["state"] == "running"
    detail = await fleet.wait_state(created["id"], "halted")
    assert "wave 0: 1 of 2 gateways failed" in detail["reason"]
    assert [f["gateway"] for f in detail["failures"]] == ["gw-00"]
    assert {r["gateway"]: r["rollback_to"] for r in detail["rollbacks"]} == {
        "gw-00": 1,
        "gw-01": 1,
    }
    assert [w["state"] for w in detail["waves"]] == ["failed", "aborted", "aborted"]
    # Both canaries end back on v1; the eight others never left it.
    await wait_for(
        lambda: fleet.sims["gw-01"].running == 1 and fleet.sims["gw-00"].running == 1,
        what="the canaries back on v1",
    )
    assert fleet.sims["gw-00"].history == [1, 2, 1]
    assert fleet.sims["gw-01"].history == [1, 2, 1]
    for name in NAMES[2:]:
        assert fleet.sims[name].history == [1], name

    async def gw01_reverted() -> bool:
        states = {a["gateway"]: a["state"] for a in (await fleet.detail(created["id"]))["gateways"]}
        return states["gw-01"] == "reverted"

    await _until(gw01_reverted, "gw-01's confirmation that it went back")
    after = await fleet.detail(created["id"])
    states = {a["gateway"]: a["state"] for a in after["gateways"]}
    assert states["gw-00"] == "rolled_back"  # failed by itself: still a failure
    assert [f["gateway"] for f in after["failures"]] == ["gw-00"]
    assert {states[n] for n in NAMES[2:]} == {"skipped"}
    status, versions = await fleet.call("GET", "/api/v1/fleet/versions", headers=READ)
    assert status == 200
    assert {g["gateway"]: g["running_version"] for g in versions["gateways"]} == dict.fromkeys(
        NAMES, 1
    )


async def test_a_good_rollout_reaches_all_ten_in_waves(
    db_url: str, start_fleet: StartFleet
) -> None:
    fleet = await start_fleet(db_url)
    for name in NAMES:
        status, body = await fleet.call(
            "PUT", f"/api/v1/gateways/{name}/tags", json={"tags": ["home", "lab"]}
        )
        assert status == 200 and body["tags"] == ["home", "lab"]
    rollout = await fleet.rollout(version=2, tags=["lab"], canary_share=0.2, soak_s=0.1)
    detail = await fleet.wait_state(rollout["id"], "completed")
    waves = detail["waves"]
    assert [w["size"] for w in waves] == [2, 4, 4]
    assert [w["state"] for w in waves] == ["succeeded"] * 3
    assert all(w["counts"] == {"healthy": w["size"]} for w in waves)
    # Each wave started once the one before had passed.
    for before, after in itertools.pairwise(waves):
        assert after["started_at"] >= before["finished_at"]
    assert detail["failures"] == [] and detail["rollbacks"] == []
    assert all(sim.history == [1, 2] for sim in fleet.sims.values())
    status, versions = await fleet.call("GET", "/api/v1/fleet/versions", headers=OPERATOR)
    assert status == 200 and versions["versions"] == {"2": 10}
    assert {g["desired_version"] for g in versions["gateways"]} == {2}
    status, listed = await fleet.call("GET", "/api/v1/rollouts", headers=READ)
    assert status == 200
    assert listed["rollouts"][0]["id"] == rollout["id"]
    assert listed["rollouts"][0]["healthy"] == 10


async def test_pause_holds_the_next_wave_resume_goes_on_and_abort_asks_the_wave_back(
    db_url: str, start_fleet: StartFleet
) -> None:
    # The scheduler is driven by hand here, so "it did not start the next wave" is checked
    # after a scheduler run, not after a guessed wait.
    fleet = await start_fleet(db_url, scheduler_interval_s=0)
    rollout = await fleet.rollout(version=2, gateways=NAMES, canary_count=2, soak_s=0.05)
    rid = rollout["id"]
    status, body = await fleet.call("POST", f"/api/v1/rollouts/{rid}/pause")
    assert status == 200 and body["state"] == "paused"
    canaries = [fleet.sims[n] for n in NAMES[:2]]
    await wait_for(lambda: all(s.running == 2 for s in canaries), what="canaries on v2")

    async def healthy_reports() -> bool:
        detail = await fleet.detail(rid)
        return bool(detail["waves"][0]["counts"] == {"healthy": 2})

    await _until(healthy_reports, "the canaries' healthy reports")
    assert await run_once(fleet.engine, grace_s=5) == []  # paused: nothing moves
    detail = await fleet.detail(rid)
    assert [w["state"] for w in detail["waves"]] == ["running", "pending", "pending"]
    assert all(fleet.sims[n].history == [1] for n in NAMES[2:])
    status, body = await fleet.call("POST", f"/api/v1/rollouts/{rid}/pause")
    assert status == 409 and "paused" in body["error"]["message"]
    status, body = await fleet.call("POST", f"/api/v1/rollouts/{rid}/resume")
    assert status == 200 and body["state"] == "running"
    assert await run_once(fleet.engine, grace_s=5) == [f"{rid}: wave 0 passed, wave 1 started"]
    second = [fleet.sims[n] for n in NAMES[2:6]]
    await wait_for(lambda: all(s.running == 2 for s in second), what="wave 1 on v2")
    status, body = await fleet.call("POST", f"/api/v1/rollouts/{rid}/abort")
    assert status == 200 and body["state"] == "aborted"
    assert [w["state"] for w in body["waves"]] == ["succeeded", "aborted", "aborted"]
    assert {r["gateway"] for r in body["rollbacks"]} == set(NAMES[2:6])
    # The aborted wave goes back to v1; the canary wave, which passed, keeps v2.
    await wait_for(lambda: all(s.running == 1 for s in second), what="wave 1 back on v1")
    assert all(s.running == 2 for s in canaries)
    assert all(fleet.sims[n].history == [1] for n in NAMES[6:])
    status, body = await fleet.call("POST", f"/api/v1/rollouts/{rid}/resume")
    assert status == 409
    # A new rollout may start once none is active.
    again = await fleet.rollout(version=3, gateways=NAMES[:1], soak_s=0.05)
    assert again["state"] == "running"


async def _until(check: Callable[[], Awaitable[bool]], what: str, within: float = 20.0) -> None:
    async def loop() -> None:
        while not await check():  # noqa: ASYNC110  (the check is an HTTP request)
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(loop(), within)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def test_a_gateway_that_began_and_went_silent_fails_its_wave_after_the_grace(
    sqlite_url: str, start_fleet: StartFleet
) -> None:
    fleet = await start_fleet(sqlite_url, report_grace_s=1.0)
    fleet.sims["gw-01"].hang_versions.add(2)  # applies v2, then never reports again
    rollout = await fleet.rollout(
        version=2, gateways=NAMES[:4], canary_count=2, soak_s=0.1, max_failures=1
    )
    detail = await fleet.wait_state(rollout["id"], "completed")
    (failure,) = detail["failures"]
    assert failure["gateway"] == "gw-01" and failure["began_at"] is not None
    assert failure["rollback_to"] == 1  # asked back, as it did begin
    (canaries, second) = (w["counts"] for w in detail["waves"])
    assert canaries["healthy"] == 1 and second == {"healthy": 2}
    # Failed by the deadline (its reason), then back on v1 when asked (its report).
    assert canaries.get("failed", 0) + canaries.get("rolled_back", 0) == 1
    assert failure["reason"] in (
        "no healthy report within soak_s + grace (1.1 s) of its first report",
        "asked back by the cloud",
    )
    await wait_for(lambda: fleet.sims["gw-01"].history == [1, 2, 1], what="gw-01 back on v1")


async def test_an_offline_gateway_does_not_halt_the_rollout_and_catches_up_when_it_returns(
    db_url: str, start_fleet: StartFleet
) -> None:
    # max_failures is 0: one failure would halt. gw-01 never polls during its wave.
    fleet = await start_fleet(db_url, report_grace_s=1.0, offline_after_s=1.0)
    await fleet.sims["gw-01"].stop()
    rollout = await fleet.rollout(version=2, gateways=NAMES[:4], canary_count=2, soak_s=0.1)
    detail = await fleet.wait_state(rollout["id"], "completed")
    assert detail["failures"] == [] and detail["rollbacks"] == []
    assert [w["counts"] for w in detail["waves"]] == [
        {"healthy": 1, "offline": 1},
        {"healthy": 2},
    ]
    (gw01,) = [a for a in detail["gateways"] if a["gateway"] == "gw-01"]
    assert "offline_after_s (1 s)" in gw01["reason"] and gw01["began_at"] is None
    assert fleet.sims["gw-01"].history == [1]
    # Back online: its next poll gets v2, and its healthy report counts.
    fleet.sims["gw-01"].start()

    async def gw01_healthy() -> bool:
        after = await fleet.detail(rollout["id"])
        return [a["state"] for a in after["gateways"] if a["gateway"] == "gw-01"] == ["healthy"]

    await _until(gw01_healthy, "gw-01's healthy report after it came back")
    assert fleet.sims["gw-01"].history == [1, 2]
    status, listed = await fleet.call("GET", "/api/v1/rollouts", headers=READ)
    assert status == 200 and listed["rollouts"][0]["healthy"] == 4
    assert listed["rollouts"][0]["failed"] == 0


async def test_desired_answers_304_to_its_etag_and_reports_are_checked(
    sqlite_url: str, start_fleet: StartFleet
) -> None:
    fleet = await start_fleet(sqlite_url, run=False)
    gw = {"Authorization": f"Bearer {token_of('gw-03')}"}
    async with fleet.http.get(f"{fleet.base}/api/v1/gateway/desired", headers=gw) as r:
        assert r.status == 200
        assert await r.json() == {
            "version": None,
            "target": None,
            "rollout": None,
            "soak_s": 0.0,
            "rollback_to": None,
        }
        etag = r.headers["ETag"]
    headers = {**gw, "If-None-Match": etag}
    async with fleet.http.get(f"{fleet.base}/api/v1/gateway/desired", headers=headers) as r:
        assert r.status == 304 and await r.read() == b""
        assert r.headers["ETag"] == etag
    rollout = await fleet.rollout(version=3, gateways=["gw-03"], soak_s=7)
    async with fleet.http.get(f"{fleet.base}/api/v1/gateway/desired", headers=headers) as r:
        assert r.status == 200
        assert await r.json() == {
            "version": 3,
            "target": "bundles/bundle-3.tar.gz",
            "rollout": rollout["id"],
            "soak_s": 7.0,
            "rollback_to": None,
        }
    report = {
        "rollout": rollout["id"],
        "running_version": 3,
        "staged_version": None,
        "state": "healthy",
        "reason": "",
        "health": {
            "models_loaded": True,
            "warmed_up": True,
            "inference_errors": 0,
            "dropped_frames": 0,
            "ingest_ok": True,
            "sync_ok": "yes",
        },
    }
    status, body = await fleet.call("POST", "/api/v1/gateway/report", headers=gw, json=report)
    assert status == 400 and "$.health.sync_ok" in body["error"]["message"]
    status, body = await fleet.call(
        "POST", "/api/v1/gateway/report", headers=gw, json={**report, "state": "great"}
    )
    assert status == 400 and "$.state" in body["error"]["message"]
    status, _ = await fleet.call("POST", "/api/v1/gateway/report", headers=READ, json=report)
    assert status == 401
    # A long reason is no reason to refuse a report (the gateway would revert): it is cut.
    long = {**report, "state": "failed", "reason": "x" * 5000}
    long["health"] = {**report["health"], "sync_ok": True}
    status, body = await fleet.call("POST", "/api/v1/gateway/report", headers=gw, json=long)
    assert status == 200 and body == {"ok": True}
    status, versions = await fleet.call("GET", "/api/v1/fleet/versions", headers=READ)
    (gw03,) = [g for g in versions["gateways"] if g["gateway"] == "gw-03"]
    assert gw03["state"] == "failed" and gw03["reason"] == "x" * 2000
    assert gw03["running_version"] == 3 and gw03["health"]["sync_ok"] is True
    status, _ = await fleet.call("GET", "/api/v1/gateway/desired", headers=READ)
    assert status == 401


BAD_ROLLOUTS: list[tuple[dict[str, Any], int, str]] = [
    ({"gateways": ["gw-00"]}, 400, "`version`"),
    ({"version": "2", "gateways": ["gw-00"]}, 400, "$.version"),
    ({"version": 2}, 400, "gateways, tags"),
    ({"version": 2, "gateways": ["gw-00", "gw-99"]}, 400, "gateways[1]"),
    ({"version": 2, "gateways": ["gw-00"], "canary_share": 1.5}, 400, "$.canary_share"),
    (
        {"version": 2, "gateways": ["gw-00"], "canary_count": 1, "canary_share": 0.5},
        400,
        "canary_count, canary_share",
    ),
    ({"version": 2, "gateways": ["gw-00"], "wave_factor": 0.5}, 400, "$.wave_factor"),
    ({"version": 2, "gateways": ["gw-00"], "colour": "red"}, 400, "colour"),
    ({"version": 9, "gateways": ["gw-00"]}, 422, "bundle 9 is not in the update repository"),
    ({"version": 2, "tags": ["nobody"]}, 422, "tags"),
]


async def test_a_bad_rollout_is_a_4xx_naming_the_field(
    sqlite_url: str, start_fleet: StartFleet
) -> None:
    fleet = await start_fleet(sqlite_url, run=False)
    for spec, status, named in BAD_ROLLOUTS:
        got, body = await fleet.call("POST", "/api/v1/rollouts", json=spec)
        assert got == status, (spec, body)
        assert named in body["error"]["message"], (spec, body)
    status, body = await fleet.call(
        "POST",
        "/api/v1/rollouts",
        data=b"{",
        headers={**OPERATOR, "Content-Type": "application/json"},
    )
    assert status == 400 and body["error"]["code"] == "invalid_json"
    status, listed = await fleet.call("GET", "/api/v1/rollouts", headers=READ)
    assert listed == {"rollouts": []}


async def test_rollout_writes_need_the_operator_token(
    sqlite_url: str, start_fleet: StartFleet
) -> None:
    fleet = await start_fleet(sqlite_url, run=False)
    spec = {"version": 2, "gateways": ["gw-00"]}
    for headers in ({}, READ, {"Authorization": f"Bearer {token_of('gw-00')}"}):
        status, body = await fleet.call("POST", "/api/v1/rollouts", headers=headers, json=spec)
        assert status == 401, body
    status, _ = await fleet.call(
        "PUT", "/api/v1/gateways/gw-00/tags", headers=READ, json={"tags": []}
    )
    assert status == 401
    status, _ = await fleet.call("PUT", "/api/v1/gateways/gw-77/tags", json={"tags": []})
    assert status == 404
    status, body = await fleet.call("PUT", "/api/v1/gateways/gw-00/tags", json={"tags": ["A B"]})
    assert status == 400 and "$.tags[0]" in body["error"]["message"]
    created = await fleet.rollout(**spec)
    status, body = await fleet.call("POST", "/api/v1/rollouts", json=spec)
    assert status == 409 and created["id"] in body["error"]["message"]
    status, _ = await fleet.call("GET", f"/api/v1/rollouts/{created['id']}", headers={})
    assert status == 401
    status, _ = await fleet.call("GET", "/api/v1/rollouts/nope", headers=READ)
    assert status == 404
    status, _ = await fleet.call("POST", f"/api/v1/rollouts/{created['id']}/pause", headers=READ)
    assert status == 401


async def test_without_an_operator_token_no_rollout_can_be_written(
    sqlite_url: str, start_fleet: StartFleet
) -> None:
    fleet = await start_fleet(sqlite_url, run=False, operator_token=None)
    status, body = await fleet.call(
        "POST", "/api/v1/rollouts", json={"version": 2, "gateways": ["gw-00"]}
    )
    assert status == 403 and "updates.operator_token" in body["error"]["message"]


async def test_one_scheduler_acts_at_a_time_on_postgresql(
    pg_url: str, start_fleet: StartFleet
) -> None:
    # Two cloud workers on one database, both with their scheduler running.
    fleet = await start_fleet(pg_url, run=False, scheduler_interval_s=0)
    other = await start_fleet(pg_url, run=False, scheduler_interval_s=0)
    conn = await asyncpg.connect(PG_DSN.rsplit("/", 1)[0] + "/" + pg_url.rsplit("/", 1)[1])
    try:
        assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", SCHEDULER_LOCK_KEY)
        assert await run_once(fleet.engine, grace_s=5) is None
        assert await run_once(other.engine, grace_s=5) is None
        await conn.execute("SELECT pg_advisory_unlock($1)", SCHEDULER_LOCK_KEY)
        assert await run_once(fleet.engine, grace_s=5) == []
    finally:
        await conn.close()
    # Both schedulers running against each other still take each wave once, in order.
    tasks = [asyncio.create_task(_schedule(f.engine)) for f in (fleet, other)]
    try:
        for sim in fleet.sims.values():
            sim.start()
        rollout = await fleet.rollout(version=2, gateways=NAMES, canary_count=2, soak_s=0.05)
        detail = await fleet.wait_state(rollout["id"], "completed")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert [w["size"] for w in detail["waves"]] == [2, 4, 4]
    assert all(sim.history == [1, 2] for sim in fleet.sims.values())


async def _schedule(engine: AsyncEngine) -> None:
    while True:
        await run_once(engine, grace_s=5)
        await asyncio.sleep(0.01)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}"


def test_a_rollout_completes_with_two_worker_processes_on_postgresql(
    pg_url: str, tmp_path: Path
) -> None:
    # `python -m cloud` with workers = 2: two schedulers, one database; each wave once.
    from tests.test_cloud_api import GW1_TOKEN, GW2_TOKEN
    from tests.test_cloud_workers import cloud_process

    repo = tmp_path / "repo"
    init_repository(repo, tmp_path / "offline")
    for version in (1, 2):
        add_bundle(repo, version, models_dir=MODELS_DIR, models=["vad"])
    extra = (
        "[updates]\n"
        f'repository_dir = "{repo}"\n'
        f'operator_token = "{OPERATOR_TOKEN}"\n'
        "scheduler_interval_s = 0.02\n"
    )
    with cloud_process(tmp_path, "cloud", pg_url, workers=2, extra=extra) as port:
        base = f"http://127.0.0.1:{port}"

        async def exercise() -> dict[str, Any]:
            sims = [
                SimGateway("gw-1", GW1_TOKEN, base, running=1),
                SimGateway("gw-2", GW2_TOKEN, base, running=1),
            ]
            async with aiohttp.ClientSession() as http:
                fleet = Fleet(base, web.Application(), {s.name: s for s in sims}, http)
                for sim in sims:
                    await sim.report(http, None, "healthy")
                    sim.start()
                try:
                    created = await fleet.rollout(version=2, gateways=["gw-1", "gw-2"], soak_s=0.1)
                    return await fleet.wait_state(created["id"], "completed")
                finally:
                    for sim in sims:
                        await sim.stop()

        detail = asyncio.run(exercise())
    assert [(w["size"], w["state"], w["counts"]) for w in detail["waves"]] == [
        (1, "succeeded", {"healthy": 1}),
        (1, "succeeded", {"healthy": 1}),
    ]


# --- deadlines, driven with explicit times through the store (no waiting) --------------------

T0 = 1_800_000_000.0  # the rollouts' clock in these tests


def _report(rollout: str, state: str, running: int) -> Report:
    health = GatewayHealth(
        models_loaded=True,
        warmed_up=True,
        inference_errors=0,
        dropped_frames=0,
        ingest_ok=True,
        sync_ok=True,
    )
    return Report(
        rollout=rollout, running_version=running, staged_version=None, state=state, health=health
    )


async def _states(engine: AsyncEngine, rollout_id: str) -> dict[str, str]:
    detail = await store.rollout_detail(engine, rollout_id)
    assert detail is not None
    return {a.gateway: a.state for a in detail.gateways}


async def _advance(engine: AsyncEngine, at: float) -> list[str]:
    async with engine.connect() as conn:
        return await store.advance(conn, grace_s=300, offline_after_s=3600, now=T0 + at)


async def test_a_gateway_first_polling_after_the_waves_deadline_counts_its_own_soak(
    db_url: str, start_fleet: StartFleet
) -> None:
    # poll_s 300 +-20 %: a healthy gateway may first poll 360 s into the wave, past the
    # wave's start + soak_s + grace (600 s) once its soak ends.
    engine = (await start_fleet(db_url, run=False, scheduler_interval_s=0)).engine
    spec = CreateRollout(version=2, gateways=NAMES[:2], canary_count=2, soak_s=300)
    rid = await store.create_rollout(engine, spec, NAMES[:2], now=T0)
    for state, at in (("downloading", 10), ("applied", 12), ("healthy", 320)):
        await store.record_report(engine, "gw-00", _report(rid, state, 2), now=T0 + at)
    for state, at in (("downloading", 360), ("applied", 365)):
        await store.record_report(engine, "gw-01", _report(rid, state, 2), now=T0 + at)
    assert await _advance(engine, 650) == []  # gw-01's own deadline is 360 + 600 s
    assert await _states(engine, rid) == {"gw-00": "healthy", "gw-01": "applied"}
    await store.record_report(engine, "gw-01", _report(rid, "healthy", 2), now=T0 + 670)
    assert await _advance(engine, 700) == [f"{rid}: wave 0 passed, completed"]
    detail = await store.rollout_detail(engine, rid)
    assert detail is not None and detail.state == "completed"
    assert detail.failures == [] and detail.rollbacks == []
    assert (await store.desired_for(engine, "gw-01")).version == 2


async def test_a_gateway_that_began_fails_at_its_own_deadline_and_pauses_do_not_count(
    db_url: str, start_fleet: StartFleet
) -> None:
    engine = (await start_fleet(db_url, run=False, scheduler_interval_s=0)).engine
    spec = CreateRollout(version=2, gateways=NAMES[:2], canary_count=1, soak_s=300)
    rid = await store.create_rollout(engine, spec, NAMES[:2], now=T0)
    await store.record_report(engine, "gw-00", _report(rid, "downloading", 1), now=T0 + 100)
    await store.act(engine, rid, "pause", now=T0 + 200)
    await store.act(engine, rid, "resume", now=T0 + 1200)  # its deadline moves to 1700 s
    assert await _advance(engine, 1690) == []
    assert await _states(engine, rid) == {"gw-00": "downloading", "gw-01": "pending"}
    (done,) = await _advance(engine, 1710)
    assert "halted (wave 0: 1 of 1 gateways failed)" in done
    detail = await store.rollout_detail(engine, rid)
    assert detail is not None
    (failure,) = detail.failures
    assert failure.gateway == "gw-00" and "of its first report" in failure.reason
    assert failure.rollback_to == 1


async def test_a_wave_whose_gateways_are_all_offline_waits_for_one_to_return(
    db_url: str, start_fleet: StartFleet
) -> None:
    engine = (await start_fleet(db_url, run=False, scheduler_interval_s=0)).engine
    spec = CreateRollout(version=2, gateways=NAMES[:3], canary_count=1, soak_s=300)
    rid = await store.create_rollout(engine, spec, NAMES[:3], now=T0)
    assert await _advance(engine, 3590) == []
    assert (await _states(engine, rid))["gw-00"] == "assigned"
    # Past offline_after_s: offline, no failure; with nobody healthy the wave has no evidence.
    assert await _advance(engine, 3610) == []
    assert await _states(engine, rid) == {
        "gw-00": "offline",
        "gw-01": "pending",
        "gw-02": "pending",
    }
    desired = await store.desired_for(engine, "gw-00")
    assert desired.version == 2 and desired.rollback_to is None  # still assigned the version
    assert await _advance(engine, 9000) == []
    # It comes back: its first report starts its own soak deadline, and its healthy report
    # lets the wave pass.
    await store.record_report(engine, "gw-00", _report(rid, "downloading", 1), now=T0 + 9100)
    assert await _advance(engine, 9650) == []
    await store.record_report(engine, "gw-00", _report(rid, "healthy", 2), now=T0 + 9410)
    assert await _advance(engine, 9660) == [f"{rid}: wave 0 passed, wave 1 started"]
    detail = await store.rollout_detail(engine, rid)
    assert detail is not None and detail.failures == []
    assert [w.state for w in detail.waves] == ["succeeded", "running"]


async def test_a_failed_unlock_drops_the_connection_so_the_lock_is_not_kept(
    pg_url: str, start_fleet: StartFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = await start_fleet(pg_url, run=False, scheduler_interval_s=0)
    conn = await asyncpg.connect(PG_DSN.rsplit("/", 1)[0] + "/" + pg_url.rsplit("/", 1)[1])
    # A pg_advisory_unlock that raises, found before pg_catalog's by the run's search_path.
    await conn.execute(
        "CREATE SCHEMA trap; CREATE FUNCTION trap.pg_advisory_unlock(k bigint) RETURNS boolean "
        "AS $$ BEGIN RAISE EXCEPTION 'unlock refused'; END $$ LANGUAGE plpgsql"
    )

    async def advance_then_trap(db: Any, **kw: Any) -> list[str]:
        await db.execute(text("SET search_path = trap, pg_catalog, public"))
        await db.commit()
        return ["ran"]

    monkeypatch.setattr(scheduler, "advance", advance_then_trap)
    try:
        assert await run_once(fleet.engine, grace_s=5) == ["ran"]

        async def lock_free() -> bool:
            got = await conn.fetchval("SELECT pg_try_advisory_lock($1)", SCHEDULER_LOCK_KEY)
            return bool(got)

        await _until(lock_free, "the scheduler lock's release")
        await conn.execute("SELECT pg_advisory_unlock($1)", SCHEDULER_LOCK_KEY)
        monkeypatch.undo()
        assert await run_once(fleet.engine, grace_s=5) == []  # the pool is fine after it
    finally:
        await conn.close()
