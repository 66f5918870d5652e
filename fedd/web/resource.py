"""The HTTP/WebDAV front: GET/HEAD -> 302, PROPFIND merged listings, OPTIONS, status, local data.

One leaf resource dispatches on method. The cached GET path is synchronous: in-process cache,
cached ranking, cached presigned URL, headers, done. Everything else runs as a coroutine and ends
in `_respond`/`_fail`, the one place where domain errors become HTTP statuses.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, cast
from urllib.parse import quote, urlsplit

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import Resource
from twisted.web.static import File, getTypeAndEncoding

from fedd import __version__
from fedd.auth.identity import ANONYMOUS, Identity
from fedd.auth.policy import METHOD_LETTER
from fedd.auth.service import AuthService, Unauthenticated
from fedd.checksums.digest import Want, format_value, parse_prefer_wait, wants_of
from fedd.checksums.service import ChecksumService
from fedd.endpoints.base import format_etag
from fedd.endpoints.local import LOCAL_PREFIX, LocalEndpoint
from fedd.errors import (
    BadGateway,
    BadRequest,
    Conflict,
    FeddError,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    PartialFailure,
    Unauthorized,
)
from fedd.federation import Federation, Replica
from fedd.namespace import normalise_path
from fedd.space.downtime import DowntimeBook
from fedd.space.downtime import parse_request as parse_downtime
from fedd.space.service import SpaceService
from fedd.tpc.engine import TpcEngine
from fedd.tpc.wire import copy_letter, copy_request
from fedd.web import xml
from fedd.web.accesslog import AccessLog
from fedd.web.accesslog import record as access_record
from fedd.web.metrics import Metrics
from fedd.web.statuspage import render_status_page, wants_html
from fedd.writes import MAX_UPLOAD, Writer

log = Logger(namespace="fedd.web")
STATUS_PATH = b"/.well-known/fedd/status"
STATUS_HTML_PATH = b"/.well-known/fedd/status.html"
STATUS_PATHS = (STATUS_PATH, STATUS_HTML_PATH)
# the status page needs nothing but its own inline styles (and an empty data: favicon)
STATUS_PAGE_CSP = b"default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"
METALINK_TYPE = b"application/metalink4+xml"
ALLOW = b"OPTIONS, GET, HEAD, PROPFIND, PUT, DELETE, MKCOL, MOVE, COPY"
DOWNTIMES_PATH = b"/.well-known/fedd/downtimes"
_HOST_RE = re.compile(rb"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


class FeddRequest(server.Request):
    """Refuses request bodies over the site's limit before buffering them."""

    max_body = 1 << 20
    fedd_early = False  # answered before its body (an upload fedd redirects): the body is never read
    fedd_proxy = False  # an upload fedd carries itself (clients that cannot follow a 307 with a body)
    proxy_agents: tuple[bytes, ...] = ()
    proxy_max = 0

    def _limit(self) -> int:
        return self.proxy_max if self.fedd_proxy else self.max_body

    def gotLength(self, length: int | None) -> None:
        if self.fedd_early:
            super().gotLength(0)
            return
        if length is not None and length > self._limit():
            self._too_large()
            return
        self._body_seen = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._body_seen = getattr(self, "_body_seen", 0) + len(data)
        if self._body_seen > self._limit():
            self._too_large()
            return
        super().handleContentChunk(data)

    def _too_large(self) -> None:
        transport = self.channel.transport if self.channel is not None else None
        if transport is not None:
            transport.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            transport.loseConnection()
        self.content = _NullSink()
        self.channel = None  # type: ignore[assignment]


class _NullSink:
    def write(self, data: bytes) -> None:
        pass

    def seek(self, *args: Any) -> int:
        return 0

    def read(self, *args: Any) -> bytes:
        return b""

    def close(self) -> None:
        pass


LINGER_SECONDS = 5.0


