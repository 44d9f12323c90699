"""The gateway's own health checks, as ``/healthz`` shows them under ``checks``.

A check is ``{"ok": true}`` or ``{"ok": false, "reason": ..., "since": <unix s>}`` (plus
``"failures"``, the failed attempts in a row, for checks that retry). ``/healthz`` says
``"status": "ok"`` (HTTP 200) only when every check is ok, else ``"degraded"`` (503); a check
turns ok again by itself with the next attempt that works. The checks (`gateway.app.Gateway`):

- ``mqtt``: the session to the broker is up;
- ``writer``: the writer thread runs and its last batch commit worked (a commit that fails,
  e.g. ``database or disk is full``, is retried holding its acks: `gateway.writer`);
- ``wal_checkpoint``: the last WAL checkpoint worked (present when the checkpoint task runs;
  a WAL that is never checkpointed grows without bound).

Plug-ins' parts (``GatewayHost.add_health``) are informational: the cloud being away does not
make the gateway unhealthy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Failure:
    """A streak of failed attempts: the latest reason, since when, how many in a row."""

    reason: str
    since: float
    failures: int = 1

    def again(self, reason: str) -> Failure:
        """The streak one failed attempt later (it keeps its start)."""
        return Failure(reason, self.since, self.failures + 1)


def failed(streak: Failure | None, exc: BaseException, *, now: float | None = None) -> Failure:
    """`streak` extended by the attempt that raised `exc` (a new streak when there was none)."""
    reason = error_reason(exc)
    if streak is None:
        return Failure(reason, time.time() if now is None else now)
    return streak.again(reason)


def error_reason(exc: BaseException) -> str:
    """What went wrong in a few words: the driver's message (``database or disk is full``),
    not SQLAlchemy's wrapper text with the statement and a link."""
    orig = getattr(exc, "orig", None)  # sqlalchemy.exc.DBAPIError wraps the sqlite3 error
    base = orig if isinstance(orig, BaseException) else exc
    return str(base) or type(base).__name__


def check(failure: Failure | None) -> dict[str, Any]:
    """One check's ``/healthz`` object."""
    if failure is None:
        return {"ok": True}
    return {
        "ok": False,
        "reason": failure.reason,
        "since": failure.since,
        "failures": failure.failures,
    }


def down(reason: str, since: float | None) -> dict[str, Any]:
    """A check that has no attempts to count (a connection that is down, a dead thread)."""
    body: dict[str, Any] = {"ok": False, "reason": reason}
    if since is not None:
        body["since"] = since
    return body
