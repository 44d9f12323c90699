"""Request bodies: which encodings and media types a route takes, reading a body within a size
and a time limit, inflating gzip within the same size limit, and what becomes of a body the
route never reads.

The app is served with aiohttp's request decompression off (`cloud.app.handler_args`), so a
body is inflated only here, only when a route reads it, and never past the route's limit: a
small gzip body that inflates to a gibibyte costs nothing on a route that answers without
reading it, and at most `limit` bytes of work on one that does.

Errors are `ApiError`s: 408 (too slow), 413 (too large), 415 (encoding or media type), 400
(broken gzip, the client went away).
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Collection
from dataclasses import dataclass

from aiohttp import StreamReader, web

from cloud.web import CONFIG_KEY, METRICS_KEY, ApiError, Handler, error_response

# Content-Encoding values a request may carry ("x-gzip" is gzip's old alias, RFC 9110).
_IDENTITY = ("", "identity")
_GZIP = ("gzip", "x-gzip")
# Inflate this much per step, so an oversized body is refused after at most this much more.
_INFLATE_STEP = 256 * 1024


@dataclass(frozen=True)
class Body:
    """A request body after decoding, and its size as received."""

    data: bytes
    wire_bytes: int


def is_gzip(request: web.BaseRequest) -> bool:
    """Whether the body is gzip; 415 for any encoding but gzip and identity."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding in _IDENTITY:
        return False
    if encoding in _GZIP:
        return True
    raise ApiError(
        415,
        "unsupported_encoding",
        f"Content-Encoding {encoding[:40]!r} is not accepted; send gzip or identity",
    )


async def read_body(request: web.Request, *, media_types: Collection[str], limit: int) -> Body:
    """The body of a request whose Content-Type is one of `media_types`, at most `limit` bytes
    both as received and after inflating, received within the config's body_timeout_s."""
    if request.content_type not in media_types:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type must be {' or '.join(sorted(media_types))}",
        )
    gzipped = is_gzip(request)
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _too_large(limit)  # refused before a byte is read
    timeout_s = request.app[CONFIG_KEY].http.body_timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            raw = await _read_at_most(request.content, limit)
    except TimeoutError:
        raise ApiError(
            408, "body_timeout", f"the body did not arrive within {timeout_s:g} s"
        ) from None
    except web.RequestPayloadError as exc:  # e.g. broken chunking, a short Content-Length body
        raise ApiError(400, "bad_encoding", f"cannot read the body: {exc}") from None
    except ConnectionError:
        raise ApiError(400, "incomplete_body", "the connection ended inside the body") from None
    metrics = request.app[METRICS_KEY]
    metrics.request_body_bytes.labels("wire").inc(len(raw))
    if not gzipped:
        return Body(data=raw, wire_bytes=len(raw))
    data = _gunzip(raw, limit)
    metrics.request_body_bytes.labels("inflated").inc(len(data))
    return Body(data=data, wire_bytes=len(raw))


async def _read_at_most(stream: StreamReader, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await stream.readany():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _gunzip(raw: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip framing only
    out: list[bytes] = []
    size = 0
    pending = raw
    try:
        while not inflater.eof:
            # max_length bounds the work of each step; the input left waits in
            # unconsumed_tail, and output zlib still holds comes with the next (empty) call.
            piece = inflater.decompress(pending, _INFLATE_STEP)
            pending = inflater.unconsumed_tail
            if not piece and not pending:
                break  # the input is used up: a truncated stream, refused below
            size += len(piece)
            if size > limit:
                raise _too_large(limit)
            out.append(piece)
    except zlib.error as exc:
        raise ApiError(400, "bad_encoding", f"the body is not valid gzip: {exc}") from None
    if not inflater.eof:
        raise ApiError(400, "bad_encoding", "the gzip stream ends early")
    if inflater.unused_data:
        raise ApiError(400, "bad_encoding", "bytes follow the end of the gzip stream")
    return b"".join(out)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"the body is larger than {limit} bytes")


@web.middleware
async def body_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse encodings other than gzip and identity on every route (415), and end keep-alive
    after a body the route left unread: the server then drains at most `lingering_s` of it
    (raw, never inflated) and closes, instead of reading it whole to reuse the connection."""
    try:
        is_gzip(request)
    except ApiError as exc:
        response: web.StreamResponse = error_response(exc.status, exc.code, exc.message)
    else:
        response = await handler(request)
    if request.body_exists and not request.content.is_eof():
        response.force_close()
    return response
