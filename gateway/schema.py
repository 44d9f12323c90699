"""The gateway's SQLite schema: every table of the gateway database, its version and migrations.

This module owns the schema (the SQLite tables, not the wire formats of the top-level `schemas`
package). It imports nothing else of the gateway, so the schema an engine gets never depends on
which modules happened to be imported first; `gateway.db`, `gateway.sync.tables` and
`gateway.inference.tables` re-export the tables for the code that uses them.

Versions are counted in SQLite's ``PRAGMA user_version`` (0 in a new file). `upgrade` (called by
`gateway.db.make_engine` at startup) brings a database to `SCHEMA_VERSION`:

- a database without any gateway table (a new or empty file) is created from `metadata`
  directly at `SCHEMA_VERSION`;
- an older database (version 0 is one made before versions existed: gateway tables present,
  ``user_version`` 0) runs the missing `MIGRATIONS` in order, in one transaction that also sets
  ``user_version``: a failed migration leaves the database as it was;
- a database whose version is newer than `SCHEMA_VERSION` (written by a newer gateway) is
  refused with `SchemaVersionError`: older code would misread or corrupt it.

Adding a migration (the schema change of version N):

1. write ``def _vN_what(conn: Connection) -> None`` with literal SQL (``conn.exec_driver_sql``)
   that takes a version N-1 database to version N. Never build it from the Table objects below:
   they describe the newest schema, and a migration must do the same thing whenever it runs;
2. append it to `MIGRATIONS` (``MIGRATIONS[i]`` takes version i to i+1; `SCHEMA_VERSION`
   follows);
3. change the Table definitions so that a new database (created from `metadata`) is the same
   as a migrated one: ``tests/test_gateway_schema.py`` compares the two.

SQLite alters little in place (``ADD COLUMN``, ``RENAME``, indexes); anything else is the
documented rebuild: create the new table, copy the rows, drop the old one, rename the new one.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

log = logging.getLogger(__name__)

metadata = MetaData()

# -- ingest (written by gateway.writer) --------------------------------------------------------

readings = Table(
    "readings",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("home", String(64), nullable=False),
    Column("room", String(64), nullable=False),
    Column("device", String(64), nullable=False),
    Column("metric", String(64), nullable=False),
    Column("ts", Float, nullable=False),
    Column("value", Float, nullable=False),
    Column("seq", Integer, nullable=True),
    Column("received_at", Float, nullable=False),
    # A reading's identity, so a redelivered message (QoS 1 after a crash or reconnect) is
    # stored once (version 6): (ts, home, device, seq, metric) when the device sends a seq
    # (ifnull(seq, -1): seq is >= 0 on the wire, so a row without one never meets a row with
    # one), else (ts, home, device, metric). A redelivery repeats its message's ts and seq, so
    # it collides; ts may still repeat (a stuck clock, a clock stepping back) since the seqs
    # differ, and a device whose seq restarts after a reboot is no longer taken for its own
    # redelivery (the new readings have new timestamps). ts first: ts grows with time, so a
    # commit appends at the index's right edge instead of inserting at one place per device
    # (those leaf rewrites were most of what the gateway wrote to its SD card), and the same
    # index serves the aggregation's ts ranges. Retention finds old rows by rowid (ids grow with
    # arrival: `gateway.sync.retention`), so no index on received_at or ts of its own.
    Index(
        "ux_readings_identity",
        "ts",
        "home",
        "device",
        text("ifnull(seq, -1)"),
        "metric",
        unique=True,
    ),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("topic", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("reason", String(32), nullable=False),
    Column("detail", Text, nullable=False),
    Column("received_at", Float, nullable=False),  # the first arrival
    # One row per message (see gateway.records.DeadLetter): its identity, how many times it
    # arrived fresh (replays of it are not counted) and when it last did.
    Column("digest", LargeBinary, nullable=False),
    Column("count", Integer, nullable=False),
    Column("last_received_at", Float, nullable=False),
    Index("ux_dead_letters_digest", "digest", unique=True),
    Index("ix_dead_letters_last_received_at", "last_received_at"),  # retention
)

devices = Table(
    "devices",
    metadata,
    Column("home", String(64), primary_key=True),
    Column("device", String(64), primary_key=True),
    Column("room", String(64), nullable=False),
    Column("device_class", String(32), nullable=False),
    Column("last_seen", Float, nullable=True),
    Column("availability", String(16), nullable=True),
    Column("availability_at", Float, nullable=True),
)

# -- cloud sync (gateway.sync) ----------------------------------------------------------------

# How far the window aggregation got (one row), so a restarted gateway resumes without losing
# or double-counting a window.
sync_watermark = Table(
    "sync_watermark",
    metadata,
    Column("id", Integer, primary_key=True),  # always 1
    Column("window_s", Integer, nullable=False),
    # Every window ending at or before `watermark` has been aggregated.
    Column("watermark", Float, nullable=True),
    # Highest readings.id seen by the last pass: rows above it with ts < watermark are late.
    Column("reading_cursor", Integer, nullable=False, default=0),
    Column("updated_at", Float, nullable=False),
)

# Every closed window's full statistics, with real home and room names. Local only: what leaves
# the home is derived from it by the privacy filter.
aggregates = Table(
    "aggregates",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("home", String(64), nullable=False),
    Column("room", String(64), nullable=False),
    Column("device_class", String(32), nullable=False),
    Column("metric", String(64), nullable=False),
    Column("window_start", Float, nullable=False),
    Column("window_s", Integer, nullable=False),
    Column("count", Integer, nullable=False),
    Column("sum", Float, nullable=False),
    Column("sum_sq", Float, nullable=False),
    Column("min", Float, nullable=False),
    Column("max", Float, nullable=False),
    Column("mean", Float, nullable=False),
    Column("std", Float, nullable=False),
    Column("p50", Float, nullable=False),
    Column("p95", Float, nullable=False),
    Column("policy", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint(
        "home", "room", "device_class", "metric", "window_start", "window_s", name="ux_aggregates"
    ),
    Index("ix_aggregates_window_start", "window_start"),
)

# Readings stored after their window had been aggregated, counted per window.
late_readings = Table(
    "late_readings",
    metadata,
    Column("home", String(64), primary_key=True),
    Column("room", String(64), primary_key=True),
    Column("device", String(64), primary_key=True),
    Column("metric", String(64), primary_key=True),
    Column("window_start", Float, primary_key=True),
    Column("count", Integer, nullable=False),
    Column("last_seen_at", Float, nullable=False),
)

# Epsilon spent per home and budget period.
privacy_ledger = Table(
    "privacy_ledger",
    metadata,
    Column("home", String(64), primary_key=True),
    Column("period_start", Float, primary_key=True),
    Column("epsilon_spent", Float, nullable=False),
    Column("releases", Integer, nullable=False),
    Column("refused", Integer, nullable=False),
)

# Durable batches waiting for the uplink.
outbox = Table(
    "outbox",
    metadata,
    Column("seq", Integer, primary_key=True),
    Column("batch_id", String(32), nullable=False, unique=True),
    Column("gateway", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("n_aggregates", Integer, nullable=False),
    # gzip of schemas.batch.encode_batch(...): exactly the bytes the uplink puts on the wire.
    Column("body_gz", LargeBinary, nullable=False),
    Column("status", String(16), nullable=False),  # pending | sent | rejected
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=True),
    Column("done_at", Float, nullable=True),
    Index("ix_outbox_status_seq", "status", "seq"),
)

# The per-gateway outbox sequence counter, apart from `outbox` so pruning rows never reuses a seq.
outbox_seq = Table(
    "outbox_seq",
    metadata,
    Column("gateway", String(64), primary_key=True),
    Column("last_seq", Integer, nullable=False),
)

# Durable totals (dropped, refused, suppressed, ...) for reports.
sync_counters = Table(
    "sync_counters",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Integer, nullable=False),
)

# -- inference (gateway.inference) ------------------------------------------------------------

# One row per model result; results also become ``inference_<what>`` readings (see
# gateway.inference.engine) so the window aggregator sends counts and shares upstream.
inferences = Table(
    "inferences",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("model", String(64), nullable=False),
    Column("version", String(64), nullable=False),
    Column("home", String(64), nullable=False),
    Column("room", String(64), nullable=False),
    Column("device", String(64), nullable=False),
    Column("window_start", Float, nullable=False),
    Column("window_end", Float, nullable=False),
    Column("score", Float, nullable=False),
    Column("label", String(64), nullable=False),
    Index("ix_inferences_home_model_end", "home", "model", "window_end"),
)

# Each sensor's learned baseline (`SensorStream.snapshot`, version 4), so a restart or an
# eviction resumes learning instead of starting over. Written by the writer thread in one
# transaction per save round (`gateway.inference.baselines`); `updated_at` (this machine's
# clock) is when the state last changed, so retention deletes devices gone for long.
sensor_baselines = Table(
    "sensor_baselines",
    metadata,
    Column("home", String(64), primary_key=True),
    Column("device", String(64), primary_key=True),
    Column("window_s", Float, nullable=False),
    Column("state", LargeBinary, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_sensor_baselines_updated_at", "updated_at"),  # retention
)

# -- Home Assistant discovery (gateway.homeassistant) ----------------------------------------

# Every retained discovery config the gateway announced, so that what it announced can be
# removed (an empty retained config) when the device is forgotten or the feature is turned off,
# also by a later run. home and device are '' for the gateway's own entities and rooms.
ha_announced = Table(
    "ha_announced",
    metadata,
    Column("topic", Text, primary_key=True),
    Column("home", String(64), nullable=False),
    Column("device", String(64), nullable=False),
    Column("announced_at", Float, nullable=False),
)

# -- versions and migrations ------------------------------------------------------------------


class SchemaVersionError(RuntimeError):
    """The database's schema version is newer than this code knows; the message names both."""


