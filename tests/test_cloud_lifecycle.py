"""The cloud app's lifetime: the batch writer drains every accepted batch before the engine is
disposed, and the `cloud` package imports without cycles."""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from cloud.app import create_app
from cloud.db import aggregates, batches, make_engine, rollups, upgrade_to_head
from cloud.ingest import BatchWriter, Body, StoreOutcome
from cloud.web import BATCH_WRITER_KEY, ENGINE_KEY
from schemas.batch import Batch, encode_batch
from tests.import_graph import find_cycles, import_graph
from tests.test_cloud_api import (
    T0,
    home_id,
    make_aggregate,
    make_batch,
    make_config,
    upload_headers,
)

ROOT = Path(__file__).resolve().parent.parent
SIZE = Body(wire=100, decoded=1000, sha256="0" * 64)


def batches_of(n: int, windows: int) -> list[Batch]:
    # Distinct hours per batch: each group's rollup upsert has real work to do.
    return [
        make_batch(
            seq=i + 1,
            aggs=[
                make_aggregate(T0 + 3600 * i + 60 * j, home=home_id(str(j % 7)))
                for j in range(windows)
            ],
        )
        for i in range(n)
    ]


async def stored_counts(engine: AsyncEngine) -> dict[str, tuple[int, int]]:
    """batch_id -> (aggregate_count on its row, aggregate rows stored for it)."""
    stmt = (
        select(batches.c.batch_id, batches.c.aggregate_count, func.count(aggregates.c.id))
        .select_from(batches.outerjoin(aggregates, aggregates.c.batch == batches.c.id))
        .group_by(batches.c.batch_id, batches.c.aggregate_count)
    )
    async with engine.connect() as conn:
        return {bid: (declared, rows) for bid, declared, rows in (await conn.execute(stmt)).all()}


async def count_sums(engine: AsyncEngine) -> tuple[float, float]:
    async with engine.connect() as conn:
        raw = await conn.scalar(select(func.coalesce(func.sum(aggregates.c.count), 0.0)))
        # The hour rows (the day rows hold the same counts again).
        rolled = await conn.scalar(
            select(func.coalesce(func.sum(rollups.c.count), 0.0)).where(rollups.c.bucket_s == 3600)
        )
    return float(raw or 0.0), float(rolled or 0.0)


async def wait_until_busy(writer: BatchWriter) -> None:
    """Return once the writer has a write running (up to 10 s)."""
    for _ in range(10_000):
        if not writer.idle:
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the writer never started writing")


async def test_closing_the_writer_finishes_every_accepted_batch(pg_url: str) -> None:
    engine = make_engine(pg_url)
    try:
        await upgrade_to_head(engine)
        writer = BatchWriter(engine)
        sent = batches_of(24, 200)
        stores = [asyncio.create_task(writer.store(b, SIZE)) for b in sent]
        await wait_until_busy(writer)
        await writer.aclose()
        assert writer.idle
        # Every caller has its answer; none was cancelled on the way.
        assert await asyncio.gather(*stores) == [StoreOutcome.STORED] * len(sent)
        with pytest.raises(RuntimeError, match="closed"):
            await writer.store(make_batch(seq=99), SIZE)
        counts = await stored_counts(engine)
        assert set(counts) == {b.batch_id for b in sent}
        assert all(declared == rows == 200 for declared, rows in counts.values())
    finally:
        await engine.dispose()


async def test_a_cancelled_caller_does_not_undo_a_group_being_written(pg_url: str) -> None:
    engine = make_engine(pg_url)
    try:
        await upgrade_to_head(engine)
        async with BatchWriter(engine) as writer:
            sent = batches_of(12, 300)
            stores = [asyncio.create_task(writer.store(b, SIZE)) for b in sent]
            await wait_until_busy(writer)
            for task in stores:
                task.cancel()
        # The writer has drained: whatever it took into a group is committed whole, whatever
        # it had not taken yet was dropped with its caller; nothing is half-stored.
        assert writer.idle
        counts = await stored_counts(engine)
        assert counts, "the first group was being written when the callers went away"
        assert set(counts) <= {b.batch_id for b in sent}
        assert all(declared == rows == 300 for declared, rows in counts.values())
        raw, rolled = await count_sums(engine)
        assert rolled == pytest.approx(raw)
    finally:
        await engine.dispose()


async def test_shutdown_drains_the_writer_before_the_engine_is_disposed(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(make_config(pg_url, analytics_interval_s=0))
    writer_idle_at_dispose: list[bool] = []
    dispose = AsyncEngine.dispose

    async def watched_dispose(engine: AsyncEngine, close: bool = True) -> None:
        if app.get(ENGINE_KEY) is engine:
            writer_idle_at_dispose.append(app[BATCH_WRITER_KEY].idle)
        await dispose(engine, close)

    monkeypatch.setattr(AsyncEngine, "dispose", watched_dispose)
    # A short grace period: shutdown cancels the handlers still waiting for their batch, so
    # only the writer's drain stands between the groups being written and the disposal.
    runner = web.AppRunner(app, shutdown_timeout=0.01)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    sent = batches_of(40, 250)
    answers: list[Any] = []
    stopped = False
    try:
        async with aiohttp.ClientSession() as session:

            async def upload(batch: Batch) -> int:
                async with session.post(
                    f"{base}/api/v1/batches",
                    data=gzip.compress(encode_batch(batch), compresslevel=1),
                    headers=upload_headers(),
                ) as resp:
                    return resp.status

            uploads = [asyncio.create_task(upload(b)) for b in sent]
            await wait_until_busy(app[BATCH_WRITER_KEY])
            await runner.cleanup()
            stopped = True
            answers = await asyncio.gather(*uploads, return_exceptions=True)
    finally:
        if not stopped:
            await runner.cleanup()
    assert writer_idle_at_dispose == [True]
    for answer in answers:  # an answer, or the connection closed by the shutdown
        assert answer in (200, 201) or isinstance(answer, aiohttp.ClientError), answer

    engine = make_engine(pg_url)
    try:
        counts = await stored_counts(engine)
        acknowledged = {b.batch_id for b, a in zip(sent, answers, strict=True) if a == 201}
        assert acknowledged <= set(counts)
        assert set(counts) <= {b.batch_id for b in sent}
        assert all(declared == rows == 250 for declared, rows in counts.values())
        raw, rolled = await count_sums(engine)
        assert rolled == pytest.approx(raw)
    finally:
        await engine.dispose()


def test_the_cloud_package_has_no_import_cycles() -> None:
    assert find_cycles(ROOT / "cloud", "cloud") == []


def test_the_import_graph_sees_lazy_and_relative_imports_but_not_type_checking(
    tmp_path: Path,
) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("def later() -> None:\n    from .sub import c\n")
    (pkg / "sub" / "__init__.py").write_text("from . import c as c\n")
    (pkg / "sub" / "c.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pkg.a import x\nelse:\n    import pkg.b.missing\n"
    )
    (pkg / "d.py").write_text("from ..outside import y\nimport os\n")
    assert import_graph(pkg, "pkg") == {
        "pkg": set(),
        "pkg.a": {"pkg.b"},
        "pkg.b": {"pkg.sub.c"},
        "pkg.sub": {"pkg.sub.c"},
        "pkg.sub.c": {"pkg.b"},
        "pkg.d": set(),
    }
    assert find_cycles(pkg, "pkg") == [["pkg.b", "pkg.sub.c"]]
    (pkg / "sub" / "c.py").write_text("from pkg.a import x\n")
    assert find_cycles(pkg, "pkg") == [["pkg.a", "pkg.b", "pkg.sub.c"]]
