"""Durable totals of the sync path (``sync_counters``): what was dropped, refused, suppressed.

Prometheus counters restart at zero with the process; these survive it, for reports and tests.
"""

from __future__ import annotations

from sqlalchemy import Connection, select
from sqlalchemy.dialects.sqlite import insert

from gateway.sync.tables import sync_counters


def bump(conn: Connection, name: str, n: int = 1) -> None:
    """Add `n` to the durable counter `name` in the caller's transaction."""
    if n == 0:
        return
    stmt = insert(sync_counters).values(name=name, value=n)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[sync_counters.c.name],
            set_={"value": sync_counters.c.value + stmt.excluded.value},
        )
    )


def read_all(conn: Connection) -> dict[str, int]:
    rows = conn.execute(select(sync_counters.c.name, sync_counters.c.value)).all()
    return {name: int(value) for name, value in rows}