# The schema before versions existed, as the code of that time created it. A version 0
# database has whichever of these tables the modules imported at its startups registered (the
# sync tables only once the sync path had started), so every statement is IF NOT EXISTS.
_V1_DDL = (
    """CREATE TABLE IF NOT EXISTS readings (
        id INTEGER NOT NULL,
        home VARCHAR(64) NOT NULL,
        room VARCHAR(64) NOT NULL,
        device VARCHAR(64) NOT NULL,
        metric VARCHAR(64) NOT NULL,
        ts FLOAT NOT NULL,
        value FLOAT NOT NULL,
        seq INTEGER,
        received_at FLOAT NOT NULL,
        PRIMARY KEY (id)
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS ux_readings_device_metric_ts"
    " ON readings (home, device, metric, ts)",
    "CREATE UNIQUE INDEX IF NOT EXISTS ux_readings_device_metric_seq"
    " ON readings (home, device, metric, seq) WHERE seq IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS ix_readings_received_at ON readings (received_at)",
    "CREATE INDEX IF NOT EXISTS ix_readings_ts ON readings (ts)",
    """CREATE TABLE IF NOT EXISTS dead_letters (
        id INTEGER NOT NULL,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        reason VARCHAR(32) NOT NULL,
        detail TEXT NOT NULL,
        received_at FLOAT NOT NULL,
        PRIMARY KEY (id)
    )""",
    """CREATE TABLE IF NOT EXISTS devices (
        home VARCHAR(64) NOT NULL,
        device VARCHAR(64) NOT NULL,
        room VARCHAR(64) NOT NULL,
        device_class VARCHAR(32) NOT NULL,
        last_seen FLOAT,
        availability VARCHAR(16),
        availability_at FLOAT,
        PRIMARY KEY (home, device)
    )""",
    """CREATE TABLE IF NOT EXISTS sync_watermark (
        id INTEGER NOT NULL,
        window_s INTEGER NOT NULL,
        watermark FLOAT,
        reading_cursor INTEGER NOT NULL,
        updated_at FLOAT NOT NULL,
        PRIMARY KEY (id)
    )""",
    """CREATE TABLE IF NOT EXISTS aggregates (
        id INTEGER NOT NULL,
        home VARCHAR(64) NOT NULL,
        room VARCHAR(64) NOT NULL,
        device_class VARCHAR(32) NOT NULL,
        metric VARCHAR(64) NOT NULL,
        window_start FLOAT NOT NULL,
        window_s INTEGER NOT NULL,
        count INTEGER NOT NULL,
        sum FLOAT NOT NULL,
        sum_sq FLOAT NOT NULL,
        min FLOAT NOT NULL,
        max FLOAT NOT NULL,
        mean FLOAT NOT NULL,
        std FLOAT NOT NULL,
        p50 FLOAT NOT NULL,
        p95 FLOAT NOT NULL,
        policy VARCHAR(16) NOT NULL,
        created_at FLOAT NOT NULL,
        PRIMARY KEY (id),
        CONSTRAINT ux_aggregates UNIQUE (home, room, device_class, metric, window_start, window_s)
    )""",
    "CREATE INDEX IF NOT EXISTS ix_aggregates_window_start ON aggregates (window_start)",
    """CREATE TABLE IF NOT EXISTS late_readings (
        home VARCHAR(64) NOT NULL,
        room VARCHAR(64) NOT NULL,
        device VARCHAR(64) NOT NULL,
        metric VARCHAR(64) NOT NULL,
        window_start FLOAT NOT NULL,
        count INTEGER NOT NULL,
        last_seen_at FLOAT NOT NULL,
        PRIMARY KEY (home, room, device, metric, window_start)
    )""",
    """CREATE TABLE IF NOT EXISTS privacy_ledger (
        home VARCHAR(64) NOT NULL,
        period_start FLOAT NOT NULL,
        epsilon_spent FLOAT NOT NULL,
        releases INTEGER NOT NULL,
        refused INTEGER NOT NULL,
        PRIMARY KEY (home, period_start)
    )""",
    """CREATE TABLE IF NOT EXISTS outbox (
        seq INTEGER NOT NULL,
        batch_id VARCHAR(32) NOT NULL,
        gateway VARCHAR(64) NOT NULL,
        created_at FLOAT NOT NULL,
        n_aggregates INTEGER NOT NULL,
        body_gz BLOB NOT NULL,
        status VARCHAR(16) NOT NULL,
        attempts INTEGER NOT NULL,
        last_error TEXT,
        done_at FLOAT,
        PRIMARY KEY (seq),
        UNIQUE (batch_id)
    )""",
    "CREATE INDEX IF NOT EXISTS ix_outbox_status_seq ON outbox (status, seq)",
    """CREATE TABLE IF NOT EXISTS outbox_seq (
        gateway VARCHAR(64) NOT NULL,
        last_seq INTEGER NOT NULL,
        PRIMARY KEY (gateway)
    )""",
    """CREATE TABLE IF NOT EXISTS sync_counters (
        name VARCHAR(64) NOT NULL,
        value INTEGER NOT NULL,
        PRIMARY KEY (name)
    )""",
    """CREATE TABLE IF NOT EXISTS inferences (
        id INTEGER NOT NULL,
        model VARCHAR(64) NOT NULL,
        version VARCHAR(64) NOT NULL,
        home VARCHAR(64) NOT NULL,
        room VARCHAR(64) NOT NULL,
        device VARCHAR(64) NOT NULL,
        window_start FLOAT NOT NULL,
        window_end FLOAT NOT NULL,
        score FLOAT NOT NULL,
        label VARCHAR(64) NOT NULL,
        PRIMARY KEY (id)
    )""",
    "CREATE INDEX IF NOT EXISTS ix_inferences_home_model_end"
    " ON inferences (home, model, window_end)",
)


def _v1_baseline(conn: Connection) -> None:
    """Version 1: the schema of version 0 complete, whatever tables a version 0 database lacks."""
    for ddl in _V1_DDL:
        conn.exec_driver_sql(ddl)


def _v2_digest(topic: str | bytes, reason: str | bytes, payload: bytes | str) -> bytes:
    """`gateway.records.dead_letter_digest` as of version 2, frozen here for the migration."""
    t, r, p = (v.encode() if isinstance(v, str) else bytes(v) for v in (topic, reason, payload))
    return hashlib.sha256(t + b"\0" + r + b"\0" + p).digest()[:16]


_V2_DDL = (
    # Readings: with a seq, (home, device, metric, seq) alone is the identity; ts dedupes only
    # rows without one. Every version 1 row satisfies the weaker constraint.
    "DROP INDEX ux_readings_device_metric_ts",
    "CREATE UNIQUE INDEX ux_readings_device_metric_ts"
    " ON readings (home, device, metric, ts) WHERE seq IS NULL",
    # Dead letters: rebuilt with digest, count, last_received_at. The old table is renamed
    # first so that the new one's stored DDL is exactly what a new database gets.
    "ALTER TABLE dead_letters RENAME TO dead_letters_v1",
    """CREATE TABLE dead_letters (
        id INTEGER NOT NULL,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        reason VARCHAR(32) NOT NULL,
        detail TEXT NOT NULL,
        received_at FLOAT NOT NULL,
        digest BLOB NOT NULL,
        count INTEGER NOT NULL,
        last_received_at FLOAT NOT NULL,
        PRIMARY KEY (id)
    )""",
    "CREATE TEMP TABLE v2_dead_letter_digests AS"
    " SELECT id, received_at, homeedge_v2_digest(topic, reason, payload) AS digest"
    " FROM dead_letters_v1",
    # Copies of one message that version 1 stored again (redeliveries, retained replays) become
    # one row: the first copy, counted as many times as it was stored, last seen at the last.
    """INSERT INTO dead_letters
        (id, topic, payload, reason, detail, received_at, digest, count, last_received_at)
    SELECT o.id, o.topic, o.payload, o.reason, o.detail, o.received_at, g.digest, g.n, g.last
    FROM (
        SELECT digest, min(id) AS first, count(*) AS n, max(received_at) AS last
        FROM v2_dead_letter_digests GROUP BY digest
    ) AS g JOIN dead_letters_v1 AS o ON o.id = g.first""",
    "DROP TABLE v2_dead_letter_digests",
    "DROP TABLE dead_letters_v1",
    "CREATE UNIQUE INDEX ux_dead_letters_digest ON dead_letters (digest)",
    "CREATE INDEX ix_dead_letters_last_received_at ON dead_letters (last_received_at)",
)


def _v2_identity(conn: Connection) -> None:
    """Version 2: a reading with a seq is identified by it, not by its ts; one dead-letter row
    per message (digest, count, last_received_at)."""
    raw = conn.connection.driver_connection
    # The digest is computed by SQLite row by row (no table read into memory), with a function
    # of this connection; deterministic, so SQLite may use it anywhere.
    raw.create_function("homeedge_v2_digest", 3, _v2_digest, deterministic=True)  # type: ignore[union-attr]
    for ddl in _V2_DDL:
        conn.exec_driver_sql(ddl)


_V3_DDL = (
    # The same identity, seq before metric: a commit's readings of one message land in one
    # index leaf (fewer pages rewritten per commit; see the readings table). The new index is
    # built before the old one goes, so the identity is enforced throughout.
    "CREATE UNIQUE INDEX ux_readings_device_seq_metric"
    " ON readings (home, device, seq, metric) WHERE seq IS NOT NULL",
    "DROP INDEX ux_readings_device_metric_seq",
)


def _v3_identity_order(conn: Connection) -> None:
    """Version 3: the seq identity index ordered (home, device, seq, metric)."""
    for ddl in _V3_DDL:
        conn.exec_driver_sql(ddl)


_V4_DDL = (
    """CREATE TABLE sensor_baselines (
        home VARCHAR(64) NOT NULL,
        device VARCHAR(64) NOT NULL,
        window_s FLOAT NOT NULL,
        state BLOB NOT NULL,
        updated_at FLOAT NOT NULL,
        PRIMARY KEY (home, device)
    )""",
    "CREATE INDEX ix_sensor_baselines_updated_at ON sensor_baselines (updated_at)",
)


def _v4_sensor_baselines(conn: Connection) -> None:
    """Version 4: the sensors' persisted baselines."""
    for ddl in _V4_DDL:
        conn.exec_driver_sql(ddl)


_V5_DDL = (
    "CREATE TABLE ha_announced ("
    " topic TEXT NOT NULL,"
    " home VARCHAR(64) NOT NULL,"
    " device VARCHAR(64) NOT NULL,"
    " announced_at FLOAT NOT NULL,"
    " PRIMARY KEY (topic) )",
)


def _v5_ha_announced(conn: Connection) -> None:
    """Version 5: the Home Assistant discovery configs announced (`ha_announced`)."""
    for ddl in _V5_DDL:
        conn.exec_driver_sql(ddl)


_V6_DDL = (
    # One identity index led by ts (see the readings table) instead of two per-device ones and
    # the ts and received_at indexes. Every version 5 row satisfies it: the old keys are subsets
    # of the new ones, and a row without a seq (-1) never meets one with a seq (>= 0). The new
    # index is built before the old ones go, so the identity is enforced throughout.
    "CREATE UNIQUE INDEX ux_readings_identity"
    " ON readings (ts, home, device, ifnull(seq, -1), metric)",
    "DROP INDEX ux_readings_device_seq_metric",
    "DROP INDEX ux_readings_device_metric_ts",
    "DROP INDEX ix_readings_ts",
    "DROP INDEX ix_readings_received_at",
)


def _v6_ts_identity(conn: Connection) -> None:
    """Version 6: the readings' identity led by ts, in one index; no ts or received_at index."""
    for ddl in _V6_DDL:
        conn.exec_driver_sql(ddl)


Migration = Callable[[Connection], None]

# MIGRATIONS[i] takes a version i database to version i + 1 (see the module docstring).
MIGRATIONS: tuple[Migration, ...] = (
    _v1_baseline,
    _v2_identity,
    _v3_identity_order,
    _v4_sensor_baselines,
    _v5_ha_announced,
    _v6_ts_identity,
)
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: Connection) -> int:
    """The database's ``PRAGMA user_version``."""
    return int(conn.exec_driver_sql("PRAGMA user_version").scalar_one())