class FeddChannel(http.HTTPChannel):
    """Answers an over-long request or header line with 431 instead of silently closing.

    Uploads are answered before their body: fedd only says where the bytes go (307), so a `PUT` that
    announces `Expect: 100-continue`, a body over the site's limit or a chunked body is handled as soon
    as its headers are in, and the connection is closed after the answer. Without `Expect`, the client
    may already be sending: the socket is half-closed after the answer and what still arrives is read
    and dropped for a few seconds, so the client sees the 307 rather than a connection reset.
    """

    _fedd_linger = False

    def allHeadersReceived(self) -> None:
        req = self.requests[-1]
        if getattr(self, "_command", None) == b"PUT" and self.length != 0:
            agent = (req.requestHeaders.getRawHeaders(b"user-agent") or [b""])[0]
            if (
                self.length is not None
                and self.length <= req.proxy_max
                and agent.startswith(req.proxy_agents or (b"\0",))
            ):
                # a client known not to follow a 307 with its body (rclone, Go): fedd carries the upload,
                # spooled to a temporary file by twisted.web, then streamed to the chosen endpoint
                req.fedd_proxy = True
                super().allHeadersReceived()
                return
            expect = (req.requestHeaders.getRawHeaders(b"expect") or [b""])[0].lower()
            if expect == b"100-continue" or self.length is None or self.length > req.max_body:
                req.fedd_early = True
                self._fedd_linger = expect != b"100-continue"
                self.persistent = False
                self.length = 0
                req.parseCookies()
                req.gotLength(0)
                return  # no "100 Continue": the answer comes now, and the body goes elsewhere
        super().allHeadersReceived()

    def loseConnection(self) -> None:
        transport = self.transport
        half_close = getattr(transport, "loseWriteConnection", None)
        if not self._fedd_linger or half_close is None or not hasattr(transport, "abortConnection"):
            super().loseConnection()
            return
        self._fedd_linger = False
        self._networkProducer.unregisterProducer()  # type: ignore[attr-defined]
        self.dataReceived = _drop  # type: ignore[method-assign]
        transport.resumeProducing()  # type: ignore[union-attr]
        half_close()

        def abort() -> None:
            if getattr(transport, "connected", False):
                transport.abortConnection()  # type: ignore[union-attr]

        self.callLater(LINGER_SECONDS, abort)

    def lineLengthExceeded(self, line: bytes) -> None:
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        self.transport.loseConnection()


def _drop(data: bytes) -> None:
    """Discard the rest of an upload that was redirected."""


def _channel(factory: object) -> http._GenericHTTPChannelProtocol:
    return http._GenericHTTPChannelProtocol(FeddChannel())


class FeddSite(server.Site):
    requestFactory = FeddRequest
    protocol = _channel

    def __init__(
        self,
        resource: Resource,
        *,
        max_body: int,
        access_log: bool,
        metrics: Metrics | None = None,
        clock: Any = None,
        proxy_agents: tuple[str, ...] = (),
        proxy_max: int = 0,
    ) -> None:
        super().__init__(resource)
        self._access_log = access_log
        self.metrics = metrics
        self.clock = clock
        self.access_file: AccessLog | None = None
        self.open_connections = 0
        self.connections: set[Any] = set()  # open ones: on shutdown, the drain waits for their requests
        self.draining = False
        self.requestFactory = cast(
            type[FeddRequest],
            type(
                "Request",
                (FeddRequest,),
                {
                    "max_body": max_body,
                    "proxy_agents": tuple(a.encode() for a in proxy_agents if a),
                    "proxy_max": proxy_max,
                },
            ),
        )

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        if protocol is not None:
            self.open_connections += 1
            self.connections.add(protocol)
            lost = protocol.connectionLost

            def connection_lost(reason: Any) -> None:
                self.open_connections -= 1
                self.connections.discard(protocol)
                lost(reason)

            protocol.connectionLost = connection_lost
        return protocol

    @property
    def open_requests(self) -> list[server.Request]:
        """Requests received (or being received) and not answered yet, over all open connections."""
        channels = (getattr(p, "_channel", p) for p in self.connections)
        return [r for c in channels for r in getattr(c, "requests", ())]

    def getResourceFor(self, request: server.Request) -> Any:
        if self.draining:  # a request that came in on a kept-alive connection during the drain
            _close_after(request)
        return super().getResourceFor(request)

    def drain(self) -> None:
        """Shutting down: no more keep-alive, each connection closes after its current answer."""
        self.draining = True
        for request in self.open_requests:
            _close_after(request)

    def log(self, request: http.Request) -> None:
        started = getattr(request, "fedd_started", None)
        if self.metrics is not None:
            elapsed = self.clock.seconds() - started if started is not None and self.clock is not None else None
            self.metrics.request(request.method, request.code, elapsed)
        if self.access_file is not None and self.clock is not None:
            self.access_file.write(access_record(request, self.clock.seconds(), started))
        if self._access_log:
            log.info(
                "{client} {method} {uri} {code}",
                client=request.getClientAddress().host if request.getClientAddress() else "-",
                method=request.method.decode("latin-1"),
                uri=request.uri.decode("latin-1"),
                code=request.code,
            )


