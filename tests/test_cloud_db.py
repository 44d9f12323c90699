"""The shipped Alembic migrations build exactly the schema the code queries, on both databases."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect

from cloud.db import alembic_config, include_name, make_engine, metadata, upgrade_to_head


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
