"""The `checksums` service: finds a file's checksum, or computes it once with a bounded pool of workers.

Where a value comes from, cheapest first:
1. what the endpoints told while being located (`Stat.checksums`: S3 `x-amz-meta-adler32` and a
   one-part ETag's MD5, a DAV endpoint's `Digest` answer), plus values this process already read or
   computed (an in-process LRU keyed by replica);
2. fedd's own database (`[checksums] database`, SQLite in its own thread), and Azure's Content-MD5;
3. a computation: one worker streams the best replica over a bulk connection (1 MiB reads, see
   `fedd.checksums.bulk`) with the endpoint's TLS settings, or reads a local file in a thread; the
   hashers run in a thread of their own, fed every chunk as it arrives, and their bounded backlog
   pauses the download: memory stays at a few MiB whatever the file size. The result goes to the
   LRU, the database, and, on writable S3 endpoints, into the object's own metadata (copy onto
   itself), so it is computed once.

Two replicas with different values for one algorithm are logged and published as `checksum-mismatch`.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.error import ConnectError, ConnectingCancelledError
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from fedd.checksums.bulk import BulkEndpointFactory, InlineHashing, ThreadedHashing, hashing_for, tune_allocator
from fedd.checksums.digest import ADLER32_IMPLEMENTATION, Hasher, Want, new_hasher
from fedd.checksums.reported import known_checksums, parse_reported, worth_storing
from fedd.checksums.store import ChecksumStore, Key
from fedd.config import ChecksumsConfig, Config
from fedd.endpoints.base import Stat
from fedd.endpoints.interfaces import IChecksumSource, IChecksumStore
from fedd.endpoints.local import LocalEndpoint
from fedd.errors import EndpointError, describe
from fedd.events.model import file_fields

log = Logger(namespace="fedd.checksums")
MIN_RATE = 1_000_000  # bytes/s: a computation's time limit is the endpoint timeout + size / MIN_RATE
ASSUMED_RATE = 100_000_000  # bytes/s, for Retry-After before a worker has measured anything
NEGATIVE_TTL = 60.0  # a replica without a stored checksum is looked up again after this
FAILED_TTL = 30.0  # a failed computation is not retried for this long
MEMORY_ENTRIES = 100_000
DB_TIMEOUT = 10.0
LOCAL_CHUNK = 1 << 20
RECENT = 10


@dataclass
class Job:
    """One computation: a replica and the algorithms wanted from it."""

    key: Key
    path: str  # federation path
    endpoint: str
    endpoint_path: str
    size: int
    etag: str
    algorithms: set[str]
    queued: float
    started: float | None = None
    finished: float | None = None
    bytes: int = 0
    error: str = ""
    values: dict[str, str] = field(default_factory=dict)
    waiters: list[Deferred[None]] = field(default_factory=list)

    def wait(self) -> Deferred[None]:
        def forget(d: Deferred[None]) -> None:
            if d in self.waiters:
                self.waiters.remove(d)

        d: Deferred[None] = Deferred(forget)
        self.waiters.append(d)
        return d

    def to_json(self, now: float) -> dict[str, Any]:
        elapsed = (self.finished or now) - self.started if self.started is not None else 0.0
        return {
            "path": self.path,
            "endpoint": self.endpoint,
            "size": self.size,
            "bytes": self.bytes,
            "percent": round(100.0 * self.bytes / self.size, 1) if self.size else 100.0,
            "algorithms": sorted(self.algorithms),
            "waiting_s": round((self.started or now) - self.queued, 3),
            "running_s": round(elapsed, 3),
            "rate_mb_s": round(self.bytes / elapsed / 1e6, 1) if elapsed > 0 else None,
            "error": self.error or None,
            "values": dict(self.values) or None,
        }


@dataclass(frozen=True)
class Answer:
    values: dict[str, str]  # algorithm -> hex, over the replicas (the best-ranked one's first)
    job: Job | None = None  # a computation that will bring what is still missing
    retry_after: int = 1


def replica_key(endpoint: str, endpoint_path: str, stat: Stat) -> Key:
    # the opaque tag without its weak mark: Apache answers W/"x" for a file changed in the last
    # second and "x" for the same file a second later (the value computed meanwhile was lost)
    etag = stat.etag[2:] if stat.etag.startswith("W/") else stat.etag
    return (endpoint, endpoint_path, stat.size or 0, etag or f"{stat.mtime or 0:.6f}")


class ChecksumService(Service):
    name = "checksums"

    def __init__(
        self,
        config: ChecksumsConfig,
        *,
        federation: Any,
        reactor: Any,
        emit: Callable[[str, dict[str, Any]], None] | None = None,
        store: ChecksumStore | None = None,
    ) -> None:
        self.config = config
        self.fed = federation
        self.reactor = reactor
        self.clock = reactor
        self.emit = emit
        self.store = store if store is not None else ChecksumStore(reactor, config.database)
        self._db_ready = False
        self.db_error = ""
        self._memory: OrderedDict[Key, tuple[float, dict[str, str]]] = OrderedDict()
        self._jobs: dict[Key, Job] = {}
        self._queue: deque[Job] = deque()
        self._running: dict[Key, Deferred[None]] = {}
        self._failed: dict[Key, float] = {}
        self._mismatches: set[tuple[str, str, tuple[tuple[str, str], ...]]] = set()
        self._recent: deque[Job] = deque(maxlen=RECENT)
        self._agents: dict[str, tuple[Any, Agent]] = {}
        tune_allocator()  # 1 MiB reads without a page fault per 4 KiB (fedd.checksums.bulk)
        self.computed = self.failed = self.refused = self.stored_s3 = self.stored_db = 0
        self.mismatches = self.bytes_hashed = 0

    # --- lifecycle ------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.store.open().addCallbacks(self._opened, self._open_failed)

    def _opened(self, count: int) -> None:
        self._db_ready = True
        log.info("checksum database {path}: {count} checksums", path=self.store.path, count=count)

    def _open_failed(self, failure: Any) -> None:
        self.db_error = describe(failure)
        log.error("cannot open the checksum database {path}: {reason}", path=self.store.path, reason=self.db_error)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._queue.clear()
        for d in list(self._running.values()):
            d.cancel()
        return ensureDeferred(self._close())

    def reconfigure(self, new: Config) -> list[str]:
        """Apply a reloaded `[checksums]` (all but `database`, which needs a restart): limits apply
        to the next request; more workers start on the queue at once, fewer let running jobs end."""
        pending = ["[checksums] database"] if new.checksums.database != self.config.database else []
        self.config = replace(new.checksums, database=self.config.database)
        self._pump()
        return pending

    async def _close(self) -> None:
        try:
            await self.store.close()
        except Exception as exc:
            log.warn("closing the checksum database: {reason}", reason=describe(exc))

    # --- what is known --------------------------------------------------------------------------

    def _remember(self, key: Key, values: dict[str, str]) -> None:
        old = self._memory.pop(key, None)
        merged = dict(old[1]) if old is not None else {}
        merged.update(values)
        self._memory[key] = (self.clock.seconds(), merged)
        while len(self._memory) > MEMORY_ENTRIES:
            self._memory.popitem(last=False)

    def _keys(self, path: str, replicas: list[Any]) -> list[tuple[Any, Key]]:
        targets = self.fed.locator.targets(path)
        out = []
        for r in replicas:
            endpoint_path = targets.get(r.endpoint)
            if endpoint_path is not None and r.stat.size is not None:
                out.append((r, replica_key(r.endpoint, endpoint_path, r.stat)))
        return out

    def known(self, path: str, replicas: list[Any]) -> dict[str, str]:
        """Checksums known without asking anyone (synchronous); notes mismatches between replicas."""
        best: dict[str, str] = {}
        by_algorithm: dict[str, dict[str, str]] = {}
        for replica, key in self._keys(path, replicas):
            values = known_checksums(replica.stat)
            hit = self._memory.get(key)
            if hit is not None:
                values.update(hit[1])
            for algorithm, value in values.items():
                best.setdefault(algorithm, value)
                by_algorithm.setdefault(algorithm, {})[replica.endpoint] = value
        for algorithm, seen in by_algorithm.items():
            if len(set(seen.values())) > 1:
                self._mismatch(path, algorithm, seen)
        return best

    def _mismatch(self, path: str, algorithm: str, seen: dict[str, str]) -> None:
        token = (path, algorithm, tuple(sorted(seen.items())))
        if token in self._mismatches:
            return
        if len(self._mismatches) > 10_000:
            self._mismatches.clear()
        self._mismatches.add(token)
        self.mismatches += 1
        log.warn(
            "checksum mismatch for {path}: {algorithm} {values}",
            path=path,
            algorithm=algorithm,
            values=", ".join(f"{eid}={value}" for eid, value in sorted(seen.items())),
        )
        if self.emit is not None:
            self.emit(
                "checksum-mismatch",
                {
                    **file_fields(path),
                    "algorithm": algorithm,
                    "values": dict(sorted(seen.items())),
                    "endpoints": sorted(seen),
                },
            )

    async def _lookup(self, path: str, replicas: list[Any]) -> None:
        """Ask the database (and Azure's Content-MD5) about replicas not looked up recently."""
        now = self.clock.seconds()
        todo: list[tuple[Any, Key]] = []
        for replica, key in self._keys(path, replicas):
            hit = self._memory.get(key)
            if hit is None or (not hit[1] and now - hit[0] > NEGATIVE_TTL):
                todo.append((replica, key))
        if not todo:
            return
        found: dict[Key, dict[str, str]] = {}
        if self._db_ready:
            try:
                d = self.store.get([key for _, key in todo])
                d.addTimeout(DB_TIMEOUT, self.clock)
                found = await d
            except Exception as exc:
                log.warn("checksum database lookup failed: {reason}", reason=describe(exc))
        for replica, key in todo:
            values = dict(found.get(key, {}))
            source = self.fed.endpoints.get(replica.endpoint)
            told = known_checksums(replica.stat)
            if IChecksumSource.providedBy(source) and "md5" not in values and "md5" not in told:
                try:
                    asked = IChecksumSource(source).reported_checksums(key[1])
                    asked.addTimeout(IChecksumSource(source).config.timeout, self.clock)
                    reported = await asked
                except Exception as exc:
                    log.warn("checksums of {endpoint}: {reason}", endpoint=replica.endpoint, reason=describe(exc))
                    reported = None
                for algorithm, value in parse_reported(reported or ()).items():
                    values.setdefault(algorithm, value)
            self._remember(key, values)

    def answer(self, path: str, replicas: list[Any], wants: list[Want], wait: float | None) -> Deferred[Answer]:
        """The checksums for a HEAD: known ones at once; else the database; else a computation, waited
        for up to `wait` seconds (None: the configured default; capped by max_wait)."""
        return ensureDeferred(self._answer(path, replicas, wants, wait))

    async def _answer(self, path: str, replicas: list[Any], wants: list[Want], wait: float | None) -> Answer:
        values = self.known(path, replicas)
        if all(w.pick(values) is not None for w in wants):
            return Answer(values)
        await self._lookup(path, replicas)
        values = self.known(path, replicas)
        missing = {w.algorithms[0] for w in wants if w.pick(values) is None}
        if not missing:
            return Answer(values)
        if "adler32" not in values:
            missing.add("adler32")  # the grid's checksum: always computed along, unless already known
        job = self._compute(path, replicas, missing)
        if job is None:
            return Answer(values)
        seconds = self.config.wait if wait is None else min(wait, self.config.max_wait)
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
        return Answer(values, job, self._retry_after(job))

    def _retry_after(self, job: Job) -> int:
        now = self.clock.seconds()
        if job.started is not None and job.bytes > 0 and now > job.started:
            rate = job.bytes / (now - job.started)
            seconds = (job.size - job.bytes) / rate
        else:
            ahead = sum(j.size for j in self._queue if j is not job) + (job.size - job.bytes)
            seconds = ahead / ASSUMED_RATE / max(1, self.config.workers)
        return max(1, min(300, math.ceil(seconds)))

    # --- computing --------------------------------------------------------------------------------

    def _compute(self, path: str, replicas: list[Any], algorithms: set[str]) -> Job | None:
        """The computation that will bring `algorithms` (new, or one already under way); None if refused."""
        if self.config.workers == 0:
            return None
        keys = self._keys(path, replicas)
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

    def _ended(self, result: Any, job: Job) -> None:
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
            self._remember(job.key, job.values)
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
        hashers = {algorithm: new_hasher(algorithm) for algorithm in sorted(job.algorithms)}
        if isinstance(endpoint, LocalEndpoint):
            real = endpoint.resolve(job.endpoint_path)
            if real is None:
                raise EndpointError(job.endpoint, "outside of the endpoint")
            pool = self.reactor.getThreadPool()
            await deferToThreadPool(self.reactor, pool, _hash_file, real, list(hashers.values()), job)
        else:
            await self._hash_http(endpoint, job, list(hashers.values()))
        if job.bytes != job.size:
            raise EndpointError(job.endpoint, f"read {job.bytes} bytes of {job.size}: the file changed")
        return {algorithm: h.hexdigest() for algorithm, h in hashers.items()}

    def _agent(self, endpoint: Any) -> Agent:
        """Bulk connections to one endpoint, with its TLS settings (not its pooled HTTP client: that
        one reads 64 KiB at a time and serves the small requests of the hot path)."""
        from fedd.endpoints import _tls_policy  # the endpoints' own rule: verify_tls, ca_file

        config = endpoint.config
        hit = self._agents.get(endpoint.id)
        if hit is None or hit[0] is not config:
            policy = _tls_policy(config) or BrowserLikePolicyForHTTPS()
            bulk = BulkEndpointFactory(self.reactor, tls=policy, connect_timeout=config.timeout)
            pool = HTTPConnectionPool(self.reactor, persistent=False)  # one GET per computation
            hit = self._agents[endpoint.id] = (config, Agent.usingEndpointFactory(self.reactor, bulk, pool=pool))
        return hit[1]

    async def _hash_http(self, endpoint: Any, job: Job, hashers: list[Hasher]) -> None:
        url = endpoint.url_for(job.endpoint_path, self.clock.seconds(), "GET")
        if not url.startswith(("http://", "https://")):
            raise EndpointError(job.endpoint, "cannot read this kind of endpoint")
        timeout = endpoint.config.timeout + job.size / MIN_RATE
        idle = max(10.0, endpoint.config.timeout * 3)
        d = ensureDeferred(self._get(self._agent(endpoint), url, job, hashers))
        d.addTimeout(timeout, self.clock)
        last = [-1]

        def watchdog() -> None:
            if job.bytes == last[0]:
                d.cancel()  # nothing arrived for `idle` seconds
            last[0] = job.bytes

        dog = LoopingCall(watchdog)
        dog.clock = self.clock
        dog.start(idle, now=True)
        try:
            await d
        except (CancelledError, defer.TimeoutError):
            raise EndpointError(job.endpoint, f"GET for checksum: nothing for {idle:g}s or over {timeout:g}s") from None
        except (ConnectError, ConnectingCancelledError) as exc:
            raise EndpointError(job.endpoint, f"GET for checksum: cannot connect: {describe(exc)}") from None
        except (ResponseFailed, ResponseNeverReceived):
            raise EndpointError(job.endpoint, "GET for checksum: connection lost or malformed HTTP answer") from None
        finally:
            if dog.running:
                dog.stop()

    async def _get(self, agent: Agent, url: str, job: Job, hashers: list[Hasher]) -> None:
        response = await agent.request(b"GET", url.encode("latin-1"), Headers(), None)
        reader = _Reader(job, hashers if response.code == 200 else [], self.reactor)
        response.deliverBody(reader)
        await reader.done
        if response.code != 200:
            raise EndpointError(job.endpoint, f"GET for checksum: HTTP {response.code}")

    async def _keep(self, job: Job) -> None:
        """Store a computed value: the database always, the object's metadata on writable S3."""
        if self._db_ready:
            try:
                d = self.store.put(job.key, job.values, self.clock.seconds())
                d.addTimeout(DB_TIMEOUT, self.clock)
                await d
                self.stored_db += 1
            except Exception as exc:
                log.warn("storing a checksum in the database failed: {reason}", reason=describe(exc))
        where = "database" if self._db_ready else "memory"
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
            "queue_max": self.config.queue,
            "computed": self.computed,
            "failed": self.failed,
            "refused": self.refused,
            "bytes_hashed": self.bytes_hashed,
            "stored_db": self.stored_db,
            "stored_s3": self.stored_s3,
            "mismatches": self.mismatches,
            "remembered": len(self._memory),
            "database": self.store.path,
            "database_error": self.db_error or None,
            "recent": [j.to_json(now) for j in reversed(self._recent)],
        }


