"""The contract every homeedge part shares: topics, payloads, the metric registry, the batch format.

`gateway`, `cloud` and `devices` import this package and never each other.
"""

from __future__ import annotations

from schemas.errors import PayloadError, TopicError

__all__ = ["PayloadError", "TopicError"]
