"""Rollout state in the cloud database: creating a rollout and its waves, what each gateway
should run, recording gateways' reports, the operator's pause/resume/abort, and the scheduler's
step (`advance`) that moves waves on.

Every change of a rollout happens in one transaction that first locks the rollout's row
(``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite has one writer at a time anyway), so an
operator's pause and a scheduler run in another worker process never interleave.

What a gateway should run (`desired_for`): its assignment in the newest rollout whose wave has
reached it; the rollout's version, or ``rollback_to`` when the cloud asked it back (its wave
failed, or the rollout was aborted during its wave). A gateway no rollout has reached yet gets
``version: null`` (stay). So a gateway that was offline finds the same answer when it returns.

Deadlines (`advance`): a gateway's soak deadline counts from its own first report in its wave
(``began_at``: downloading, staged or applied), ``soak_s + report_grace_s`` after it, not from
the wave's start, since a healthy gateway may first poll a whole poll interval later. One that
has not reported at all ``offline_after_s`` after its wave started is ``offline``: no failure,
not asked back, still assigned the version; its wave goes on without it once one of the wave's
gateways is healthy, and its later reports count as anyone's.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
from sqlalchemy import Row, and_, case, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cloud.db import gateway_state, rollout_gateways, rollout_waves, rollouts
from cloud.fleet.models import (
    CreateRollout,
    Desired,
    FleetVersions,
    GatewayAssignment,
    GatewayHealth,
    GatewayVersion,
    Report,
    RolloutDetail,
    RolloutSummary,
    WaveProgress,
)

# An assignment in one of these has an outcome for its wave.
DONE = ("healthy", "failed", "rolled_back", "reverted")
FAILED = ("failed", "rolled_back")
# Reported that it began (its soak deadline runs from began_at).
BEGUN = ("downloading", "staged", "applied")
# Its wave does not wait for it (offline: it catches up at its next poll).
SETTLED = (*DONE, "offline")
ACTIVE = ("running", "paused")
BUILTIN = 0  # rollback_to for a gateway that ran the built-in models before
MAX_REASON_CHARS = 2000
CREATE_LOCK_KEY = 0x686F6D6565646773  # one rollout created at a time (PostgreSQL)


class RolloutError(Exception):
    """A rollout request that cannot be done: status (HTTP), code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def bundle_target(version: int) -> str:
    return f"bundles/bundle-{version}.tar.gz"


def plan_waves(
    n: int, *, canary_count: int | None, canary_share: float | None, factor: float
) -> list[int]:
    """Wave sizes for `n` gateways: the canary, then each wave `factor` times the previous one
    (rounded up, at least one more), the last one what remains."""
    if n <= 0:
        return []
    if canary_share is not None:
        first = math.ceil(canary_share * n - 1e-9)
    else:
        first = canary_count if canary_count is not None else 1
    sizes = [max(1, min(n, first))]
    while sum(sizes) < n:
        grown = max(sizes[-1] + 1, math.ceil(sizes[-1] * factor - 1e-9))
        sizes.append(min(grown, n - sum(sizes)))
    return sizes


def over_threshold(failed: int, size: int, max_failures: int | None, share: float | None) -> bool:
    """Whether `failed` failures in a wave of `size` halt the rollout (default: any)."""
    if share is not None:
        return failed > share * size
    return failed > (max_failures if max_failures is not None else 0)


def _upsert(conn: AsyncConnection) -> Any:
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert


async def _locked_rollout(conn: AsyncConnection, rollout_id: str) -> Row[Any] | None:
    return (
        await conn.execute(select(rollouts).where(rollouts.c.id == rollout_id).with_for_update())
    ).first()


