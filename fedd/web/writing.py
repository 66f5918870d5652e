"""The write side of the web front: PUT (307 or carried), DELETE, MKCOL, MOVE, COPY (third-party
copy). Domain work happens in `fedd.writes` and `fedd.tpc`; here only HTTP."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from twisted.web import server

from fedd.auth.service import AuthService
from fedd.confirm.service import ConfirmService
from fedd.errors import BadGateway, BadRequest, ClientGone, Conflict, Forbidden, PartialFailure
from fedd.events.model import file_fields
from fedd.events.service import EventsService
from fedd.federation import Federation
from fedd.namespace import normalise_path
from fedd.tpc.engine import TpcEngine
from fedd.tpc.wire import copy_request
from fedd.web.answer import client_ip, identity
from fedd.web.notes import noted
from fedd.web.site import ALREADY_ANSWERED
from fedd.web.site import absolute_url as _absolute
from fedd.writes import MAX_UPLOAD, Writer

SIZE_HEADERS = (b"oc-total-length", b"x-expected-entity-length")  # the size of a chunked upload


def _declared_length(request: server.Request) -> int | None:
    """The upload's announced size: None when not announced (chunked); BadRequest when absurd."""
    raw = request.getHeader(b"content-length")
    if raw is None:
        return None
    return _size(raw, "Content-Length")


def _announced_size(request: server.Request, declared: int | None) -> int | None:
    """The size the upload should have: Content-Length, or a size header clients send with chunked bodies."""
    if declared is not None:
        return declared
    for name in SIZE_HEADERS:
        raw = request.getHeader(name)
        if raw is not None:
            return _size(raw, name.decode())
    return None


def _size(raw: bytes, header: str) -> int:
    raw = raw.strip()
    if not raw.isdigit() or len(raw) > 19 or int(raw) > MAX_UPLOAD:
        raise BadRequest(f"unacceptable {header} {raw[:40].decode('latin-1')!r}")
    return int(raw)


