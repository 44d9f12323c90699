"""Time partitions on PostgreSQL, a time index for retention, day rollups kept at ingest again.

- PostgreSQL: `aggregates` becomes RANGE-partitioned on `window_start` (one partition a day) and
  `rollups` on `bucket_start` (one a week), each with a DEFAULT partition for rows no partition
  covers yet (`cloud.storage` creates partitions ahead, sweeps the default and drops expired
  partitions). The existing rows move in this one transaction: the old table is renamed, the
  partitioned one created under the old name with partitions for the days around now and for
  the days (weeks) of the newest `RECENT_DAYS` that hold rows, the rows copied (older ones, and
  outliers such as a window of 1970 from a gateway without a clock, wait in the DEFAULT
  partition, where `cloud.storage`'s upkeep gives them partitions or expires them, one short
  transaction each), the indexes built, the old table dropped; the id
  sequences carry over, so ids go on from where they were. A partitioned table's primary key
  must hold its partition column: it is (id, window_start) and (id, bucket_start) there.
- A time index on the aggregates, `ix_aggregates_time`: BRIN on PostgreSQL (what the default
  partition's sweep reads; nearly free at ingest), b-tree on SQLite (its retention deletes by
  time).
- Day rollup rows again (0004 removed them to save ingest an upsert): a day query read 24 hour
  rows per point, which grows with the range; now ingest upserts the day row next to the hour
  row, and this revision builds the day rows from the stored hour rows (exact: the state is
  additive).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 12:00:00
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cloud.db import PARTITIONED
from cloud.storage import DAY_S, create_partition, default_partition, partition_start

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HOUR = 3600
DAY = 86400
# Partition column, and what indexes and constraints each table has besides its primary key
# (as 0001..0006 left them; rebuilt on the partitioned table after the rows are in).
TABLES = {
    "aggregates": (
        "window_start",
        [
            "CREATE INDEX ix_aggregates_metric_time ON aggregates (metric, window_start)",
            "CREATE INDEX ix_aggregates_home_metric_time ON aggregates"
            " (home, metric, window_start)",
        ],
    ),
    "rollups": (
        "bucket_start",
        [
            "ALTER TABLE rollups ADD CONSTRAINT rollups_key UNIQUE (bucket_s, metric,"
            " bucket_start, gateway, home, room_class, device_class, unit, policy)",
            "CREATE INDEX ix_rollups_width_time ON rollups (bucket_s, bucket_start)",
        ],
    ),
}
OLD_OBJECTS = {
    "aggregates": [
        "DROP INDEX ix_aggregates_metric_time",
        "DROP INDEX ix_aggregates_home_metric_time",
    ],
    "rollups": [
        "ALTER TABLE rollups_unpartitioned DROP CONSTRAINT rollups_key",
        "DROP INDEX ix_rollups_width_time",
    ],
}
AHEAD_DAYS = 7  # cloud.config.RetentionConfig's default; the upkeep keeps it from here on
# History that gets its partitions here. The whole move is one transaction and every partition
# with its indexes takes locks until it commits: a partition per day of years of data (or of
# the gap to one stray 1970 window) exhausts max_locks_per_transaction (review2 #3). This bounds
# it to about RECENT_DAYS + AHEAD_DAYS + 2 daily partitions and a tenth as many weekly ones.
RECENT_DAYS = 60


def _swap(table: str, partitioned: bool) -> None:
    """Rebuild `table` under its own name, partitioned or not, with its rows, in the
    migration's transaction."""
    bind = op.get_bind()
    column, statements = TABLES[table]
    old = f"{table}_unpartitioned" if partitioned else f"{table}_partitioned"
    sequence = bind.scalar(sa.text(f"SELECT pg_get_serial_sequence('{table}', 'id')"))
    # Detached, or dropping the old table would drop the sequence with it.
    op.execute(f"ALTER SEQUENCE {sequence} OWNED BY NONE")
    op.execute(f"ALTER TABLE {table} RENAME TO {old}")
    op.execute(f"ALTER TABLE {old} DROP CONSTRAINT {table}_pkey")
    for statement in OLD_OBJECTS[table]:
        op.execute(statement.replace(f"{table}_unpartitioned", old))
    storage = " WITH (fillfactor = 50)" if table == "rollups" else ""
    if partitioned:
        op.execute(
            f"CREATE TABLE {table} (LIKE {old} INCLUDING DEFAULTS) PARTITION BY RANGE ({column})"
        )
        op.execute(f"CREATE TABLE {default_partition(table)} PARTITION OF {table} DEFAULT{storage}")
        _, width = PARTITIONED[table]
        now = time.time()
        ahead = partition_start(table, now + AHEAD_DAYS * DAY_S) + width
        # The days around now (the upkeep keeps them from here on) ...
        starts = set(range(partition_start(table, now - DAY_S), ahead, width))
        # ... and those holding rows among the newest RECENT_DAYS (a clock far ahead aside).
        newest = bind.scalar(sa.text(f"SELECT max({column}) FROM {old} WHERE {column} < {ahead}"))
        if newest is not None:
            since = partition_start(table, newest - RECENT_DAYS * DAY_S)
            held = bind.execute(
                sa.text(
                    f"SELECT DISTINCT floor({column} / {width}) * {width} FROM {old}"
                    f" WHERE {column} >= {since} AND {column} < {ahead}"
                )
            )
            starts |= {int(start) for (start,) in held}
        for start in sorted(starts):
            create_partition(bind, table, start)
    else:
        op.execute(f"CREATE TABLE {table} (LIKE {old} INCLUDING DEFAULTS){storage}")
    op.execute(f"INSERT INTO {table} SELECT * FROM {old}")
    key = f"id, {column}" if partitioned else "id"
    op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY ({key})")
    for statement in statements:
        op.execute(statement)
    op.execute(f"DROP TABLE {old}")
    op.execute(f"ALTER SEQUENCE {sequence} OWNED BY {table}.id")
    op.execute(f"ANALYZE {table}")


def _day_rows_from_hours(dialect: str) -> None:
    if dialect == "sqlite":
        day = f"CAST(bucket_start / {DAY} AS INTEGER) * {DAY}"
    else:
        day = f"floor(bucket_start / {DAY}) * {DAY}"
    keys = f"metric, {day}, gateway, home, room_class, device_class, unit, policy"
    op.execute(
        "INSERT INTO rollups (bucket_s, metric, bucket_start, gateway, home, room_class,"
        " device_class, unit, policy, count, sum, weighted, sumsq, without_std, min, max, p50,"
        f" p95, windows) SELECT {DAY}, {keys}, sum(count), sum(sum),"
        " sum(weighted), sum(sumsq), sum(without_std), min(min), max(max), min(p50), min(p95),"
        f" sum(windows) FROM rollups WHERE bucket_s = {HOUR} GROUP BY {keys}"
    )


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        for table in TABLES:
            _swap(table, partitioned=True)
        op.create_index(
            "ix_aggregates_time", "aggregates", ["window_start"], postgresql_using="brin"
        )
    else:
        op.create_index("ix_aggregates_time", "aggregates", ["window_start"])
    _day_rows_from_hours(dialect)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.execute(f"DELETE FROM rollups WHERE bucket_s <> {HOUR}")
    op.drop_index("ix_aggregates_time", table_name="aggregates")
    if dialect == "postgresql":
        for table in TABLES:
            _swap(table, partitioned=False)
