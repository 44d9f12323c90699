"""Dashboard sessions live in the database, so a logout ends a session everywhere.

The signed, stateless cookie could not be revoked: it stayed valid for its whole 12 hours after
a logout. Now each login stores a row (keyed by an HMAC of the cookie, never the cookie), every
worker process checks it, and logout deletes it. Cookies issued before this revision have no
row and are refused: their holders log in again.

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-02 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("issued_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_sessions_expires_at", "sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_sessions_expires_at", table_name="sessions")
    op.drop_table("sessions")
