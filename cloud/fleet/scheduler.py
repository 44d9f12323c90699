"""The rollout scheduler: a background task of every worker that runs `store.advance` every
``updates.scheduler_interval_s`` (only when an update repository is configured: without one no
rollout can exist).

On PostgreSQL several workers (and several hosts) share the rollouts: a run first takes a
session advisory lock with ``pg_try_advisory_lock``; a worker that does not get it skips the
run, so one scheduler acts at a time. The run unlocks at its end; when the unlock fails, the
connection is invalidated (closed, not pooled) so the lock ends with its session instead of
staying held by a pooled connection. A session lock needs a session of its own: behind
pgbouncer in transaction pooling mode it does not work (point the cloud at PostgreSQL or at a
session-mode pool). Each rollout's step is also its own transaction on the
rollout's locked row (`cloud.fleet.store`), so an operator's pause or abort in another worker
waits for it, or it for them. SQLite serves one process: no lock needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from cloud.fleet.store import advance
from cloud.tasks import raise_if_cancelling

log = logging.getLogger(__name__)

# Another constant than the schema upgrade's and the storage upkeep's locks.
SCHEDULER_LOCK_KEY = 0x686F6D6565646772


async def run_once(
    engine: AsyncEngine, *, grace_s: float, offline_after_s: float = 3600.0
) -> list[str] | None:
    """One scheduler run on one connection; None when another process holds the lock."""
    async with engine.connect() as conn:
        if engine.dialect.name != "postgresql":
            return await advance(conn, grace_s=grace_s, offline_after_s=offline_after_s)
        got = await conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": SCHEDULER_LOCK_KEY})
        await conn.commit()
        if not got:
            return None
        try:
            # The session lock outlives the run's transactions on this same connection.
            return await advance(conn, grace_s=grace_s, offline_after_s=offline_after_s)
        finally:
            # A failed unlock must not hide what ended the run, nor leave the lock held by a
            # pooled connection (every other worker would skip for good): the connection is
            # invalidated, and closing it ends the session and its lock.
            try:
                await conn.rollback()
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": SCHEDULER_LOCK_KEY})
                await conn.commit()
            except (SQLAlchemyError, OSError) as exc:
                log.warning("rollout scheduler: unlock failed, connection dropped: %s", exc)
                with contextlib.suppress(SQLAlchemyError, OSError):
                    await conn.invalidate()


async def run_periodically(
    engine: AsyncEngine,
    interval_s: float,
    grace_s: float,
    offline_after_s: float,
    stop: asyncio.Event,
) -> None:
    """`run_once` now and every `interval_s` until `stop` is set. Stopping waits for the run in
    flight instead of cancelling it: a run cancelled mid-statement would leave its transaction
    (and, on SQLite, the driver's thread) to finish after the engine is gone."""
    while not stop.is_set():
        try:
            for what in (
                await run_once(engine, grace_s=grace_s, offline_after_s=offline_after_s) or ()
            ):
                log.info("rollout scheduler: %s", what)
        except (DBAPIError, OSError) as exc:  # the database away: one line, not a traceback
            raise_if_cancelling()
            log.warning("rollout scheduler: database unavailable, retried: %s", exc)
        except Exception:  # the next run tries again; serving never depends on this task
            raise_if_cancelling()
            log.exception("rollout scheduler run failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