async def _start_next_wave(conn: AsyncConnection, rollout_id: str, now: float) -> int | None:
    """Start the first pending wave (its gateways' previous versions noted); None when there
    is none left, and then the rollout is completed."""
    number = await conn.scalar(
        select(rollout_waves.c.number)
        .where(rollout_waves.c.rollout == rollout_id, rollout_waves.c.state == "pending")
        .order_by(rollout_waves.c.number)
        .limit(1)
    )
    if number is None:
        await conn.execute(
            update(rollouts)
            .where(rollouts.c.id == rollout_id)
            .values(state="completed", finished_at=now, updated_at=now, reason="every wave passed")
        )
        return None
    await conn.execute(
        update(rollout_waves)
        .where(rollout_waves.c.rollout == rollout_id, rollout_waves.c.number == number)
        .values(state="running", started_at=now)
    )
    running = (
        select(gateway_state.c.running_version)
        .where(gateway_state.c.gateway == rollout_gateways.c.gateway)
        .scalar_subquery()
    )
    await conn.execute(
        update(rollout_gateways)
        .where(rollout_gateways.c.rollout == rollout_id, rollout_gateways.c.wave == number)
        .values(state="assigned", assigned_at=now, updated_at=now, previous_version=running)
    )
    await conn.execute(update(rollouts).where(rollouts.c.id == rollout_id).values(updated_at=now))
    return int(number)


async def _end_rollout(
    conn: AsyncConnection, rollout_id: str, *, state: str, reason: str, wave: int | None, now: float
) -> None:
    """Halt or abort: the wave in flight is asked back (rollback_to), the waves not started are
    skipped."""
    if wave is not None:
        await conn.execute(
            update(rollout_gateways)
            .where(rollout_gateways.c.rollout == rollout_id, rollout_gateways.c.wave == wave)
            .values(rollback=1, updated_at=now)
        )
        await conn.execute(
            update(rollout_waves)
            .where(rollout_waves.c.rollout == rollout_id, rollout_waves.c.number == wave)
            .values(state="failed" if state == "halted" else "aborted", finished_at=now)
        )
    await conn.execute(
        update(rollout_waves)
        .where(rollout_waves.c.rollout == rollout_id, rollout_waves.c.state == "pending")
        .values(state="aborted")
    )
    await conn.execute(
        update(rollout_gateways)
        .where(rollout_gateways.c.rollout == rollout_id, rollout_gateways.c.state == "pending")
        .values(state="skipped", updated_at=now)
    )
    await conn.execute(
        update(rollouts)
        .where(rollouts.c.id == rollout_id)
        .values(state=state, reason=reason, finished_at=now, updated_at=now, paused_at=None)
    )


async def _running_wave(conn: AsyncConnection, rollout_id: str) -> Row[Any] | None:
    return (
        await conn.execute(
            select(rollout_waves)
            .where(rollout_waves.c.rollout == rollout_id, rollout_waves.c.state == "running")
            .order_by(rollout_waves.c.number)
            .limit(1)
        )
    ).first()


# --- operator actions ---------------------------------------------------------------------


