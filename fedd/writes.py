"""Federated writes: where an upload goes, and DELETE/MKCOL/MOVE across the endpoints of a path.

No HTTP here: `fedd.web` turns these answers into 307/204/201 and errors into statuses. Every
operation ends by dropping the path from the locate caches, so what was written, deleted or moved is
seen by the next read or listing at once (not after a TTL).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.logger import Logger
from twisted.web.iweb import IBodyProducer

from fedd.config import Config, WriteConfig
from fedd.endpoints.interfaces import ITPCTarget, IWritable
from fedd.errors import (
    BadGateway,
    ClientGone,
    Conflict,
    EndpointError,
    Forbidden,
    InsufficientStorage,
    MethodNotAllowed,
    NoReplicaAvailable,
    NotFound,
    PartialFailure,
    PreconditionFailed,
    describe,
)
from fedd.federation import Federation
from fedd.select.place import Placement, WriteCandidate, place
from fedd.space.downtime import DowntimeBook
from fedd.space.service import SpaceService

log = Logger(namespace="fedd.writes")
MAX_UPLOAD = 1 << 62  # larger declared sizes are absurd


CARRY_MIN_RATE = 1 << 20  # bytes/s: a carried upload slower than this times out


@dataclass(frozen=True)
class PutTarget:
    endpoint: str
    url: str
    placement: Placement
    overwrite: bool
    path: str = ""


def _absolute_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise BadGateway("this endpoint cannot take uploads carried by fedd")
    return url


@dataclass
class Outcome:
    """What a multi-endpoint operation did, per endpoint."""

    done: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        parts = []
        if self.done:
            parts.append(f"done on {', '.join(sorted(self.done))}")
        if self.absent:
            parts.append(f"not present on {', '.join(sorted(self.absent))}")
        parts += [f"failed on {eid}: {why}" for eid, why in sorted(self.failed.items())]
        return "; ".join(parts)


class Writer:
    def __init__(
        self,
        federation: Federation,
        config: WriteConfig,
        *,
        space: SpaceService | None = None,
        downtimes: DowntimeBook | None = None,
    ) -> None:
        self.fed = federation
        self.config = config
        self.space = space
        self.downtimes = downtimes

    def reconfigure(self, new: Config) -> list[str]:
        self.config = new.write  # read per request: the next write follows it
        return []

    # --- which endpoints ----------------------------------------------------------------------------

    def writable(self, path: str) -> dict[str, str]:
        """Endpoint id -> endpoint path, for every writable endpoint the namespace maps `path` to."""
        return {
            t.endpoint: t.path
            for t in self.fed.mapped(path)
            if t.endpoint in self.fed.endpoints and self.fed.endpoints[t.endpoint].config.write
        }

    def _blocked(self, eid: str, what: str) -> str:
        if self.downtimes is None:
            return ""
        return self.downtimes.blocks(eid, what, self.fed.clock.seconds())

    def candidates(self, ids: list[str]) -> list[WriteCandidate]:
        """Endpoints `ids` as placement sees them now (downtimes, health, space, quota)."""
        return self._candidates(ids, {})

    def _candidates(self, ids: list[str], failed: dict[str, str]) -> list[WriteCandidate]:
        out = []
        for c in self.fed.candidates(ids):
            ep = self.fed.endpoints[c.endpoint].config
            blocked = self._blocked(c.endpoint, "write")
            if not blocked and c.endpoint in failed:
                blocked = f"did not answer: {failed[c.endpoint]}"
            out.append(
                WriteCandidate(
                    endpoint=c.endpoint,
                    lat=c.lat,
                    lon=c.lon,
                    state=c.state,
                    weight=c.weight,
                    free=self.space.free(c.endpoint) if self.space else None,
                    used=self.space.used(c.endpoint) if self.space else None,
                    quota=ep.quota,
                    min_free=ep.min_free,
                    blocked=blocked,
                )
            )
        return out

    # --- PUT ----------------------------------------------------------------------------------------

    async def put(self, path: str, client_ip: str, size: int | None) -> PutTarget:
        if path == "/" or path.endswith("/"):
            raise Conflict("cannot PUT a collection")
        if size is not None and not 0 <= size <= MAX_UPLOAD:
            raise ValueError(size)
        targets = self.writable(path)
        if not targets:
            # a read-only part of the namespace, not a full one: 403 like DELETE and MKCOL (a 507 reads
            # "out of space" to FTS and Rucio)
            raise Forbidden(f"no writable endpoint serves {path}")
        existing, failed = await self._existing(path)
        overwrite = bool(existing)
        ids = sorted(targets)
        if existing:
            if not self.config.allow_overwrite:
                raise Conflict(f"{path} exists and overwriting is not allowed here")
            if len(existing) > 1:
                raise Conflict(f"{path} has replicas on {len(existing)} endpoints: delete it before writing it again")
            if existing[0] not in targets:
                raise Conflict(f"{path} exists on {existing[0]}, which is read-only")
            ids = existing  # the new content replaces the old one where it is
        placement = place(
            self._candidates(ids, failed),
            self.fed.client_location(client_ip),
            path,
            size or 0,
            fuzz_km=self.fed.fuzz_km,
        )
        now = self.fed.clock.seconds()
        problems: dict[str, str] = dict(placement.refused)
        for eid in placement.order:
            endpoint = self.fed.endpoints[eid]
            if IWritable.providedBy(endpoint):
                d = IWritable(endpoint).prepare_put(targets[eid])
                d.addTimeout(endpoint.config.timeout * 2, self.fed.clock)
                try:
                    await d
                except Exception as exc:
                    problems[eid] = describe(exc)
                    self.fed.passive_failure(eid, f"preparing an upload: {describe(exc)}")
                    continue
            url = endpoint.url_for(targets[eid], now, "PUT")
            if self.space is not None:
                self.space.reserve(eid, size or 0)
            self.fed.forget(path)
            return PutTarget(eid, url, placement, overwrite, path)
        detail = "; ".join(f"{eid}: {why}" for eid, why in sorted(problems.items()))
        raise InsufficientStorage(f"no writable endpoint can take {path} now ({detail})")

    async def carry(self, target: PutTarget, body: IBodyProducer | None, size: int) -> int:
        """Upload a client's body to the chosen endpoint ourselves (for clients that cannot follow a
        307 with their body); 201 on success. `body` passes the bytes on as they arrive from the
        client (fedd.web.streambody): nothing is spooled, and the client is paced by the endpoint."""
        endpoint = self.fed.endpoints[target.endpoint]
        if not ITPCTarget.providedBy(endpoint) or body is None:
            raise BadGateway(f"{target.endpoint} cannot take uploads carried by fedd")
        http = ITPCTarget(endpoint).http
        headers = dict(ITPCTarget(endpoint).upload_headers)
        producer = body
        timeout = endpoint.config.timeout + size / CARRY_MIN_RATE
        try:
            response = await http.request("PUT", _absolute_url(target.url), headers, producer, timeout=timeout)
        except ClientGone:
            log.info(
                "carried upload of {path} to {endpoint} stopped: the client went away",
                path=target.path,
                endpoint=target.endpoint,
            )
            raise
        except EndpointError as exc:
            self.fed.passive_failure(target.endpoint, f"carried upload: {exc.reason}")
            raise BadGateway(f"upload to {target.endpoint} failed: {exc.reason}") from None
        finally:
            self.fed.forget(target.path)
        if response.code not in (200, 201, 204):
            raise BadGateway(f"{target.endpoint} refused the upload: HTTP {response.code}")
        return 201

    async def _existing(self, path: str) -> tuple[list[str], dict[str, str]]:
        """Endpoints holding `path` now (asked afresh), and the endpoints that did not answer."""
        result = await self.fed.locate_now(path)
        return sorted(result.files()), dict(result.failed)

    # --- DELETE -------------------------------------------------------------------------------------

    async def delete(self, path: str) -> Outcome:
        if path == "/":
            raise Forbidden("cannot delete the root of the federation")
        targets = self.writable(path)
        if not targets:
            raise Forbidden(f"no writable endpoint serves {path}: nothing can be deleted here")
        listing = None
        try:
            listing = await self.fed.listdir(path)
        except NoReplicaAvailable:
            pass
        if listing is not None and listing.entries:
            raise Conflict(f"{path} is a collection that is not empty")
        outcome = Outcome()
        asked: list[str] = []
        for eid in sorted(targets):
            blocked = self._blocked(eid, "write")
            if blocked:
                outcome.failed[eid] = blocked
            elif not self.fed.online(eid):
                outcome.failed[eid] = "offline"
            else:
                asked.append(eid)
        await self._on_each("delete", asked, targets, outcome)
        self.fed.forget(path)
        if outcome.failed:
            raise PartialFailure(f"DELETE {path}: {outcome.describe()}", outcome)
        if not outcome.done:
            raise NotFound(f"{path}: no such file")
        return outcome

    # --- MKCOL --------------------------------------------------------------------------------------

    async def mkcol(self, path: str) -> Outcome:
        if path == "/":
            raise MethodNotAllowed("the root exists")
        targets = self.writable(path)
        if not targets:
            raise Forbidden(f"no writable endpoint serves {path}")
        if await self.fed.listdir(path) is not None:
            raise MethodNotAllowed(f"{path} already exists")
        existing, _ = await self._existing(path)
        if existing:
            raise MethodNotAllowed(f"{path} already exists as a file")
        asked = [eid for eid in sorted(targets) if self.fed.online(eid) and not self._blocked(eid, "write")]
        if not asked:
            raise InsufficientStorage(f"no writable endpoint for {path} is online and open for writes")
        outcome = Outcome()
        await self._on_each("mkcol", asked, targets, outcome)
        self.fed.forget(path)
        if not outcome.done and not outcome.absent:
            raise BadGateway(f"MKCOL {path}: {outcome.describe()}")
        return outcome

    # --- MOVE ---------------------------------------------------------------------------------------

    async def move(self, source: str, destination: str, overwrite: bool) -> bool:
        """Rename within each endpoint holding `source`; True when `destination` existed before."""
        if source == destination:
            raise Forbidden("source and destination are the same")
        if destination.startswith(source.rstrip("/") + "/"):
            raise Forbidden("cannot move a name below itself")
        holders, failed = await self._existing(source)
        if not holders:
            if failed:
                raise NoReplicaAvailable(f"cannot find {source}: {len(failed)} endpoint(s) did not answer")
            raise NotFound(f"{source}: no such file")
        existed, _ = await self._existing(destination)
        if existed and not overwrite:
            raise PreconditionFailed(f"{destination} exists and the request says Overwrite: F")
        if existed and not self.config.allow_overwrite:
            raise PreconditionFailed(f"{destination} exists and overwriting is not allowed here")
        source_targets = self.writable(source)
        dest_targets = self.writable(destination)
        for eid in holders:
            if eid not in source_targets:
                raise Conflict(f"{source} is on {eid}, which is read-only")
            if eid not in dest_targets:
                where = ", ".join(sorted(dest_targets)) or "no writable endpoint"
                raise BadGateway(
                    f"cannot move across endpoints: {source} is on {eid}, {destination} maps to {where}; "
                    "copy it and delete the source instead"
                )
            blocked = self._blocked(eid, "write")
            if blocked:
                raise InsufficientStorage(f"{eid} is {blocked}")
        results = await DeferredList(
            [self._call(eid, "move", source_targets[eid], dest_targets[eid]) for eid in holders], consumeErrors=True
        )
        self.fed.forget(source)
        self.fed.forget(destination)
        outcome = Outcome()
        for eid, (ok, value) in zip(holders, results, strict=True):
            if ok:
                outcome.done.append(eid)
            else:
                outcome.failed[eid] = describe(value)
        if outcome.failed:
            raise PartialFailure(f"MOVE {source}: {outcome.describe()}", outcome)
        return bool(existed)

    async def _on_each(self, method: str, asked: list[str], targets: dict[str, str], outcome: Outcome) -> None:
        """Call `method` (True: done, False: nothing there) on every endpoint in parallel; record each."""
        results = await DeferredList([self._call(eid, method, targets[eid]) for eid in asked], consumeErrors=True)
        for eid, (ok, value) in zip(asked, results, strict=True):
            if not ok:
                outcome.failed[eid] = describe(value)
            elif value:
                outcome.done.append(eid)
            else:
                outcome.absent.append(eid)

    def _call(self, eid: str, method: str, *args: Any) -> Any:
        endpoint = self.fed.endpoints[eid]
        d = ensureDeferred(_invoke(getattr(IWritable(endpoint), method), *args))  # delete, mkcol or move
        d.addTimeout(endpoint.config.timeout * 4, self.fed.clock)

        def failed(failure: Any) -> Any:
            if failure.check(EndpointError):
                self.fed.passive_failure(eid, describe(failure))
            return failure

        d.addErrback(failed)
        return d


async def _invoke(fn: Any, *args: Any) -> Any:
    return await fn(*args)
