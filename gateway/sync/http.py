"""`CloudSession`: the uplink's HTTP client, on the standard library's `http.client`.

The uplink sends one POST at a time and reads a small JSON answer, so it needs no more than one
keep-alive connection used from a worker thread (a daemon thread per request); aiohttp's client
did the same at ~8 MB more resident memory (its import, measured in a gateway with every model
loaded, bench/startup.py). What it keeps of what the aiohttp session did:

- TLS: ``https`` URLs verify the certificate chain against the system store and the host name
  (`ssl.create_default_context`, what aiohttp's default connector uses too);
- no proxy from the environment (aiohttp's ``trust_env`` is off by default; `http.client`
  never reads ``HTTP(S)_PROXY``) and no redirects followed (a 3xx is an answer);
- `timeout_s` bounds one whole request: each step (connect, send, waiting for the answer,
  reading it) gets what is left of it (while the answer is read, each read waits at most what
  was left when reading began);
- an idle connection is closed after `keepalive_s` (aiohttp's connector: 15 s) instead of being
  reused after the server may have dropped it; one that still turns out dropped when reused
  (reset or closed before any answer) is retried once on a fresh connection, which is safe
  here because a batch POST is idempotent (the cloud answers a stored batch_id with 200).

Failures to reach the cloud raise `CloudUnreachable`; any HTTP status is an `HttpAnswer`.
Cancelling `post` (the gateway stopping) shuts the socket down so the worker thread returns
at once instead of waiting for its timeout; a thread still connecting is a daemon, so it never
holds up the process's exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.client
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType

# An answer body larger than this is cut (the uplink reads a status and a short JSON error).
MAX_ANSWER_BYTES = 1 << 20
KEEPALIVE_S = 15.0


class CloudUnreachable(Exception):
    """No HTTP answer: connection refused or reset, TLS failure, timeout, malformed answer."""


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    body: bytes
    retry_after: str | None
    location: str | None


class _Target:
    """Scheme, host and port of a URL: what a connection is made to."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.key = (parts.scheme, self.host, self.port)
        self.path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))


class CloudSession:
    """One keep-alive connection to the cloud; `post` calls run one at a time."""

    def __init__(
        self,
        *,
        timeout_s: float = 30.0,
        keepalive_s: float = KEEPALIVE_S,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.keepalive_s = keepalive_s
        self._ssl = ssl_context
        self._conn: http.client.HTTPConnection | None = None
        self._conn_key: tuple[str, str, int] | None = None
        self._idle_since = 0.0
        self._lock = threading.Lock()
        self._closed = False

    async def __aenter__(self) -> CloudSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        self._abort()

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpAnswer:
        """POST `body` to `url`; the answer, whatever its status. Raises `CloudUnreachable`."""
        if self._closed:
            raise RuntimeError("the session is closed")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[HttpAnswer] = loop.create_future()

        def answered(answer: HttpAnswer) -> None:
            if not done.cancelled():
                done.set_result(answer)

        def failed(exc: BaseException) -> None:
            if not done.cancelled():
                done.set_exception(exc)

        def work() -> None:
            try:
                answer = self._post(url, body, dict(headers))
            except BaseException as exc:  # handed to the awaiting task
                outcome = functools.partial(failed, exc)
            else:
                outcome = functools.partial(answered, answer)
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                loop.call_soon_threadsafe(outcome)

        # A daemon thread of its own, not the loop's default executor: a gateway stopping
        # while a connect hangs (no answer to SYN) would otherwise wait at exit for the rest
        # of request_timeout_s; shutdown() below cannot wake a connect.
        threading.Thread(target=work, name="uplink-http", daemon=True).start()
        try:
            return await done
        except asyncio.CancelledError:
            self._abort()
            raise

    def _abort(self) -> None:
        """Close the connection; a request blocked on its socket in the worker thread fails
        at once (shutdown wakes a blocked recv, close alone may not)."""
        conn = self._conn
        sock = conn.sock if conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):  # not connected (any more)
                sock.shutdown(socket.SHUT_RDWR)
        if conn is not None:
            conn.close()
        self._conn = None

    def _connection(
        self, target: _Target, deadline: float
    ) -> tuple[http.client.HTTPConnection, bool]:
        """The open connection to `target` if it is fresh enough, else a new one; and whether
        it is being reused."""
        now = time.monotonic()
        if self._conn is not None and (
            self._conn_key != target.key or now - self._idle_since > self.keepalive_s
        ):
            self._conn.close()
            self._conn = None
        if self._conn is not None:
            return self._conn, True
        remaining = max(deadline - now, 0.001)
        conn: http.client.HTTPConnection
        if target.https:
            context = self._ssl if self._ssl is not None else ssl.create_default_context()
            conn = http.client.HTTPSConnection(
                target.host, target.port, timeout=remaining, context=context
            )
        else:
            conn = http.client.HTTPConnection(target.host, target.port, timeout=remaining)
        self._conn, self._conn_key = conn, target.key
        return conn, False

    def _post(self, url: str, body: bytes, headers: dict[str, str]) -> HttpAnswer:
        target = _Target(url)
        deadline = time.monotonic() + self.timeout_s
        with self._lock:
            for _ in range(2):
                conn, reused = self._connection(target, deadline)
                try:
                    return self._request(conn, target, body, headers, deadline)
                except (
                    ConnectionResetError,
                    BrokenPipeError,
                    http.client.RemoteDisconnected,
                ) as exc:
                    self._abort()
                    if reused and time.monotonic() < deadline:
                        continue  # dropped while idle: once more on a fresh connection
                    raise CloudUnreachable(f"{type(exc).__name__}: {exc}") from exc
                except TimeoutError as exc:
                    self._abort()
                    raise CloudUnreachable(
                        f"TimeoutError: no answer within {self.timeout_s:g} s"
                    ) from exc
                except (OSError, http.client.HTTPException) as exc:
                    self._abort()
                    raise CloudUnreachable(f"{type(exc).__name__}: {exc}") from exc
            raise AssertionError("unreachable")  # pragma: no cover

    def _request(
        self,
        conn: http.client.HTTPConnection,
        target: _Target,
        body: bytes,
        headers: dict[str, str],
        deadline: float,
    ) -> HttpAnswer:
        def step_timeout() -> None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            conn.timeout = remaining
            if conn.sock is not None:
                conn.sock.settimeout(remaining)

        step_timeout()
        conn.request("POST", target.path, body=body, headers=headers)
        step_timeout()
        resp = conn.getresponse()
        step_timeout()
        data = resp.read(MAX_ANSWER_BYTES + 1)
        answer = HttpAnswer(
            status=resp.status,
            body=data[:MAX_ANSWER_BYTES],
            retry_after=resp.getheader("Retry-After"),
            location=resp.getheader("Location"),
        )
        if len(data) > MAX_ANSWER_BYTES or not resp.isclosed() or resp.will_close:
            # Not read to its end, or the server closes: the connection cannot carry another.
            self._abort()
        else:
            self._idle_since = time.monotonic()
        return answer
