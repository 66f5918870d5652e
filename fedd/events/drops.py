"""Dropped events, counted and reported: at most one log line and one `events-dropped` notice per
`[events] drop_report_interval`, whatever the rate of drops (fedd.events.service sheds events when
the outbox is full or the spool cannot be written)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from fedd.config import EventsConfig

log = Logger(namespace="fedd.events")


class DropReports:
    def __init__(
        self,
        clock: Any,
        config: EventsConfig,
        *,
        outbox: bool,
        ready: Callable[[], bool],
        notify: Callable[[int, float], Deferred[None] | None],
    ) -> None:
        """`ready()`: a notice can be made now (else the report comes a flush interval later);
        `notify(n, now)`: make the `events-dropped` notice for `n` drops."""
        self.clock = clock
        self.config = config
        self.outbox = outbox  # with an outbox (a broker) or with a spool file: what the log line says
        self.ready = ready
        self.notify = notify
        self.dropped = 0  # since start
        self.pending = 0  # since the last report
        self._call: IDelayedCall | None = None
        self._last: float | None = None

    def note(self, n: int) -> None:
        self.dropped += n
        self.pending += n
        if self._call is None:
            due = 0.0
            if self._last is not None:
                due = max(0.0, self._last + self.config.drop_report_interval - self.clock.seconds())
            self._call = self.clock.callLater(due, self.report)

    def soon(self) -> None:
        """Report what is pending at the next turn (drops noted before the service could report)."""
        if self.pending and self._call is None:
            self._call = self.clock.callLater(0, self.report)

    def cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def report(self) -> Deferred[None] | None:
        """One log line and one events-dropped notice for the drops since the last report."""
        self._call = None
        n = self.pending
        if not n:
            return None
        if not self.ready():  # the notice's slot is busy: very soon
            self._call = self.clock.callLater(self.config.flush_interval, self.report)
            return None
        self.pending = 0
        now = self._last = self.clock.seconds()
        why = "outbox full: {max} events, {policy}" if self.outbox else "spool not writable"
        log.warn(
            "events dropped: {n} since the last report, {total} since start (" + why + "); "
            "next report in {interval:g} s at the earliest",
            n=n,
            total=self.dropped,
            max=self.config.outbox_max_events,
            policy=self.config.shed,
            interval=self.config.drop_report_interval,
        )
        return self.notify(n, now)
