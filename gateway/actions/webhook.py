"""`WebhookSender`: one rule's webhook, fed from the event loop without ever blocking it.

- `submit` (event loop, O(1)) puts a notification in a bounded queue (``queue_size``); when it
  is full the oldest waiting one is dropped (the newest says most about now), counted
  (``outcome="dropped"``) and logged at most every 10 s.
- `run` (a gateway task) POSTs them one at a time, in order, as JSON with an
  ``Idempotency-Key`` header equal to the body's ``id``: a receiver that saw a request whose
  answer was lost can drop the retry. A 2xx is ``sent``; a 5xx, 408, 429, a timeout or a
  connection error is retried after `gateway.backoff.Backoff`'s exponential, jittered delay
  (``retry_min_s`` .. ``retry_max_s``; a longer ``Retry-After`` is honoured up to the cap),
  at most ``max_attempts`` tries; other answers (a 4xx: the request itself is wrong) and the
  last failed try give the notification up: ``failed``, logged with the status.
- Notifications live in memory only: those waiting when the gateway stops are not sent (they
  were never acknowledged to anyone).

aiohttp is imported by `run` only: a gateway without webhooks does not load it (~9 MB).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from gateway.actions.metrics import ActionMetrics
from gateway.actions.settings import WebhookConfig
from gateway.backoff import Backoff
from gateway.logs import RateLimitedLog
from schemas.notify import Notification, encode_notification

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)

_RETRY_STATUS = frozenset({408, 429})


class WebhookSender:
    """See the module docstring."""

    def __init__(
        self,
        rule: str,
        config: WebhookConfig,
        metrics: ActionMetrics,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.rule = rule
        self.config = config
        self._metrics = metrics
        self._sleep = sleep
        self._queue: deque[Notification] = deque()
        self._wake = asyncio.Event()
        self._drop_log = RateLimitedLog(log)
        self._fail_log = RateLimitedLog(log)
        self._headers = {
            "Content-Type": "application/json",
            "User-Agent": "homeedge-gateway",
            **{k: v.get_secret_value() for k, v in config.headers.items()},
        }

    @property
    def depth(self) -> int:
        return len(self._queue)

    def submit(self, body: Notification) -> None:
        """Queue one notification (event loop; never blocks)."""
        if len(self._queue) >= self.config.queue_size:
            self._queue.popleft()
            self._metrics.count(self.rule, "webhook", "dropped")
            self._drop_log.warning(
                "webhook queue of rule %r full (%d): dropped the oldest notification",
                self.rule,
                self.config.queue_size,
            )
        self._queue.append(body)
        self._wake.set()

    async def run(self) -> None:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout, raise_for_status=False) as session:
            while True:
                while not self._queue:
                    self._wake.clear()
                    await self._wake.wait()
                body = self._queue.popleft()
                await self._deliver(session, body)

    async def _deliver(self, session: aiohttp.ClientSession, body: Notification) -> None:
        cfg = self.config
        data = encode_notification(body)
        headers = {**self._headers, "Idempotency-Key": body.id}
        backoff = Backoff(cfg.retry_min_s, cfg.retry_max_s)
        for attempt in range(1, cfg.max_attempts + 1):
            status, detail, retry_after = await self._post(session, data, headers)
            if status is not None and 200 <= status < 300:
                self._metrics.count(self.rule, "webhook", "sent")
                return
            retryable = status is None or status >= 500 or status in _RETRY_STATUS
            if not retryable or attempt == cfg.max_attempts:
                self._metrics.count(self.rule, "webhook", "failed")
                self._fail_log.error(
                    "webhook of rule %r gave up notification %s after %d attempt(s): %s",
                    self.rule,
                    body.id,
                    attempt,
                    detail,
                )
                return
            self._metrics.webhook_retries.labels(self.rule).inc()
            delay = max(backoff.next_delay(), min(retry_after or 0.0, cfg.retry_max_s))
            log.debug("webhook of rule %r: %s; retrying in %.2fs", self.rule, detail, delay)
            await self._sleep(delay)

    async def _post(
        self, session: aiohttp.ClientSession, data: bytes, headers: dict[str, str]
    ) -> tuple[int | None, str, float | None]:
        """(status or None when no answer came, what to log, Retry-After seconds)."""
        import aiohttp

        try:
            async with session.post(self.config.url, data=data, headers=headers) as resp:
                await resp.read()
                return resp.status, f"HTTP {resp.status}", _retry_after(resp.headers)
        except TimeoutError:
            return None, f"no answer within {self.config.timeout_s}s", None
        except aiohttp.ClientError as exc:
            # The URL is the owner's own; the message names no header (secrets stay out).
            return None, f"{type(exc).__name__}: {exc}", None


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:  # an HTTP date: not worth parsing for a notification; use the backoff
        return None
