"""Errors raised when something does not follow the contract."""

from __future__ import annotations


class ContractError(ValueError):
    """Base class: input that does not follow the homeedge contract."""


class TopicError(ContractError):
    """A topic string that is not of a known homeedge shape."""


class PayloadError(ContractError):
    """A payload that cannot be decoded or fails validation.

    `reason` is a short machine-friendly class (``invalid_json``, ``validation``, ``oversized``,
    ``too_deep``, ``non_finite``, ``bad_header``...) and `detail` is the human-readable
    explanation; both are stored with a dead letter.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
