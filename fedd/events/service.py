"""The `events` service: emit() puts an event on disk and never waits; background work delivers it.

emit() gives the event a fresh id (or the caller's: put-done and put-failed have the upload's own,
fedd.confirm.pending.outcome_id), encodes its JSON envelope and copies it into the journal, a file
mapped into memory (fedd/events/journal.py): from then on the event survives a kill of the process,
and the web front sends its answer only after emit() returned. The web front's get-redirect events
come through emit_template(): their envelope was encoded once per redirect plan, and an event costs
its id, its time and a copy (about 2 us, docs/events.md). Every `flush_interval` the events since
the last flush are stored, as they are, in the durable outbox (SQLite, in its own thread), and the
journal records that they are; with a spool file instead of a broker they are written to the spool.
The sender loop (fedd/events/sender.py) takes events from the outbox in order, publishes them, and
deletes them only once the sink confirmed them: delivery is at least once, and an event sent twice
carries the same id.

`direct`: while the outbox is empty and the sink connected, a flush publishes its batch itself and
the journal records it as stored once the sink confirmed it: no SQLite write, read and delete per
event (about 6 us of the outbox's thread, more in GIL hand-overs: docs/events.md). A batch the sink
does not confirm goes to the outbox, and from then on every batch does until the sender has emptied
it again, so events keep their order. A kill meanwhile loses nothing: the journal has them.

Sink down: the loop waits and the outbox fills. Outbox full: the shedding policy drops events; the
drops are reported by at most one `events-dropped` notice and one log line per
`drop_report_interval`, and the notice has a slot of its own outside the outbox's capacity.
"""

from __future__ import annotations

import os
import random
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from fedd.config import EventsConfig
from fedd.errors import describe
from fedd.events.drops import DropReports
from fedd.events.journal import Journal, Mark
from fedd.events.model import Event, EventIds, Template, envelope, render, routing_key
from fedd.events.outbox import Notice, Outbox
from fedd.events.recovery import replay_journal
from fedd.events.sender import BATCH, WINDOW, OutboxSender
from fedd.events.sinks import Sink
from fedd.events.wakeup import Wakeup
from fedd.twtypes import MultiService

log = Logger(namespace="fedd.events")
__all__ = ["BATCH", "WINDOW", "EventsService"]
MAX_RETRY = 5.0  # seconds between attempts to store events while the outbox or spool refuses them


