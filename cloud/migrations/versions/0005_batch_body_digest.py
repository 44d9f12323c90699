"""The digest of each stored batch's body, so a batch id re-sent with other content is refused.

`batches.body_sha256` is the SHA-256 (hex) of the decompressed request body. A gateway's honest
retry sends the very bytes it stored in its outbox, so an equal digest means a resend (200
duplicate) and another digest a batch id reused for other content (409), which used to be
answered "duplicate" while the new content was dropped.

Rows stored before this revision keep NULL: their bodies are gone, so the digest cannot be
recomputed. The cloud treats a NULL digest as matching (a resend of such a batch is still a 200
duplicate, as before): the likely resend of a batch stored before the upgrade is an honest retry,
and a 409 would make its gateway park a batch the cloud already has.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable and without a default: PostgreSQL adds it without rewriting the table, and SQLite
    # adds a column in place (no batch mode needed).
    op.add_column("batches", sa.Column("body_sha256", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("body_sha256")
