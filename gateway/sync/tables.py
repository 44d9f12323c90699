"""The cloud-sync path's own SQLite tables, on the gateway's shared `gateway.db.metadata`.

- ``sync_watermark``: how far the window aggregation got (one row), so a restarted gateway resumes
  without losing or double-counting a window.
- ``aggregates``: every closed window's full statistics, with real home and room names. Local
  only: what leaves the home is derived from it by the privacy filter.
- ``late_readings``: readings stored after their window had been aggregated, counted per window.
- ``privacy_ledger``: epsilon spent per home and budget period.
- ``outbox`` + ``outbox_seq``: durable batches waiting for the uplink, and the per-gateway
  sequence counter (kept apart so pruning rows never reuses a seq).
- ``sync_counters``: durable totals (dropped, refused, suppressed, ...) for reports.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from gateway.db import metadata

sync_watermark = Table(
    "sync_watermark",
    metadata,
    Column("id", Integer, primary_key=True),  # always 1
    Column("window_s", Integer, nullable=False),
    # Every window ending at or before `watermark` has been aggregated.
    Column("watermark", Float, nullable=True),
    # Highest readings.id seen by the last pass: rows above it with ts < watermark are late.
    Column("reading_cursor", Integer, nullable=False, default=0),
    Column("updated_at", Float, nullable=False),
)

aggregates = Table(
    "aggregates",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("home", String(64), nullable=False),
    Column("room", String(64), nullable=False),
    Column("device_class", String(32), nullable=False),
    Column("metric", String(64), nullable=False),
    Column("window_start", Float, nullable=False),
    Column("window_s", Integer, nullable=False),
    Column("count", Integer, nullable=False),
    Column("sum", Float, nullable=False),
    Column("sum_sq", Float, nullable=False),
    Column("min", Float, nullable=False),
    Column("max", Float, nullable=False),
    Column("mean", Float, nullable=False),
    Column("std", Float, nullable=False),
    Column("p50", Float, nullable=False),
    Column("p95", Float, nullable=False),
    Column("policy", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint(
        "home", "room", "device_class", "metric", "window_start", "window_s", name="ux_aggregates"
    ),
    Index("ix_aggregates_window_start", "window_start"),
)

late_readings = Table(
    "late_readings",
    metadata,
    Column("home", String(64), primary_key=True),
    Column("room", String(64), primary_key=True),
    Column("device", String(64), primary_key=True),
    Column("metric", String(64), primary_key=True),
    Column("window_start", Float, primary_key=True),
    Column("count", Integer, nullable=False),
    Column("last_seen_at", Float, nullable=False),
)

privacy_ledger = Table(
    "privacy_ledger",
    metadata,
    Column("home", String(64), primary_key=True),
    Column("period_start", Float, primary_key=True),
    Column("epsilon_spent", Float, nullable=False),
    Column("releases", Integer, nullable=False),
    Column("refused", Integer, nullable=False),
)

outbox = Table(
    "outbox",
    metadata,
    Column("seq", Integer, primary_key=True),
    Column("batch_id", String(32), nullable=False, unique=True),
    Column("gateway", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("n_aggregates", Integer, nullable=False),
    # gzip of schemas.batch.encode_batch(...): exactly the bytes the uplink puts on the wire.
    Column("body_gz", LargeBinary, nullable=False),
    Column("status", String(16), nullable=False),  # pending | sent | rejected
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=True),
    Column("done_at", Float, nullable=True),
    Index("ix_outbox_status_seq", "status", "seq"),
)

outbox_seq = Table(
    "outbox_seq",
    metadata,
    Column("gateway", String(64), primary_key=True),
    Column("last_seq", Integer, nullable=False),
)

sync_counters = Table(
    "sync_counters",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Integer, nullable=False),
)

SYNC_TABLES = (
    sync_watermark,
    aggregates,
    late_readings,
    privacy_ledger,
    outbox,
    outbox_seq,
    sync_counters,
)


def create_sync_tables(bind: Engine | Connection) -> None:
    """Create the sync tables (idempotent) on an engine or in a connection's transaction;
    `gateway.db.make_engine` also does once this module is imported."""
    metadata.create_all(bind, tables=list(SYNC_TABLES))
