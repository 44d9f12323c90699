"""The uplink: an asyncio task that drains the outbox to the cloud over HTTP.

Batches go in seq order, one POST each to ``<url>/api/v1/batches``, with the gzip body stored in
the outbox (``Content-Encoding: gzip``) and the gateway's bearer token. A batch is marked sent
only on 2xx (201 stored, 200 already stored).

Which answers give up on a batch (zero loss first): only 400, 409 and 422 say that the batch
itself is bad, so only they park it as ``rejected`` (kept for inspection, pruned after
`outbox_ttl_s`) and the next one goes. Every other answer says something about the link, not the
batch: a rotated token (401/403), a wrong URL or a proxy (404/405/413), a redirect (3xx; never
followed, since following would turn the POST into a GET), 408/429, 5xx and network errors. Those
retry the same batch (head of line, so order holds) with exponential backoff and full jitter,
bounded by `backoff_max_s`, count the failure by status (``send_failures{status}``) and show the
error with a hint in ``/healthz`` (``sync.last_error``, ``sync.last_status``) until a send
succeeds.

Retry policy of one batch: before each retry the uplink re-reads the batch's row. It stops
retrying when the row is gone (the outbox dropped it for room under ``drop_oldest``) or when the
batch is older than `outbox_ttl_s` (it is then deleted and counted as expired, like any pending
batch past its TTL). So a batch the cloud keeps failing blocks those behind it for at most
`outbox_ttl_s`; nothing else drops it.

Backpressure: a 429 or 503 with ``Retry-After`` (seconds or an HTTP date) is the cloud saying
when to come back, so the uplink waits that long instead of its own backoff, plus jitter
(`retry_after_jitter`) so a fleet refused at once does not return at once, and never longer
than `retry_after_max_s`. The batch stays pending meanwhile, like any retry.

Every send takes a token from a bucket, so a backlog after an outage drains at
`catchup_batches_per_s` instead of as a retry storm.

HTTP goes through `gateway.sync.http.CloudSession` (the standard library's `http.client` in a
worker thread, one keep-alive connection, TLS verified; see there).

Database access is injected (`RunDb`): in the gateway it runs on the writer thread; for tests and
tools `thread_run_db(engine)` runs each call in its own transaction in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email.utils
import functools
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Protocol, TypeVar

from sqlalchemy import Connection, Engine

from gateway.backoff import Backoff
from gateway.sync import outbox
from gateway.sync.http import CloudSession, CloudUnreachable
from gateway.sync.metrics import SyncMetrics
from gateway.sync.outbox import OutboxBatch
from gateway.sync.settings import UplinkSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

BATCHES_PATH = "/api/v1/batches"


class RunDb(Protocol):
    """Runs `fn(conn)` in a transaction where the database may be written; returns its result."""

    def __call__(self, fn: Callable[[Connection], T], /) -> Awaitable[T]: ...


def thread_run_db(engine: Engine) -> RunDb:
    """A `RunDb` on a plain engine: each call is one transaction in a worker thread."""

    def in_transaction(fn: Callable[[Connection], T]) -> T:
        with engine.begin() as conn:
            return fn(conn)

    async def run(fn: Callable[[Connection], T], /) -> T:
        return await asyncio.to_thread(in_transaction, fn)

    return run


class TokenBucket:
    """At most `rate` acquisitions per second on average, bursts up to `burst`."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    async def acquire(self) -> None:
        self._refill()
        # The tolerance absorbs float rounding (0.1 s * 10/s may refill 0.999...), which would
        # otherwise sleep ever-smaller amounts.
        while self._tokens < 1.0 - 1e-9:
            await self._sleep((1.0 - self._tokens) / self.rate)
            self._refill()
        self._tokens -= 1.0


# Answers that say the batch itself is bad (the cloud read it and refused its content): retrying
# the same bytes cannot help, so the batch is parked. Any other failure is about the link.
PARK_STATUSES = frozenset({400, 409, 422})
# Answers whose Retry-After says when the cloud can take the batch (RFC 9110 section 10.2.3,
# RFC 6585 section 4); on any other status the header is ignored and the backoff decides.
RETRY_AFTER_STATUSES = frozenset({429, 503})

