"""The write side of the web front (a mixin of `FeddResource`): PUT (307 or carried), DELETE, MKCOL,
MOVE, COPY (third-party copy), the SRR report, RFC 4331 quota props and the downtime admin resource.
Domain work happens in `fedd.writes`, `fedd.tpc` and `fedd.space`; here only HTTP."""

from __future__ import annotations

import ipaddress
import json
from typing import Any
from urllib.parse import urlsplit

from twisted.web import server
from twisted.web.http_headers import Headers

from fedd.auth.identity import ANONYMOUS
from fedd.auth.service import AuthService
from fedd.errors import (
    BadGateway,
    BadRequest,
    ClientGone,
    Conflict,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    PartialFailure,
    Unauthorized,
    UnsupportedMediaType,
)
from fedd.events.model import file_fields
from fedd.federation import Federation
from fedd.namespace import normalise_path
from fedd.space.downtime import DowntimeBook
from fedd.space.downtime import parse_request as parse_downtime
from fedd.space.service import SpaceService
from fedd.tpc.engine import TpcEngine
from fedd.tpc.wire import copy_request
from fedd.web.site import ALREADY_ANSWERED as _ALREADY_ANSWERED
from fedd.web.site import absolute_url as _absolute
from fedd.writes import MAX_UPLOAD, Writer

DOWNTIMES_PATH = b"/.well-known/fedd/downtimes"
# headers a proxy adds: behind one, the loopback peer is the proxy, not the admin
PROXY_HEADERS = (b"forwarded", b"x-forwarded-for", b"x-forwarded-host", b"x-real-ip", b"via")
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def is_loopback(host: str) -> bool:
    """True for a loopback address, parsed: 127.0.0.0/8, ::1 and IPv4-mapped ::ffff:127.x.y.z."""
    try:
        addr = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def _host_name(value: bytes | None) -> str:
    """The name in a Host header, without the port ('[::1]:8080' -> '::1'); '' when absent."""
    host = (value or b"").decode("latin-1").strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def local_admin_refusal(client: str, headers: Headers) -> str | None:
    """Why an admin change without [auth] is refused, or None when it comes from this host itself:
    a loopback peer, no proxy headers (behind a reverse proxy every client would look local), and a
    Host naming this host by a loopback name (a page whose name resolves to 127.0.0.1, DNS
    rebinding, is not the admin)."""
    if not is_loopback(client):
        return "without [auth], downtimes can be changed from this host only"
    if any(headers.hasHeader(name) for name in PROXY_HEADERS):
        return "without [auth], downtimes cannot be changed through a proxy: turn [auth] on"
    host = _host_name(headers.getRawHeaders(b"host", [b""])[-1])
    if host not in LOCAL_NAMES and not is_loopback(host):
        return "without [auth], downtimes are changed at a loopback address (e.g. http://127.0.0.1:PORT/)"
    return None


def is_json(content_type: bytes | None) -> bool:
    """True for application/json, with or without parameters (charset)."""
    if content_type is None:
        return False
    return content_type.split(b";", 1)[0].strip().lower() == b"application/json"


def _declared_length(request: server.Request) -> int | None:
    """The upload's announced size: None when not announced (chunked); BadRequest when absurd."""
    raw = request.getHeader(b"content-length")
    if raw is None:
        return None
    raw = raw.strip()
    if not raw.isdigit() or len(raw) > 19 or int(raw) > MAX_UPLOAD:
        raise BadRequest(f"unacceptable Content-Length {raw[:40].decode('latin-1')!r}")
    return int(raw)