def upgrade(engine: Engine, migrations: tuple[Migration, ...] = MIGRATIONS) -> int:
    """Create or upgrade the database of `engine` to the newest version (see the module
    docstring) and return that version; `migrations` is for tests."""
    newest = len(migrations)
    with engine.connect() as conn:
        # Up to date (every start but the first after an upgrade): no write lock needed.
        found = schema_version(conn)
        if found == newest:
            return found
        conn.rollback()  # ends the read's implicit transaction, so the isolation level can change
        # SQLAlchemy's pysqlite transactions leave DDL outside them; autocommit plus our own
        # BEGIN makes the whole upgrade one transaction. IMMEDIATE takes the write lock before
        # the version is read again, so two processes starting together cannot both migrate.
        conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            found = _upgrade_locked(conn, engine, migrations)
        except BaseException:
            conn.exec_driver_sql("ROLLBACK")
            raise
        conn.exec_driver_sql("COMMIT")
    return found


def _upgrade_locked(conn: Connection, engine: Engine, migrations: tuple[Migration, ...]) -> int:
    newest = len(migrations)
    found = schema_version(conn)
    if found > newest:
        raise SchemaVersionError(
            f"the gateway database {engine.url.database} has schema version {found}, newer "
            f"than this gateway's version {newest}: it was written by a newer gateway. Run "
            f"that version, or restore a backup made before the upgrade; this gateway does not "
            f"open it, so the newer data is not corrupted"
        )
    if found == newest:  # another process upgraded it meanwhile
        return found
    present = {
        name
        for (name,) in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    if found == 0 and not present & set(metadata.tables):
        metadata.create_all(conn)
        _set_version(conn, newest)
        log.info("created the gateway database schema, version %d", newest)
        return newest
    for version in range(found, newest):
        migrations[version](conn)
        _set_version(conn, version + 1)
        log.info("migrated the gateway database schema: version %d -> %d", version, version + 1)
    return newest


def _set_version(conn: Connection, version: int) -> None:
    # PRAGMA takes no bound parameters; `version` is an int.
    conn.exec_driver_sql(f"PRAGMA user_version = {version:d}")
