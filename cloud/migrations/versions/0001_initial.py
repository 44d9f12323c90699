"""Initial schema: batches and their window aggregates.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite only auto-increments an INTEGER PRIMARY KEY, so the 64-bit ids are INTEGER there.
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", Id, primary_key=True),
        sa.Column("batch_id", sa.String(32), nullable=False),
        sa.Column("gateway", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("aggregate_count", sa.Integer(), nullable=False),
        sa.Column("body_bytes", sa.Integer(), nullable=False),
        sa.Column("wire_bytes", sa.Integer(), nullable=False),
        sa.Column("window_start_min", sa.Float(), nullable=True),
        sa.Column("window_end_max", sa.Float(), nullable=True),
        sa.Column("epsilon_spent", sa.Float(), nullable=False),
        sa.Column("suppressed_windows", sa.Integer(), nullable=False),
        sa.Column("refused_noised", sa.Integer(), nullable=False),
        sa.Column("min_window_count", sa.Integer(), nullable=False),
        sa.Column("ingested_messages", sa.BigInteger(), nullable=False),
        sa.Column("ingested_bytes", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.UniqueConstraint("batch_id", name="batches_batch_id_key"),
    )
    op.create_index("ix_batches_gateway_seq", "batches", ["gateway", "seq"])
    op.create_table(
        "aggregates",
        sa.Column("id", Id, primary_key=True),
        sa.Column(
            "batch",
            Id,
            sa.ForeignKey("batches.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("gateway", sa.String(64), nullable=False),
        sa.Column("window_start", sa.Float(), nullable=False),
        sa.Column("window_s", sa.Integer(), nullable=False),
        sa.Column("home", sa.String(64), nullable=False),
        sa.Column("room_class", sa.String(64), nullable=False),
        sa.Column("device_class", sa.String(64), nullable=False),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("unit", sa.String(16), nullable=False),
        sa.Column("policy", sa.String(16), nullable=False),
        sa.Column("count", sa.Float(), nullable=False),
        sa.Column("sum", sa.Float(), nullable=False),
        sa.Column("mean", sa.Float(), nullable=False),
        sa.Column("min", sa.Float(), nullable=True),
        sa.Column("max", sa.Float(), nullable=True),
        sa.Column("std", sa.Float(), nullable=True),
        sa.Column("p50", sa.Float(), nullable=True),
        sa.Column("p95", sa.Float(), nullable=True),
        sa.Column("epsilon", sa.Float(), nullable=True),
    )
    op.create_index("ix_aggregates_metric_time", "aggregates", ["metric", "window_start"])
    op.create_index(
        "ix_aggregates_home_metric_time", "aggregates", ["home", "metric", "window_start"]
    )


def downgrade() -> None:
    op.drop_table("aggregates")
    op.drop_table("batches")
