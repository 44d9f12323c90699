"""Untrusted JSON around msgspec: a nesting limit, and readable decode errors.

- Depth: msgspec decodes nested arrays and objects recursively and raises `RecursionError` near
  the interpreter's recursion limit, even inside a field it would skip, so ~1,000 brackets cost
  a traceback, and whether a payload nested 900 deep decodes depends on the caller's stack.
  `nesting_problem` enforces `MAX_JSON_DEPTH` first, the same everywhere. Its fast path is two
  ``bytes.count`` calls (a payload with fewer opening brackets than the limit cannot be deeper,
  brackets inside strings only make the count larger); only a payload with more brackets is
  scanned, outside its strings.
- Unpaired surrogates: msgspec 0.23 reports a ``\\ud800`` escape that no low surrogate follows
  as "Input data was truncated" (at the string's end) or "unexpected end of hex escape" (for
  some types).
  `decode_error_detail` names the escape and its offset instead.
"""

from __future__ import annotations

import re
from itertools import accumulate

# Homeedge payloads nest 2-5 levels (Shelly's RPC frames are the deepest); 32 leaves room for
# fields devices add while keeping far from the interpreter's recursion limit.
MAX_JSON_DEPTH = 32

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"?', re.DOTALL)
_KEEP_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}
# A \uD800-\uDBFF escape (not itself an escaped backslash's text) without a \uDC00-\uDFFF
# escape right after it.
_LONE_HIGH = re.compile(
    rb"(?<!\\)(?:\\\\)*(\\u[dD][89abAB][0-9a-fA-F]{2})(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
)
_AT_BYTE = re.compile(r"\(byte (\d+)\)")


def nesting_depth(payload: bytes) -> int:
    """How deep arrays and objects nest in `payload` (0 for a scalar), outside its strings."""
    brackets = _STRING.sub(b"", payload).translate(None, _KEEP_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def nesting_problem(payload: bytes, limit: int = MAX_JSON_DEPTH) -> str | None:
    """Why `payload` nests too deep to decode, or None (cheap for ordinary payloads)."""
    if payload.count(b"[") + payload.count(b"{") <= limit:
        return None
    depth = nesting_depth(payload)
    if depth <= limit:
        return None
    return f"JSON nests {depth} levels deep, more than the limit of {limit}"


def decode_error_detail(payload: bytes, message: str) -> str:
    """A msgspec `DecodeError` message, corrected where msgspec misnames the problem: an
    unpaired high surrogate escape at or before the offset msgspec stopped at (if it says)."""
    lone = _LONE_HIGH.search(payload)
    if lone is None:
        return message
    at = _AT_BYTE.search(message)
    if at is not None and int(at.group(1)) < lone.start(1):
        return message  # msgspec stopped at an earlier problem
    escape = lone.group(1).decode("ascii")
    return (
        f"JSON is malformed: unpaired UTF-16 surrogate escape {escape} at byte {lone.start(1)} "
        "(a string must be valid Unicode)"
    )
