"""The shipped Alembic migrations build exactly the schema the code queries, on both databases."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, text

from cloud.db import (
    alembic_config,
    dispose,
    include_name,
    make_engine,
    metadata,
    upgrade_to_head,
    worker_threads,
)


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}"
    return str(request.getfixturevalue("pg_url"))


def _diff(connection: Connection) -> list[object]:
    # The same filter as the migrations' env.py: PostgreSQL's time partitions are not tables of
    # the logical schema.
    context = MigrationContext.configure(connection, opts={"include_name": include_name})
    return list(compare_metadata(context, metadata))


def _downgrade(connection: Connection) -> None:
    command.downgrade(alembic_config(connection=connection), "base")


async def test_migrations_match_the_table_definitions(url: str) -> None:
    # Alembic keeps per-process global state, so upgrades are per process and in turn here;
    # concurrent start-ups of separate processes are covered in test_cloud_workers.
    engines = [make_engine(url) for _ in range(2)]
    try:
        for engine in engines:
            await upgrade_to_head(engine)  # the second one finds the schema at head
        async with engines[0].connect() as conn:
            assert await conn.run_sync(_diff) == []
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert {"batches", "aggregates", "alembic_version"} <= tables
        # Down and up again: the downgrade path works too.
        async with engines[0].begin() as conn:
            await conn.run_sync(_downgrade)
        async with engines[0].connect() as conn:
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert "batches" not in tables
        await upgrade_to_head(engines[0])
        async with engines[0].connect() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        for engine in engines:
            await engine.dispose()


def test_the_alembic_command_line_path_works_with_an_async_url(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    command.upgrade(alembic_config(url), "head")
    import sqlite3

    with sqlite3.connect(tmp_path / "cli.db") as conn:
        (version,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert version == "0011"  # head: 0009 gateway_stats, 0010 fleet rollouts, 0011 began_at


async def test_dispose_returns_once_every_sqlite_thread_has_ended(tmp_path: Path) -> None:
    """A connect cancelled at shutdown leaves aiosqlite's thread to finish on its own and then
    answer the event loop (a closed loop makes that thread fail); `dispose` returns only after
    such threads, and the pooled connections' ones, have ended."""
    path = tmp_path / "cloud.db"
    engine = make_engine(f"sqlite+aiosqlite:///{path}")
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))  # one pooled connection
    # Another process holds the file's write lock: a new connection's set-up waits for it.
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")

    async def two_connections() -> None:
        async with engine.connect(), engine.connect():  # the second one is a new connection
            pass

    task = asyncio.create_task(two_connections())
    await asyncio.sleep(0.2)  # the second connection is waiting for the lock
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    threads = worker_threads(engine)
    assert len(threads) == 2, threads
    asyncio.get_running_loop().call_later(0.3, holder.rollback)
    try:
        await dispose(engine)
    finally:
        holder.close()
    assert [t for t in threads if t.is_alive()] == []
