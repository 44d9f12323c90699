"""Rollups keep what the privacy noise of a bucket is: the sum of 1/epsilon^2 of its noised
windows (`inv_eps_sq`).

A noised window's count and sum carry Laplace noise of scales 2/epsilon and 2*S/epsilon (S the
metric's sensitivity, `schemas.metrics`), so a bucket's noise variance is additive in 1/epsilon^2
and the dashboard and the anomaly ranking can say how much of a noised mean is noise
(`cloud.noise`). Existing rows get it from the stored aggregates (exact where those are still
kept; a noised row whose aggregates have expired keeps 0 and reads as exact until it expires
itself).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 17:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEYS = ("metric", "gateway", "home", "room_class", "device_class", "unit", "policy")


def upgrade() -> None:
    op.add_column(
        "rollups", sa.Column("inv_eps_sq", sa.Float(), nullable=False, server_default="0")
    )
    same = " AND ".join(f"a.{k} = r.{k}" for k in KEYS)
    op.execute(
        "UPDATE rollups AS r SET inv_eps_sq = coalesce((SELECT sum(1.0 / (a.epsilon * a.epsilon))"
        f" FROM aggregates a WHERE {same} AND a.epsilon IS NOT NULL"
        " AND a.window_start >= r.bucket_start AND a.window_start < r.bucket_start + r.bucket_s"
        "), 0) WHERE r.policy = 'noised'"
    )


def downgrade() -> None:
    with op.batch_alter_table("rollups") as batch:
        batch.drop_column("inv_eps_sq")
