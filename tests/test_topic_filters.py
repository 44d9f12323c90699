"""`gateway.topic_filters.TopicFilters` against paho's own matcher, which it replaces on the
routing path: the same answer for seeded random filters and topics, and MQTT's edge cases."""

from __future__ import annotations

import random

import pytest
from paho.mqtt.client import topic_matches_sub

from gateway.topic_filters import TopicFilters

LEVELS = ["a", "b", "+", "#", "$SYS", "c", ""]
TOPIC_LEVELS = ["a", "b", "c", "$SYS", "", "x"]


def _random_filter(rng: random.Random) -> str:
    levels = [rng.choice(LEVELS) for _ in range(rng.randint(1, 4))]
    # '#' is only valid as the last level.
    return "/".join(lv for lv in levels[:-1] if lv != "#") + "/" + levels[-1]


def test_same_answer_as_paho_on_random_pairs() -> None:
    rng = random.Random(11)
    checked = 0
    for _ in range(20_000):
        f = _random_filter(rng).lstrip("/") or "#"
        t = "/".join(rng.choice(TOPIC_LEVELS) for _ in range(rng.randint(1, 5)))
        assert TopicFilters([f]).matches(t) == topic_matches_sub(f, t), (f, t)
        checked += 1
    assert checked == 20_000


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/#", "a", True),  # '#' includes the parent level
        ("a/+", "a", False),
        ("+/b", "$SYS/b", False),  # wildcards at the start never match '$' topics
        ("#", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
        ("a//c", "a//c", True),  # empty levels are levels
        ("+/+", "/x", True),
    ],
)
def test_mqtt_edge_cases(topic_filter: str, topic: str, expected: bool) -> None:
    assert TopicFilters([topic_filter]).matches(topic) is expected
    assert topic_matches_sub(topic_filter, topic) is expected


def test_first_is_the_first_matching_filter_in_order() -> None:
    filters = TopicFilters(["x/#", "a/+/c", "a/#"])
    assert filters.first("a/b/c") == 1
    assert filters.first("a/b") == 2
    assert filters.first("q") == -1
