"""Planned downtimes: declared in the configuration or at run time, applied without a restart.

A downtime stops writes to an endpoint (scope `write`), reads and listings (`read`) or both (`all`)
between its start and end; scope `none` is shown but stops nothing (a GOCDB WARNING, by default).
Downtimes also come from other sources (`replace_source`: GOCDB, see fedd/space/gocdb.py), each
set replaced whole by its source and listed with its origin. Run-time downtimes come from the admin resource
(`/.well-known/fedd/downtimes`). With `[state] database` they live in the shared state database
(fedd.state.tables.SharedDowntimes): a host applies its own at once, the others re-read the table when
its change serial moves (within `[state] poll_interval`), and a downtime declared while the database
is down is kept and written when it is back. Without it they live in `[health] downtime_file` (JSON,
fedd.space.downtime_file), which every fedd process of the host re-reads when it changes; a change
re-reads it and writes it whole under an `flock`, so two processes changing it together lose nothing.
Either way all processes apply the same downtimes, and they survive a restart. The workers of
`[server] workers` without either share them through their implicit host state
(fedd.builders.build_state); with `marks` (a worker), a change answers once every worker applied it
(`settled`, fedd.workers.applied). The book re-evaluates itself exactly when a downtime starts or ends.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from fedd.config import DOWNTIME_SCOPES, Config, Downtime
from fedd.errors import BadRequest
from fedd.periodic import Periodic
from fedd.space.downtime_file import DowntimeFile
from fedd.state.tables import SharedDowntimes
from fedd.twtypes import Service
from fedd.workers.applied import AppliedMarks

log = Logger(namespace="fedd.downtime")
FILE_CHECK_SECONDS = 2.0
MAX_DOWNTIMES = 1000
SHARED_MARK = "downtimes"  # fedd.workers.applied: the serial of the shared downtimes a worker applied
WORKERS_FILE_CHECK = 0.25  # seconds: how often workers look at the downtime file


@dataclass(frozen=True)
class Declared:
    id: str
    endpoint: str
    downtime: Downtime
    origin: str  # "config", "admin", or another source's name ("gocdb")
    link: str = ""  # where the source shows it (a GOCDB portal page)

    def to_json(self, now: float) -> dict[str, Any]:
        data = self.downtime.to_json()
        data.update(
            id=self.id,
            endpoint=self.endpoint,
            origin=self.origin,
            active=self.downtime.start <= now < self.downtime.end,
        )
        if self.link:
            data["link"] = self.link
        return data


def parse_request(body: bytes, endpoints: set[str], now: float) -> tuple[str, Downtime]:
    """A downtime from an admin's JSON: {"endpoint", "start"?, "end" | "duration", "scope"?, "reason"?}."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: "[[[[..." nested too deep
        raise BadRequest("expected a JSON object") from None
    if not isinstance(data, dict):
        raise BadRequest("expected a JSON object")
    endpoint = data.get("endpoint")
    if not isinstance(endpoint, str) or endpoint not in endpoints:  # a list or object is not hashable
        raise BadRequest(f"unknown endpoint {endpoint!r}")
    scope = data.get("scope", "all")
    if scope not in DOWNTIME_SCOPES:
        raise BadRequest(f"scope must be one of {', '.join(DOWNTIME_SCOPES)}")
    try:
        start = float(data.get("start", now))
        if "duration" in data:
            end = start + float(data["duration"])
        else:
            end = float(data["end"])
    except (KeyError, TypeError, ValueError, OverflowError):  # OverflowError: a 400-digit integer
        raise BadRequest("give 'end' (epoch seconds) or 'duration' (seconds); 'start' is optional") from None
    if not (end > start and end > now) or end - start > 366 * 86400 or start != start or end != end:
        raise BadRequest("the downtime must end after it starts, in the future, within a year")
    reason = str(data.get("reason", ""))[:500]
    return str(endpoint), Downtime(start, end, scope, reason)


