"""One replication copy and one eviction (fedd.replicate.service decides which).

A copy, in order: the target is asked whether the file is there already (a file fedd did not copy is
never overwritten, never deleted); the parent collections are made; the TPC engine pulls the chosen
replica over that endpoint's agent, comparing the source's adler32 with the stream's
(`TpcEngine.replicate`); the copy is read back from the target and its adler32 compared with the
stream's; then the locate caches forget the path, so the next redirect for a reader near the target
goes there. Any failure removes the partial copy, records the failure (the file waits `cooldown`)
and emits `replica-failed`. An eviction deletes only a recorded copy whose size is still the copied
one, then emits `replica-evicted`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from fedd.checksums.compute import Job as HashJob
from fedd.checksums.compute import ReplicaHasher, replica_key
from fedd.config.schema import ReplicateConfig
from fedd.endpoints.interfaces import IWritable
from fedd.errors import describe
from fedd.events.model import file_fields
from fedd.federation import Federation, Replica
from fedd.replicate.policy import Decision
from fedd.replicate.records import DONE, EVICTED, FAILED, Record, Records
from fedd.select.place import place
from fedd.tpc.engine import TpcEngine
from fedd.tpc.transfer import TransferFailed, public_url
from fedd.writes import PutTarget, Writer

log = Logger(namespace="fedd.replicate")


class Copier:
    def __init__(
        self,
        *,
        reactor: Any,
        federation: Federation,
        writer: Writer,
        tpc: TpcEngine,
        records: Records,
        emit: Callable[[str, dict[str, Any]], Any],
        counts: Any,
        settings: Callable[[], ReplicateConfig],
    ) -> None:
        self.reactor = reactor
        self.fed = federation
        self.writer = writer
        self.tpc = tpc
        self.records = records
        self.emit = emit
        self.counts = counts
        self.settings = settings
        self.hasher = ReplicaHasher(reactor)

    async def copy(self, decision: Decision, source: Replica, started: float) -> None:
        path, target = decision.path, decision.target
        endpoint = self.fed.endpoints[target]
        endpoint_path = self.writer.writable(path)[target]
        job = None
        try:
            there = await self._timed(endpoint.stat(endpoint_path), endpoint.config.timeout * 2)
            if there is not None:
                raise TransferFailed(f"{target} holds a file by that name that fedd did not copy: left alone")
            if IWritable.providedBy(endpoint):
                await self._timed(IWritable(endpoint).prepare_put(endpoint_path), endpoint.config.timeout * 2)
            url = endpoint.url_for(endpoint_path, self.reactor.seconds(), "PUT")
            placement = place([], None, path, decision.size)
            job = await self.tpc.replicate(source, PutTarget(target, url, placement, False, path))
            await self._verify(decision, endpoint, endpoint_path, job.adler or "")
        except Exception as exc:
            reason = describe(exc) if not isinstance(exc, TransferFailed) else str(exc)
            await self._failed(decision, source, started, reason, job.bytes if job is not None else 0)
            return
        finally:
            self.fed.forget(path)
        duration = self.reactor.seconds() - started
        counts = self.counts
        counts.copied += 1
        counts.bytes_copied += job.bytes
        await self.records.finish(path, target, DONE, job.bytes, job.adler or "", "", self.reactor.seconds())
        log.info(
            "replica of {path} created on {target} from {source}: {bytes} bytes, adler32 {adler32}, in {duration:.1f}s",
            path=path,
            target=target,
            source=source.endpoint,
            bytes=job.bytes,
            adler32=job.adler,
            duration=duration,
        )
        self.emit("replica-created", self._payload(decision, source, url, job.bytes, job.adler, duration, ""))

    async def _verify(self, decision: Decision, endpoint: Any, endpoint_path: str, adler: str) -> None:
        """Read the copy back from the target: its adler32 must be the one of the stream."""
        stat = await self._timed(endpoint.stat(endpoint_path), endpoint.config.timeout * 2)
        if stat is None:
            raise TransferFailed(f"{endpoint.id} does not show the copy")
        now = self.reactor.seconds()
        job = HashJob(
            replica_key(endpoint.id, endpoint_path, stat),
            decision.path,
            endpoint.id,
            endpoint_path,
            stat.size or 0,
            stat.etag,
            {"adler32"},
            now,
        )
        try:
            values = await self.hasher.hash(endpoint, job)
        except Exception as exc:
            await self._remove(endpoint, endpoint_path)
            raise TransferFailed(f"reading the copy back from {endpoint.id} failed: {describe(exc)}") from None
        if values.get("adler32") != adler:
            await self._remove(endpoint, endpoint_path)
            raise TransferFailed(
                f"checksum mismatch: the copy on {endpoint.id} has adler32 {values.get('adler32')}, "
                f"the source stream {adler}: copy discarded"
            )

    async def _remove(self, endpoint: Any, endpoint_path: str) -> None:
        try:
            await self._timed(IWritable(endpoint).delete(endpoint_path), endpoint.config.timeout * 4)
        except Exception as exc:
            log.warn(
                "removing {path} from {endpoint} failed: {reason}",
                path=endpoint_path,
                endpoint=endpoint.id,
                reason=describe(exc),
            )

    async def _failed(self, decision: Decision, source: Replica, started: float, reason: str, size: int) -> None:
        self.counts.failed += 1
        now = self.reactor.seconds()
        await self.records.finish(decision.path, decision.target, FAILED, 0, "", reason[:500], now)
        log.warn(
            "replica of {path} on {target} failed: {reason} (next try after {cooldown:g}s)",
            path=decision.path,
            target=decision.target,
            reason=reason,
            cooldown=self.settings().cooldown,
        )
        self.emit("replica-failed", self._payload(decision, source, "", size, None, now - started, reason))

    async def evict(self, record: Record, reason: str) -> bool:
        """Remove a recorded copy; True when its record is gone (the file deleted, or found to be no
        longer fedd's to delete: gone, changed since copied, or the only replica left, which is kept)."""
        endpoint = self.fed.endpoints.get(record.endpoint)
        endpoint_path = self.writer.writable(record.path).get(record.endpoint)
        if endpoint is None or endpoint_path is None or not IWritable.providedBy(endpoint):
            return False
        why = ""
        try:
            stat = await self._timed(endpoint.stat(endpoint_path), endpoint.config.timeout * 2)
            if stat is None:
                why = "gone already"
            elif stat.size is not None and stat.size != record.bytes:
                why = "changed since fedd copied it: left alone"
            elif not await self._elsewhere(record):
                why = "the only replica left (or the others do not answer): kept"
            else:
                await self._timed(IWritable(endpoint).delete(endpoint_path), endpoint.config.timeout * 4)
        except Exception as exc:
            log.warn(
                "evicting {path} from {endpoint} failed: {reason}",
                path=record.path,
                endpoint=record.endpoint,
                reason=describe(exc),
            )
            return False
        self.fed.forget(record.path)
        if why:
            await self.records.forget(record.path, record.endpoint)
            log.warn(
                "{path} on {endpoint} not evicted ({why}); fedd no longer counts it as its copy",
                path=record.path,
                endpoint=record.endpoint,
                why=why,
            )
            return True
        await self.records.finish(record.path, record.endpoint, EVICTED, 0, "", reason[:500], self.reactor.seconds())
        self.counts.evicted += 1
        log.info(
            "replica of {path} evicted from {endpoint}: {reason}",
            path=record.path,
            endpoint=record.endpoint,
            reason=reason,
        )
        self.emit(
            "replica-evicted",
            {
                **file_fields(record.path),
                "dst-rse": record.endpoint,
                "src-rse": record.source,
                "bytes": record.bytes,
                "adler32": record.adler32 or None,
                "created_at": record.created,
                "last_read": record.last_read,
                "reason": reason,
            },
        )
        return True

    async def _elsewhere(self, record: Record) -> bool:
        """Whether another endpoint holds the file now (asked afresh)."""
        result = await self.fed.locate_now(record.path)
        return any(eid != record.endpoint for eid in result.files())

    async def _timed(self, d: Deferred[Any], timeout: float) -> Any:
        d.addTimeout(timeout, self.reactor)
        return await d

    def _payload(
        self,
        decision: Decision,
        source: Replica,
        url: str,
        size: int,
        adler: str | None,
        duration: float,
        reason: str,
    ) -> dict[str, Any]:
        return {
            **file_fields(decision.path),
            "src-rse": source.endpoint,
            "dst-rse": decision.target,
            "src-url": public_url(source.url),
            "dst-url": public_url(url) if url else None,
            "bytes": size,
            "file-size": decision.size,
            "checksum-adler": adler,
            "duration": round(duration, 3),
            "region": decision.region,
            "reads": decision.reads,
            "reason": reason or decision.reason,
        }
