"""Rollout assignments: when the gateway first reported in its wave (`began_at`), from which
its own soak deadline counts (`cloud.fleet.store.advance`).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 03:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("rollout_gateways", sa.Column("began_at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rollout_gateways") as batch:
        batch.drop_column("began_at")