def _close_after(request: server.Request) -> None:
    if request.channel is not None:
        request.channel.persistent = False
    if not request.startedWriting:
        request.setHeader(b"connection", b"close")


def _absolute(request: server.Request, url: str) -> str:
    """fedd-local targets are paths: make them absolute on the host the client asked for."""
    if not url.startswith("/"):
        return url
    host = request.getHeader(b"host")
    if host is None or not _HOST_RE.match(host.encode("latin-1") if isinstance(host, str) else host):
        addr = request.getHost()
        host_s = f"{addr.host}:{addr.port}" if ":" not in addr.host else f"[{addr.host}]:{addr.port}"
    else:
        host_s = host if isinstance(host, str) else host.decode("ascii")
    scheme = "https" if request.isSecure() else "http"
    return f"{scheme}://{host_s}{url}"


@dataclass(frozen=True)
class _Plan:
    """A computed answer to a read for (path, client, method, host, scheme), reused for PLAN_SECONDS.

    GET: 302 to the best replica. HEAD: 200 with the file's metadata answered by fedd itself (as
    Dynafed does), unless `head_redirect` is set: davix reuses the redirect it got for a HEAD for the
    GET that follows, and an S3 presigned URL is valid for one method only.
    """

    until: float
    generation: tuple[int, int]
    endpoint: str
    url: str
    candidates: int
    code: int
    headers: tuple[tuple[bytes, bytes], ...]


_WRITE_METHODS = {b"PUT": "_put", b"DELETE": "_delete", b"MKCOL": "_mkcol", b"MOVE": "_move"}


def _declared_length(request: server.Request) -> int | None:
    """The upload's announced size: None when not announced (chunked); BadRequest when absurd."""
    raw = request.getHeader(b"content-length")
    if raw is None:
        return None
    raw = raw.strip()
    if not raw.isdigit() or len(raw) > 19 or int(raw) > MAX_UPLOAD:
        raise BadRequest(f"unacceptable Content-Length {raw[:40].decode('latin-1')!r}")
    return int(raw)


_ALREADY_ANSWERED = b"<answered by the handler>"  # a distinct object, compared by identity
PLAN_SECONDS = 1.0
PLAN_ENTRIES = 100_000


