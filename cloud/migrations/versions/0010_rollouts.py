"""Fleet rollouts: rollouts, their waves, per-gateway assignments, and each gateway's tags and
last report (`cloud.fleet`).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 02:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("selector", sa.Text(), nullable=False),
        sa.Column("canary_count", sa.Integer(), nullable=True),
        sa.Column("canary_share", sa.Float(), nullable=True),
        sa.Column("wave_factor", sa.Float(), nullable=False),
        sa.Column("soak_s", sa.Float(), nullable=False),
        sa.Column("max_failures", sa.Integer(), nullable=True),
        sa.Column("max_failure_share", sa.Float(), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("paused_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
    )
    op.create_index("ix_rollouts_state", "rollouts", ["state"])
    op.create_table(
        "rollout_waves",
        sa.Column("rollout", sa.String(32), primary_key=True),
        sa.Column("number", sa.Integer(), primary_key=True),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
    )
    op.create_table(
        "rollout_gateways",
        sa.Column("rollout", sa.String(32), primary_key=True),
        sa.Column("gateway", sa.String(64), primary_key=True),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("previous_version", sa.Integer(), nullable=True),
        sa.Column("rollback", sa.Integer(), nullable=False),
        sa.Column("assigned_at", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=True),
    )
    op.create_index("ix_rollout_gateways_gateway", "rollout_gateways", ["gateway"])
    op.create_table(
        "gateway_state",
        sa.Column("gateway", sa.String(64), primary_key=True),
        sa.Column("tags", sa.Text(), nullable=False),
        sa.Column("running_version", sa.Integer(), nullable=True),
        sa.Column("staged_version", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("rollout", sa.String(32), nullable=True),
        sa.Column("health", sa.Text(), nullable=True),
        sa.Column("reported_at", sa.Float(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("gateway_state")
    op.drop_index("ix_rollout_gateways_gateway", table_name="rollout_gateways")
    op.drop_table("rollout_gateways")
    op.drop_table("rollout_waves")
    op.drop_index("ix_rollouts_state", table_name="rollouts")
    op.drop_table("rollouts")
