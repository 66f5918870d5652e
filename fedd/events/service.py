"""The `events` service: emit() is cheap and never waits; a background loop drains the outbox.

emit() only appends to an in-memory batch. Every `flush_interval` the batch is encoded and written
to the durable outbox (in the outbox's own thread). The sender loop takes events from the outbox in
order, publishes them, and deletes them only once the sink confirmed them. Sink down: the loop
backs off and the outbox fills; outbox full: the shedding policy drops events and an
`events-dropped` count is kept (and published once the sink is back).
"""

from __future__ import annotations

import random
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import deferLater
from twisted.logger import Logger

from fedd.config import EventsConfig
from fedd.errors import describe
from fedd.events.model import envelope, routing_key
from fedd.events.outbox import Outbox
from fedd.events.sinks import Sink

log = Logger(namespace="fedd.events")
BATCH = 500


class EventsService(MultiService):
    name = "events"

    def __init__(
        self,
        config: EventsConfig,
        *,
        clock: Any,
        outbox: Outbox | None,
        sink: Sink,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.clock = clock
        self.outbox = outbox
        self.sink = sink
        self.rng = rng or random.Random()
        self.enabled = set(config.types)
        self._batch: list[tuple[str, dict[str, Any], float]] = []
        self._flush_call: IDelayedCall | None = None
        self._flushing: Deferred[Any] | None = None
        self._wake: Deferred[None] | None = None
        self._loop: Deferred[None] | None = None
        self.depth = 0
        self.emitted = self.sent = self.failed = self.dropped = self.sampled_out = 0
        self.last_error = ""
        self._open = False

    # --- producing ----------------------------------------------------------------------------

    def emit(self, event_type: str, payload: dict[str, Any]) -> None:
        """Record an event. Never blocks, never raises, never waits for the broker."""
        if event_type not in self.enabled:
            return
        if event_type == "get-redirect" and self.config.get_redirect_sample < 1.0:
            if self.rng.random() >= self.config.get_redirect_sample:
                self.sampled_out += 1
                return
        if len(self._batch) >= self.config.outbox_max_events:  # the outbox is not taking them: shed here
            self.dropped += 1
            return
        self.emitted += 1
        self._batch.append((event_type, payload, self.clock.seconds()))
        if self._flush_call is None and self.running:
            self._flush_call = self.clock.callLater(self.config.flush_interval, self._flush)

    def _flush(self) -> Deferred[Any]:
        self._flush_call = None
        if not self._open:  # the outbox is still opening: keep the batch, try again shortly
            if self.running:
                self._flush_call = self.clock.callLater(self.config.flush_interval, self._flush)
            return Deferred.fromCoroutine(_nothing())
        batch, self._batch = self._batch, []
        prefix = self.config.routing_prefix
        rows = []
        for event_type, payload, at in batch:
            try:
                rows.append((routing_key(prefix, event_type), envelope(event_type, payload, at)))
            except (TypeError, ValueError) as exc:  # a payload that cannot be encoded is a bug: log, go on
                log.error("cannot encode {event_type} event: {reason}", event_type=event_type, reason=exc)
        d = ensureDeferred(self._store(rows))
        self._flushing = d
        return d

    async def _store(self, rows: list[tuple[str, bytes]]) -> None:
        if not rows:
            return
        if self.outbox is None:  # a spool file is durable itself: no outbox in front of it
            try:
                await self.sink.publish([(0, key, body) for key, body in rows])
                self.sent += len(rows)
            except Exception as exc:
                self.failed += 1
                self.dropped += len(rows)
                self.last_error = describe(exc)
                log.error("spool write failed, {n} events lost: {reason}", n=len(rows), reason=self.last_error)
            return
        try:
            self.depth, dropped = await self.outbox.add(rows)
            outbox = self.outbox
        except Exception as exc:
            self.dropped += len(rows)
            log.error("outbox write failed, {n} events lost: {reason}", n=len(rows), reason=describe(exc))
            return
        if dropped:
            self.dropped += dropped
            self.emit(
                "events-dropped",
                {
                    "dropped": dropped,
                    "dropped_total": self.dropped,
                    "policy": outbox.shed,
                    "outbox_max": outbox.max_events,
                },
            )
            log.warn(
                "outbox full ({max} events): {n} events dropped ({policy}); {total} dropped in all",
                max=outbox.max_events,
                n=dropped,
                policy=outbox.shed,
                total=self.dropped,
            )
        self._kick()

    # --- sending ------------------------------------------------------------------------------

    def _kick(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None:
            wake.callback(None)

    async def _send_loop(self) -> None:
        assert self.outbox is not None
        backoff = 0.5
        while self.running:
            try:
                rows = await self.outbox.peek(BATCH)
            except Exception as exc:
                log.error("outbox read failed: {reason}", reason=describe(exc))
                rows = []
            if not rows:
                await self._sleep(self.config.idle_interval)
                continue
            try:
                await self.sink.publish(rows)
            except Exception as exc:
                self.failed += 1
                self.last_error = describe(exc)
                await self._sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 0.5
            try:
                self.depth = await self.outbox.remove(rows[-1][0])
            except Exception as exc:  # sent but not removed: they will be sent again (at least once)
                log.error("outbox delete failed: {reason}", reason=describe(exc))
            self.sent += len(rows)

    async def _sleep(self, seconds: float) -> None:
        wake: Deferred[None] = Deferred()
        self._wake = wake
        timer = deferLater(self.clock, seconds, lambda: None)
        timer.addErrback(lambda _: None)
        wake.addErrback(lambda _: None)
        await DeferredList([wake, timer], fireOnOneCallback=True, consumeErrors=True)
        if not timer.called:
            timer.cancel()
        if self._wake is wake:
            self._wake = None

    # --- life cycle -----------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._loop = ensureDeferred(self._start())
        self._loop.addErrback(lambda f: log.failure("event sender stopped", f))

    async def _start(self) -> None:
        if self.outbox is None:
            self._open = True
            return
        self.depth = await self.outbox.open()
        self._open = True
        if self.depth:
            log.info("{n} events waiting in the outbox from a previous run", n=self.depth)
        if self._batch and self._flush_call is None:
            self._flush_call = self.clock.callLater(self.config.flush_interval, self._flush)
        await self._send_loop()

    def stopService(self) -> Deferred[None]:
        self.running = False
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        if self._open:
            await self._flush()  # whatever was emitted goes to the outbox, not to the void
        self._kick()
        if self._loop is not None:
            await self._loop
        if self.outbox is not None:
            await self.outbox.close()
        await MultiService.stopService(self)  # children: the broker connection
        close = getattr(self.sink, "close", None)
        if close is not None:
            close()

    def to_json(self) -> dict[str, Any]:
        return {
            "sink": self.sink.describe(),
            "connected": self.sink.connected,
            "outbox_depth": self.depth,
            "pending": len(self._batch),
            "emitted": self.emitted,
            "sent": self.sent,
            "failed_publishes": self.failed,
            "dropped": self.dropped,
            "sampled_out": self.sampled_out,
            "last_error": self.last_error,
        }


async def _nothing() -> None:
    return None
