"""The lean front's deadlines (fedd.web.deadlines) on a Clock: the head deadline counts from the
first time a head was begun and is not moved by reads; the idle deadline counts from the last read;
whichever passes first expires the connection, once; one timer at most, at any time."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from fedd.web.deadlines import Deadlines

HEAD = 30.0
IDLE = 60.0


class Connection:
    def __init__(self, header_timeout: float = HEAD, idle_timeout: float | None = IDLE) -> None:
        self.clock = Clock()
        self.expired: list[float] = []
        self.deadlines = Deadlines(
            self.clock, header_timeout=header_timeout, idle_timeout=idle_timeout, expire=self._expire
        )

    def _expire(self) -> None:
        self.expired.append(self.clock.seconds())

    def until(self, when: float) -> None:
        """Advance to `when`, a second at a time, checking there is never more than one timer."""
        while self.clock.seconds() < when:
            self.clock.advance(min(1.0, when - self.clock.seconds()))
            assert len(self.clock.getDelayedCalls()) <= 1


@pytest.fixture
def conn() -> Connection:
    return Connection()


def test_silence_expires_at_the_idle_timeout_from_the_last_read(conn: Connection) -> None:
    conn.deadlines.read()
    for at in (30.0, 59.0):
        conn.until(at)
        conn.deadlines.read()
    conn.until(59 + IDLE - 1)
    assert conn.expired == []
    conn.until(59 + IDLE + 10)
    assert conn.expired == [59 + IDLE]


def test_a_head_expires_at_its_deadline_from_its_first_byte_whatever_it_reads(conn: Connection) -> None:
    conn.deadlines.read()
    conn.deadlines.head_begun()
    for at in range(5, 60, 5):  # a trickled head: a read every 5 s, the head never done
        conn.until(at)
        if not conn.expired:
            conn.deadlines.read()
            conn.deadlines.head_begun()  # again: its deadline stays where it was
    assert conn.expired == [HEAD]


def test_a_head_done_leaves_the_idle_deadline(conn: Connection) -> None:
    conn.deadlines.read()
    conn.deadlines.head_begun()
    conn.until(20)
    conn.deadlines.read()
    conn.deadlines.head_done()
    conn.until(20 + IDLE + 10)
    assert conn.expired == [20 + IDLE]


def test_a_head_begun_after_the_idle_timer_was_set_moves_it_earlier(conn: Connection) -> None:
    conn.deadlines.read()
    conn.until(10)
    conn.deadlines.read()
    conn.deadlines.head_begun()
    conn.until(100)
    assert conn.expired == [10 + HEAD]


@pytest.mark.parametrize("header_timeout", [0.0, 600.0])
def test_without_a_head_deadline_or_a_longer_one_the_idle_deadline_comes_first(header_timeout: float) -> None:
    conn = Connection(header_timeout=header_timeout)
    conn.deadlines.read()
    conn.deadlines.head_begun()
    conn.until(IDLE + 10)
    assert conn.expired == [IDLE]


def test_without_an_idle_deadline_only_a_head_expires() -> None:
    conn = Connection(idle_timeout=None)
    conn.deadlines.read()
    assert conn.clock.getDelayedCalls() == []
    conn.deadlines.head_begun()
    conn.until(HEAD + 10)
    assert conn.expired == [HEAD]
    conn = Connection(header_timeout=0, idle_timeout=None)
    conn.deadlines.read()
    conn.deadlines.head_begun()
    assert conn.clock.getDelayedCalls() == []


def test_stopped_no_deadline_runs_until_the_next_read(conn: Connection) -> None:
    conn.deadlines.read()
    conn.deadlines.head_begun()
    conn.deadlines.stop()  # a request lent to twisted.web's channel
    assert conn.clock.getDelayedCalls() == []
    conn.until(500)
    conn.deadlines.read()  # the connection is the lean front's again
    conn.until(500 + IDLE + 10)
    assert conn.expired == [500 + IDLE]
