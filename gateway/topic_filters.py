"""`TopicFilters`: MQTT topic filters compiled once, matched without building anything per call.

paho's `topic_matches_sub` builds a matcher object on every call, which is why the ingest path
used to keep several memo caches of "which filter matched this topic". Matching against
pre-split filters is about 4x cheaper (timed here: the 11 filters of every adapter, a topic that
only the last matches, 7.9 us against 32.9 us with `topic_matches_sub`), and a topic is routed
once anyway, so the only topic cache left is the decoder's route cache
(`gateway.ingest.MessageDecoder`). The rules are MQTT's: ``+`` matches one level, a trailing
``#`` matches the parent and any number of levels below it, and a filter starting with a
wildcard does not match topics starting with ``$`` (MQTT 3.1.1 section 4.7.2);
``tests/test_topic_filters.py`` checks them against paho's matcher.
"""

from __future__ import annotations

from collections.abc import Iterable


def _compile(topic_filter: str) -> tuple[tuple[str, ...], bool]:
    levels = topic_filter.split("/")
    if levels[-1] == "#":
        return tuple(levels[:-1]), True
    return tuple(levels), False


def _matches(levels: tuple[str, ...], multi: bool, topic: list[str]) -> bool:
    n = len(levels)
    if len(topic) < n or (not multi and len(topic) != n):
        return False
    return all(want in ("+", got) for want, got in zip(levels, topic, strict=False))


class TopicFilters:
    """An ordered set of MQTT filters; `first` tells which one a topic matches first."""

    def __init__(self, filters: Iterable[str]) -> None:
        self.filters = tuple(filters)
        self._compiled = [_compile(f) for f in self.filters]
        # Filters whose first level is a wildcard never match a ``$`` topic.
        self._wild_first = [f.startswith(("+", "#")) for f in self.filters]

    def first(self, topic: str) -> int:
        """Index of the first filter matching `topic`, or -1."""
        parts = topic.split("/")
        dollar = topic.startswith("$")
        for i, (levels, multi) in enumerate(self._compiled):
            if dollar and self._wild_first[i]:
                continue
            if _matches(levels, multi, parts):
                return i
        return -1

    def matches(self, topic: str) -> bool:
        return self.first(topic) >= 0
