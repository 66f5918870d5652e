"""The events that end an upload's wait (`put-done`, `put-failed`), and the last of them (`recent`).

Each carries the upload's own id (`fedd.confirm.pending.outcome_id`: the same when published again
after a restart), its federation path's fields, the endpoint (as `rse` too), its bytes, how it was
confirmed (a look, a notification, `carried`: fedd sent the body itself) and the seconds from the
redirect to the outcome. `put-failed` says why. `put-done` carries the new object's adler32: what
the storage reports (the stat of the look that confirmed it; an upload confirmed by a notification
is stat-ed now), else what `[checksums]` knows, or computes within `checksum_wait` (0: no
computation); a value it cannot have in time leaves it out, never the event.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

from twisted.logger import Logger

from fedd.checksums.digest import Want
from fedd.confirm.pending import Upload, outcome_id
from fedd.endpoints.base import Stat
from fedd.endpoints.interfaces import IReadable
from fedd.errors import describe
from fedd.events.model import file_fields
from fedd.federation import Replica

log = Logger(namespace="fedd.confirm")
ADLER32 = [Want("digest", ("adler32",))]
RECENT = 20  # outcomes the status shows


class Emit(Protocol):
    """EventsService.emit: put-done and put-failed carry the upload's own id (outcome_id)."""

    def __call__(self, event_type: str, payload: dict[str, Any], event_id: str | None = None) -> None: ...


class Outcomes:
    """Publishes the confirm service's outcomes through `emit`; `checksums` (a ChecksumService, or
    None) brings the adler32 values the storage does not report."""

    def __init__(self, *, federation: Any, clock: Any, emit: Emit, checksums: Any = None) -> None:
        self.fed = federation
        self.clock = clock
        self.emit = emit
        self.checksums = checksums
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)

    def failed(self, upload: Upload, at: float, how: str, reason: str) -> None:
        self._publish("put-failed", upload, self._payload(upload, at, how, bytes=upload.size, reason=reason))

    def carried(self, upload: Upload, at: float, adler32: str | None) -> None:
        self._publish("put-done", upload, self._payload(upload, at, "carried", bytes=upload.size, adler32=adler32))

    async def done(
        self, upload: Upload, size: int | None, landed: float, how: str, found: Stat | None, checksum_wait: float
    ) -> None:
        """`found`: the object as the look that confirmed it saw it (its checksums need no second stat)."""
        adler32 = await self.adler32(upload, found, checksum_wait)
        self._publish("put-done", upload, self._payload(upload, landed, how, bytes=size, adler32=adler32))

    async def adler32(self, upload: Upload, stat: Stat | None, checksum_wait: float) -> str | None:
        """The new object's adler32: reported by the storage, known, or computed (up to checksum_wait).
        `stat`: the object as a look just saw it; None (confirmed by a notification): stat it now."""
        endpoint = self.fed.endpoints.get(upload.endpoint)
        if endpoint is None:
            return None
        try:
            if stat is None:
                d = IReadable(endpoint).stat(upload.endpoint_path)
                d.addTimeout(endpoint.config.timeout * 2, self.clock)
                stat = await d
            if stat is None:
                return None
            known = dict(stat.checksums).get("adler32")
            if known is not None or self.checksums is None:
                return known
            url = IReadable(endpoint).url_for(upload.endpoint_path, self.clock.seconds(), "GET")
            replica = Replica(upload.endpoint, url, stat, 0)
            if checksum_wait <= 0:  # no computation: what fedd already knows
                return self.checksums.known(upload.path, [replica]).get("adler32")  # type: ignore[no-any-return]
            answer = await self.checksums.answer(upload.path, [replica], ADLER32, checksum_wait)
            value: str | None = answer.values.get("adler32")
            return value
        except Exception as exc:  # put-done goes out without it
            log.info("no adler32 for {path}: {reason}", path=upload.path, reason=describe(exc))
            return None

    def _payload(self, upload: Upload, at: float, how: str, **extra: Any) -> dict[str, Any]:
        return {
            **file_fields(upload.path),
            "rse": upload.endpoint,
            "endpoint": upload.endpoint,
            **extra,
            "duration": round(at - upload.started, 3),
            "confirmed_by": how,
        }

    def _publish(self, event_type: str, upload: Upload, payload: dict[str, Any]) -> None:
        self.recent.append({"event": event_type, **payload})
        self.emit(event_type, payload, outcome_id(upload))