# What to check when the cloud keeps answering with a status that retrying alone will not fix.
_HINTS = {
    401: "the cloud refuses this gateway's credentials: check uplink.token",
    403: "the cloud refuses this gateway's credentials: check uplink.token",
    404: "no batch endpoint at this address: check uplink.url",
    405: "the server does not accept POST here: check uplink.url (a proxy or redirect?)",
    413: "the body is too large for a proxy in front of the cloud: raise its limit",
}


class _Verdict(Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    RETRY = "retry"


def _cloud_error(status: int, body: bytes) -> str:
    try:
        err = json.loads(body)["error"]
        return f"{status} {err.get('code', '?')}: {err.get('message', '')}"
    except (ValueError, KeyError, TypeError):
        return f"{status} {body[:200].decode('utf-8', 'replace')}"


def _with_hint(status: int, detail: str, location: str | None) -> str:
    if 300 <= status < 400:
        return (
            f"{status} redirect to {location or '(no Location)'}: not followed (a redirected "
            "POST turns into a GET); set uplink.url to the final address"
        )
    hint = _HINTS.get(status)
    return f"{detail} ({hint})" if hint else detail


class Uplink:
    """Drains the outbox to the cloud; run `run()` as a task for the gateway's lifetime."""

    def __init__(
        self,
        settings: UplinkSettings,
        *,
        run_db: RunDb,
        metrics: SyncMetrics,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        fetch_limit: int = 50,
    ) -> None:
        self.settings = settings
        self._run_db = run_db
        self.metrics = metrics
        self._clock = clock
        self._sleep = sleep
        self._fetch_limit = fetch_limit
        self._rng = rng if rng is not None else random.Random()
        self._backoff = Backoff(settings.backoff_min_s, settings.backoff_max_s, self._rng)
        self._bucket = TokenBucket(
            settings.catchup_batches_per_s, settings.catchup_burst, sleep=sleep
        )
        self._wake = asyncio.Event()
        # For the gateway's /healthz: when the cloud last acknowledged a batch, and the error
        # of the latest failed attempt (None once a send succeeds again).
        self.last_success_at: float | None = None
        self.last_error: str | None = None
        # HTTP status of the latest failed attempt ("network" without one), None after success.
        self.last_status: str | None = None
        self._url = settings.url.rstrip("/") + BATCHES_PATH
        self._headers = {
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "Authorization": f"Bearer {settings.token.get_secret_value()}",
        }

    def notify(self) -> None:
        """New batches were committed: drain now instead of at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        """Drain forever (until cancelled); a CloudSession lives as long as this task."""
        async with CloudSession(timeout_s=self.settings.request_timeout_s) as session:
            while True:
                self._wake.clear()
                try:
                    await self.drain(session)
                except Exception:
                    # Top level of the task: a database hiccup must not end the uplink.
                    log.exception("uplink pass failed; retrying")
                    await self._sleep(self._backoff.next_delay())
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.send_interval_s)

    async def drain(self, session: CloudSession) -> int:
        """Send pending batches until the outbox is empty; returns how many were acknowledged."""
        acked = 0
        while True:
            batches, expired = await self._run_db(
                functools.partial(
                    _fetch, now=self._clock(), limit=self._fetch_limit, settings=self.settings
                )
            )
            self.metrics.dropped.labels(reason="ttl").inc(expired)
            if not batches:
                self.metrics.set_outbox_depth(0)
                return acked
            for batch in batches:
                acked += await self._deliver(session, batch)
                if self._backoff.attempt:
                    # It took retries: the rest of this fetch may have expired or been dropped
                    # for room meanwhile, so read the outbox again.
                    break
            self.metrics.set_outbox_depth(await self._run_db(outbox.depth))

    async def _deliver(self, session: CloudSession, batch: OutboxBatch) -> int:
        """Send one batch until it is acknowledged (1), parked, expired or gone (0)."""
        self._backoff.reset()
        while True:
            if self._backoff.attempt and not await self._still_pending(batch):
                return 0
            await self._bucket.acquire()
            verdict, detail, retry_after = await self._post(session, batch)
            now = self._clock()
            if verdict in (_Verdict.STORED, _Verdict.DUPLICATE):
                await self._run_db(functools.partial(outbox.mark_sent, seq=batch.seq, now=now))
                self.last_success_at, self.last_error, self.last_status = now, None, None
                self.metrics.sent.inc()
                if verdict is _Verdict.DUPLICATE:
                    self.metrics.duplicates.inc()
                return 1
            if verdict is _Verdict.REJECTED:
                log.error("cloud rejected batch seq=%d (%s): %s", batch.seq, batch.batch_id, detail)
                self.last_error = detail
                await self._run_db(
                    functools.partial(outbox.mark_rejected, seq=batch.seq, now=now, error=detail)
                )
                self.metrics.rejected.inc()
                return 0
            self.metrics.retries.inc()
            self.last_error = detail
            await self._run_db(functools.partial(outbox.note_failure, seq=batch.seq, error=detail))
            delay = self._backoff.next_delay()
            if retry_after is not None:
                delay = self.retry_after_delay(retry_after)
                self.metrics.retry_after_waits.inc()
            log.warning(
                "sending batch seq=%d failed (%s); retry %d in %.2fs",
                batch.seq,
                detail,
                self._backoff.attempt,
                delay,
            )
            await self._sleep(delay)

    def retry_after_delay(self, retry_after: float) -> float:
        """The wait for a cloud's Retry-After of `retry_after` seconds: at least that long (and
        at least backoff_min_s), up to retry_after_jitter more, at most retry_after_max_s."""
        base = max(retry_after, self.settings.backoff_min_s)
        jittered = base * (1.0 + self._rng.uniform(0.0, self.settings.retry_after_jitter))
        return min(jittered, self.settings.retry_after_max_s)

    async def _still_pending(self, batch: OutboxBatch) -> bool:
        """Before a retry: is the batch still pending and within its TTL? (Expired ones are
        deleted and counted by `outbox.still_pending`.)"""
        pending, expired = await self._run_db(
            functools.partial(
                outbox.still_pending, seq=batch.seq, now=self._clock(), settings=self.settings
            )
        )
        self.metrics.dropped.labels(reason="ttl").inc(expired)
        if not pending:
            log.warning(
                "batch seq=%d (%s) left the outbox while retrying (expired or dropped for room); "
                "moving on",
                batch.seq,
                batch.batch_id,
            )
        return pending

    async def _post(
        self, session: CloudSession, batch: OutboxBatch
    ) -> tuple[_Verdict, str, float | None]:
        verdict, detail, retry_after, status = await self._attempt(session, batch)
        if verdict in (_Verdict.RETRY, _Verdict.REJECTED):
            self.last_status = status
            self.metrics.send_failures.labels(status=status).inc()
        return verdict, detail, retry_after

    async def _attempt(
        self, session: CloudSession, batch: OutboxBatch
    ) -> tuple[_Verdict, str, float | None, str]:
        """One POST: (verdict, error detail, Retry-After seconds, status label)."""
        try:
            # A redirect is not followed (CloudSession never does): following would resend a
            # POST answered by 301/302 as a GET, and the 405 that follows would look like a
            # verdict on the batch.
            answer = await session.post(self._url, batch.body_gz, self._headers)
        except CloudUnreachable as exc:
            return _Verdict.RETRY, str(exc), None, "network"
        body, status = answer.body, answer.status
        retry_after, location = answer.retry_after, answer.location
        if status == 200:
            return _Verdict.DUPLICATE, "", None, "200"
        if 200 <= status < 300:
            return _Verdict.STORED, "", None, str(status)
        detail = _with_hint(status, _cloud_error(status, body), location)
        if status in PARK_STATUSES:
            return _Verdict.REJECTED, detail, None, str(status)
        seconds = None
        if retry_after is not None and status in RETRY_AFTER_STATUSES:
            seconds = parse_retry_after(retry_after, now=self._clock())
        return _Verdict.RETRY, detail, seconds, str(status)


def parse_retry_after(value: str, *, now: float) -> float | None:
    """Seconds to wait for a Retry-After header: delta-seconds or an HTTP date (RFC 9110
    section 10.2.3); None when it is neither (the backoff then decides)."""
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # "-0000": HTTP dates are GMT anyway
            when = when.replace(tzinfo=datetime.UTC)
        seconds = when.timestamp() - now
    if seconds != seconds or seconds == float("inf"):  # NaN or infinity: no usable delay
        return None
    return max(0.0, seconds)


def _fetch(
    conn: Connection, *, now: float, limit: int, settings: UplinkSettings
) -> tuple[list[OutboxBatch], int]:
    return outbox.fetch_pending(conn, now, limit, settings)
