"""The lean front's deadlines (fedd.web.lean), on one timer.

- The head deadline (`[server] header_timeout`, the site's `header_timeout`; 0: none): a request head
  still unfinished that long after the lean front first held part of it.
- The idle deadline (`[server] idle_timeout`, the site's `timeOut`; None: none): nothing from the
  client for that long, between requests or within a head.

Whichever passes first calls `expire` once; the lean front then closes the connection, with a `408`
if a head is begun, without a word between requests. Neither runs while twisted.web's channel has
the connection (a request lent to it, or the connection handed over): its own timers do.

One `IDelayedCall` at most, set for the earlier deadline. A read only notes the time (half the cost
of moving the timer, on the hot path); the timer, when it comes, looks at both deadlines and waits
again for the one still ahead (a read since, or a head finished since, moved it).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Deadlines:
    """The head and idle deadlines of one connection of the lean front."""

    __slots__ = ("_call_later", "_expire", "_head", "_head_started", "_idle", "_last_read", "_seconds", "_timer")

    def __init__(
        self, clock: IReactorTime, *, header_timeout: float, idle_timeout: float | None, expire: Callable[[], None]
    ) -> None:
        self._seconds = clock.seconds
        self._call_later = clock.callLater
        self._head = header_timeout if header_timeout > 0 else None
        self._idle = idle_timeout if idle_timeout else None
        self._expire = expire
        self._timer: IDelayedCall | None = None
        self._last_read = 0.0  # when the client last sent something (the idle deadline counts from it)
        self._head_started: float | None = None  # when part of an unfinished head was first held

    def read(self) -> None:
        """The client sent something (or the connection is the lean front's again): the idle time
        starts over."""
        self._last_read = self._seconds()
        if self._timer is None and self._idle is not None:
            self._timer = self._call_later(self._idle, self._due)

    def head_begun(self) -> None:
        """Part of a head is held, the rest not in: its deadline runs (from the first time told)."""
        if self._head is None or self._head_started is not None:
            return
        self._head_started = self._seconds()
        timer = self._timer
        if timer is None or timer.getTime() > self._head_started + self._head:
            self._wait(self._head)

    def head_done(self) -> None:
        """No unfinished head is held any more (a timer set for its deadline finds nothing due)."""
        self._head_started = None

    def stop(self) -> None:
        """twisted.web's channel has the connection (its deadlines run), or it is closed: none here."""
        self._head_started = None
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _wait(self, seconds: float) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self._call_later(seconds, self._due)

    def _due(self) -> None:
        self._timer = None
        now = self._seconds()
        left = [self._last_read + self._idle - now] if self._idle is not None else []
        if self._head is not None and self._head_started is not None:
            left.append(self._head_started + self._head - now)
        if not left:
            return
        if min(left) > 0:  # a read, or a finished head, since the timer was set
            self._wait(min(left))
            return
        self._expire()
