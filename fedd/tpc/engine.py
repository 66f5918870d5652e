"""Run an HTTP third-party copy: pull (`COPY` + `Source:`) or push (`COPY` + `Destination:`).

Before the `202`: the remote host is checked against `[tpc] allow_hosts` (on its resolved address),
the number of running copies against `max_concurrent`, and the federation side is chosen (pull: the
write placement; push: the best replica). When that endpoint does HTTP-TPC itself (`tpc = yes`),
the `COPY` is redirected to it (`307`). Otherwise fedd streams the bytes itself, source response to
destination request, never holding more than socket buffers of the file, writes performance markers
every `marker_interval` seconds and ends with `success: Created` or `failure: <reason>`.
A failed copy removes what it wrote (unless it was overwriting a file that existed before).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.client import Agent
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from fedd.checksums.bulk import tune_allocator
from fedd.config import TpcConfig
from fedd.endpoints.interfaces import ITPCTarget, IWritable
from fedd.errors import BadGateway, BadRequest, Forbidden, describe
from fedd.federation import Federation, Replica
from fedd.tpc.agents import CopyAgents
from fedd.tpc.calls import REDIRECTS, JobCalls
from fedd.tpc.guard import HostRefused
from fedd.tpc.pump import Drain, Pump
from fedd.tpc.transfer import (
    CopyRequest,
    Job,
    TransferBusy,
    TransferFailed,
    adler32_of,
    failure_reason,
    mode_of,
    perf_marker,
    public_url,
    transfer_event,
)
from fedd.writes import PutTarget, Writer

__all__ = ["CopyRequest", "TpcEngine", "adler32_of", "mode_of", "perf_marker", "public_url"]  # also from here

log = Logger(namespace="fedd.tpc")


class TpcEngine:
    def __init__(
        self,
        federation: Federation,
        writer: Writer,
        *,
        reactor: Any,
        events: Any = None,
        agents: CopyAgents | None = None,
    ) -> None:
        """`agents`: the HTTP agents copies use (tests: agents over in-memory resources)."""
        self.fed = federation
        self.writer = writer
        self.reactor = reactor
        self.events = events
        self.active: set[Job] = set()
        self.on_end: Callable[[], None] | None = None  # workers: the counters file written at once
        self.done = 0
        self.failed = 0
        self.redirected = 0
        self.agents = agents if agents is not None else CopyAgents(federation, reactor)
        self.calls = JobCalls(reactor, lambda: self.config)
        tune_allocator()  # 1 MiB reads without a page fault per 4 KiB (fedd.checksums.bulk)

    @property
    def config(self) -> TpcConfig:
        return self.fed.config.tpc  # read each time: a reload applies to the next copy

    # --- before the 202 -------------------------------------------------------------------------

    async def prepare(self, request: CopyRequest) -> Job:
        """Check and plan a copy; raise a FeddError (answered as a status) when it cannot start."""
        config = self.config
        if not config.enabled:
            raise Forbidden("third-party copy is disabled here ([tpc] enabled = no)")
        parts = urlsplit(request.remote)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadRequest(f"the remote URL must be http:// or https://, got {request.remote[:200]!r}")
        guard, _ = self.agents.remote()
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            await guard.address(parts.hostname, port)
        except HostRefused as exc:
            log.info(
                "refused {mode} copy of {path} with {remote}: {reason}",
                mode=request.mode,
                path=request.path,
                remote=public_url(request.remote),
                reason=str(exc),
            )
            raise Forbidden(f"third-party copy refused: {exc}") from None
        except Exception as exc:
            raise BadGateway(f"cannot resolve {parts.hostname}: {describe(exc)}") from None
        if len(self.active) >= config.max_concurrent:
            raise TransferBusy(f"{len(self.active)} third-party copies are running (the limit): try again later")
        now = self.reactor.seconds()
        job = Job(request, uuid.uuid4().hex, now, last_progress=now, next_marker=now + config.marker_interval)
        if request.mode == "pull":
            target = await self.writer.put(request.path, request.client, None)
            job.endpoint = target.endpoint
            if config.redirect and self.fed.endpoints[target.endpoint].config.tpc:
                job.redirect = target.url
            job.target = target
        else:
            replicas = await self.fed.find(request.path, request.client)
            job.endpoint = replicas[0].endpoint
            if config.redirect and self.fed.endpoints[replicas[0].endpoint].config.tpc:
                job.redirect = replicas[0].url
            job.replicas = [r for r in replicas if r.url.startswith(("http://", "https://"))]
            if not job.replicas and job.redirect is None:
                raise BadGateway(f"no replica of {request.path} is on an endpoint fedd can read over HTTP")
        if job.redirect is not None:
            self.redirected += 1
            log.info(
                "{mode} copy of {path}: redirected to {endpoint}, which does TPC itself",
                mode=request.mode,
                path=request.path,
                endpoint=job.endpoint,
            )
            return job
        if request.credential.lower() not in ("", "none"):
            raise BadRequest(
                f"Credential: {request.credential[:40]} is not supported: send Credential: none and the remote "
                "side's credentials as TransferHeaderAuthorization"
            )
        self.active.add(job)
        return job

    # --- after the 202 --------------------------------------------------------------------------

    async def run(self, job: Job, write: Any) -> bool:
        """Do the copy, writing markers and the last line with `write(bytes)`; True on success."""
        log.info(
            "{mode} copy {id} of {path} with {remote} started",
            mode=job.request.mode,
            id=job.id,
            path=job.request.path,
            remote=public_url(job.request.remote),
        )
        reason = await self._drive(job, write)
        write(perf_marker(self.reactor.seconds(), job.bytes))
        write(b"success: Created\n" if not reason else f"failure: {reason}\n".encode())
        self._finished(job, reason)
        return not reason

    async def replicate(self, source: Replica, target: PutTarget) -> Job:
        """fedd's own copy of a file (fedd.replicate): pulled from the `source` replica over that
        endpoint's agent to `target`, checked like a pull COPY (the source's adler32 against the
        stream's, the size the target stored); a failure removes the partial target and raises
        TransferFailed with the reason. Counts towards `[tpc] max_concurrent` and its timeouts."""
        now = self.reactor.seconds()
        request = CopyRequest("pull", target.path, source.url, {}, client="fedd")
        job = Job(request, uuid.uuid4().hex, now, last_progress=now, next_marker=float("inf"))
        job.endpoint, job.target = target.endpoint, target
        self.active.add(job)
        reason = await self._drive(job, lambda _: None, self.agents.endpoint(source.endpoint))
        if reason:
            raise TransferFailed(reason)
        return job

    async def _drive(self, job: Job, write: Any, source_agent: Agent | None = None) -> str:
        """Run a planned copy with its ticker (markers, timeouts); the failure reason, or ""."""
        config = self.config
        ticker = LoopingCall(self._tick, job, write)
        ticker.clock = self.reactor
        ticker.start(min(config.marker_interval, 1.0), now=False)
        reason = ""
        try:
            if job.request.mode == "pull":
                await self._pull(job, source_agent)
            else:
                await self._push(job)
        except Exception as exc:
            reason = job.reason or failure_reason(exc)
            await self._clean_up(job)
        finally:
            ticker.stop()
            self.active.discard(job)
            if self.on_end is not None:
                self.on_end()
            if job.request.mode == "pull":
                self.fed.locator.forget(job.request.path)
        return reason

    def _tick(self, job: Job, write: Any) -> None:
        try:
            now = self.reactor.seconds()
            config = self.config
            if now - job.started > config.timeout:
                job.cancel(f"the copy did not finish within [tpc] timeout ({config.timeout:g}s)")
            elif now - job.last_progress > config.idle_timeout:
                job.cancel(f"no data moved for {config.idle_timeout:g}s")
            if now >= job.next_marker:
                job.next_marker = now + config.marker_interval
                write(perf_marker(now, job.bytes))
        except Exception:
            log.failure("TPC ticker of copy {id}", id=job.id)

    def _on_data(self, job: Job) -> Any:
        return lambda n: job.progress(n, self.reactor.seconds())

    async def _pull(self, job: Job, source_agent: Agent | None = None) -> None:
        assert job.target is not None
        request, target = job.request, job.target
        remote = source_agent or self.agents.remote()[1]
        source = await self.calls.get(
            job, remote, request.remote, dict(request.transfer_headers, **{"Want-Digest": "adler32"})
        )
        if source.code != 200:
            raise TransferFailed(await self.calls.refusal(job, source, "the source"))
        pump = Pump(source, self._on_data(job), reactor=self.reactor)
        job.size = pump.expected
        endpoint = self.fed.endpoints[target.endpoint]
        if job.size is None and endpoint.config.kind != "dav":
            await self.calls.drain(job, source)
            raise TransferFailed(
                f"the source announced no Content-Length, and {target.endpoint} ({endpoint.config.kind}) "
                "needs the size before the upload"
            )
        headers = dict(ITPCTarget(endpoint).upload_headers) if ITPCTarget.providedBy(endpoint) else {}
        response = await self.calls.send(job, self.agents.endpoint(target.endpoint), target.url, headers, pump)
        if response.code not in (200, 201, 204):
            job.refused = True
            raise TransferFailed(await self.calls.refusal(job, response, f"destination {target.endpoint}"))
        await self.calls.drain(job, response)
        job.adler = await self.calls.wait(job, pump.checksum(), None)
        self._compare(adler32_of(source.headers), pump.adler32, "the source")
        # the destination's own view of what it stored
        endpoint_path = self.writer.writable(request.path).get(target.endpoint)
        if endpoint_path is not None:
            d = endpoint.stat(endpoint_path)
            stat = await self.calls.wait(job, d, endpoint.config.timeout * 2)
            if stat is None or (stat.size is not None and stat.size != pump.bytes):
                got = "nothing" if stat is None else f"{stat.size} bytes"
                raise TransferFailed(f"{target.endpoint} holds {got} after receiving {pump.bytes} bytes")

    async def _push(self, job: Job) -> None:
        request = job.request
        problems = []
        source: IResponse | None = None
        for replica in job.replicas:
            try:
                source = await self.calls.get(
                    job, self.agents.endpoint(replica.endpoint), replica.url, {"Want-Digest": "adler32"}
                )
            except (CancelledError, TransferFailed):
                raise
            except Exception as exc:
                problems.append(f"{replica.endpoint}: {failure_reason(exc)}")
                continue
            if source.code == 200:
                job.endpoint = replica.endpoint
                break
            problems.append(f"{replica.endpoint}: " + await self.calls.refusal(job, source, "HTTP"))
            source = None
        if source is None:
            raise TransferFailed("no replica could be read: " + "; ".join(problems))
        pump = Pump(source, self._on_data(job), reactor=self.reactor)
        job.size = pump.expected
        _, remote = self.agents.remote()
        response = await self.calls.send(job, remote, request.remote, dict(request.transfer_headers), pump)
        if response.code in REDIRECTS:
            job.refused = True
            await self.calls.drain(job, response)
            raise TransferFailed(
                f"the destination redirected the upload (HTTP {response.code}): give fedd the final URL"
            )
        if response.code not in (200, 201, 204):
            job.refused = True
            raise TransferFailed(await self.calls.refusal(job, response, "the destination"))
        await self.calls.drain(job, response)
        job.adler = await self.calls.wait(job, pump.checksum(), None)
        self._compare(adler32_of(source.headers), pump.adler32, "the source")
        self._compare(adler32_of(response.headers), pump.adler32, "the destination")
        # ask the destination what it stored (many grid storages answer Want-Digest)
        hdrs = Headers({k.encode("latin-1"): [v.encode("latin-1")] for k, v in request.transfer_headers.items()})
        hdrs.setRawHeaders(b"want-digest", [b"adler32"])
        try:
            head = await self.calls.wait(
                job, remote.request(b"HEAD", request.remote.encode("latin-1"), hdrs, None), self.config.connect_timeout
            )
        except (CancelledError, TransferFailed):
            raise
        except Exception as exc:
            log.info("copy {id}: HEAD on the destination failed: {reason}", id=job.id, reason=failure_reason(exc))
            return
        await self.calls.drain(job, head)
        if head.code == 200:
            self._compare(adler32_of(head.headers), pump.adler32, "the destination")
            size = head.headers.getRawHeaders(b"content-length")
            if size and size[-1].isdigit() and int(size[-1]) != pump.bytes:
                raise TransferFailed(f"the destination holds {int(size[-1])} bytes after receiving {pump.bytes}")

    def _compare(self, announced: str | None, counted: str, who: str) -> None:
        if announced is not None and announced != counted:
            raise TransferFailed(f"checksum mismatch: {who} says adler32 {announced}, fedd counted {counted}")

    async def _clean_up(self, job: Job) -> None:
        """Remove what a failed copy wrote: never a file that existed before, nothing that was refused."""
        if not job.writing or job.refused:
            return
        try:
            if job.request.mode == "pull" and job.target is not None and not job.target.overwrite:
                eid = job.target.endpoint
                endpoint_path = self.writer.writable(job.request.path).get(eid)
                if endpoint_path is not None:
                    endpoint = self.fed.endpoints[eid]
                    d = IWritable(endpoint).delete(endpoint_path)
                    d.addTimeout(endpoint.config.timeout * 4, self.reactor)
                    await d
            elif job.request.mode == "push":
                _, remote = self.agents.remote()
                hdrs = Headers(
                    {k.encode("latin-1"): [v.encode("latin-1")] for k, v in job.request.transfer_headers.items()}
                )
                deleting = remote.request(b"DELETE", job.request.remote.encode("latin-1"), hdrs, None)
                deleting.addTimeout(self.config.connect_timeout, self.reactor)
                response = await deleting
                drain = Drain()
                response.deliverBody(drain)
                drain.done.addTimeout(self.config.connect_timeout, self.reactor)
                await drain.done
        except Exception as exc:
            log.warn("copy {id}: removing the partial target failed: {reason}", id=job.id, reason=failure_reason(exc))

    # --- events and state -------------------------------------------------------------------------

    def _finished(self, job: Job, reason: str) -> None:
        request = job.request
        duration = round(self.reactor.seconds() - job.started, 3)
        if reason:
            self.failed += 1
        else:
            self.done += 1
        log.info(
            "{mode} copy {id} of {path} failed after {bytes} bytes: {reason}"
            if reason
            else "{mode} copy {id} of {path}: {bytes} bytes in {duration}s",
            mode=request.mode,
            id=job.id,
            path=request.path,
            bytes=job.bytes,
            reason=reason,
            duration=duration,
        )
        if self.events is not None:
            self.events.emit("transfer-failed" if reason else "transfer-done", transfer_event(job, reason, duration))

    def to_json(self) -> dict[str, Any]:
        return {
            "active": len(self.active),
            "done": self.done,
            "failed": self.failed,
            "redirected": self.redirected,
            "transfers": [
                {"id": j.id, "mode": j.request.mode, "path": j.request.path, "bytes": j.bytes, "size": j.size}
                for j in sorted(self.active, key=lambda j: j.started)
            ],
        }

    def close(self) -> Deferred[None]:
        for job in list(self.active):
            job.cancel("fedd is shutting down")
        return self.agents.close()
