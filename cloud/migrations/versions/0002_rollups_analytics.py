"""Hourly and daily rollups of the window aggregates, and the shared analytics results.

The rollups are filled from the aggregates already stored, so a database upgraded from 0001
serves the same answers as one that had the rollups from the start.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-29 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
KEY = (
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


def _backfill(width: int, dialect: str) -> str:
    # The same bucketing as cloud.queries.TimeBucket; SQLite may lack floor().
    if dialect == "sqlite":
        bucket = f"CAST(window_start / {width} AS INTEGER) * {width}"
    else:
        bucket = f"floor(window_start / {width}) * {width}"
    groups = "metric, gateway, home, room_class, device_class, unit, policy"
    return (
        f"INSERT INTO rollups ({', '.join(KEY)}, count, sum, weighted, sumsq, without_std,"
        " min, max, p50, p95, windows) "
        f"SELECT {width}, metric, {bucket}, gateway, home, room_class, device_class, unit, policy,"
        " sum(count), sum(sum), sum(count * mean),"
        " sum(CASE WHEN std IS NULL THEN 0 ELSE count * (std * std + mean * mean) END),"
        " sum(CASE WHEN std IS NULL THEN 1 ELSE 0 END),"
        " min(min), max(max), min(p50), min(p95), count(*)"
        f" FROM aggregates GROUP BY {groups}, {bucket}"
    )


def upgrade() -> None:
    op.create_table(
        "rollups",
        sa.Column("id", Id, primary_key=True),
        sa.Column("bucket_s", sa.Integer(), nullable=False),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("bucket_start", sa.Float(), nullable=False),
        sa.Column("gateway", sa.String(64), nullable=False),
        sa.Column("home", sa.String(64), nullable=False),
        sa.Column("room_class", sa.String(64), nullable=False),
        sa.Column("device_class", sa.String(64), nullable=False),
        sa.Column("unit", sa.String(16), nullable=False),
        sa.Column("policy", sa.String(16), nullable=False),
        sa.Column("count", sa.Float(), nullable=False),
        sa.Column("sum", sa.Float(), nullable=False),
        sa.Column("weighted", sa.Float(), nullable=False),
        sa.Column("sumsq", sa.Float(), nullable=False),
        sa.Column("without_std", sa.Integer(), nullable=False),
        sa.Column("min", sa.Float(), nullable=True),
        sa.Column("max", sa.Float(), nullable=True),
        sa.Column("p50", sa.Float(), nullable=True),
        sa.Column("p95", sa.Float(), nullable=True),
        sa.Column("windows", sa.Integer(), nullable=False),
        sa.UniqueConstraint(*KEY, name="rollups_key"),
    )
    op.create_index("ix_rollups_width_time", "rollups", ["bucket_s", "bucket_start"])
    op.create_table(
        "analytics_results",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("computed_at", sa.Float(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
    )
    dialect = op.get_bind().dialect.name
    for width in (3600, 86400):
        op.execute(_backfill(width, dialect))


def downgrade() -> None:
    op.drop_table("analytics_results")
    op.drop_table("rollups")
