"""Cross-process cache invalidation through memcached: what one fedd process wrote, deleted or moved
is dropped from every other process's in-process locate cache within a poll interval.

The writer increments a shared sequence number and stores the path in slot `seq % SLOTS`; every
process polls the sequence number (one small get per interval) and drops the paths of the slots it has
not seen yet. More than SLOTS changes between two polls, or a slot that never appears, empties the
whole in-process cache: the safe answer when the log cannot be followed.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger

from fedd.locate.cache import LocalCache
from fedd.locate.memcache import Memcached
from fedd.periodic import Periodic
from fedd.twtypes import Service

log = Logger(namespace="fedd.locate.invalidate")
SEQ_KEY = b"fedd:inv:seq"
SLOTS = 4096
SLOT_TTL = 600
MISSING_POLLS = 4  # a slot still missing after this many polls is given up (and the cache emptied)


def slot_key(n: int) -> bytes:
    return b"fedd:inv:%d" % (n % SLOTS)


class InvalidationLog(Service):
    name = "invalidations"

    def __init__(self, memcached: Memcached, cache: LocalCache, clock: Any, interval: float = 0.5) -> None:
        self.memcached = memcached
        self.cache = cache  # this process's locate answers, dropped as the others change paths
        self.clock = clock
        self.interval = interval
        self.seen: int | None = None
        self.published = self.applied = self.flushes = 0
        self._missing = 0
        self._loop: Periodic | None = None
        self._busy = False

    def startService(self) -> None:
        super().startService()
        self._loop = Periodic(self.clock, self._poll, "invalidation poll").start(self.interval, now=True)

    def stopService(self) -> Any:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    # --- writing ----------------------------------------------------------------------------------

    def publish(self, path: str) -> None:
        ensureDeferred(self._publish(path)).addErrback(lambda f: log.failure("cannot publish an invalidation", f))

    async def _publish(self, path: str) -> None:
        n = await self.memcached.incr(SEQ_KEY)
        if n is None:
            await self.memcached.add(SEQ_KEY, b"0", 0)
            n = await self.memcached.incr(SEQ_KEY)
            if n is None:
                return  # memcached is down: the other processes fall back on their TTLs
        self.memcached.set(slot_key(n), f"{n} {path}".encode(), SLOT_TTL)
        self.published += 1

    # --- following --------------------------------------------------------------------------------

    def _poll(self) -> None:
        if self._busy:
            return
        self._busy = True
        d = ensureDeferred(self._follow())
        d.addErrback(lambda f: log.failure("invalidation poll failed", f))
        d.addBoth(self._done)

    def _done(self, _: Any) -> None:
        self._busy = False

    async def _follow(self) -> None:
        if not self.memcached.connected(SEQ_KEY):
            self.seen = None  # changes made meanwhile cannot be followed: start afresh when it is back
            return
        raw = await self.memcached.get(SEQ_KEY)
        if raw is None:
            # nobody has written yet (follow from the very first change), or memcached lost the log
            # (restarted while this process could not see it): what was cached before may be stale
            if self.seen or (self.seen is None and len(self.cache)):
                self._flush("following the change log from a new starting point")
            self.seen = 0
            return
        if not raw.strip().isdigit():
            return
        latest = int(raw)
        if self.seen is None or latest < self.seen:
            # first contact (at start or after memcached was unreachable), or memcached restarted: what
            # changed before cannot be known, so nothing cached before may be trusted
            if self.seen is not None or len(self.cache):
                self._flush("following the change log from a new starting point")
            self.seen = latest
            return
        if latest == self.seen:
            return
        if latest - self.seen > SLOTS:
            self._flush(f"{latest - self.seen} changes since the last poll")
            self.seen = latest
            return
        for n in range(self.seen + 1, latest + 1):
            entry = await self.memcached.get(slot_key(n))
            number, _, path = (entry or b"").decode("utf-8", "replace").partition(" ")
            if number != str(n):
                self._missing += 1
                if self._missing < MISSING_POLLS:
                    return  # the writer may not have stored it yet: look again next poll
                self._flush(f"change {n} is missing from memcached")
                self.seen = latest
                self._missing = 0
                return
            self._missing = 0
            self.cache.drop(path)
            self.applied += 1
            self.seen = n

    def _flush(self, why: str) -> None:
        self.flushes += 1
        self.cache.clear()
        log.info("emptied the in-process locate cache: {why}", why=why)

    def to_json(self) -> dict[str, Any]:
        return {"seen": self.seen, "published": self.published, "applied": self.applied, "flushes": self.flushes}
