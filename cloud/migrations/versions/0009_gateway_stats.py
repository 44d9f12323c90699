"""Per-gateway upload statistics kept at ingest (`gateway_stats`), and an index on the batches'
receive time.

The dashboard's overview and bandwidth report grouped the whole `batches` table (one row per
upload: ~170 a second for a large fleet, so it grows with history) on every poll. Ingest now
folds each stored batch into its gateway's row of `gateway_stats` in the same transaction
(`cloud.ingest`), so those requests read one row per gateway; the overview's upload rate counts
the last minute's batches through `ix_batches_received_at`. Existing databases get their rows
from the stored batches here (exact: the same figures the old queries computed).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 02:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "gateway_stats",
        sa.Column("gateway", sa.String(64), primary_key=True),
        sa.Column("batches", sa.BigInteger(), nullable=False),
        sa.Column("seqs", sa.BigInteger(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_batch_at", sa.Float(), nullable=False),
        sa.Column("last_created_at", sa.Float(), nullable=False),
        sa.Column("window_end_max", sa.Float(), nullable=True),
        sa.Column("aggregate_rows", sa.BigInteger(), nullable=False),
        sa.Column("ingested_messages", sa.BigInteger(), nullable=False),
        sa.Column("ingested_bytes", sa.BigInteger(), nullable=False),
        sa.Column("body_bytes", sa.BigInteger(), nullable=False),
        sa.Column("wire_bytes", sa.BigInteger(), nullable=False),
    )
    op.execute(
        "INSERT INTO gateway_stats (gateway, batches, seqs, last_seq, last_batch_at,"
        " last_created_at, window_end_max, aggregate_rows, ingested_messages, ingested_bytes,"
        " body_bytes, wire_bytes)"
        " SELECT gateway, count(*), count(DISTINCT seq), max(seq), max(received_at),"
        " max(created_at), max(window_end_max), sum(aggregate_count), sum(ingested_messages),"
        " sum(ingested_bytes), sum(body_bytes), sum(wire_bytes) FROM batches GROUP BY gateway"
    )
    op.create_index("ix_batches_received_at", "batches", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_batches_received_at", table_name="batches")
    op.drop_table("gateway_stats")
