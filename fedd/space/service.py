"""The quota reporter: measures used/free space of every endpoint on a schedule, shares it, reports it.

- Each endpoint is measured by its own method (`Endpoint.space`: RFC 4331 PROPFIND, paged listing sum,
  Ceph admin API, statvfs), at most one measurement per endpoint at a time, each with a time limit.
- With memcached, measurements are shared by all fedd processes: a process adopts a fresh enough
  measurement from memcached instead of measuring, and a short memcached lock makes sure only one
  process lists a big bucket per interval.
- A failed measurement keeps the last good value, marked with its age; a value older than
  `stale_after` is reported as stale (in SRR, status and metrics), never as fresh.
- Writes redirected by fedd are counted against the free space until the next measurement, so a burst
  of uploads does not overfill an endpoint that was measured as nearly full.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from fedd.config import Config
from fedd.endpoints.base import Endpoint, Space
from fedd.errors import describe
from fedd.health.service import HostShare
from fedd.locate.memcache import Memcached
from fedd.periodic import Periodic
from fedd.space.srr import srr_document, write_json_file
from fedd.state.tables import SharedReservations
from fedd.twtypes import Service

log = Logger(namespace="fedd.space")
KEY_PREFIX = b"fedd:space:"


@dataclass
class Measurement:
    """What is known of one endpoint's space: the last good value and the last error."""

    space: Space | None = None
    measured: float | None = None  # when `space` was measured
    error: str | None = None
    error_at: float | None = None
    reserved: int = 0  # bytes of uploads redirected since `measured`
    others: int = 0  # the same, by other hosts ([state] database; brought up to date before each use)
    running: bool = False

    def stale(self, now: float, stale_after: float) -> bool:
        return self.measured is None or now - self.measured > stale_after

    def free(self) -> int | None:
        if self.space is None or self.space.free is None:
            return None
        return max(0, self.space.free - self.reserved - self.others)

    def used(self) -> int | None:
        if self.space is None or self.space.used is None:
            return None
        return self.space.used + self.reserved + self.others

    def to_json(self, now: float, stale_after: float) -> dict[str, Any]:
        space = self.space or Space()
        return {
            "used": self.used(),
            "total": space.total,
            "free": self.free(),
            "files": space.files,
            "source": space.source or None,
            "measured": self.measured,
            "age": None if self.measured is None else round(now - self.measured, 3),
            "stale": self.stale(now, stale_after),
            "reserved": self.reserved,
            "reserved_by_others": self.others,
            "error": self.error,
            "error_at": self.error_at,
        }


def _encode(space: Space, measured: float) -> bytes:
    return json.dumps(
        {
            "used": space.used,
            "total": space.total,
            "files": space.files,
            "source": space.source,
            "available": space.available,
            "measured": measured,
        }
    ).encode()


def _decode(data: bytes) -> tuple[Space, float] | None:
    try:
        raw = json.loads(data)
        space = Space(
            used=raw["used"], total=raw["total"], files=raw["files"], source=raw["source"], available=raw["available"]
        )
        return space, float(raw["measured"])
    except (ValueError, KeyError, TypeError):
        return None