def _hash_file(real: str, hashers: list[Hasher], job: Job) -> None:
    """In a thread: read a local file in 1 MiB chunks through the hashers."""
    with open(real, "rb") as f:
        while chunk := f.read(LOCAL_CHUNK):
            for h in hashers:
                h.update(chunk)
            job.bytes += len(chunk)
            if job.bytes > job.size:
                raise EndpointError(job.endpoint, "the file is larger than located: it changed")


class _Reader(Protocol):
    """A response body, counted on the reactor thread and hashed in a thread of its own (the hashing's
    backlog pauses the connection); `done` fires once every byte is hashed."""

    def __init__(self, job: Job, hashers: list[Hasher], reactor: Any) -> None:
        self.job = job
        self.source: Any = None  # the response's transport (pause, resume, stop)
        self.counting = bool(hashers)
        self.failed: Exception | None = None
        self.done: Deferred[None] = Deferred(self._cancel)
        self.hashing: InlineHashing | ThreadedHashing = hashing_for(
            hashers, job.size, reactor=reactor, on_backlog=self._backlog, name="fedd-checksum"
        )

    def makeConnection(self, transport: Any) -> None:
        self.source = transport
        super().makeConnection(transport)

    def _backlog(self, full: bool) -> None:
        if self.source is not None and not self.done.called:
            if full:
                self.source.pauseProducing()
            else:
                self.source.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        if not self.counting or self.failed is not None:
            return  # an error answer's body, or after a failure: dropped
        self.job.bytes += len(data)
        if self.job.bytes > self.job.size:
            self.failed = EndpointError(self.job.endpoint, "the file is larger than located: it changed")
            self.source.stopProducing()
            return
        self.hashing.update(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.done.called:
            return
        if self.failed is None and (reason is None or reason.check(ResponseDone, PotentialDataLoss)):
            self.hashing.finish().addCallbacks(self._hashed, self._hash_failed)
            return
        self.hashing.cancel()
        self.done.errback(self.failed or EndpointError(self.job.endpoint, "GET for checksum: connection lost"))

    def _hashed(self, _: Any) -> None:
        if not self.done.called:
            self.done.callback(None)

    def _hash_failed(self, failure: Failure) -> None:
        if not self.done.called:
            self.done.errback(failure)

    def _cancel(self, _: Deferred[None]) -> None:
        self.hashing.cancel()
        if self.source is not None:
            self.source.stopProducing()