async def gateway_tags(engine: AsyncEngine) -> dict[str, list[str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(gateway_state.c.gateway, gateway_state.c.tags))
        return {gateway: json.loads(tags) for gateway, tags in rows}


async def set_tags(engine: AsyncEngine, gateway: str, tags: Sequence[str]) -> list[str]:
    clean = sorted(set(tags))
    async with engine.begin() as conn:
        stmt = _upsert(conn)(gateway_state).values(
            gateway=gateway, tags=json.dumps(clean), reason=""
        )
        await conn.execute(
            stmt.on_conflict_do_update(index_elements=["gateway"], set_={"tags": json.dumps(clean)})
        )
    return clean


async def create_rollout(
    engine: AsyncEngine, spec: CreateRollout, targets: Sequence[str], *, now: float | None = None
) -> str:
    """Store the rollout with its waves (targets in order), and start its canary wave."""
    now = time.time() if now is None else now
    sizes = plan_waves(
        len(targets),
        canary_count=spec.canary_count,
        canary_share=spec.canary_share,
        factor=spec.wave_factor,
    )
    rollout_id = uuid.uuid4().hex
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Two workers creating at once: the second waits here, then sees the first's.
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": CREATE_LOCK_KEY})
        active = await conn.scalar(
            select(rollouts.c.id).where(rollouts.c.state.in_(ACTIVE)).limit(1)
        )
        if active is not None:
            raise RolloutError(
                409, "conflict", f"rollout {active} is still running or paused: abort it first"
            )
        await conn.execute(
            rollouts.insert().values(
                id=rollout_id,
                version=spec.version,
                description=spec.description,
                selector=json.dumps({"gateways": spec.gateways, "tags": spec.tags}),
                canary_count=spec.canary_count,
                canary_share=spec.canary_share,
                wave_factor=spec.wave_factor,
                soak_s=spec.soak_s,
                max_failures=spec.max_failures,
                max_failure_share=spec.max_failure_share,
                state="running",
                reason="",
                created_at=now,
                updated_at=now,
            )
        )
        await conn.execute(
            rollout_waves.insert(),
            [
                {"rollout": rollout_id, "number": i, "size": size, "state": "pending"}
                for i, size in enumerate(sizes)
            ],
        )
        rows = []
        start = 0
        for i, size in enumerate(sizes):
            for gateway in targets[start : start + size]:
                rows.append(
                    {
                        "rollout": rollout_id,
                        "gateway": gateway,
                        "wave": i,
                        "state": "pending",
                        "reason": "",
                        "rollback": 0,
                    }
                )
            start += size
        await conn.execute(rollout_gateways.insert(), rows)
        await _start_next_wave(conn, rollout_id, now)
    return rollout_id


async def act(
    engine: AsyncEngine, rollout_id: str, action: str, *, now: float | None = None
) -> str:
    """pause, resume or abort the rollout; returns its new state."""
    now = time.time() if now is None else now
    async with engine.begin() as conn:
        row = await _locked_rollout(conn, rollout_id)
        if row is None:
            raise RolloutError(404, "not_found", f"no rollout {rollout_id}")
        state = row.state
        if action == "pause":
            if state != "running":
                raise RolloutError(409, "conflict", f"rollout is {state}, not running")
            await conn.execute(
                update(rollouts)
                .where(rollouts.c.id == rollout_id)
                .values(state="paused", paused_at=now, updated_at=now)
            )
            return "paused"
        if action == "resume":
            if state != "paused":
                raise RolloutError(409, "conflict", f"rollout is {state}, not paused")
            # The wave in flight gets its pause back: its deadlines count running time only
            # (a gateway that began during the pause starts its soak deadline now).
            paused_for = now - (row.paused_at or now)
            wave = await _running_wave(conn, rollout_id)
            if wave is not None:
                await conn.execute(
                    update(rollout_waves)
                    .where(
                        rollout_waves.c.rollout == rollout_id, rollout_waves.c.number == wave.number
                    )
                    .values(started_at=rollout_waves.c.started_at + paused_for)
                )
                shifted = rollout_gateways.c.began_at + paused_for
                await conn.execute(
                    update(rollout_gateways)
                    .where(
                        rollout_gateways.c.rollout == rollout_id,
                        rollout_gateways.c.wave == wave.number,
                        rollout_gateways.c.began_at.is_not(None),
                    )
                    .values(began_at=case((shifted > now, now), else_=shifted))
                )
            await conn.execute(
                update(rollouts)
                .where(rollouts.c.id == rollout_id)
                .values(state="running", paused_at=None, updated_at=now)
            )
            return "running"
        if action == "abort":
            if state not in ACTIVE:
                raise RolloutError(409, "conflict", f"rollout is {state} already")
            wave = await _running_wave(conn, rollout_id)
            await _end_rollout(
                conn,
                rollout_id,
                state="aborted",
                reason="aborted by the operator",
                wave=wave.number if wave is not None else None,
                now=now,
            )
            return "aborted"
    raise ValueError(f"unknown action {action!r}")


# --- the gateways' side ---------------------------------------------------------------------


_DESIRED_COLUMNS = (
    rollout_gateways.c.gateway,
    rollouts.c.id,
    rollouts.c.version,
    rollouts.c.soak_s,
    rollout_gateways.c.rollback,
    rollout_gateways.c.previous_version,
)
# Assignments a wave has reached (the others say nothing about what to run).
_REACHED = rollout_gateways.c.state.not_in(("pending", "skipped"))
_NEWEST_FIRST = (rollouts.c.created_at.desc(), rollouts.c.id.desc())


def _rollback_to(row: Any) -> int | None:
    """The version an assignment row is asked back to (BUILTIN: the built-in models), or None
    when it is not asked back."""
    if not row.rollback:
        return None
    return row.previous_version if row.previous_version is not None else BUILTIN


def _desired(row: Any) -> Desired:
    if row is None:
        return Desired(version=None, target=None, rollout=None, soak_s=0.0, rollback_to=None)
    back = _rollback_to(row)
    if back is not None:
        return Desired(
            version=back or None,
            target=bundle_target(back) if back else None,
            rollout=row.id,
            soak_s=row.soak_s,
            rollback_to=back,
        )
    return Desired(
        version=row.version,
        target=bundle_target(row.version),
        rollout=row.id,
        soak_s=row.soak_s,
        rollback_to=None,
    )


async def desired_for(engine: AsyncEngine, gateway: str) -> Desired:
    """What `gateway` should run now (see the module docstring): one indexed read."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(*_DESIRED_COLUMNS)
                .join(rollouts, rollouts.c.id == rollout_gateways.c.rollout)
                .where(rollout_gateways.c.gateway == gateway, _REACHED)
                .order_by(*_NEWEST_FIRST)
                .limit(1)
            )
        ).first()
    return _desired(row)


async def desired_all(conn: AsyncConnection) -> dict[str, Desired]:
    """`desired_for` of every gateway a rollout has reached, in one query."""
    rank = func.row_number().over(partition_by=rollout_gateways.c.gateway, order_by=_NEWEST_FIRST)
    ranked = (
        select(*_DESIRED_COLUMNS, rank.label("rank"))
        .join(rollouts, rollouts.c.id == rollout_gateways.c.rollout)
        .where(_REACHED)
        .subquery()
    )
    rows = await conn.execute(select(ranked).where(ranked.c.rank == 1))
    return {row.gateway: _desired(row) for row in rows}


def _assignment_state(report: Report, version: int, current: str) -> str | None:
    """The assignment's new state for `report` on a rollout of `version` (None: unchanged)."""
    if report.state == "healthy":
        # Healthy on another version (say, back on the old one) is no success of this rollout.
        return "healthy" if report.running_version == version else None
    if report.state in FAILED:
        return report.state
    if current in ("assigned", "offline", *BEGUN):
        return report.state  # progress within the wave (an offline one is back)
    return None


async def record_report(
    engine: AsyncEngine, gateway: str, report: Report, *, now: float | None = None
) -> None:
    """Store `gateway`'s report (its last one, for the fleet view) and move its assignment in
    the named rollout."""
    now = time.time() if now is None else now
    health = msgspec.json.encode(report.health).decode()
    reason = report.reason[:MAX_REASON_CHARS]
    values = {
        "running_version": report.running_version,
        "staged_version": report.staged_version,
        "state": report.state,
        "reason": reason,
        "rollout": report.rollout,
        "health": health,
        "reported_at": now,
    }
    async with engine.begin() as conn:
        stmt = _upsert(conn)(gateway_state).values(gateway=gateway, tags="[]", **values)
        await conn.execute(stmt.on_conflict_do_update(index_elements=["gateway"], set_=values))
        if report.rollout is None:
            return
        row = (
            await conn.execute(
                select(
                    rollout_gateways.c.state,
                    rollout_gateways.c.rollback,
                    rollout_gateways.c.previous_version,
                    rollouts.c.version,
                )
                .join(rollouts, rollouts.c.id == rollout_gateways.c.rollout)
                .where(
                    rollout_gateways.c.rollout == report.rollout,
                    rollout_gateways.c.gateway == gateway,
                )
            )
        ).first()
        if row is None or row.state in ("pending", "skipped"):
            return
        if row.rollback:
            # Asked back by the cloud: back on its previous version is no failure of its own;
            # one that failed by itself stays failed.
            back = report.running_version == row.previous_version
            if row.state in FAILED:
                new = "rolled_back" if report.state == "rolled_back" else None
            elif back and report.state in ("rolled_back", "healthy"):
                new = "reverted"
            else:
                new = "failed" if report.state == "failed" else None
        else:
            new = _assignment_state(report, row.version, row.state)
        if new is None:
            return
        if new not in FAILED:
            reason = ""
        await conn.execute(
            update(rollout_gateways)
            .where(
                rollout_gateways.c.rollout == report.rollout,
                rollout_gateways.c.gateway == gateway,
            )
            .values(
                state=new,
                reason=reason,
                updated_at=now,
                began_at=func.coalesce(rollout_gateways.c.began_at, now),
            )
        )


# --- the scheduler's step -----------------------------------------------------------------------


async def advance(
    conn: AsyncConnection, *, grace_s: float, offline_after_s: float, now: float | None = None
) -> list[str]:
    """One scheduler step over every running rollout: fail gateways that began and are past
    their own soak deadline, mark those that never reported offline, halt a rollout whose wave
    failed beyond its threshold, start the next wave of one whose wave passed, complete one with
    no wave left. Returns what it did, as text.

    Runs on `conn` (no transaction open), one transaction per rollout: the scheduler holds one
    connection, the one its advisory lock lives on."""
    now = time.time() if now is None else now
    running = list(await conn.scalars(select(rollouts.c.id).where(rollouts.c.state == "running")))
    await conn.commit()
    done: list[str] = []
    for rollout_id in running:
        async with conn.begin():
            done += await _advance_one(conn, rollout_id, grace_s, offline_after_s, now)
    return done


async def _advance_one(
    conn: AsyncConnection, rollout_id: str, grace_s: float, offline_after_s: float, now: float
) -> list[str]:
    row = await _locked_rollout(conn, rollout_id)
    if row is None or row.state != "running":
        return []
    wave = await _running_wave(conn, rollout_id)
    if wave is None:
        started = await _start_next_wave(conn, rollout_id, now)
        return [f"{rollout_id}: " + ("completed" if started is None else f"wave {started} started")]
    in_wave = and_(rollout_gateways.c.rollout == rollout_id, rollout_gateways.c.wave == wave.number)
    limit = row.soak_s + grace_s
    await conn.execute(
        update(rollout_gateways)
        .where(
            in_wave,
            rollout_gateways.c.state.in_(BEGUN),
            rollout_gateways.c.began_at < now - limit,
        )
        .values(
            state="failed",
            reason=f"no healthy report within soak_s + grace ({limit:g} s) of its first report",
            updated_at=now,
        )
    )
    if now > wave.started_at + offline_after_s:
        await conn.execute(
            update(rollout_gateways)
            .where(in_wave, rollout_gateways.c.state == "assigned")
            .values(
                state="offline",
                reason=f"no report within offline_after_s ({offline_after_s:g} s) of its wave's "
                "start: gets the version at its next poll",
                updated_at=now,
            )
        )
    states = Counter((await conn.scalars(select(rollout_gateways.c.state).where(in_wave))).all())
    failed = sum(states[s] for s in FAILED)
    if over_threshold(failed, wave.size, row.max_failures, row.max_failure_share):
        reason = f"wave {wave.number}: {failed} of {wave.size} gateways failed"
        await _end_rollout(
            conn, rollout_id, state="halted", reason=reason, wave=wave.number, now=now
        )
        return [f"{rollout_id}: halted ({reason})"]
    if sum(states[s] for s in SETTLED) < wave.size:
        return []
    if states["offline"] and not states["healthy"]:
        return []  # no evidence yet: the wave waits for an offline gateway to come back
    # The wave passed; its few failures (within the threshold) are asked back all the same.
    await conn.execute(
        update(rollout_gateways)
        .where(in_wave, rollout_gateways.c.state.in_(FAILED))
        .values(rollback=1, updated_at=now)
    )
    await conn.execute(
        update(rollout_waves)
        .where(rollout_waves.c.rollout == rollout_id, rollout_waves.c.number == wave.number)
        .values(state="succeeded", finished_at=now)
    )
    started = await _start_next_wave(conn, rollout_id, now)
    what = "completed" if started is None else f"wave {started} started"
    return [f"{rollout_id}: wave {wave.number} passed, {what}"]


# --- reads --------------------------------------------------------------------------------------


def _assignment(row: Row[Any]) -> GatewayAssignment:
    return GatewayAssignment(
        gateway=row.gateway,
        wave=row.wave,
        state=row.state,
        reason=row.reason,
        previous_version=row.previous_version,
        rollback_to=_rollback_to(row),
        updated_at=row.updated_at,
        began_at=row.began_at,
    )


async def rollout_detail(engine: AsyncEngine, rollout_id: str) -> RolloutDetail | None:
    async with engine.connect() as conn:
        row = (await conn.execute(select(rollouts).where(rollouts.c.id == rollout_id))).first()
        if row is None:
            return None
        waves = (
            await conn.execute(
                select(rollout_waves)
                .where(rollout_waves.c.rollout == rollout_id)
                .order_by(rollout_waves.c.number)
            )
        ).all()
        assigned = [
            _assignment(r)
            for r in await conn.execute(
                select(rollout_gateways)
                .where(rollout_gateways.c.rollout == rollout_id)
                .order_by(rollout_gateways.c.wave, rollout_gateways.c.gateway)
            )
        ]
    counts: dict[int, Counter[str]] = {w.number: Counter() for w in waves}
    for a in assigned:
        counts[a.wave][a.state] += 1
    return RolloutDetail(
        id=row.id,
        version=row.version,
        description=row.description,
        state=row.state,
        reason=row.reason,
        selector=json.loads(row.selector),
        canary_count=row.canary_count,
        canary_share=row.canary_share,
        wave_factor=row.wave_factor,
        soak_s=row.soak_s,
        max_failures=row.max_failures,
        max_failure_share=row.max_failure_share,
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
        waves=[
            WaveProgress(
                number=w.number,
                size=w.size,
                state=w.state,
                started_at=w.started_at,
                finished_at=w.finished_at,
                counts=dict(sorted(counts[w.number].items())),
            )
            for w in waves
        ],
        gateways=assigned,
        failures=[a for a in assigned if a.state in FAILED],
        rollbacks=[a for a in assigned if a.rollback_to is not None],
    )


async def list_rollouts(engine: AsyncEngine, *, limit: int = 100) -> list[RolloutSummary]:
    async with engine.connect() as conn:
        rows = (
            await conn.execute(select(rollouts).order_by(rollouts.c.created_at.desc()).limit(limit))
        ).all()
        ids = [r.id for r in rows]
        tally: dict[str, Counter[str]] = {i: Counter() for i in ids}
        if ids:
            for rollout_id, state in await conn.execute(
                select(rollout_gateways.c.rollout, rollout_gateways.c.state).where(
                    rollout_gateways.c.rollout.in_(ids)
                )
            ):
                tally[rollout_id][state] += 1
    return [
        RolloutSummary(
            id=r.id,
            version=r.version,
            description=r.description,
            state=r.state,
            reason=r.reason,
            gateways=sum(tally[r.id].values()),
            healthy=tally[r.id]["healthy"],
            failed=sum(tally[r.id][s] for s in FAILED),
            created_at=r.created_at,
            updated_at=r.updated_at,
            finished_at=r.finished_at,
        )
        for r in rows
    ]


async def fleet_versions(engine: AsyncEngine, configured: Iterable[str]) -> FleetVersions:
    """Each gateway's running and staged version, last report and desired version."""
    now = time.time()
    async with engine.connect() as conn:
        rows = {r.gateway: r for r in await conn.execute(select(gateway_state))}
        desired = await desired_all(conn)
    names = sorted(set(configured) | set(rows))
    out = []
    nothing = _desired(None)
    for name in names:
        r = rows.get(name)
        out.append(
            GatewayVersion(
                gateway=name,
                tags=json.loads(r.tags) if r is not None else [],
                running_version=r.running_version if r is not None else None,
                staged_version=r.staged_version if r is not None else None,
                state=r.state if r is not None else None,
                reason=r.reason if r is not None else "",
                rollout=r.rollout if r is not None else None,
                health=msgspec.json.decode(r.health, type=GatewayHealth)
                if r is not None and r.health
                else None,
                reported_at=r.reported_at if r is not None else None,
                desired_version=desired.get(name, nothing).version,
            )
        )
    versions: Counter[str] = Counter()
    for g in out:
        if g.reported_at is None:
            versions["unknown"] += 1
        else:
            versions[str(g.running_version) if g.running_version is not None else "builtin"] += 1
    return FleetVersions(now=now, gateways=out, versions=dict(sorted(versions.items())))
