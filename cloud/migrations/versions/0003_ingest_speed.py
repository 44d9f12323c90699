"""Cheaper ingest: no foreign key check per aggregate row, room for HOT updates of rollups.

- `aggregates.batch` loses its foreign key. The constraint made PostgreSQL look up and lock the
  batch row once per aggregate row (a quarter of the COPY's time), to check what the ingest
  transaction guarantees by construction: it inserts the batch row and then its aggregates, and
  nothing deletes batches.
- `rollups` gets fillfactor 50 on PostgreSQL: every stored batch updates the same hour/day rows
  again, and with free space on their page those updates are HOT (no new index entries, the
  dead versions pruned in place) instead of new tuples on other pages plus an entry in each of
  the table's three indexes. Applies to pages written from now on.

Revision ID: 0003
Revises: 0002
Create Date: 2025-12-01 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PG_FOREIGN_KEY = "aggregates_batch_fkey"  # PostgreSQL's name for 0001's unnamed constraint
# SQLite keeps 0001's constraint unnamed; batch mode names it by this convention to drop it.
SQLITE_NAMING = {"fk": "fk_%(table_name)s_%(column_0_name)s"}
SQLITE_FOREIGN_KEY = "fk_aggregates_batch"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(PG_FOREIGN_KEY, "aggregates", type_="foreignkey")
        op.execute("ALTER TABLE rollups SET (fillfactor = 50)")
        return
    # SQLite cannot drop a constraint in place: batch mode copies the table without it.
    with op.batch_alter_table(
        "aggregates", recreate="always", naming_convention=SQLITE_NAMING
    ) as batch:
        batch.drop_constraint(SQLITE_FOREIGN_KEY, type_="foreignkey")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE rollups RESET (fillfactor)")
        op.create_foreign_key(
            PG_FOREIGN_KEY, "aggregates", "batches", ["batch"], ["id"], ondelete="CASCADE"
        )
        return
    with op.batch_alter_table("aggregates", recreate="always") as batch:
        batch.create_foreign_key(
            SQLITE_FOREIGN_KEY, "batches", ["batch"], ["id"], ondelete="CASCADE"
        )