class Writes:
    def __init__(
        self,
        federation: Federation,
        writer: Writer,
        *,
        tpc: TpcEngine | None = None,
        events: EventsService | None = None,
        auth: AuthService | None = None,
        confirm: ConfirmService | None = None,
    ) -> None:
        self.fed = federation
        self.writer = writer
        self.tpc = tpc
        self.events = events
        self.auth = auth
        self.confirm = confirm

    # --- writes -------------------------------------------------------------------------------

    async def put(self, request: server.Request, path: str) -> bytes:
        if request.path.endswith(b"/"):
            raise Conflict("cannot PUT a collection")
        size = _declared_length(request)
        announced = _announced_size(request, size)
        started = self.fed.clock.seconds()
        target = await self.writer.put(path, client_ip(request), size)
        noted(request).fedd_endpoint = target.endpoint
        if getattr(request, "fedd_proxy", False):
            body = getattr(request, "fedd_stream", None)
            try:
                status = await self.writer.carry(target, body, size or 0)
            except ClientGone:
                if request.finished or request.channel is None or getattr(request, "fedd_gone", False):
                    return ALREADY_ANSWERED  # nobody to answer: the client is gone
                raise BadRequest("the upload ended before its Content-Length") from None
            request.setResponseCode(status)
            self._put_event(request, path, target, size, carried=True)
            if self.confirm is not None:  # confirmed by the endpoint's answer, with what fedd sent it
                sent = getattr(body, "adler32", None)
                self.confirm.carried(path, target.endpoint, size or 0, started, f"{sent:08x}" if sent else None)
            return b""
        request.setResponseCode(self.writer.config.redirect_code)
        request.setHeader(b"location", _absolute(request, target.url).encode())
        request.setHeader(b"cache-control", b"no-store")
        self._put_event(request, path, target, size)
        if self.confirm is not None:
            kept = self.confirm.expect(path, target.endpoint, announced, overwrite=target.overwrite)
            if kept is not None:  # the 307 once the upload is in [confirm] pending_file: a kill after it loses nothing
                await kept
        return b""

    def _put_event(
        self, request: server.Request, path: str, target: Any, size: int | None, carried: bool = False
    ) -> None:
        if self.events is not None:
            who = identity(request)
            self.events.emit(
                "put-redirect",
                {
                    **file_fields(path),
                    "rse": target.endpoint,
                    "endpoint": target.endpoint,
                    "url": target.url.split("?", 1)[0],
                    "file-size": size,
                    "bytes": size,
                    "overwrite": target.overwrite,
                    "client": client_ip(request),
                    "client_dn": who.subject or None,
                    "candidates": len(target.placement.order),
                    "refused": target.placement.refused or None,
                    "carried": carried,
                },
            )

    async def delete(self, request: server.Request, path: str) -> bytes:
        started = self.fed.clock.seconds()
        try:
            outcome = await self.writer.delete(path)
        except PartialFailure as exc:
            self._deletion_events(path, exc.outcome, started)
            raise
        self._deletion_events(path, outcome, started)
        request.setResponseCode(204)
        return b""

    def _deletion_events(self, path: str, outcome: Any, started: float) -> None:
        if self.events is None or outcome is None:
            return
        duration = round(self.fed.clock.seconds() - started, 3)
        base = file_fields(path)
        for eid in outcome.done:
            self.events.emit("deletion-done", dict(base, rse=eid, endpoint=eid, duration=duration))
        for eid, why in outcome.failed.items():
            self.events.emit("deletion-failed", dict(base, rse=eid, endpoint=eid, duration=duration, reason=why))

    async def mkcol(self, request: server.Request, path: str) -> bytes:
        if request.content is not None and request.content.read(1):
            request.setResponseCode(415)
            return b"MKCOL with a body is not supported\n"
        await self.writer.mkcol(path)
        request.setResponseCode(201)
        return b""

    async def move(self, request: server.Request, path: str) -> bytes:
        destination = destination_of(request)
        if self.auth is not None:
            who = identity(request)
            decision = self.auth.decide(who, "w", destination)
            if not decision.allowed:
                raise Forbidden(f"forbidden: destination {destination}: {decision.reason}")
        overwrite = (request.getHeader(b"overwrite") or b"T").strip().upper() != b"F"
        existed = await self.writer.move(path, destination, overwrite)
        request.setResponseCode(204 if existed else 201)
        return b""

    async def copy(self, request: server.Request, path: str) -> bytes:
        """HTTP third-party copy: 307 to an endpoint doing TPC itself, or 202 + markers + the outcome."""
        assert self.tpc is not None
        who = identity(request)
        job = await self.tpc.prepare(copy_request(request, path, client_ip(request), who.subject or None))
        noted(request).fedd_endpoint = job.endpoint
        if job.redirect is not None:
            request.setResponseCode(307)
            request.setHeader(b"location", _absolute(request, job.redirect).encode())
            request.setHeader(b"cache-control", b"no-store")
            return b""
        request.setResponseCode(202)
        request.setHeader(b"content-type", b"text/plain")
        request.setHeader(b"cache-control", b"no-store")
        request.notifyFinish().addErrback(lambda _: job.cancel("the client closed the connection"))

        def write(data: bytes) -> None:
            if not request.finished and request.channel is not None:
                request.write(data)

        write(b"")  # the 202 goes out now; markers and the outcome follow in the body
        await self.tpc.run(job, write)
        if not request.finished and request.channel is not None:
            request.finish()
        return ALREADY_ANSWERED


def destination_of(request: server.Request) -> str:
    """The federation path a MOVE's `Destination` names (same server only)."""
    raw = request.getHeader(b"destination")
    if not raw:
        raise BadRequest("MOVE needs a Destination header")
    try:
        parts = urlsplit(raw.decode("latin-1"))
    except ValueError:  # "Invalid IPv6 URL": an unclosed '['
        raise BadRequest("unusable Destination URL") from None
    if parts.scheme or parts.netloc:
        host = (request.getHeader(b"host") or b"").decode("latin-1").lower()
        if parts.scheme not in ("http", "https") or parts.netloc.lower() != host:
            raise BadGateway(f"Destination {raw.decode('latin-1')!r} is outside this federation")
    if parts.path.encode().startswith(b"/.well-known/fedd/"):
        raise Forbidden("Destination is one of fedd's own paths")
    return normalise_path(parts.path.encode("latin-1"))
