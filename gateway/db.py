"""The gateway's SQLite engine set-up; `make_engine` creates or upgrades the schema of
`gateway.schema`, whose ingest tables (`readings`, `dead_letters`, `devices`) are re-exported here.

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

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event

from gateway.schema import dead_letters, devices, metadata, readings, upgrade

__all__ = ["dead_letters", "devices", "make_engine", "metadata", "readings"]


def _pragmas(page_size: int | None) -> Callable[[Any, Any], None]:
    def set_pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        if page_size is not None:
            # Only a file without content takes it, and only before WAL mode is set (WAL mode
            # writes the header): an existing database keeps its page size.
            cur.execute(f"PRAGMA page_size={int(page_size):d}")
        cur.close()
        _set_pragmas(dbapi_conn, _record)

    return set_pragmas


def _set_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(path: str | Path, *, page_size: int | None = None) -> Engine:
    """An engine on the SQLite file `path` with WAL pragmas, its schema created or upgraded to
    `gateway.schema.SCHEMA_VERSION`; raises `gateway.schema.SchemaVersionError` for a database
    of a newer version. `page_size` applies to a new file only (``storage.page_size``)."""
    engine = create_engine(f"sqlite:///{path}", future=True)
    event.listen(engine, "connect", _pragmas(page_size))
    try:
        upgrade(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine
