"""`gateway.logs.RateLimitedLog` on a fake clock, and `gateway.health`'s check values: pure unit
tests (no broker, no database)."""

from __future__ import annotations

import logging
import sqlite3
import threading

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from gateway.health import Failure, check, error_reason, failed
from gateway.logs import DEFAULT_EVERY_S, RateLimitedLog

LOGGER = "tests.ratelimited"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_first_line_at_once_then_one_per_interval_with_the_suppressed_count(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    limited = RateLimitedLog(logging.getLogger(LOGGER), clock=clock)
    assert limited.every_s == DEFAULT_EVERY_S == 10.0
    assert limited.warning("dropped frame %d", 1) is True
    for i in range(2, 6):  # within the interval: suppressed and counted
        clock.now += 2.0
        assert limited.warning("dropped frame %d", i) is False
    assert lines(caplog) == ["dropped frame 1"]
    assert limited.suppressed == 4
    clock.now += 2.0  # 10 s after the first line
    assert limited.warning("dropped frame %d", 6) is True
    assert lines(caplog) == [
        "dropped frame 1",
        "dropped frame 6 [4 more like this in the last 10s]",
    ]
    clock.now += 9.9
    assert limited.warning("dropped frame %d", 7) is False
    clock.now += 30.0  # a quiet spell: the next line is written and reports the one in between
    assert limited.warning("dropped frame %d", 8) is True
    assert lines(caplog)[-1] == "dropped frame 8 [1 more like this in the last 40s]"
    clock.now += 10.0  # nothing suppressed since the last line: no suffix
    assert limited.warning("dropped frame %d", 9) is True
    assert lines(caplog)[-1] == "dropped frame 9"
    assert limited.suppressed == 5  # the total since creation


def test_level_traceback_and_caller_are_kept(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    limited = RateLimitedLog(logging.getLogger(LOGGER), every_s=5.0, clock=clock)
    for _ in range(3):
        try:
            raise ValueError("broken adapter")
        except ValueError:
            limited.error("adapter failed", exc_info=True)
    [record] = [r for r in caplog.records if r.name == LOGGER]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and record.exc_info[0] is ValueError
    # The record names the call site, not gateway/logs.py.
    assert record.funcName == "test_level_traceback_and_caller_are_kept"
    assert record.pathname == __file__
    limited.log(logging.INFO, "not enabled")  # below the logger's level: neither written...
    assert limited.suppressed == 2  # ...nor counted as suppressed


def test_zero_interval_writes_every_line_and_negative_is_refused(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    limited = RateLimitedLog(logging.getLogger(LOGGER), every_s=0.0, clock=clock)
    assert all(limited.warning("x") for _ in range(3))
    assert lines(caplog) == ["x", "x", "x"]
    with pytest.raises(ValueError, match="every_s"):
        RateLimitedLog(logging.getLogger(LOGGER), every_s=-1.0)


def test_threads_share_one_interval(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    limited = RateLimitedLog(logging.getLogger(LOGGER), clock=clock)
    start = threading.Barrier(8)

    def hammer() -> None:
        start.wait()
        for _ in range(500):
            limited.warning("queue full")

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert lines(caplog) == ["queue full"]
    assert limited.suppressed == 8 * 500 - 1


def test_failure_streak_keeps_its_start_and_counts_attempts() -> None:
    first = failed(None, sqlite3.OperationalError("database or disk is full"), now=50.0)
    assert first == Failure("database or disk is full", 50.0, 1)
    later = failed(first, sqlite3.OperationalError("disk I/O error"), now=80.0)
    assert later == Failure("disk I/O error", 50.0, 2)
    assert check(None) == {"ok": True}
    assert check(later) == {"ok": False, "reason": "disk I/O error", "since": 50.0, "failures": 2}


def test_error_reason_is_the_drivers_message_not_sqlalchemys_wrapper() -> None:
    engine = create_engine("sqlite://")
    with engine.connect() as conn, pytest.raises(OperationalError) as info:
        conn.execute(text("SELECT * FROM missing"))
    engine.dispose()
    assert "[SQL:" in str(info.value)  # what the log line would otherwise carry
    assert error_reason(info.value) == "no such table: missing"
    assert error_reason(RuntimeError()) == "RuntimeError"
