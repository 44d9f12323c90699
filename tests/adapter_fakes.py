"""A function as a `gateway.ingest.TopicAdapter`, for tests of the decoder and the gateway."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.ingest import Adapted
from gateway.records import DeadLetter, Reading

AdaptFn = Callable[[str, bytes, float], "list[Reading] | Adapted | DeadLetter"]


@dataclass(frozen=True)
class FnAdapter:
    """Owns `topic_filter`; `fn` returns readings (wrapped in `Adapted`), `Adapted` or a dead
    letter, and may raise (the decoder must turn that into a dead letter)."""

    topic_filter: str
    fn: AdaptFn
    name: str = "fake"

    @property
    def filters(self) -> tuple[str, ...]:
        return (self.topic_filter,)

    def adapt(self, topic: str, payload: bytes, received_at: float) -> Adapted | DeadLetter:
        out = self.fn(topic, payload, received_at)
        return Adapted(out) if isinstance(out, list) else out