class DowntimeBook(Service):
    name = "downtimes"

    def __init__(
        self,
        configured: Mapping[str, tuple[Downtime, ...]],
        reactor: Any,
        *,
        path: str = "",
        on_change: Callable[[frozenset[str]], None] | None = None,
        shared: SharedDowntimes | None = None,
        marks: AppliedMarks | None = None,
        settle_timeout: float = 5.0,
    ) -> None:
        self.reactor = reactor
        self.path = path
        self.shared = shared
        # a worker of [server] workers: marks the downtimes it applied; a change answers once every
        # worker of the host applies it (`settled`)
        self.marks = marks if shared is not None or path else None
        self.file = DowntimeFile(path, self.marks) if shared is None and path else None
        self.settle_timeout = settle_timeout
        self._last_write: Deferred[None] | None = None
        # run-time changes of this host not yet in the shared database: kept across re-reads
        self._unsaved: dict[str, Declared] = {}
        self._unremoved: set[str] = set()
        self._loaded = shared is None
        self.on_change = on_change
        self._configured = [
            Declared(f"config-{eid}-{i}", eid, d, "config")
            for eid, downtimes in configured.items()
            for i, d in enumerate(downtimes)
        ]
        self._admin: list[Declared] = []
        self._sources: dict[str, list[Declared]] = {}  # origin -> its whole current set
        self._timer: IDelayedCall | None = None
        self._loop: Periodic | None = None
        self.read_blocked: frozenset[str] = frozenset()

    def reconfigure(self, new: Config) -> list[str]:
        """New downtimes from a reloaded configuration; those declared at run time are kept."""
        self._configured = [
            Declared(f"config-{ep.id}-{i}", ep.id, d, "config")
            for ep in new.endpoints
            for i, d in enumerate(ep.downtimes)
        ]
        if self.running:
            self.evaluate()
        return []

    def replace_source(self, origin: str, declared: list[Declared]) -> None:
        """The whole current set of downtimes from another source (e.g. "gocdb"); applied at once."""
        if origin in ("config", "admin") or any(d.origin != origin for d in declared):
            raise ValueError(f"downtimes of source {origin!r} must all carry that origin")
        if declared == self._sources.get(origin, []):
            return
        if declared:
            self._sources[origin] = list(declared)
        else:
            self._sources.pop(origin, None)
        if self.running:
            self.evaluate()

    @property
    def ready(self) -> bool:
        """The shared downtimes were read once (or the database cannot be reached): until then a
        restarted host could serve an endpoint another host closed, so its health says 503."""
        return self._loaded or (self.shared is not None and self.shared.unreachable)

    @property
    def all(self) -> list[Declared]:
        return self._configured + self._admin + [d for ds in self._sources.values() for d in ds]

    def startService(self) -> None:
        super().startService()
        if self.shared is not None:
            self.shared.watch(self._reload_shared)
        elif self.file is not None:
            self._reload_file()
            check = Periodic(self.reactor, self._check_file, "downtime file check")
            # workers: every worker re-reads the file within 0.25 s (a stat), so a change answers soon
            self._loop = check.start(FILE_CHECK_SECONDS if self.marks is None else WORKERS_FILE_CHECK, now=False)
        self.evaluate()

    def stopService(self) -> Any:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()

    # --- questions ----------------------------------------------------------------------------------

    def blocks(self, endpoint: str, what: str, now: float) -> str:
        """Why `endpoint` takes no `what` (read/write) now; "" when it does."""
        for d in self.all:
            if d.endpoint == endpoint and d.downtime.blocks(what, now):
                reason = f": {d.downtime.reason}" if d.downtime.reason else ""
                return f"in a planned downtime until {_iso(d.downtime.end)}{reason}"
        return ""

    def to_json(self) -> list[dict[str, Any]]:
        now = self.reactor.seconds()
        return [d.to_json(now) for d in self.all if d.downtime.end > now]

    # --- changes ------------------------------------------------------------------------------------

    def add(self, endpoint: str, downtime: Downtime) -> Declared:
        if len(self._admin) >= MAX_DOWNTIMES:
            raise BadRequest(f"too many downtimes (at most {MAX_DOWNTIMES})")
        declared = Declared(secrets.token_hex(6), endpoint, downtime, "admin")
        with self._locked():
            self._catch_up()
            self._admin.append(declared)
            self._save(declared)
        log.info(
            "downtime {id} declared for {endpoint} ({scope}) until {end}: {reason}",
            id=declared.id,
            endpoint=endpoint,
            scope=downtime.scope,
            end=_iso(downtime.end),
            reason=downtime.reason,
        )
        self.evaluate()
        return declared

    def remove(self, downtime_id: str) -> bool:
        with self._locked():
            self._catch_up()
            before = len(self._admin)
            self._admin = [d for d in self._admin if d.id != downtime_id]
            if len(self._admin) == before:
                self.evaluate()  # what the file held may have changed
                return False
            self._save(removed=downtime_id)
        log.info("downtime {id} removed", id=downtime_id)
        self.evaluate()
        return True

    def evaluate(self) -> None:
        """Apply what is active now and wake up at the next start or end."""
        now = self.reactor.seconds()
        self._admin = [d for d in self._admin if d.downtime.end > now]
        blocked = frozenset(d.endpoint for d in self.all if d.downtime.blocks("read", now))
        if blocked != self.read_blocked:
            log.info("endpoints closed for reads by downtimes: {ids}", ids=sorted(blocked) or "none")
            self.read_blocked = blocked
        if self.on_change is not None:
            self.on_change(blocked)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        edges = [t for d in self.all for t in (d.downtime.start, d.downtime.end) if t > now]
        if edges:
            self._timer = self.reactor.callLater(min(edges) - now + 0.001, self.evaluate)

    # --- the downtime file (fedd.space.downtime_file) -----------------------------------------------

    def _check_file(self) -> None:
        assert self.file is not None
        if self.file.changed():
            self._reload_file()
            self.evaluate()

    def _catch_up(self) -> None:
        """Processes sharing the downtime file: read what another wrote before changing it (the file
        is written whole, so a change made on an older copy would undo theirs). Called under the lock."""
        if self.file is not None:
            self._reload_file()

    def _locked(self) -> AbstractContextManager[None]:
        return self.file.locked() if self.file is not None else nullcontext()

    def _reload_file(self) -> None:
        assert self.file is not None
        rows = self.file.read()
        if rows is not None:  # None: unreadable (logged), the previous list stays
            self._admin = [Declared(i, e, d, "admin") for i, e, d in rows]

    def _save(self, added: Declared | None = None, removed: str = "") -> None:
        if self.shared is not None:
            self._save_shared(added, removed)
        elif self.file is not None:
            self.file.write([(d.id, d.endpoint, d.downtime) for d in self._admin])

    # --- the shared database ------------------------------------------------------------------------

    def _save_shared(self, added: Declared | None, removed: str) -> None:
        assert self.shared is not None
        written: Deferred[None] = Deferred()
        if added is not None:
            self._unsaved[added.id] = added
            d = self.shared.insert(added.id, added.endpoint, added.downtime, self.reactor.seconds())
            d.addCallbacks(lambda _: self._unsaved.pop(added.id, None), lambda f: self._lost("declared", added.id, f))
        if removed:
            self._unsaved.pop(removed, None)
            self._unremoved.add(removed)
            d = self.shared.delete(removed)
            d.addCallbacks(lambda _: self._unremoved.discard(removed), lambda f: self._lost("removed", removed, f))

        def release(_: object) -> None:
            written.callback(None)

        d.addBoth(release)
        self._last_write = written

    def settled(self) -> Deferred[None]:
        """Fires once the last change made here is applied by every worker of the host (at most
        `settle_timeout` seconds for the write and as long for the others' marks; at once without
        workers, or while the database is known to be down: the change is queued, and applied by the
        others once it is written)."""
        write, marks, shared = self._last_write, self.marks, self.shared
        read = self.file.applied(self.settle_timeout) if self.file is not None else None
        if read is not None:
            return read.addCallback(self._late)
        if write is None or marks is None or shared is None or shared.unreachable:
            return succeed(None)
        waiter: Deferred[None] = Deferred()

        # a write the database has not taken within settle_timeout (it went down after the change was
        # queued, before this worker noticed) ends the wait too: the others apply it once it is written
        def end_wait() -> None:
            if not waiter.called:
                waiter.callback(None)

        timer = self.reactor.callLater(self.settle_timeout, end_wait)

        def release(result: object) -> object:
            if timer.active():
                timer.cancel()
            end_wait()
            return result

        write.addBoth(release)

        async def wait() -> None:
            await waiter
            if not write.called:
                self._late(["all (the change is not written yet)"])
                return
            serial = await shared.serial()
            self._late(await marks.wait(SHARED_MARK, serial, self.settle_timeout))

        d = ensureDeferred(wait())
        d.addErrback(lambda f: log.warn("cannot tell whether every worker applied it: {r}", r=f.getErrorMessage()))
        return d

    def _late(self, late: list[int] | list[str]) -> None:
        if late:
            log.warn(
                "downtime change not yet applied by worker(s) {late} after {t:g}s (they apply it when they can)",
                late=", ".join(map(str, late)),
                t=self.settle_timeout,
            )

    def _lost(self, what: str, downtime_id: str, failure: Any) -> None:
        log.error(
            "downtime {id} {what} here could not be written to the state database: {reason}",
            id=downtime_id,
            what=what,
            reason=failure.getErrorMessage(),
        )

    def _reload_shared(self) -> None:
        assert self.shared is not None
        d = self.shared.load_with_serial(self.reactor.seconds())
        d.addCallbacks(
            self._apply_marked,
            lambda f: log.warn(
                "cannot read the shared downtimes: {reason} (keeping the previous list)", reason=f.getErrorMessage()
            ),
        )

    def _apply_marked(self, loaded: tuple[int, list[tuple[str, str, Downtime]]]) -> None:
        serial, rows = loaded
        self._apply_shared(rows)
        if self.marks is not None:
            self.marks.mark(SHARED_MARK, serial)

    def _apply_shared(self, rows: list[tuple[str, str, Downtime]]) -> None:
        stored = [Declared(i, e, d, "admin") for i, e, d in rows if i not in self._unremoved]
        ids = {d.id for d in stored}
        self._admin = stored + [d for d in self._unsaved.values() if d.id not in ids]
        self._loaded = True
        if self.running:
            self.evaluate()


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
