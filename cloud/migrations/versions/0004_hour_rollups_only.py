"""Rollups keep hour rows only: days are grouped from them at read time.

Maintaining a day row next to every hour row cost ingest one more upsert per key (about a third
of a stored batch's time); a day is exactly the sum of its 24 hour rows, which the read paths
now group themselves (`cloud.analytics.rollups.rollup_bucket`). The day rows 0002's backfill and
earlier ingest wrote are deleted: nothing reads them any more.

Revision ID: 0004
Revises: 0003
Create Date: 2025-12-02 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HOUR = 3600
DAY = 86400


def upgrade() -> None:
    op.execute(f"DELETE FROM rollups WHERE bucket_s <> {HOUR}")


def downgrade() -> None:
    # Rebuild the day rows from the hour rows: exact, since the state is additive.
    if op.get_bind().dialect.name == "sqlite":
        day = f"CAST(bucket_start / {DAY} AS INTEGER) * {DAY}"
    else:
        day = f"floor(bucket_start / {DAY}) * {DAY}"
    keys = "metric, {day}, gateway, home, room_class, device_class, unit, policy"
    op.execute(
        "INSERT INTO rollups (bucket_s, metric, bucket_start, gateway, home, room_class,"
        " device_class, unit, policy, count, sum, weighted, sumsq, without_std, min, max, p50,"
        f" p95, windows) SELECT {DAY}, {keys.format(day=day)}, sum(count), sum(sum),"
        " sum(weighted), sum(sumsq), sum(without_std), min(min), max(max), min(p50), min(p95),"
        f" sum(windows) FROM rollups WHERE bucket_s = {HOUR} GROUP BY {keys.format(day=day)}"
    )
