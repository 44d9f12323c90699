"""Backpressure: when the database falls behind, the cloud answers 503 with Retry-After at once
instead of letting requests queue until the client times out.

Three signals say the database is behind, and each becomes a 503 ``Retry-After:
<ingest.retry_after_s>`` in the API's JSON error shape (`cloud.web.error_middleware`):

- more uploads in flight in this worker than `ingest.max_in_flight` (`UploadGate`): refused
  before the body is read, so an overloaded worker spends nothing on them (code ``overloaded``);
- no pooled connection free within `database.pool_timeout_s` (SQLAlchemy's pool timeout), and
  PostgreSQL refusing connections (too many clients, starting up) (``database_busy``);
- a statement cancelled by PostgreSQL's ``statement_timeout`` (`database.statement_timeout_s`)
  or a lock not granted within ``lock_timeout`` (``database_busy``).

A refused upload was not stored, or it was and its commit's answer was lost: the gateway keeps
the batch pending and resends it after Retry-After, and the unique batch id makes the resend a
200 duplicate in the second case. So backpressure never loses nor doubles a batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from cloud.config import DatabaseLimits

# PostgreSQL SQLSTATEs that mean "too busy now, try again": query_canceled (statement_timeout),
# lock_not_available (lock_timeout), too_many_connections, cannot_connect_now (starting up or
# shutting down). https://www.postgresql.org/docs/current/errcodes-appendix.html
BUSY_SQLSTATES = frozenset({"57014", "55P03", "53300", "57P03"})


class Overloaded(Exception):
    """This worker refuses the request for now; the client should retry after `retry_after_s`."""

    def __init__(self, code: str, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


def sqlstate(exc: BaseException) -> str | None:
    """The PostgreSQL SQLSTATE of `exc`: SQLAlchemy's wrapper or asyncpg's own error (the COPY
    of `cloud.ingest` runs on the raw asyncpg connection, so its errors arrive unwrapped)."""
    if isinstance(exc, DBAPIError):
        exc = exc.orig if exc.orig is not None else exc
    code = getattr(exc, "sqlstate", None)
    return code if isinstance(code, str) else None


def is_busy(exc: BaseException) -> bool:
    """Whether `exc` says the database is too busy (as opposed to down or a bug)."""
    return isinstance(exc, PoolTimeout) or sqlstate(exc) in BUSY_SQLSTATES


_BUSY_REASONS = {
    "57014": "a statement ran past database.statement_timeout_s",
    "55P03": "a lock was not granted within the database's lock_timeout",
    "53300": "the database has no connection slot left (max_connections)",
    "57P03": "the database is starting up or shutting down",
}


def busy_reason(exc: BaseException) -> str:
    """What the client is told (never the statement or its parameters)."""
    if isinstance(exc, PoolTimeout):
        return "no database connection was free within database.pool_timeout_s"
    reason = _BUSY_REASONS.get(sqlstate(exc) or "", "the database is busy")
    return f"the database is behind: {reason}"


class UploadGate:
    """Counts the uploads one worker holds; `admit()` refuses one past `limit` (`Overloaded`).

    Not a queue: a refused upload is answered at once (503), so a worker's memory and latency
    stay bounded by `limit` uploads whatever the fleet sends.
    """

    def __init__(self, limit: int, retry_after_s: int) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.in_flight = 0

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        if self.in_flight >= self.limit:
            raise Overloaded(
                "overloaded",
                f"{self.in_flight} uploads are in flight in this worker (ingest.max_in_flight "
                f"= {self.limit}); retry after {self.retry_after_s} s",
                self.retry_after_s,
            )
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1


def engine_options(url: str, limits: DatabaseLimits) -> dict[str, Any]:
    """`create_async_engine` keyword arguments for the serving engine: the pool's size and
    timeout and, on PostgreSQL, every session's statement_timeout."""
    options: dict[str, Any] = {
        "pool_size": limits.pool_size,
        "max_overflow": limits.max_overflow,
        "pool_timeout": limits.pool_timeout_s,
    }
    if url.startswith("postgresql") and limits.statement_timeout_s > 0:
        # asyncpg sends it at connect: no SET round trip per transaction.
        timeout_ms = str(round(limits.statement_timeout_s * 1000))
        options["connect_args"] = {"server_settings": {"statement_timeout": timeout_ms}}
    return options
