"""The cloud database: table definitions (SQLAlchemy Core), engine set-up, schema upgrades.

The tables here describe the schema the Alembic revisions in `cloud/migrations` create; the
migrations own the schema, these definitions are what the queries are written against (a test
checks both agree). SQLite and PostgreSQL are served by the same code.

On PostgreSQL `aggregates` and `rollups` are partitioned by time (migration 0007): RANGE
partitions on `window_start` / `bucket_start` that `cloud.storage` creates ahead and drops after
the retention period, plus a DEFAULT partition for rows no partition covers yet. A partitioned
table's primary key must contain the partition column, so there it is (id, time); the logical
schema (these definitions, and SQLite's tables) keeps `id` alone as the key. The partitions are
not part of this metadata: `include_name` keeps Alembic's comparison off them.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant works; it only has to be the same for every worker process of this service.
UPGRADE_LOCK_KEY = 0x686F6D6565646765  # "homeedge"

metadata = MetaData()

batches = Table(
    "batches",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    # Unique: a resent batch is stored once, whichever worker process receives it.
    Column("batch_id", String(32), nullable=False),
    Column("gateway", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("received_at", Float, nullable=False),
    Column("aggregate_count", Integer, nullable=False),
    Column("body_bytes", Integer, nullable=False),
    Column("wire_bytes", Integer, nullable=False),
    Column("window_start_min", Float, nullable=True),
    # Newest window end: the gateway's lag without scanning the aggregates.
    Column("window_end_max", Float, nullable=True),
    Column("epsilon_spent", Float, nullable=False),
    Column("suppressed_windows", Integer, nullable=False),
    Column("refused_noised", Integer, nullable=False),
    Column("min_window_count", Integer, nullable=False),
    Column("ingested_messages", BigInteger, nullable=False),
    Column("ingested_bytes", BigInteger, nullable=False),
    Column("version", Integer, nullable=False),
    # SHA-256 (hex) of the decompressed body: a resend carries the same bytes, another body
    # under a stored id is refused. NULL for batches stored before migration 0005 (matches any).
    Column("body_sha256", String(64), nullable=True),
    UniqueConstraint("batch_id", name="batches_batch_id_key"),
    Index("ix_batches_gateway_seq", "gateway", "seq"),
    # The overview's upload rate: the batches of the last minute, an index range (0009).
    Index("ix_batches_received_at", "received_at"),
)

# One row per gateway, kept in the ingest transaction (migration 0009): what the overview and
# the bandwidth report show, read without grouping `batches` (one row per upload, which grows
# with history). Totals add; the newest values take the greatest.
gateway_stats = Table(
    "gateway_stats",
    metadata,
    Column("gateway", String(64), primary_key=True),
    Column("batches", BigInteger, nullable=False),
    # Distinct seq numbers received: last_seq - seqs are missing. A batch counts when no batch
    # of its gateway with a lower id has its seq (exact but for two different batches with one
    # seq stored at the same moment by two transactions; `cloud.queries.gateway_status` counts
    # from the batches themselves).
    Column("seqs", BigInteger, nullable=False),
    Column("last_seq", BigInteger, nullable=False),
    Column("last_batch_at", Float, nullable=False),
    Column("last_created_at", Float, nullable=False),
    Column("window_end_max", Float, nullable=True),
    Column("aggregate_rows", BigInteger, nullable=False),
    Column("ingested_messages", BigInteger, nullable=False),
    Column("ingested_bytes", BigInteger, nullable=False),
    Column("body_bytes", BigInteger, nullable=False),
    Column("wire_bytes", BigInteger, nullable=False),
)

aggregates = Table(
    "aggregates",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    # batches.id, without a foreign key: the ingest transaction inserts the batch row before
    # its aggregates and nothing deletes batches, and the per-row check cost a quarter of the
    # COPY's time (migration 0003).
    Column("batch", BigInteger().with_variant(Integer, "sqlite"), nullable=False),
    Column("gateway", String(64), nullable=False),
    Column("window_start", Float, nullable=False),
    Column("window_s", Integer, nullable=False),
    Column("home", String(64), nullable=False),
    Column("room_class", String(64), nullable=False),
    Column("device_class", String(64), nullable=False),
    Column("metric", String(64), nullable=False),
    Column("unit", String(16), nullable=False),
    Column("policy", String(16), nullable=False),
    Column("count", Float, nullable=False),
    Column("sum", Float, nullable=False),
    Column("mean", Float, nullable=False),
    Column("min", Float, nullable=True),
    Column("max", Float, nullable=True),
    Column("std", Float, nullable=True),
    Column("p50", Float, nullable=True),
    Column("p95", Float, nullable=True),
    Column("epsilon", Float, nullable=True),
    # Every query names a metric and usually a time range; per-home views add the home. No index
    # on `batch`: batches are not deleted one by one, and each index costs ingest speed.
    Index("ix_aggregates_metric_time", "metric", "window_start"),
    Index("ix_aggregates_home_metric_time", "home", "metric", "window_start"),
    # Time alone: what retention (SQLite deletes by time) and the sweep of PostgreSQL's default
    # partition read. BRIN on PostgreSQL: rows arrive in about time order, so a few block ranges
    # summarise a partition for almost nothing at ingest; a plain b-tree on SQLite (0007).
    Index("ix_aggregates_time", "window_start", postgresql_using="brin"),
)

# Columns of a rollup row that identify it: one row per bucket width, metric, bucket start and
# the finest grouping of the aggregates (so any coarser query re-adds rows exactly). Ingest keeps
# rows of two widths, hours and days (0007), so neither is grouped from the other at read time.
ROLLUP_KEY = (
    "bucket_s",
    "metric",
    "bucket_start",
    "gateway",
    "home",
    "room_class",
    "device_class",
    "unit",
    "policy",
)

rollups = Table(
    "rollups",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("bucket_s", Integer, nullable=False),
    Column("metric", String(64), nullable=False),
    Column("bucket_start", Float, nullable=False),
    Column("gateway", String(64), nullable=False),
    Column("home", String(64), nullable=False),
    Column("room_class", String(64), nullable=False),
    Column("device_class", String(64), nullable=False),
    Column("unit", String(16), nullable=False),
    Column("policy", String(16), nullable=False),
    # Additive state, so a new batch is folded in with one upsert: sum(count), sum(sum),
    # sum(count * mean), sum(count * (std^2 + mean^2)) over windows that have a std, and how
    # many windows had none (their std cannot be rebuilt).
    Column("count", Float, nullable=False),
    Column("sum", Float, nullable=False),
    Column("weighted", Float, nullable=False),
    Column("sumsq", Float, nullable=False),
    Column("without_std", Integer, nullable=False),
    Column("min", Float, nullable=True),
    Column("max", Float, nullable=True),
    # The smallest window percentile; only meaningful (and only served) when windows == 1.
    Column("p50", Float, nullable=True),
    Column("p95", Float, nullable=True),
    Column("windows", Integer, nullable=False),
    # Sum of 1/epsilon^2 over the noised windows (0 for exact ones): the bucket's privacy noise
    # variance is additive in it (`cloud.noise`, migration 0008).
    Column("inv_eps_sq", Float, nullable=False, server_default="0"),
    UniqueConstraint(*ROLLUP_KEY, name="rollups_key"),
    # The analytics read whole time ranges of one width, every metric at once. (The dashboard's
    # series read the unique key's index: width, metric, then the time range.)
    Index("ix_rollups_width_time", "bucket_s", "bucket_start"),
    # On PostgreSQL the table has fillfactor 50 (migration 0003): ingest updates the same rows
    # over and over, and free space on their page makes those updates HOT.
)

# The newest analytics results as JSON, one row per name, shared by every worker process.
analytics_results = Table(
    "analytics_results",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("computed_at", Float, nullable=False),
    Column("payload", Text, nullable=False),
)

# Dashboard sessions, so a logout ends one in every worker process and across restarts. The key
# is an HMAC of the cookie under a key derived from the read token: the table holds nothing a
# browser could present, and a new read token voids every session at once.
sessions = Table(
    "sessions",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("issued_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    # Expired rows are deleted by expiry time at each login.
    Index("ix_sessions_expires_at", "expires_at"),
)

# Fleet rollouts (`cloud.fleet`, migration 0010). A rollout sends one bundle version to a set of
# gateways in waves (0 is the canary); its state is running, paused, halted, aborted or
# completed. Each target gateway has one assignment row per rollout, with the wave it is in and
# what it reported; `rollback_to` set asks it back to the version it ran before.
rollouts = Table(
    "rollouts",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("description", Text, nullable=False),
    # JSON: {"gateways": [...], "tags": [...]}, as the operator asked.
    Column("selector", Text, nullable=False),
    Column("canary_count", Integer, nullable=True),
    Column("canary_share", Float, nullable=True),
    Column("wave_factor", Float, nullable=False),
    Column("soak_s", Float, nullable=False),
    Column("max_failures", Integer, nullable=True),
    Column("max_failure_share", Float, nullable=True),
    Column("state", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("paused_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    # The scheduler reads the running ones at every run.
    Index("ix_rollouts_state", "state"),
)

rollout_waves = Table(
    "rollout_waves",
    metadata,
    Column("rollout", String(32), primary_key=True),
    Column("number", Integer, primary_key=True),
    Column("size", Integer, nullable=False),
    # pending, running, succeeded, failed (halted there), aborted
    Column("state", String(16), nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
)

rollout_gateways = Table(
    "rollout_gateways",
    metadata,
    Column("rollout", String(32), primary_key=True),
    Column("gateway", String(64), primary_key=True),
    Column("wave", Integer, nullable=False),
    # pending (wave not started), assigned, downloading, staged, applied, healthy, failed,
    # rolled_back, reverted, offline (never reported within updates.offline_after_s: no
    # failure, still assigned), skipped (the rollout ended before its wave)
    Column("state", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    # What it ran when its wave started (NULL: the built-in models, or never reported).
    Column("previous_version", Integer, nullable=True),
    Column("rollback", Integer, nullable=False),  # 1: the cloud asks it back (rollback_to)
    Column("assigned_at", Float, nullable=True),
    Column("updated_at", Float, nullable=True),
    # Its first report in the wave (migration 0011): its soak deadline counts from here.
    Column("began_at", Float, nullable=True),
    # /desired reads a gateway's assignments; the scheduler a wave's.
    Index("ix_rollout_gateways_gateway", "gateway"),
)

# Per gateway: the operator's tags and its last rollout report.
gateway_state = Table(
    "gateway_state",
    metadata,
    Column("gateway", String(64), primary_key=True),
    Column("tags", Text, nullable=False),  # JSON list
    Column("running_version", Integer, nullable=True),
    Column("staged_version", Integer, nullable=True),
    Column("state", String(16), nullable=True),
    Column("reason", Text, nullable=False),
    Column("rollout", String(32), nullable=True),
    Column("health", Text, nullable=True),  # JSON, as reported
    Column("reported_at", Float, nullable=True),
)


# Time-partitioned tables on PostgreSQL: name, partition column, partition width in seconds.
# Days for the aggregates (a day of a large fleet is a partition of ~100 M rows; retention is
# counted in days); weeks for the rollups, 60x fewer rows, so a year's dashboard range spans
# 53 partitions rather than 365. Both widths are whole days on the epoch, so a day's rollup row
# and its hours share a partition.
PARTITIONED: dict[str, tuple[str, int]] = {
    "aggregates": ("window_start", 86400),
    "rollups": ("bucket_start", 7 * 86400),
}
PARTITION_NAME = re.compile(r"^(aggregates|rollups)_(p\d{8}|default)$")


def include_name(name: str | None, type_: str, _parent_names: Any) -> bool:
    """Alembic's filter: the partitions of the partitioned tables are not schema objects of
    their own (their indexes are the parent's, made per partition)."""
    if type_ == "table" and name is not None:
        return PARTITION_NAME.match(name) is None
    return True


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the query API read while a batch is written; busy_timeout rides out the
    # moments another process holds the write lock.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


# Each aiosqlite connection runs a worker thread that answers the event loop when its work is
# done, closing included; the threads of an engine's connections, so `dispose` can wait for them.
_WORKER_THREADS: weakref.WeakKeyDictionary[Any, weakref.WeakSet[threading.Thread]] = (
    weakref.WeakKeyDictionary()
)


def make_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An async engine for `url`, with SQLite tuned for one writer and concurrent readers.
    Dispose of it with `dispose`."""
    if not is_sqlite(url):
        return create_async_engine(url, pool_pre_ping=True, **kwargs)
    import aiosqlite

    parsed = make_url(url)
    # The arguments SQLAlchemy's aiosqlite dialect would connect with.
    cargs, cparams = parsed.get_dialect()().create_connect_args(parsed)
    threads: weakref.WeakSet[threading.Thread] = weakref.WeakSet()

    async def connect() -> aiosqlite.Connection:
        conn = aiosqlite.connect(*cargs, **cparams)
        # Known before the thread starts: a connect cancelled at shutdown leaves its thread
        # to open and close the file on its own, and `dispose` must wait for that too.
        thread = getattr(conn, "_thread", None)
        if isinstance(thread, threading.Thread):
            thread.daemon = True  # as the dialect does: never keeps the process alive
            threads.add(thread)
        return await conn

    engine = create_async_engine(url, async_creator=connect, **kwargs)
    _WORKER_THREADS[engine.sync_engine] = threads
    event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def worker_threads(engine: AsyncEngine) -> list[threading.Thread]:
    """The worker threads of the aiosqlite connections `engine` has opened, ended ones among
    them until they are collected (none for PostgreSQL)."""
    return list(_WORKER_THREADS.get(engine.sync_engine, ()))


async def dispose(engine: AsyncEngine, timeout_s: float = 5.0) -> None:
    """Close every pooled connection of `engine`, and on SQLite wait (at most `timeout_s`) for
    their worker threads to end. A connection closed by force (a statement cancelled at
    shutdown, or a connect cancelled) leaves its thread to finish on its own and then answer the
    event loop; a loop closed before that answer makes the thread fail. Waiting here keeps the
    loop open until every thread has answered."""
    await engine.dispose()
    threads = worker_threads(engine)
    if not threads:
        return
    deadline = time.monotonic() + timeout_s
    for thread in [t for t in threads if t.is_alive()]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            log.warning("database threads still running after %.0f s", timeout_s)
            break
        await asyncio.to_thread(thread.join, remaining)


def alembic_config(url: str | None = None, connection: Connection | None = None) -> AlembicConfig:
    """An Alembic config for the shipped migrations (no alembic.ini needed)."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        # configparser interpolates %, which URL-encoded passwords contain.
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _upgrade_on(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Several workers start at once: one upgrades, the others wait here and then find the
        # schema at head. The lock is released when this transaction ends.
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": UPGRADE_LOCK_KEY})
    command.upgrade(alembic_config(connection=connection), "head")


async def upgrade_to_head(engine: AsyncEngine) -> None:
    """Bring the schema to the newest migration.

    Safe from several processes at once on PostgreSQL (advisory lock). Within one process run
    one upgrade at a time: Alembic keeps its migration context in module globals.
    """
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade_on)
    log.info("database schema at head (%s)", engine.url.render_as_string(hide_password=True))
