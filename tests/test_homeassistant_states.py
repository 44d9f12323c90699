"""`StateLimiter` with a fake clock (pure unit tests): one state per entity per interval, the
newest value wins and goes out when the interval is over, the oldest waiting value is dropped
beyond max_pending."""

from __future__ import annotations

from gateway.homeassistant.states import StateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_state_per_interval_and_the_newest_wins() -> None:
    clock = Clock()
    lim: StateLimiter[str] = StateLimiter(interval_s=30, max_pending=10, clock=clock)
    assert lim.offer("t", 20.0, ts=1.0)
    assert lim.take_due() == [("t", 20.0)]
    clock.now += 1
    assert lim.offer("t", 21.0, ts=2.0)  # waits: a new entry in the schedule
    assert not lim.offer("t", 22.0, ts=3.0)  # replaces it
    assert not lim.offer("t", 19.0, ts=2.5)  # older than the waiting one: ignored
    assert lim.take_due() == []
    assert lim.next_due() == 1030.0
    clock.now = 1029.9
    assert lim.take_due() == []
    clock.now = 1030.0
    assert lim.take_due() == [("t", 22.0)]
    assert lim.next_due() is None and len(lim) == 0
    # An entity is limited on its own: another one's first state is due at once.
    assert lim.offer("h", 40.0, ts=3.0)
    assert lim.take_due() == [("h", 40.0)]


def test_a_reading_older_than_the_sent_state_is_not_published() -> None:
    clock = Clock()
    lim: StateLimiter[str] = StateLimiter(interval_s=0, max_pending=10, clock=clock)
    lim.offer("t", 20.0, ts=10.0)
    assert lim.take_due() == [("t", 20.0)]
    assert not lim.offer("t", 18.0, ts=5.0)  # a late reading
    assert lim.take_due() == []


def test_beyond_max_pending_the_oldest_waiting_value_is_dropped() -> None:
    clock = Clock()
    lim: StateLimiter[int] = StateLimiter(interval_s=30, max_pending=2, clock=clock)
    for key in (1, 2, 3):
        lim.offer(key, float(key), ts=1.0)
    assert lim.dropped == 1
    assert sorted(lim.take_due()) == [(2, 2.0), (3, 3.0)]


def test_forget_drops_a_devices_entities() -> None:
    clock = Clock()
    lim: StateLimiter[tuple[str, str]] = StateLimiter(interval_s=30, max_pending=10, clock=clock)
    lim.offer(("d1", "t"), 1.0, ts=1.0)
    lim.take_due()
    lim.offer(("d1", "t"), 2.0, ts=2.0)
    lim.offer(("d2", "t"), 3.0, ts=2.0)
    lim.forget(lambda k: k[0] == "d1")
    assert lim.take_due() == [(("d2", "t"), 3.0)]
    # Forgotten: the device's next state is due at once, like a new entity's.
    assert lim.offer(("d1", "t"), 4.0, ts=3.0)
    assert lim.take_due() == [(("d1", "t"), 4.0)]
