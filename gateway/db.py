"""The gateway's SQLite schema (SQLAlchemy Core) and engine set-up.

One writer thread owns the connection that writes readings (see `gateway.writer`); other parts
submit their writes to it. The database runs in WAL mode.

Durability (``storage.synchronous``, applied by the writer to its own connection): with ``FULL``
(the default) every commit fsyncs the WAL, so what the gateway acknowledged to the broker is on
disk even across a power cut or an OS crash; the cost is one fsync per batch commit (up to
``storage.batch_rows`` rows). With ``NORMAL`` the WAL is fsynced only at checkpoints: a commit
still survives a killed process, but a power cut or OS crash can roll back the last transactions
AFTER their messages were acked, which breaks the zero-loss promise; choose it only where fsync
is slow and losing the last moments of data is acceptable. Other connections of the engine
(readers, tools) use ``NORMAL``: they do not acknowledge anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Engine,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    text,
)

metadata = MetaData()

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
    # A redelivered message (QoS 1 after a crash or reconnect) is stored once.
    Index("ux_readings_device_metric_ts", "home", "device", "metric", "ts", unique=True),
    Index(
        "ux_readings_device_metric_seq",
        "home",
        "device",
        "metric",
        "seq",
        unique=True,
        sqlite_where=text("seq IS NOT NULL"),
    ),
    Index("ix_readings_received_at", "received_at"),
    Index("ix_readings_ts", "ts"),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("topic", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("reason", String(32), nullable=False),
    Column("detail", Text, nullable=False),
    Column("received_at", Float, nullable=False),
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


def _set_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(path: str | Path) -> Engine:
    """An engine on the SQLite file `path` with WAL pragmas; creates the tables."""
    engine = create_engine(f"sqlite:///{path}", future=True)
    event.listen(engine, "connect", _set_pragmas)
    metadata.create_all(engine)
    return engine