class WriteHandlers:
    """Handlers for FeddResource; the attributes are FeddResource's."""

    fed: Federation
    writer: Writer | None
    space: SpaceService | None
    downtimes: DowntimeBook | None
    tpc: TpcEngine | None
    events: Any
    auth: AuthService | None

    def _client(self, request: server.Request) -> str:
        raise NotImplementedError

    # --- writes -------------------------------------------------------------------------------

    async def _put(self, request: server.Request, path: str) -> bytes:
        assert self.writer is not None
        if request.path.endswith(b"/"):
            raise Conflict("cannot PUT a collection")
        size = _declared_length(request)
        target = await self.writer.put(path, self._client(request), size)
        request.fedd_endpoint = target.endpoint  # type: ignore[attr-defined]
        if getattr(request, "fedd_proxy", False):
            body = getattr(request, "fedd_stream", None)
            try:
                status = await self.writer.carry(target, body, size or 0)
            except ClientGone:
                if request.finished or request.channel is None or getattr(request, "fedd_gone", False):
                    return _ALREADY_ANSWERED  # nobody to answer: the client is gone
                raise BadRequest("the upload ended before its Content-Length") from None
            request.setResponseCode(status)
            self._put_event(request, path, target, size, carried=True)
            return b""
        request.setResponseCode(self.writer.config.redirect_code)
        request.setHeader(b"location", _absolute(request, target.url).encode())
        request.setHeader(b"cache-control", b"no-store")
        self._put_event(request, path, target, size)
        return b""

    def _put_event(
        self, request: server.Request, path: str, target: Any, size: int | None, carried: bool = False
    ) -> None:
        if self.events is not None:
            who = getattr(request, "fedd_identity", ANONYMOUS)
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
                    "client": self._client(request),
                    "client_dn": who.subject or None,
                    "candidates": len(target.placement.order),
                    "refused": target.placement.refused or None,
                    "carried": carried,
                },
            )

    async def _delete(self, request: server.Request, path: str) -> bytes:
        assert self.writer is not None
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

    async def _mkcol(self, request: server.Request, path: str) -> bytes:
        assert self.writer is not None
        if request.content is not None and request.content.read(1):
            request.setResponseCode(415)
            return b"MKCOL with a body is not supported\n"
        await self.writer.mkcol(path)
        request.setResponseCode(201)
        return b""

    async def _move(self, request: server.Request, path: str) -> bytes:
        assert self.writer is not None
        destination = self._destination(request)
        if self.auth is not None:
            who = getattr(request, "fedd_identity", ANONYMOUS)
            decision = self.auth.decide(who, "w", destination)
            if not decision.allowed:
                raise Forbidden(f"forbidden: destination {destination}: {decision.reason}")
        overwrite = (request.getHeader(b"overwrite") or b"T").strip().upper() != b"F"
        existed = await self.writer.move(path, destination, overwrite)
        request.setResponseCode(204 if existed else 201)
        return b""

    async def _copy(self, request: server.Request, path: str) -> bytes:
        """HTTP third-party copy: 307 to an endpoint doing TPC itself, or 202 + markers + the outcome."""
        assert self.tpc is not None
        who = getattr(request, "fedd_identity", ANONYMOUS)
        job = await self.tpc.prepare(copy_request(request, path, self._client(request), who.subject or None))
        request.fedd_endpoint = job.endpoint  # type: ignore[attr-defined]
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
        return _ALREADY_ANSWERED

    def _destination(self, request: server.Request) -> str:
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

    # --- space and downtimes ----------------------------------------------------------------------

    def _srr(self, request: server.Request) -> bytes:
        assert self.space is not None
        if request.method not in (b"GET", b"HEAD"):
            raise MethodNotAllowed("the storage report is read-only")
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        base = _absolute(request, "/").rstrip("/")  # [server] public_url, never an unchecked Host
        return json.dumps(self.space.srr(base), indent=1, sort_keys=True).encode() + b"\n"

    def _downtimes(self, request: server.Request, raw: bytes) -> bytes | int:
        if self.downtimes is None:
            raise NotFound("downtimes are not managed here")
        if request.method in (b"GET", b"HEAD"):
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"cache-control", b"no-store")
            return json.dumps(self.downtimes.to_json(), indent=1).encode() + b"\n"
        self._admin_only(request)
        if request.method == b"POST" and raw == DOWNTIMES_PATH:
            body = b""
            if request.content is not None:
                request.content.seek(0)
                body = request.content.read()
            endpoint, downtime = parse_downtime(body, set(self.fed.endpoints), self.fed.clock.seconds())
            declared = self.downtimes.add(endpoint, downtime)
            request.setResponseCode(201)
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"location", DOWNTIMES_PATH + b"/" + declared.id.encode())
            return json.dumps(declared.to_json(self.fed.clock.seconds()), indent=1).encode() + b"\n"
        if request.method == b"DELETE" and raw.startswith(DOWNTIMES_PATH + b"/"):
            if not self.downtimes.remove(raw[len(DOWNTIMES_PATH) + 1 :].decode("latin-1")):
                raise NotFound("no such run-time downtime (configured ones are changed in the configuration)")
            request.setResponseCode(204)
            return b""
        raise MethodNotAllowed("GET, POST (new downtime) or DELETE .../<id>")

    def _admin_only(self, request: server.Request) -> None:
        """Changing downtimes: an identity the access rules let write the downtimes path; without
        [auth], clients on the same host only (see `local_admin_refusal`). A POST body must be JSON."""
        if request.method == b"POST" and not is_json(request.getHeader(b"content-type")):
            # a browser sends text/plain or a form cross-site without asking first; JSON needs a CORS
            # preflight, which fedd never grants
            raise UnsupportedMediaType("a downtime is declared with Content-Type: application/json")
        if self.auth is None:
            refusal = local_admin_refusal(self._client(request), request.requestHeaders)
            if refusal is not None:
                raise Forbidden(refusal)
            return
        who = getattr(request, "fedd_identity", ANONYMOUS)
        decision = self.auth.decide(who, "w", DOWNTIMES_PATH.decode())
        if not decision.allowed:
            if who.anonymous:
                raise Unauthorized(f"authentication required: {decision.reason}")
            raise Forbidden(f"forbidden: {decision.reason}")

    def _quota(self, path: str, stat: Any) -> tuple[int, int] | None:
        """(available, used) over the endpoints serving a collection (writable ones if any), or None."""
        if self.space is None or not stat.is_dir:
            return None
        targets = [t.endpoint for t in self.fed.namespace.targets(path) if t.endpoint in self.fed.endpoints]
        writable = [eid for eid in targets if self.fed.endpoints[eid].config.write]
        return self.space.quota(writable or targets)
