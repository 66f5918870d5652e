"""The sender loop of the `events` service (fedd.events.service): it takes events from the durable
outbox in order, publishes them, up to WINDOW batches of BATCH events in flight, and deletes each
batch only once the sink confirmed it and every batch before it: delivery is at least once, and an
event sent twice carries the same id. The events-dropped notice, in a slot of its own, goes first.
The sink down: the loop waits, looking again every `idle_interval`, and the outbox fills.
"""

from __future__ import annotations

from collections import deque

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from fedd.config import EventsConfig
from fedd.errors import describe
from fedd.events.outbox import Notice, Outbox
from fedd.events.sinks import Sink
from fedd.events.wakeup import Wakeup

log = Logger(namespace="fedd.events")
BATCH = 1000  # events per publish from the outbox
WINDOW = 4  # outbox batches in flight (measured: docs/events.md)


class OutboxSender:
    """The sending half of EventsService (a base class of it): the attributes below are the
    service's, shared with its producing half (which stores into the outbox and wakes the loop)."""

    config: EventsConfig
    outbox: Outbox | None
    sink: Sink
    running: int
    depth: int
    sent: int
    failed: int
    last_error: str
    _notice: Notice | None
    _notice_sending: bool
    _wakeup: Wakeup

    def _kick(self) -> None:
        self._wakeup.wake()

    async def _send_loop(self) -> None:
        """Publish the outbox in order, up to WINDOW batches in flight (a broker confirms a batch only
        once it has written it: one at a time, the outbox drained at a batch per disk write), and
        delete each batch once it and every batch before it are confirmed. A batch that fails: the
        ones after it are let finish, and sending starts again from the oldest event (same ids)."""
        assert self.outbox is not None
        backoff = 0.5
        in_flight: deque[tuple[int, int, Deferred[None]]] = deque()  # (last outbox id, events, confirmed)
        after = 0  # the outbox ids up to here are in flight
        while self.running:
            if not self.sink.connected:  # the broker connection reconnects by itself; look again soon
                after = await self._abandon(in_flight)
                await self._sleep(self.config.idle_interval)
                continue
            if not in_flight and self._notice is not None and not await self._send_notice():
                await self._sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            while len(in_flight) < WINDOW:
                try:
                    rows = await self.outbox.peek(BATCH, after)
                except Exception as exc:
                    log.error("outbox read failed: {reason}", reason=describe(exc))
                    rows = []
                if not rows:
                    break
                in_flight.append((rows[-1][0], len(rows), self.sink.publish([event for _, event in rows])))
                after = rows[-1][0]
            if not in_flight:
                after = 0
                await self._sleep(self.config.idle_interval)
                continue
            last, n, confirmed = in_flight.popleft()
            try:
                await confirmed
            except Exception as exc:
                self.failed += 1
                self.last_error = describe(exc)
                after = await self._abandon(in_flight)
                await self._sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 0.5
            try:
                self.depth = await self.outbox.remove(last)
            except Exception as exc:  # sent but not removed: they will be sent again (same ids)
                log.error("outbox delete failed: {reason}", reason=describe(exc))
                after = await self._abandon(in_flight)
            self.sent += n

    @staticmethod
    async def _abandon(in_flight: deque[tuple[int, int, Deferred[None]]]) -> int:
        """Let the batches in flight end (confirmed or not, they stay in the outbox and are sent
        again); the next peek starts from the oldest event."""
        while in_flight:
            try:
                await in_flight.popleft()[2]
            except Exception:  # counted by the batch that failed first
                pass
        return 0

    async def _send_notice(self) -> bool:
        assert self.outbox is not None and self._notice is not None
        notice = self._notice
        self._notice_sending = True  # no new report replaces it while it is on the wire
        try:
            await self.sink.publish([notice[0]])
            await self.outbox.clear_notice(notice[0][0])
        except Exception as exc:
            self.failed += 1
            self.last_error = describe(exc)
            return False
        finally:
            self._notice_sending = False
        self._notice = None
        self.sent += 1
        return True

    async def _sleep(self, seconds: float) -> None:
        await self._wakeup.sleep(seconds)