class FeddResource(Resource):
    isLeaf = True

    def __init__(
        self, federation: Federation, *, head_redirect: bool = False, events: Any = None, auth: Any = None
    ) -> None:
        super().__init__()
        self.auth: AuthService | None = auth
        self.metrics: Metrics | None = None
        self.metrics_path = b"/metrics"
        self.fed = federation
        self.events = events  # an EventsService, or None
        self.head_redirect = head_redirect
        self.started = time.time()
        self._plans: dict[tuple[Any, ...], _Plan] = {}
        self._paths: dict[bytes, str] = {}  # raw request path -> normalised path
        self.writer: Writer | None = None
        self.space: SpaceService | None = None
        self.downtimes: DowntimeBook | None = None
        self.tpc: TpcEngine | None = None
        self.checksums: ChecksumService | None = None
        self.srr_path = b"/.well-known/fedd/srr.json"
        self._local: dict[str, LocalEndpoint] = {}
        self.refresh_local()

    def refresh_local(self) -> None:
        """The local endpoints fedd serves bytes for (again after a reload)."""
        self._local = {eid: ep for eid, ep in self.fed.endpoints.items() if isinstance(ep, LocalEndpoint)}
        self._plans.clear()

    # --- dispatch -----------------------------------------------------------------------------

    def render(self, request: server.Request) -> bytes | int:
        raw = request.path
        request.fedd_started = self.fed.clock.seconds()  # type: ignore[attr-defined]
        try:
            if raw == self.metrics_path and self.metrics is not None:
                request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
                return self.metrics.render()
            if raw == self.srr_path and self.space is not None:
                return self._srr(request)
            if raw.startswith(b"/.well-known/fedd/"):
                if raw in STATUS_PATHS:
                    # both forms of the status are authorised as a read of STATUS_PATH (an access rule
                    # on it can limit the status to a site's admins)
                    path = STATUS_PATH.decode()

                    def handler() -> bytes | int:
                        return self._internal(request, raw)

                elif raw == DOWNTIMES_PATH or raw.startswith(DOWNTIMES_PATH + b"/"):
                    path = DOWNTIMES_PATH.decode()

                    def handler() -> bytes | int:
                        return self._downtimes(request, raw)

                elif not raw.startswith(LOCAL_PREFIX.encode()):
                    return self._internal(request, raw)
                else:
                    endpoint, endpoint_path, path = self._local_target(request, raw[len(LOCAL_PREFIX) :])

                    def handler() -> bytes | int:
                        return self._local_file(request, endpoint, endpoint_path)

            else:
                known = self._paths.get(raw)
                if known is None:
                    known = normalise_path(raw)
                    if len(self._paths) >= PLAN_ENTRIES:
                        self._paths.clear()
                    self._paths[raw] = known
                path = known

                def handler() -> bytes | int:
                    return self._dispatch(request, path)

            if self.auth is not None:
                authorization = request.getHeader(b"authorization")
                if authorization is not None and authorization[:7].lower() == b"bearer ":
                    return self._start(request, self._with_token(request, path, authorization, handler))
                self._authorize(request, self._certificate_identity(request), path)
            return handler()
        except FeddError as exc:
            return self._error(request, exc)

    def _dispatch(self, request: server.Request, path: str) -> bytes | int:
        method = request.method
        if method in (b"GET", b"HEAD"):
            return self.render_read(request, path)
        if method == b"PROPFIND":
            return self._start(request, self._propfind(request, path))
        if method in _WRITE_METHODS and self.writer is not None:
            return self._start(request, getattr(self, _WRITE_METHODS[method])(request, path))
        if method == b"COPY" and self.tpc is not None:
            return self._start(request, self._copy(request, path))
        if method == b"OPTIONS":
            request.setHeader(b"allow", ALLOW)
            request.setHeader(b"dav", b"1")
            request.setHeader(b"ms-author-via", b"DAV")
            return b""
        raise MethodNotAllowed(f"{method.decode('latin-1')} is not supported here")

    # --- authentication and authorisation ---------------------------------------------------------

    def _certificate_identity(self, request: server.Request) -> Identity:
        """The TLS client's identity, worked out once per connection; anonymous without a certificate."""
        if self.auth is None or self.auth.tls is None or not request.isSecure():
            return ANONYMOUS
        channel = request.channel
        who: Identity | None = getattr(channel, "fedd_identity", None)
        if who is None:
            who = ANONYMOUS
            handle = getattr(channel.transport, "getHandle", None) if channel is not None else None
            chain = []
            if handle is not None:
                # on the server side OpenSSL's peer chain leaves out the leaf (the proxy): put it back
                leaf = handle().get_peer_certificate(as_cryptography=True)
                rest = handle().get_peer_cert_chain(as_cryptography=True) or []
                chain = ([leaf] if leaf is not None else []) + [c for c in rest if c != leaf]
            if chain:
                try:
                    who = self.auth.from_certificate(list(chain))
                except ValueError as exc:
                    raise Forbidden(f"unusable client certificate: {exc}") from None
            channel.fedd_identity = who  # type: ignore[union-attr,attr-defined]
        return who

    def _authorize(self, request: server.Request, who: Identity, path: str) -> None:
        """Raise Unauthorized/Forbidden unless `who` may do this request's method on `path`."""
        assert self.auth is not None
        request.fedd_identity = who  # type: ignore[attr-defined]
        letter = copy_letter(request) if request.method == b"COPY" else METHOD_LETTER.get(request.method)
        if letter is None:
            return  # OPTIONS and unsupported methods: nothing to protect
        decision = self.auth.decide(who, letter, path)
        if decision.allowed:
            return
        log.info(
            "denied {method} {path} to {who}: {reason}",
            method=request.method.decode("latin-1"),
            path=path,
            who=who.label(),
            reason=decision.reason,
        )
        if who.anonymous:
            raise Unauthorized(f"authentication required: {decision.reason}")
        raise Forbidden(f"forbidden: {decision.reason}")

    async def _with_token(
        self, request: server.Request, path: str, authorization: bytes, handler: Callable[[], bytes | int]
    ) -> bytes:
        assert self.auth is not None
        try:
            who = await self.auth.from_token(authorization)
        except Unauthenticated as exc:
            log.info(
                "refused token for {method} {path}: {reason}",
                method=request.method.decode("latin-1"),
                path=path,
                reason=str(exc),
            )
            raise Unauthorized(str(exc)) from None
        self._authorize(request, who, path)
        result = handler()
        if result == server.NOT_DONE_YET:
            return _ALREADY_ANSWERED
        assert isinstance(result, bytes)
        return result

    def _start(self, request: server.Request, coro: Any) -> int:
        d = ensureDeferred(coro)
        d.addCallbacks(self._respond, self._fail, callbackArgs=(request,), errbackArgs=(request,))
        return server.NOT_DONE_YET

    def _respond(self, body: bytes, request: server.Request) -> None:
        if body is _ALREADY_ANSWERED or request.finished or request.channel is None:
            return
        if request.method != b"HEAD":
            request.setHeader(b"content-length", b"%d" % len(body))
            request.write(body)
        request.finish()

    def _fail(self, failure: Failure, request: server.Request) -> None:
        if request.finished or request.channel is None:
            return
        if isinstance(failure.value, FeddError):
            body = self._error(request, failure.value)
        else:
            log.failure(
                "internal error on {method} {path}",
                failure,
                method=request.method.decode("latin-1"),
                path=request.path.decode("latin-1"),
            )
            request.setResponseCode(500)
            body = b"internal error: the details are in the server log\n"
        self._respond(body, request)

    def _error(self, request: server.Request, exc: FeddError) -> bytes:
        request.setResponseCode(exc.status)
        if isinstance(exc, Unauthorized):
            request.setHeader(b"www-authenticate", b'Bearer realm="fedd"')
        if isinstance(exc, MethodNotAllowed):
            request.setHeader(b"allow", ALLOW)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return (str(exc) + "\n").encode()

    # --- reads ----------------------------------------------------------------------------------

    def _client(self, request: server.Request) -> str:
        addr = request.getClientAddress()
        return getattr(addr, "host", "") or ""

    def _wants_metalink(self, request: server.Request) -> bool:
        query = request.uri.partition(b"?")[2]
        if query and any(part.partition(b"=")[0] == b"metalink" for part in query.split(b"&")):
            return True
        accept = request.getHeader(b"accept")
        return accept is not None and METALINK_TYPE in accept

    def render_read(self, request: server.Request, path: str) -> bytes | int:
        if self._wants_metalink(request):
            return self._start(request, self._metalink(request, path))
        if self.checksums is not None:
            wd, wr = request.getHeader(b"want-digest"), request.getHeader(b"want-repr-digest")
            if wd is not None or wr is not None:
                wants = wants_of(wd, wr)
                if wants:  # RFC 3230: only algorithms fedd does not know: answered as if not asked
                    return self._start(request, self._read_digest(request, path, wants))
        client = self._client(request)
        key = (path, client, request.method, request.getHeader(b"host"), request.isSecure())
        plan = self._plans.get(key)
        if plan is not None and plan.until > self.fed.clock.seconds() and plan.generation == self.fed.generation():
            return self._send_plan(request, plan)
        cached = self.fed.locator.cached(path)
        if cached is not None:
            order = self.fed.order(path, client)
            replicas = self.fed.replicas(cached, order, request.method.decode())
            if replicas:
                return self._redirect(request, path, replicas, key)
            if cached.complete and not cached.failed and not cached.found:
                raise NotFound(f"{path}: no such file")
        return self._start(request, self._read(request, path, client, key))

    async def _read(self, request: server.Request, path: str, client: str, key: tuple[Any, ...]) -> bytes:
        started = self.fed.clock.seconds()
        try:
            replicas = await self.fed.find(path, client, method=request.method.decode())
        except NotFound:
            listing = await self.fed.listdir(path)
            if listing is None:
                raise
            return self._index(request, path, listing)
        self._redirect(request, path, replicas, key, (self.fed.clock.seconds() - started) * 1000.0)
        return b""

    async def _read_digest(self, request: server.Request, path: str, wants: list[Want]) -> bytes:
        """A read asking for checksums: the usual answer plus `Digest`/`Repr-Digest` when known. A HEAD
        that fedd answers itself may wait for a computation (`Prefer: wait=N`) or get 202 + Retry-After;
        a GET redirect is never delayed by one."""
        assert self.checksums is not None
        client, method = self._client(request), request.method.decode()
        cached = self.fed.locator.cached(path)
        replicas = self.fed.replicas(cached, self.fed.order(path, client), method) if cached is not None else []
        if not replicas:
            try:
                replicas = await self.fed.find(path, client, method=method)
            except NotFound:
                listing = await self.fed.listdir(path)
                if listing is None:
                    raise
                return self._index(request, path, listing)
        if request.method == b"HEAD" and not self.head_redirect:
            prefer = request.getHeader(b"prefer")
            wait = parse_prefer_wait(prefer.decode("latin-1")) if prefer is not None else None
            answer = await self.checksums.answer(path, replicas, wants, wait)
            if answer.job is not None:
                job = answer.job
                request.setResponseCode(202)
                request.setHeader(b"retry-after", b"%d" % answer.retry_after)
                request.setHeader(b"cache-control", b"no-store")
                request.setHeader(b"content-type", b"text/plain; charset=utf-8")
                return f"computing the checksum of {path}: {job.bytes} of {job.size} bytes\n".encode()
            values = answer.values
        else:
            values = self.checksums.known(path, replicas)
        self._redirect(request, path, replicas)
        for want in wants:
            algorithm = want.pick(values)
            if algorithm is not None:
                request.setHeader(want.header, format_value(want.field, algorithm, values[algorithm]))
        return b""

    def _redirect(
        self,
        request: server.Request,
        path: str,
        replicas: list[Replica],
        key: tuple[Any, ...] | None = None,
        locate_ms: float = 0.0,
    ) -> bytes:
        best = replicas[0]
        links = [f'<{quote(path)}?metalink>; rel=describedby; type="application/metalink4+xml"']
        # a 302 is not cacheable unless marked so (RFC 9111): no Cache-Control needed on the hot path
        headers: list[tuple[bytes, bytes]] = []
        if request.method == b"HEAD" and not self.head_redirect:
            code = 200
            headers.append((b"cache-control", b"no-store"))
            links += [f"<{_absolute(request, r.url)}>; rel=duplicate; pri={r.priority}" for r in replicas]
            stat = best.stat
            if stat.size is not None:
                headers.append((b"content-length", b"%d" % stat.size))
            if stat.mtime is not None:
                headers.append((b"last-modified", formatdate(stat.mtime, usegmt=True).encode()))
            if stat.etag:
                headers.append((b"etag", format_etag(stat.etag).encode()))
            headers.append((b"content-type", b"application/octet-stream"))
        else:
            code = 302
            links += [f"<{_absolute(request, r.url)}>; rel=duplicate; pri={r.priority}" for r in replicas[1:]]
            headers.append((b"location", _absolute(request, best.url).encode()))
        headers.append((b"link", ", ".join(links).encode()))
        plan = _Plan(
            until=self.fed.clock.seconds() + PLAN_SECONDS,
            generation=self.fed.generation(),
            endpoint=best.endpoint,
            url=best.url.split("?", 1)[0],
            candidates=len(replicas),
            code=code,
            headers=tuple(headers),
        )
        # an early answer (slower endpoints still being asked) is not reused: the next request
        # gets the complete list of replicas in its Link header
        if key is not None and self.fed.locator.cached(path) is not None:
            if len(self._plans) >= PLAN_ENTRIES:
                self._plans.clear()
            self._plans[key] = plan
        return self._send_plan(request, plan, locate_ms)

    def _send_plan(self, request: server.Request, plan: _Plan, locate_ms: float = 0.0) -> bytes:
        request.fedd_endpoint = plan.endpoint  # type: ignore[attr-defined]
        request.fedd_locate_ms = round(locate_ms, 3)  # type: ignore[attr-defined]
        if plan.code == 302:
            self.fed.note_redirect(plan.endpoint)
            if self.events is not None:
                client = self._client(request)
                self.events.emit(
                    "get-redirect",
                    {
                        "path": request.path.decode("utf-8", "replace"),
                        "method": request.method.decode("latin-1"),
                        "client": client,
                        "client_country": self.fed.geo.country(client),
                        "client_dn": getattr(request, "fedd_identity", ANONYMOUS).subject or None,
                        "endpoint": plan.endpoint,
                        "url": plan.url,
                        "candidates": plan.candidates,
                        "locate_ms": round(locate_ms, 3),
                    },
                )
        request.setResponseCode(plan.code)
        for name, value in plan.headers:
            request.setHeader(name, value)
        return b""

    async def _metalink(self, request: server.Request, path: str) -> bytes:
        replicas = await self.fed.find(path, self._client(request), wait_all=True)
        best = replicas[0].stat
        request.setHeader(b"content-type", METALINK_TYPE)
        request.setHeader(b"cache-control", b"no-store")
        hashes: dict[str, str] = {}
        for replica in replicas:  # the best-ranked replica's value wins where two disagree
            for algorithm, value in replica.stat.checksums:
                hashes.setdefault(algorithm, value)
        urls = [(_absolute(request, r.url), r.priority) for r in replicas]
        return xml.metalink(path, urls, best.size, best.mtime, sorted(hashes.items()))

    def _index(self, request: server.Request, path: str, listing: Any) -> bytes:
        from html import escape

        base = path.rstrip("/")
        rows = [
            f'<li><a href="{escape(quote(base + "/" + e.name))}{"/" if e.stat.is_dir else ""}">'
            f"{escape(e.name)}{'/' if e.stat.is_dir else ''}</a></li>"
            for e in listing.entries
        ]
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return (
            f"<!DOCTYPE html><html><head><title>{escape(path)}</title></head><body>"
            f"<h1>{escape(path)}</h1><ul>{''.join(rows)}</ul></body></html>\n"
        ).encode()

    # --- WebDAV ---------------------------------------------------------------------------------

    async def _propfind(self, request: server.Request, path: str) -> bytes:
        depth = (request.getHeader(b"depth") or b"infinity").strip().lower()
        if depth not in (b"0", b"1"):
            request.setResponseCode(403)
            request.setHeader(b"content-type", b"application/xml; charset=utf-8")
            return xml.FINITE_DEPTH_ERROR
        body = b""
        if request.content is not None:
            request.content.seek(0)
            body = request.content.read()
        mode, wanted = xml.parse_propfind(body)
        stat, listing = await self.fed.stat(path, self._client(request))
        parts = [xml.MULTISTATUS_HEAD, xml.response_xml(path, stat, mode, wanted, self._quota(path, stat))]
        if listing is not None and depth == b"1":
            base = path.rstrip("/")
            parts.extend(
                xml.response_xml(f"{base}/{e.name}", e.stat, mode, wanted, self._quota(f"{base}/{e.name}", e.stat))
                for e in listing.entries
            )
        parts.append(xml.MULTISTATUS_TAIL)
        request.setResponseCode(207)
        request.setHeader(b"content-type", b"application/xml; charset=utf-8")
        return "".join(parts).encode()

    # --- writes -------------------------------------------------------------------------------

    async def _put(self, request: server.Request, path: str) -> bytes:
        assert self.writer is not None
        if request.path.endswith(b"/"):
            raise Conflict("cannot PUT a collection")
        size = _declared_length(request)
        target = await self.writer.put(path, self._client(request), size)
        request.fedd_endpoint = target.endpoint  # type: ignore[attr-defined]
        if getattr(request, "fedd_proxy", False):
            status = await self.writer.carry(target, request.content, size or 0)
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
                    "path": path,
                    "name": path.rsplit("/", 1)[-1],
                    "scope": path.strip("/").split("/", 1)[0] or None,
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
        base = {"path": path, "name": path.rsplit("/", 1)[-1], "scope": path.strip("/").split("/", 1)[0] or None}
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
        parts = urlsplit(raw.decode("latin-1"))
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
        scheme = "https" if request.isSecure() else "http"
        host = (request.getHeader(b"host") or b"").decode("latin-1")
        base = f"{scheme}://{host}" if _HOST_RE.match(host.encode("latin-1")) else ""
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
        [auth], clients on the same host only."""
        if self.auth is None:
            if self._client(request) not in ("127.0.0.1", "::1") and not self._client(request).startswith("127."):
                raise Forbidden("without [auth], downtimes can be changed from this host only")
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

    # --- fedd's own paths -------------------------------------------------------------------------

    def _internal(self, request: server.Request, raw: bytes) -> bytes | int:
        if raw in STATUS_PATHS:
            if request.method not in (b"GET", b"HEAD"):
                raise MethodNotAllowed("status is read-only")
            request.setHeader(b"cache-control", b"no-store")
            accept = request.getHeader(b"accept")
            if raw == STATUS_PATH:
                request.setHeader(b"vary", b"Accept")
            if raw == STATUS_HTML_PATH or wants_html(accept.decode("latin-1") if accept else None):
                request.setHeader(b"content-type", b"text/html; charset=utf-8")
                request.setHeader(b"content-security-policy", STATUS_PAGE_CSP)
                request.setHeader(b"x-content-type-options", b"nosniff")
                return render_status_page(self.status())
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(self.status(), indent=1, sort_keys=True).encode() + b"\n"
        raise NotFound("no such fedd resource")

    def _local_target(self, request: server.Request, rest: bytes) -> tuple[LocalEndpoint, str, str]:
        """(endpoint, endpoint path, federation path) of a local data URL; authorisation uses the last."""
        if request.method not in (b"GET", b"HEAD"):
            raise MethodNotAllowed("local data is read-only here")
        eid, _, tail = rest.partition(b"/")
        endpoint = self._local.get(eid.decode("utf-8", "replace"))
        if endpoint is None:
            raise NotFound("no such local endpoint")
        endpoint_path = normalise_path(b"/" + tail)
        fed_path = self.fed.namespace.to_federation(endpoint.id, endpoint_path)
        if fed_path is None:
            raise Forbidden("not published in the federation namespace")
        return endpoint, endpoint_path, fed_path

    def _local_file(self, request: server.Request, endpoint: LocalEndpoint, endpoint_path: str) -> bytes | int:
        real = endpoint.resolve(endpoint_path)
        if real is None:
            raise Forbidden("outside of the endpoint")
        leaf = File(real)
        if not leaf.exists() or leaf.isdir():
            raise NotFound("no such file")
        leaf.type, leaf.encoding = getTypeAndEncoding(
            leaf.basename(), leaf.contentTypes, leaf.contentEncodings, "application/octet-stream"
        )
        result: bytes | int = leaf.render(request)
        return result

    def status(self) -> dict[str, Any]:
        data = self.fed.to_json()
        data["fedd"] = {"version": __version__, "started": self.started, "now": time.time()}
        if self.events is not None:
            data["events"] = self.events.to_json()
        if self.auth is not None:
            data["auth"] = self.auth.to_json()
        if self.space is not None:
            data["space"] = self.space.to_json()
        if self.downtimes is not None:
            data["downtimes"] = self.downtimes.to_json()
        if self.tpc is not None:
            data["tpc"] = self.tpc.to_json()
        if self.checksums is not None:
            data["checksums"] = self.checksums.to_json()
        reloader = getattr(self, "reloader", None)
        if reloader is not None:
            data["reload"] = reloader.to_json()
        return data
