"""A pause that other code can end early: the event sender's idle wait and the brokers' backoff."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import deferLater


class Wakeup:
    """`sleep(seconds)` returns after `seconds` (None: only when woken) or at the next `wake()`,
    whichever comes first. One sleeper at a time; a `wake()` with nobody asleep is not remembered."""

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._wake: Deferred[None] | None = None

    async def sleep(self, seconds: float | None) -> None:
        wake: Deferred[None] = Deferred()
        self._wake = wake
        waits: list[Deferred[Any]] = [wake]
        if seconds is not None:
            waits.append(deferLater(self._clock, seconds, lambda: None))
        await DeferredList(waits, fireOnOneCallback=True, consumeErrors=True)
        for timer in waits[1:]:
            if not timer.called:
                timer.cancel()
        if self._wake is wake:
            self._wake = None

    def wake(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None:
            wake.callback(None)
