"""The `checksums` service: finds a file's checksum, or computes it once with a bounded pool of workers.

Where a value comes from, cheapest first:
1. what the endpoints told while being located (`Stat.checksums`: S3 `x-amz-meta-adler32` and a
   one-part ETag's MD5, a DAV endpoint's `Digest` answer), plus values this process already read or
   computed (an in-process LRU keyed by replica);
2. fedd's own database (`[checksums] database`, SQLite in its own thread), and Azure's Content-MD5;
3. a computation (`fedd.checksums.compute`): one worker reads the best replica once through the
   hashers, never whole in memory. The result goes to the LRU, the database, and, on writable S3
   endpoints, into the object's own metadata (copy onto itself), so it is computed once.

Steps 1 and 2, and the mismatches between replicas, are `fedd.checksums.known`; this module answers
from them, runs the computations, and with `[server] workers` waits for another worker's.

Two replicas with different values for one algorithm are logged and published as `checksum-mismatch`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from fedd.checksums.bulk import tune_allocator
from fedd.checksums.claims import JobClaims
from fedd.checksums.compute import Job, ReplicaHasher, retry_after
from fedd.checksums.digest import ADLER32_IMPLEMENTATION, Want
from fedd.checksums.known import KnownChecksums
from fedd.checksums.reported import worth_storing
from fedd.checksums.store import ChecksumDatabase, ChecksumStore, Key
from fedd.config import ChecksumsConfig, Config
from fedd.endpoints.interfaces import IChecksumStore
from fedd.errors import EndpointError, describe
from fedd.events.model import file_fields
from fedd.twtypes import Service

log = Logger(namespace="fedd.checksums")
ELSEWHERE_POLL = 0.25  # seconds between two looks in the database while another worker computes
FAILED_TTL = 30.0  # a failed computation is not retried for this long
RECENT = 10


@dataclass(frozen=True)
class Answer:
    values: dict[str, str]  # algorithm -> hex, over the replicas (the best-ranked one's first)
    job: Job | None = None  # a computation that will bring what is still missing
    retry_after: int = 1


class ChecksumService(Service):
    name = "checksums"

    def __init__(
        self,
        config: ChecksumsConfig,
        *,
        federation: Any,
        reactor: Any,
        emit: Callable[[str, dict[str, Any]], None] | None = None,
        store: ChecksumDatabase | None = None,
        claims: JobClaims | None = None,
    ) -> None:
        self.config = config
        # [server] workers: one computation per replica for the host (fedd.checksums.claims)
        self.claims = claims
        self._elsewhere: set[Key] = set()  # replicas another worker was computing when last asked
        self.waiting_elsewhere = 0  # clients waiting now for another worker's computation
        self.fed = federation
        self.reactor = reactor
        self.clock = reactor
        self.emit = emit
        self.known_values = KnownChecksums(
            federation=federation,
            clock=reactor,
            store=store if store is not None else ChecksumStore(reactor, config.database),
            emit=emit,
        )
        self._jobs: dict[Key, Job] = {}
        self._queue: deque[Job] = deque()
        self._running: dict[Key, Deferred[None]] = {}
        self._failed: dict[Key, float] = {}
        self._recent: deque[Job] = deque(maxlen=RECENT)
        self._hasher = ReplicaHasher(reactor)
        tune_allocator()  # 1 MiB reads without a page fault per 4 KiB (fedd.checksums.bulk)
        self.computed = self.failed = self.refused = self.stored_s3 = self.bytes_hashed = 0

    # --- lifecycle ------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.known_values.open()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._queue.clear()
        for d in list(self._running.values()):
            d.cancel()
        return self.known_values.close()

    def reconfigure(self, new: Config) -> list[str]:
        """Apply a reloaded `[checksums]` (all but `database`, which needs a restart): limits apply
        to the next request; more workers start on the queue at once, fewer let running jobs end."""
        pending = ["[checksums] database"] if new.checksums.database != self.config.database else []
        self.config = replace(new.checksums, database=self.config.database)
        self._pump()
        return pending

    # --- what is known (fedd.checksums.known) ---------------------------------------------------

    @property
    def mismatches(self) -> int:
        return self.known_values.mismatches

    def known(self, path: str, replicas: list[Any]) -> dict[str, str]:
        """Checksums known without asking anyone (synchronous); notes mismatches between replicas."""
        return self.known_values.known(path, replicas)

    def answer(self, path: str, replicas: list[Any], wants: list[Want], wait: float | None) -> Deferred[Answer]:
        """The checksums for a HEAD: known ones at once; else the database; else a computation, waited
        for up to `wait` seconds (None: the configured default; capped by max_wait)."""
        return ensureDeferred(self._answer(path, replicas, wants, wait))

    async def _answer(self, path: str, replicas: list[Any], wants: list[Want], wait: float | None) -> Answer:
        values = self.known(path, replicas)
        if all(w.pick(values) is not None for w in wants):
            return Answer(values)
        self._forget_elsewhere(path, replicas)
        await self.known_values.lookup(path, replicas)
        values = self.known(path, replicas)
        missing = {w.algorithms[0] for w in wants if w.pick(values) is None}
        if not missing:
            return Answer(values)
        seconds = self.config.wait if wait is None else min(wait, self.config.max_wait)
        deadline = self.clock.seconds() + seconds
        while True:
            if "adler32" not in values:
                missing.add("adler32")  # the grid's checksum: always computed along, unless already known
            job = self._compute(path, replicas, missing)
            if job is None:
                return Answer(values)
            if job.key not in self._elsewhere:
                break  # computed by this worker
            values, ended = await self._wait_elsewhere(path, replicas, wants, job.key, deadline)
            missing = {w.algorithms[0] for w in wants if w.pick(values) is None}
            if not missing:
                return Answer(values)
            if not ended:
                return Answer(values, job, retry_after(job, self._queue, self.config.workers, self.clock.seconds()))
            # that worker ended without what this client wants (it computed other algorithms, or
            # failed): computed here now, within the same wait (was: 202 before the wait was over)
        seconds = deadline - self.clock.seconds()
        if seconds > 0:
            waiting = job.wait()
            waiting.addTimeout(seconds, self.clock)
            try:
                await waiting
            except defer.TimeoutError:
                pass
            values = self.known(path, replicas)
            if all(w.pick(values) is not None for w in wants) or job.error:
                return Answer(values)
        return Answer(values, job, retry_after(job, self._queue, self.config.workers, self.clock.seconds()))

    async def _wait_elsewhere(
        self, path: str, replicas: list[Any], wants: list[Want], key: Key, deadline: float
    ) -> tuple[dict[str, str], bool]:
        """Another worker computes replica `key`: the database is read every ELSEWHERE_POLL seconds
        until all `wants` are known, that worker's claim ends, or `deadline`. (The values known,
        whether the claim ended.)"""
        values = self.known(path, replicas)
        self.waiting_elsewhere += 1
        try:
            while self.claims is not None and self.clock.seconds() < deadline:
                await deferLater(self.clock, min(ELSEWHERE_POLL, deadline - self.clock.seconds()), lambda: None)
                held = self.claims.held_elsewhere(key)  # before the lookup: a claim that ended has its value stored
                if self.known_values.db_ready:
                    # what this worker remembers of the replica may be some algorithms only (read
                    # from the database before): read again, the other worker adds the rest there
                    self.known_values.forget(key)
                self._forget_elsewhere(path, replicas)
                await self.known_values.lookup(path, replicas)
                values = self.known(path, replicas)
                if all(w.pick(values) is not None for w in wants) or not held:
                    return values, not held
            return values, False
        finally:
            self.waiting_elsewhere -= 1

    # --- computing --------------------------------------------------------------------------------

    def _compute(self, path: str, replicas: list[Any], algorithms: set[str]) -> Job | None:
        """The computation that will bring `algorithms` (new, or one already under way); None if refused."""
        if self.config.workers == 0:
            return None
        keys = self.known_values.keys(path, replicas)
        if not keys:
            return None
        replica, key = keys[0]  # the best-ranked replica: the one clients are sent to
        job = self._jobs.get(key)
        if job is not None:
            if job.started is None:
                job.algorithms |= algorithms
            return job
        now = self.clock.seconds()
        if key[2] > self.config.max_file_bytes or now - self._failed.get(key, -math.inf) < FAILED_TTL:
            return None
        if len(self._queue) >= self.config.queue:
            self.refused += 1
            return None
        job = Job(key, path, key[0], key[1], key[2], replica.stat.etag, set(algorithms), now)
        if self.claims is not None and not self.claims.claim(key):
            self._elsewhere.add(key)  # not ours to compute: answered as under way (202)
            job.started = now
            return job
        self._elsewhere.discard(key)
        self._jobs[key] = job
        self._queue.append(job)
        self._pump()
        return job

    def _pump(self) -> None:
        while self.running and self._queue and len(self._running) < self.config.workers:
            job = self._queue.popleft()
            d = ensureDeferred(self._run(job))
            self._running[job.key] = d
            d.addBoth(self._ended, job)

    def _forget_elsewhere(self, path: str, replicas: list[Any]) -> None:
        """Replicas another worker computes (or computed) since the last ask: what this worker
        remembers of them (no value) is dropped, so the next lookup reads the database again."""
        if not self._elsewhere:
            return
        for _, key in self.known_values.keys(path, replicas):
            if key in self._elsewhere:
                self.known_values.forget(key, only_if_empty=True)
                if self.claims is not None and not self.claims.held_elsewhere(key):
                    self._elsewhere.discard(key)  # done there: this lookup is the last forced one

    def _ended(self, result: Any, job: Job) -> None:
        if self.claims is not None:
            self.claims.release(job.key)  # after _keep: the value is in the database
        self._running.pop(job.key, None)
        self._jobs.pop(job.key, None)
        self._pump()

    async def _run(self, job: Job) -> None:
        job.started = self.clock.seconds()
        try:
            job.values = await self._hash(job)
        except Exception as exc:
            job.error = describe(exc)
            self.failed += 1
            self._failed[job.key] = self.clock.seconds()
            if len(self._failed) > 10_000:
                self._failed.clear()
            if not self.running:
                log.info("checksum of {path} abandoned: fedd is stopping", path=job.path)
            else:
                log.warn(
                    "computing the checksum of {path} on {endpoint} failed: {reason}",
                    path=job.path,
                    endpoint=job.endpoint,
                    reason=job.error,
                )
        finally:
            job.finished = self.clock.seconds()
            self._recent.append(job)
            self.bytes_hashed += job.bytes
        if job.values:
            self.computed += 1
            self.known_values.remember(job.key, job.values)
        self._jobs.pop(job.key, None)
        for waiter in list(job.waiters):
            if not waiter.called:
                waiter.callback(None)
        job.waiters.clear()
        if job.values:
            await self._keep(job)

    async def _hash(self, job: Job) -> dict[str, str]:
        endpoint = self.fed.endpoints.get(job.endpoint)
        if endpoint is None:
            raise EndpointError(job.endpoint, "no longer configured")
        return await self._hasher.hash(endpoint, job)

    async def _keep(self, job: Job) -> None:
        """Store a computed value: the database always, the object's metadata on writable S3."""
        await self.known_values.keep(job.key, job.values)
        where = "database" if self.known_values.db_ready else "memory"
        endpoint = self.fed.endpoints.get(job.endpoint)
        if IChecksumStore.providedBy(endpoint) and self.config.store_s3_metadata and endpoint.config.write and job.etag:
            try:
                values = worth_storing(job.values, job.etag)
                stored = IChecksumStore(endpoint).store_checksums(job.endpoint_path, values, job.etag)
                stored.addTimeout(endpoint.config.timeout * 4, self.clock)
                if await stored:
                    self.stored_s3 += 1
                    where = "s3-metadata"
            except Exception as exc:
                log.warn(
                    "storing checksums in the metadata of {path} on {endpoint} failed: {reason}",
                    path=job.endpoint_path,
                    endpoint=job.endpoint,
                    reason=describe(exc),
                )
        elapsed = (job.finished or 0.0) - (job.started or 0.0)
        log.info(
            "checksum of {path} on {endpoint}: {values} ({size} bytes in {elapsed:.1f}s, kept in {where})",
            path=job.path,
            endpoint=job.endpoint,
            values=", ".join(f"{a}={v}" for a, v in sorted(job.values.items())),
            size=job.size,
            elapsed=elapsed,
            where=where,
        )
        if self.emit is not None:
            self.emit(
                "checksum-done",
                {
                    **file_fields(job.path),
                    "endpoint": job.endpoint,
                    "rse": job.endpoint,
                    "file-size": job.size,
                    "bytes": job.bytes,
                    "checksum-adler": job.values.get("adler32"),
                    "checksums": dict(sorted(job.values.items())),
                    "duration": round(elapsed, 3),
                    "stored": where,
                },
            )

    # --- status -----------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        now = self.clock.seconds()
        return {
            "workers": self.config.workers,
            "adler32": ADLER32_IMPLEMENTATION,
            "running": [j.to_json(now) for j in self._jobs.values() if j.started is not None],
            "queued": len(self._queue),
            "waiting_elsewhere": self.waiting_elsewhere,  # clients waiting for another worker's computation
            "queue_max": self.config.queue,
            "computed": self.computed,
            "failed": self.failed,
            "refused": self.refused,
            "bytes_hashed": self.bytes_hashed,
            "stored_db": self.known_values.stored_db,
            "stored_s3": self.stored_s3,
            "mismatches": self.known_values.mismatches,
            "remembered": len(self.known_values.memory),
            "database": self.known_values.store.path,
            "database_error": self.known_values.db_error or None,
            "recent": [j.to_json(now) for j in reversed(self._recent)],
        }