class SpaceService(Service):
    name = "space"

    def __init__(
        self,
        config: Config,
        endpoints: Mapping[str, Endpoint],
        reactor: Any,
        *,
        memcached: Memcached | None = None,
        emit: Callable[[str, dict[str, Any]], None] | None = None,
        shared: HostShare | None = None,
        reservations: SharedReservations | None = None,
    ) -> None:
        """With `shared` (`[server] workers` without memcached), only the leading worker measures
        and publishes each round; the others take its measurements and never measure."""
        self.config = config
        self.shared = shared
        self.reservations = reservations  # other hosts' upload reservations ([state] database)
        self.following = shared is not None and not shared.leader
        self.settings = config.space
        self.endpoints = endpoints
        self.reactor = reactor
        self.memcached = memcached
        self.emit = emit
        self.measurements: dict[str, Measurement] = {eid: Measurement() for eid in endpoints}
        self.rounds = 0
        self._loop: Periodic | None = None
        self._round: Deferred[Any] | None = None

    # --- schedule ---------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self.shared is not None and self.following:
            self._loop = self.shared.follow("space", self.adopt, self.reactor)
            return
        self._loop = Periodic(self.reactor, self._tick, "space round").start(self.settings.interval)

    def published(self) -> dict[str, Any]:
        """The measurements as the leading worker shares them."""
        return {
            eid: {
                "space": None if m.space is None or m.measured is None else json.loads(_encode(m.space, m.measured)),
                "error": m.error,
                "error_at": m.error_at,
            }
            for eid, m in self.measurements.items()
        }

    def adopt(self, published: dict[str, Any]) -> None:
        """Take the leading worker's measurements (a newer one resets what this worker reserved)."""
        for eid, data in published.items():
            m = self.measurements.get(eid)
            if m is None or not isinstance(data, dict):
                continue
            shared = _decode(json.dumps(data["space"]).encode()) if data.get("space") else None
            if shared is not None and (m.measured is None or shared[1] > m.measured):
                m.space, m.measured, m.reserved = shared[0], shared[1], 0
            m.error, m.error_at = data.get("error"), data.get("error_at")

    def reconfigure(self, new: Config) -> list[str]:
        """A reload: new settings and endpoints (a new one starts unmeasured, a removed one is
        forgotten); a new `[space] interval` restarts the loop (a round under way finishes, the next
        one comes one new interval from now)."""
        self.config, self.settings = new, new.space
        ids = {ep.id for ep in new.endpoints}
        for eid in [eid for eid in self.measurements if eid not in ids]:
            del self.measurements[eid]
        for eid in ids:
            self.measurements.setdefault(eid, Measurement())
        if self.running and not self.following and self._loop is not None:
            self._loop.retime(new.space.interval, "[space] interval")
        return []

    @property
    def interval(self) -> float | None:
        """The period in force (None when not running)."""
        return self._loop.interval if self._loop is not None else None

    def stopService(self) -> Any:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._round is not None:
            self._round.cancel()

    def _tick(self) -> None:
        if self._round is not None:
            return  # the previous round is still running: its endpoints keep their slot
        self._round = self.measure_all()
        self._round.addBoth(self._round_done)

    def _round_done(self, result: Any) -> None:
        self._round = None
        self.rounds += 1
        if self.shared is not None:
            self.shared.publish("space", self.published())
        if self.settings.srr_file:
            d = deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self._write_srr_file, self.srr())
            d.addErrback(
                lambda f: log.warn("cannot write {file}: {reason}", file=self.settings.srr_file, reason=describe(f))
            )

    def measure_all(self) -> Deferred[Any]:
        ids = [eid for eid, ep in self.endpoints.items() if ep.config.space_source != "none"]
        return DeferredList([ensureDeferred(self.measure(eid)) for eid in ids], consumeErrors=True)

    # --- one endpoint -----------------------------------------------------------------------------

    async def measure(self, eid: str) -> None:
        m = self.measurements[eid]
        if m.running:
            return
        m.running = True
        try:
            if await self._adopt_shared(eid):
                return
            if not await self._lock(eid):
                return  # another process is measuring it right now; its result reaches us next round
            await self._measure(eid)
        except Exception as exc:  # a broken endpoint class must not stop the reporter
            self._failed(eid, describe(exc))
        finally:
            m.running = False

    async def _adopt_shared(self, eid: str) -> bool:
        if self.memcached is None:
            return False
        data = await self.memcached.get(KEY_PREFIX + eid.encode())
        shared = _decode(data) if data else None
        if shared is None:
            return False
        space, measured = shared
        m = self.measurements[eid]
        if m.measured is None or measured > m.measured:
            m.space, m.measured, m.reserved = space, measured, 0
        now: float = self.reactor.seconds()
        return now - measured < self.settings.interval * 0.9

    def _lock(self, eid: str) -> Deferred[bool]:
        if self.memcached is None:
            d: Deferred[bool] = Deferred()
            d.callback(True)
            return d
        return self.memcached.add(b"fedd:space-lock:" + eid.encode(), b"1", self.settings.timeout)

    async def _measure(self, eid: str) -> None:
        endpoint = self.endpoints[eid]
        started = self.reactor.seconds()
        d = endpoint.space(self.settings.max_list_objects)
        d.addTimeout(self.settings.timeout, self.reactor)
        try:
            space = await d
        except Exception as exc:
            self._failed(eid, describe(exc))
            return
        if not isinstance(space, Space) or any(
            v is not None and (not isinstance(v, int) or v < 0) for v in (space.used, space.total, space.files)
        ):
            self._failed(eid, f"unusable measurement {space!r}")
            return
        now = self.reactor.seconds()
        m = self.measurements[eid]
        m.space, m.measured, m.reserved = space, now, 0
        m.error = None
        if self.memcached is not None:
            ttl = self.settings.stale_seconds * 2
            self.memcached.set(KEY_PREFIX + eid.encode(), _encode(space, now), ttl)
            self.memcached.delete(b"fedd:space-lock:" + eid.encode())
        log.debug("space of {endpoint}: {space} in {secs:.1f}s", endpoint=eid, space=space, secs=now - started)
        if self.emit is not None:
            self.emit("quota-report", self.report_payload(eid))

    def _failed(self, eid: str, reason: str) -> None:
        m = self.measurements[eid]
        first = m.error is None
        m.error, m.error_at = reason, self.reactor.seconds()
        if first:
            log.warn(
                "cannot measure the space of {endpoint}: {reason} (keeping the last value, age {age})",
                endpoint=eid,
                reason=reason,
                age="none" if m.measured is None else f"{self.reactor.seconds() - m.measured:.0f}s",
            )
        if self.memcached is not None:
            self.memcached.delete(b"fedd:space-lock:" + eid.encode())

    # --- used by placement ------------------------------------------------------------------------

    def reserve(self, eid: str, size: int) -> None:
        """An upload of `size` bytes was redirected to `eid`: count it until the next measurement."""
        if size > 0 and eid in self.measurements:
            m = self.measurements[eid]
            m.reserved += size
            if self.reservations is not None and m.measured is not None:
                self.reservations.add(eid, size, m.measured)

    def _counted(self, eid: str) -> Measurement | None:
        """The measurement of `eid`, with the other hosts' reservations brought up to date."""
        m = self.measurements.get(eid)
        if m is not None and self.reservations is not None:
            m.others = self.reservations.others(eid, m.measured)
        return m

    def free(self, eid: str) -> int | None:
        m = self._counted(eid)
        return None if m is None else m.free()

    def used(self, eid: str) -> int | None:
        m = self._counted(eid)
        return None if m is None else m.used()

    def is_stale(self, eid: str) -> bool:
        return self.measurements[eid].stale(self.reactor.seconds(), self.settings.stale_seconds)

    # --- reports ----------------------------------------------------------------------------------

    def report_payload(self, eid: str) -> dict[str, Any]:
        data = self.measurements[eid].to_json(self.reactor.seconds(), self.settings.stale_seconds)
        data["endpoint"] = eid
        return data

    def to_json(self) -> dict[str, Any]:
        now = self.reactor.seconds()
        for eid in self.measurements:
            self._counted(eid)
        return {eid: m.to_json(now, self.settings.stale_seconds) for eid, m in self.measurements.items()}

    def quota(self, endpoint_ids: list[str]) -> tuple[int, int] | None:
        """(available, used) bytes over `endpoint_ids` for RFC 4331; None when nothing is known."""
        used_total = free_total = 0
        known = False
        for eid in endpoint_ids:
            m = self._counted(eid)
            if m is None or m.space is None:
                continue
            used, free = m.used(), m.free()
            if used is not None:
                used_total += used
                known = True
            if free is not None:
                free_total += free
                known = True
        return (free_total, used_total) if known else None

    def srr(self, base_url: str = "") -> dict[str, Any]:
        """WLCG Storage Resource Reporting JSON: one share per endpoint (or per configured share name)."""
        return srr_document(
            self.config.endpoints,
            lambda eid: self._counted(eid) or Measurement(),
            now=self.reactor.seconds(),
            stale_after=self.settings.stale_seconds,
            service_name=self.settings.name,
            base_url=base_url,
        )

    def _write_srr_file(self, data: dict[str, Any]) -> None:
        write_json_file(self.settings.srr_file, data)
