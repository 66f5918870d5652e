"""fedd.events.wakeup: the pause the event sender and the STOMP sink share, on a Clock."""

from __future__ import annotations

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock

from fedd.events.wakeup import Wakeup


def test_sleep_ends_at_its_time_or_when_woken() -> None:
    clock = Clock()
    wakeup = Wakeup(clock)
    timed = ensureDeferred(wakeup.sleep(5.0))
    clock.advance(4.9)
    assert not timed.called
    clock.advance(0.1)
    assert timed.called and clock.getDelayedCalls() == []

    woken = ensureDeferred(wakeup.sleep(5.0))
    wakeup.wake()
    assert woken.called and clock.getDelayedCalls() == []  # its timer is cancelled, not left behind


def test_sleep_without_a_time_waits_for_wake_and_an_early_wake_is_not_kept() -> None:
    clock = Clock()
    wakeup = Wakeup(clock)
    wakeup.wake()  # nobody asleep: forgotten
    d = ensureDeferred(wakeup.sleep(None))
    clock.advance(3600)
    assert not d.called
    wakeup.wake()
    assert d.called
