"""One checksum computation: a replica read through the hashers, never whole in memory.

A local file is read in a thread, 1 MiB at a time. Anything else is one GET over a bulk connection
(1 MiB reads, `fedd.checksums.bulk`) with the endpoint's TLS settings; the body is counted on the
reactor thread and hashed in a thread of its own, whose bounded backlog pauses the download. The
GET has a time limit (the endpoint timeout + size / MIN_RATE) and an idle limit, and a body longer
than the located size ends it: the file changed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.error import ConnectError, ConnectingCancelledError
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
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

from fedd.checksums.bulk import BulkEndpointFactory, InlineHashing, ThreadedHashing, hashing_for
from fedd.checksums.digest import Hasher, new_hasher
from fedd.checksums.store import Key
from fedd.endpoints.base import Stat
from fedd.endpoints.interfaces import ILocalFiles
from fedd.errors import EndpointError, describe
from fedd.twtypes import Protocol

MIN_RATE = 1_000_000  # bytes/s: a computation's time limit is the endpoint timeout + size / MIN_RATE
ASSUMED_RATE = 100_000_000  # bytes/s, for Retry-After before a worker has measured anything
LOCAL_CHUNK = 1 << 20


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
            "finished_at": round(self.finished, 3) if self.finished else None,  # workers: recent lists joined by it
        }


def replica_key(endpoint: str, endpoint_path: str, stat: Stat) -> Key:
    # the opaque tag without its weak mark: Apache answers W/"x" for a file changed in the last
    # second and "x" for the same file a second later (the value computed meanwhile was lost)
    etag = stat.etag[2:] if stat.etag.startswith("W/") else stat.etag
    return (endpoint, endpoint_path, stat.size or 0, etag or f"{stat.mtime or 0:.6f}")


def retry_after(job: Job, queue: Iterable[Job], workers: int, now: float) -> int:
    """Seconds (1 to 300) until `job` is likely done: at its measured rate once it has read something,
    else the bytes queued before it and its own at ASSUMED_RATE over the workers."""
    if job.started is not None and job.bytes > 0 and now > job.started:
        rate = job.bytes / (now - job.started)
        seconds = (job.size - job.bytes) / rate
    else:
        ahead = sum(j.size for j in queue if j is not job) + (job.size - job.bytes)
        seconds = ahead / ASSUMED_RATE / max(1, workers)
    return max(1, min(300, math.ceil(seconds)))


class ReplicaHasher:
    """Computes checksums of replicas; keeps one bulk HTTP agent per endpoint (and its TLS settings)."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.clock = reactor
        self._agents: dict[str, tuple[Any, Agent]] = {}

    async def hash(self, endpoint: Any, job: Job) -> dict[str, str]:
        """The hex digests of `job.algorithms` over the replica; `job.bytes` counts what was read."""
        hashers = {algorithm: new_hasher(algorithm) for algorithm in sorted(job.algorithms)}
        if ILocalFiles.providedBy(endpoint):
            real = ILocalFiles(endpoint).resolve(job.endpoint_path)
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