class EventsService(OutboxSender, MultiService):
    name = "events"

    def __init__(
        self,
        config: EventsConfig,
        *,
        clock: Any,
        outbox: Outbox | None,
        sink: Sink,
        rng: random.Random | None = None,
        journal: Journal | None = None,
        ids: EventIds | None = None,
        direct: bool = False,
    ) -> None:
        super().__init__()
        self.config = config
        self.clock = clock
        self.outbox = outbox
        self.sink = sink
        self.rng = rng or random.Random()
        self.direct = direct and outbox is not None
        self.enabled = set(config.types)
        self._sampled = config.get_redirect_sample < 1.0
        self.journal = journal or Journal(config.outbox if outbox is not None else config.spool, clock)
        self._ids = ids or EventIds(int.from_bytes(os.urandom(8)))  # unique across restarts and processes
        self._keys: dict[str, str] = {}
        self._batch: list[Event] = []  # in the journal, not yet stored
        self._unstored: list[tuple[Mark, list[Event]]] = []  # taken from the batch, being (or to be) stored
        self._unstored_n = 0
        self._flush_call: IDelayedCall | None = None
        self._flushing: Deferred[None] | None = None
        self._store_failures = 0
        self._wakeup = Wakeup(clock)  # the sender's idle wait, ended early by new events
        self._loop: Deferred[None] | None = None
        self.depth = 0
        self.emitted = self.sent = self.failed = self.sampled_out = self.journal_errors = 0
        self.last_error = ""
        self._open = False
        self.drops = DropReports(
            clock,
            config,
            outbox=outbox is not None,
            ready=lambda: self._open and not self._notice_sending,
            notify=self._drop_notice,
        )
        self._notice: Notice | None = None  # the unsent events-dropped notice (outbox mode)
        self._notice_sending = False
        self._journal_logged: float | None = None

    # --- producing ----------------------------------------------------------------------------

    def emit(self, event_type: str, payload: dict[str, Any], event_id: str | None = None) -> None:
        """Record an event durably (in the page cache). Never blocks on the network, never raises.
        `event_id`: the caller's, for an event it may publish again after a restart (put-done and
        put-failed: fedd.confirm.pending.outcome_id); by default a fresh one."""
        if not self._admit(event_type):
            return
        event_id = event_id or self._ids()
        try:
            body = envelope(event_id, event_type, payload, self.clock.seconds())
        except (TypeError, ValueError) as exc:  # a payload that cannot be encoded is a bug: log, go on
            log.error("cannot encode {event_type} event: {reason}", event_type=event_type, reason=exc)
            return
        self._append(event_id, event_type, body)
        self.emitted += 1

    def emit_template(self, template: Template, values: tuple[bytes, ...]) -> None:
        """emit() for an event whose envelope is prebuilt (fedd.events.model.template) but for
        `values`, its varying fields already JSON: the web front's get-redirect, once per redirect."""
        event_type = template.event_type
        # the usual case tested at once (every redirect comes here): enabled, not sampled, outbox taking events
        if self._sampled or self._store_failures or not self._open or event_type not in self.enabled:
            if not self._admit(event_type):
                return
        event_id = self._ids()
        body = render(template, event_id, values, self.clock.seconds())
        try:
            self.journal.append_record(body)
        except OSError as exc:  # a full disk: the event is only in memory until stored
            self._journal_failed(exc)
        self._batch.append((event_id, self._keys.get(event_type) or self._key(event_type), body))
        if self._flush_call is None and self._flushing is None and self.running:
            self._flush_call = self.clock.callLater(self.config.flush_interval, self._flush)
        self.emitted += 1

    def _admit(self, event_type: str) -> bool:
        if event_type not in self.enabled:
            return False
        if event_type == "get-redirect" and self.config.get_redirect_sample < 1.0:
            if self.rng.random() >= self.config.get_redirect_sample:
                self.sampled_out += 1
                return False
        if (self._store_failures or not self._open) and (
            len(self._batch) + self._unstored_n >= self.config.outbox_max_events
        ):  # the outbox is not taking events: memory holds no more than it would
            self._note_dropped(1)
            return False
        return True

    def _key(self, event_type: str) -> str:
        key = self._keys.get(event_type)
        if key is None:
            key = self._keys[event_type] = routing_key(self.config.routing_prefix, event_type)
        return key

    def _append(self, event_id: str, event_type: str, body: bytes) -> None:
        try:
            self.journal.append_record(body)
        except OSError as exc:  # a full disk: the event is only in memory until stored
            self._journal_failed(exc)
        self._batch.append((event_id, self._key(event_type), body))
        if self._flush_call is None and self._flushing is None and self.running:
            self._flush_call = self.clock.callLater(self.config.flush_interval, self._flush)

    def _journal_failed(self, exc: OSError) -> None:
        self.journal_errors += 1
        now = self.clock.seconds()
        if self._journal_logged is None or now - self._journal_logged >= self.config.drop_report_interval:
            self._journal_logged = now
            log.error(
                "event journal {path} not writable ({reason}): events are only in memory until stored ({n} so far)",
                path=self.journal.base,
                reason=describe(exc),
                n=self.journal_errors,
            )

    def _flush(self) -> Deferred[None]:
        self._flush_call = None
        if self._flushing is not None:
            return self._flushing
        if not self._open:  # the outbox is still opening: try again shortly
            if self.running:
                self._flush_call = self.clock.callLater(self.config.flush_interval, self._flush)
            return succeed(None)
        if self._batch:  # encoded already (emit): the flush only hands the batch on
            events, self._batch = self._batch, []
            self._unstored.append((self.journal.mark(), events))
            self._unstored_n += len(events)
        if not self._unstored:
            return succeed(None)
        d = ensureDeferred(self._store())
        self._flushing = d
        d.addBoth(self._flushed)
        return d

    def _flushed(self, result: Any) -> Any:
        self._flushing = None
        if self.running and self._flush_call is None and (self._batch or self._unstored):
            delay = self.config.flush_interval * 2 ** min(self._store_failures, 10)
            self._flush_call = self.clock.callLater(min(delay, MAX_RETRY), self._flush)
        return result

    async def _store(self) -> None:
        pending = self._unstored
        events = [event for _, batch in pending for event in batch]
        dropped = 0
        queued = False  # in the outbox: the sender has work
        try:
            if self.outbox is None:  # a spool file is durable itself: no outbox in front of it
                await self.sink.publish(events)
                self.sent += len(events)
            elif not await self._publish_direct(events):
                self.depth, dropped = await self.outbox.add(events)
                queued = True
        except Exception as exc:
            self._store_failures += 1
            self.last_error = describe(exc)
            if self._store_failures == 1:
                log.error(
                    "cannot store events in the {where} ({reason}): they stay in the journal, retrying",
                    where="outbox" if self.outbox is not None else "spool",
                    reason=self.last_error,
                )
            self._shed_unstored()
            return
        self._unstored, self._unstored_n = [], 0  # _flush adds nothing while a store runs
        for mark, _ in pending:
            self._stored(mark)
        if self._store_failures:
            log.info("events stored again after {n} failed attempts", n=self._store_failures)
            self._store_failures = 0
        if dropped:
            self._note_dropped(dropped)
        if queued:  # not after a direct publish: an idle sender would only find the outbox empty (a thread round trip)
            self._kick()

    async def _publish_direct(self, events: list[Event]) -> bool:
        """Publish a batch without the outbox when nothing waits there; False: it goes to the outbox."""
        if not (self.direct and self.depth == 0 and self._notice is None and self.sink.connected):
            return False
        try:
            await self.sink.publish(events)
        except Exception as exc:  # not confirmed (perhaps in part): the outbox sends it again, same ids
            self.failed += 1
            self.last_error = describe(exc)
            return False
        self.sent += len(events)
        return True

    def _stored(self, mark: Mark) -> None:
        try:
            self.journal.stored(mark)
        except OSError as exc:  # stored already: a leftover segment only means duplicates after a restart
            log.error("cannot update the event journal {path}: {reason}", path=self.journal.base, reason=describe(exc))

    def _shed_unstored(self) -> None:
        """Events the outbox or spool does not take stay in memory (and the journal) up to the outbox's
        size; past it the oldest go (the journal records what is done in order)."""
        while self._unstored_n > self.config.outbox_max_events and len(self._unstored) > 1:
            mark, batch = self._unstored.pop(0)
            self._unstored_n -= len(batch)
            self._stored(mark)
            self._note_dropped(len(batch))

    # --- reporting drops ----------------------------------------------------------------------

    def _note_dropped(self, n: int) -> None:
        self.drops.note(n)

    @property
    def dropped(self) -> int:
        return self.drops.dropped

    def _drop_notice(self, n: int, now: float) -> Deferred[None] | None:
        """The events-dropped notice for `n` more drops (it has a slot of its own in the outbox)."""
        if "events-dropped" not in self.enabled:
            return None
        count = n + (self._notice[1] if self._notice is not None else 0)  # an unsent notice is replaced
        payload = {
            "dropped": count,
            "dropped_total": self.drops.dropped,
            "policy": self.config.shed,
            "outbox_max": self.config.outbox_max_events,
        }
        event_id = self._ids()
        body = envelope(event_id, "events-dropped", payload, now)
        if self.outbox is None:
            self._append(event_id, "events-dropped", body)  # into the spool with the next batch
            return None
        event = (event_id, self._key("events-dropped"), body)
        self._notice = (event, count)
        d = self.outbox.put_notice(self._notice)
        d.addErrback(lambda f: log.error("cannot store the events-dropped notice: {reason}", reason=describe(f)))
        self._kick()
        return d

    # --- life cycle -----------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._loop = ensureDeferred(self._start())
        self._loop.addErrback(lambda f: log.failure("event sender stopped", f))

    async def _start(self) -> None:
        if self.outbox is not None:
            self.depth = await self.outbox.open()
            self._notice = self.outbox.notice
        await self._replay()
        self._open = True
        if self.depth:
            log.info("{n} events waiting in the outbox from a previous run", n=self.depth)
        if (self._batch or self._unstored) and self._flush_call is None:
            self._flush_call = self.clock.callLater(self.config.flush_interval, self._flush)
        self.drops.soon()
        if self.outbox is not None:
            await self._send_loop()

    async def _replay(self) -> None:
        """Store what a killed process left in its journal, before any event of this run."""
        depth, dropped = await replay_journal(self.journal, self.outbox, self.sink, self.config.routing_prefix)
        if depth is not None:
            self.depth = depth
        if dropped:
            self._note_dropped(dropped)

    def stopService(self) -> Deferred[None]:
        self.running = False
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self.drops.cancel()
        if self._open:
            if self.outbox is None:
                self.drops.report()  # into the spool with the last batch
            if self._flushing is not None:
                await self._flushing
            await self._flush()  # whatever was emitted goes to the outbox now, not at the next start
        self._kick()
        if self._loop is not None:
            await self._loop
        if self._open and self.outbox is not None:
            self.drops.cancel()
            report = self.drops.report()  # the counts survive the restart in the notice slot
            if report is not None:
                await report
        if self.outbox is not None:
            await self.outbox.close()
        await MultiService.stopService(self)  # children: the broker connection
        self.journal.close(everything_stored=not (self._batch or self._unstored))
        close = getattr(self.sink, "close", None)
        if close is not None:
            close()

    def to_json(self) -> dict[str, Any]:
        sink_error = getattr(self.sink, "last_error", "")
        return {
            "sink": self.sink.describe(),
            "connected": self.sink.connected,
            "outbox_depth": self.depth,
            "pending": len(self._batch) + self._unstored_n,
            "emitted": self.emitted,
            "sent": self.sent,
            "failed_publishes": self.failed,
            "connect_failures": getattr(self.sink, "failures", 0),
            "dropped": self.dropped,
            "sampled_out": self.sampled_out,
            "journal_errors": self.journal_errors,
            "last_error": (sink_error if not self.sink.connected else "") or self.last_error,
        }
