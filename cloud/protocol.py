"""The connection layer under the app: what answers when a request never reaches it.

aiohttp answers a request its parser rejects (bad chunking, a header line past the limit, a
malformed request line) from its protocol object, as ``text/plain``, without running the app's
middlewares, and there is no public hook for that answer (aiohttp issue #3287). `CloudRunner`
serves the app with a `web.RequestHandler` whose `handle_error` answers in the API's JSON
error shape instead; it is also what answers a 500 for an exception that escaped every
middleware.

This is the only module that reaches past aiohttp's public API (`AppRunner._make_server`, the
protocol factory of `web.Server`); aiohttp is pinned to the minor series these were read in
(pyproject.toml), and tests/test_cloud_http.py exercises each of them on a real socket.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from cloud.app import handler_args
from cloud.web import CONFIG_KEY, error_code, error_response

log = logging.getLogger(__name__)

_MAX_MESSAGE_CHARS = 200


class _JsonErrorHandler(web.RequestHandler):
    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # As aiohttp's own: an answer has started, so the connection is beyond repair.
            raise ConnectionError("response already started; cannot send the error")
        if status >= 500:
            log.error("request from %s failed", request.remote, exc_info=exc)
            text = "internal error"
        else:
            # A client's malformed request: common on a public port, not worth a traceback.
            log.debug("malformed request from %s: %s", request.remote, exc)
            # aiohttp's message quotes the offending bytes on its following lines.
            first_line = (message or str(exc or "")).strip().splitlines()
            text = (first_line[0].rstrip(":") if first_line else "malformed request")[
                :_MAX_MESSAGE_CHARS
            ]
        response = error_response(status, error_code(status), text)
        response.force_close()  # the parser cannot find the next request after an error
        return response


class _JsonErrorServer(web.Server):
    """`web.Server` whose connections use `_JsonErrorHandler`."""

    def __init__(self, plain: web.Server, handler_kwargs: dict[str, Any]) -> None:
        super().__init__(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            **handler_kwargs,
        )
        self._handler_kwargs = handler_kwargs

    def __call__(self) -> web.RequestHandler:
        # The protocol factory the listening socket calls, once per connection.
        return _JsonErrorHandler(self, loop=asyncio.get_running_loop(), **self._handler_kwargs)


class CloudRunner(web.AppRunner):
    """`web.AppRunner` whose connections answer parse errors in JSON. The connection limits
    themselves are the app's ``handler_args`` (`cloud.app`), so every runner applies them."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        # No access log: the latency histogram counts requests, the app logs failures.
        super().__init__(app, access_log=None, **kwargs)

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # runs the app's start-up
        limits = handler_args(self.app[CONFIG_KEY].http)
        return _JsonErrorServer(plain, {"access_log": None, **limits})
