"""The HTTP/WebDAV front: GET/HEAD -> 302, PROPFIND merged listings, OPTIONS, status, local data.

One leaf resource dispatches on method. The cached GET path is synchronous: in-process cache,
cached ranking, cached presigned URL, headers, done. Everything else runs as a coroutine and ends
in `_respond`/`_fail`, the one place where domain errors become HTTP statuses.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any
from urllib.parse import quote

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource
from twisted.web.static import File, getTypeAndEncoding

from fedd import __version__
from fedd.auth.identity import ANONYMOUS, Identity
from fedd.auth.policy import METHOD_LETTER
from fedd.auth.service import AuthService, Unauthenticated
from fedd.checksums.digest import Want, format_value, parse_prefer_wait, wants_of
from fedd.checksums.reported import known_checksums
from fedd.checksums.service import ChecksumService
from fedd.config import Config
from fedd.endpoints.base import format_etag
from fedd.endpoints.dav import parse_via
from fedd.endpoints.local import LOCAL_PREFIX, LocalEndpoint
from fedd.errors import (
    FeddError,
    Forbidden,
    LoopDetected,
    MethodNotAllowed,
    NoReplicaAvailable,
    NotFound,
    Unauthorized,
)
from fedd.events.service import EventsService
from fedd.federation import MAX_HOPS, Federation, Replica
from fedd.namespace import normalise_path
from fedd.reload import ReloadStatus
from fedd.space.downtime import DowntimeBook
from fedd.space.gocdb import GocdbService
from fedd.space.service import SpaceService
from fedd.tpc.engine import TpcEngine
from fedd.tpc.wire import copy_letter
from fedd.web import listing, xml
from fedd.web.metrics import Metrics
from fedd.web.site import ALREADY_ANSWERED as _ALREADY_ANSWERED
from fedd.web.site import absolute_url as _absolute
from fedd.web.statuspage import render_status_page, wants_html
from fedd.web.writing import DOWNTIMES_PATH, WriteHandlers
from fedd.writes import Writer

log = Logger(namespace="fedd.web")
STATUS_PATH = b"/.well-known/fedd/status"
STATUS_HTML_PATH = b"/.well-known/fedd/status.html"
STATUS_PATHS = (STATUS_PATH, STATUS_HTML_PATH)
# the status page needs nothing but its own inline styles (and an empty data: favicon)
STATUS_PAGE_CSP = b"default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"
METALINK_TYPE = b"application/metalink4+xml"
# on a listing (PROPFIND 207, HTML index) that lacks some endpoints: which ones, and why
MISSING_HEADER = b"fedd-missing-endpoints"
ALLOW = b"OPTIONS, GET, HEAD, PROPFIND, PUT, DELETE, MKCOL, MOVE, COPY"


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


PLAN_SECONDS = 1.0
PLAN_ENTRIES = 100_000


class FeddResource(WriteHandlers, Resource):
    isLeaf = True

    def __init__(
        self,
        federation: Federation,
        *,
        head_redirect: bool = False,
        events: EventsService | None = None,
        auth: AuthService | None = None,
        writer: Writer | None = None,
        tpc: TpcEngine | None = None,
        checksums: ChecksumService | None = None,
        space: SpaceService | None = None,
        downtimes: DowntimeBook | None = None,
        gocdb: GocdbService | None = None,
        metrics: Metrics | None = None,
        metrics_path: bytes = b"/metrics",
        srr_path: bytes = b"/.well-known/fedd/srr.json",
        reload_status: ReloadStatus | None = None,
    ) -> None:
        """Only `federation` is needed to serve reads; each other part adds what it serves (writes,
        third-party copies, checksums, space reports, downtimes, metrics, status sections)."""
        super().__init__()
        self.fed = federation
        self.head_redirect = head_redirect
        self.events = events
        self.auth = auth
        self.writer = writer
        self.tpc = tpc
        self.checksums = checksums
        self.space = space
        self.downtimes = downtimes
        self.gocdb = gocdb
        self.metrics = metrics
        self.metrics_path = metrics_path
        self.srr_path = srr_path
        self.reload_status = reload_status
        self.started = time.time()
        self._plans: dict[tuple[Any, ...], _Plan] = {}
        self._paths: dict[bytes, str] = {}  # raw request path -> normalised path
        self._local: dict[str, LocalEndpoint] = {}
        self.refresh_local()

    def reconfigure(self, new: Config) -> list[str]:
        """A reload: the endpoint objects may have changed (see `refresh_local`)."""
        self.refresh_local()
        return []

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
                via = request.requestHeaders.getRawHeaders(b"via")
                if via is not None:
                    self._check_loop(request, via)

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

    def _check_loop(self, request: server.Request, values: Sequence[bytes]) -> None:
        """A request that already went through this instance, or through too many fedd instances,
        is answered at once (508) instead of being asked of the endpoints again: a federation loop
        (two fedd listing each other) must cost one request per instance, not a storm."""
        chain = parse_via([v.decode("latin-1") for v in values])
        if self.fed.instance in chain:
            log.warn(
                "federation loop: {method} {path} already went through this instance ({chain})",
                method=request.method.decode("latin-1"),
                path=request.path.decode("latin-1"),
                chain=", ".join(chain),
            )
            raise LoopDetected("federation loop: this request already went through this fedd instance")
        if len(chain) >= MAX_HOPS:
            raise LoopDetected(f"federation loop: the request went through {len(chain)} fedd instances")
        request.fedd_via = chain  # type: ignore[attr-defined]

    @staticmethod
    def _via(request: server.Request) -> tuple[str, ...]:
        via: tuple[str, ...] = getattr(request, "fedd_via", ())
        return via

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
        if isinstance(exc, NoReplicaAvailable):
            request.setHeader(b"retry-after", b"%d" % exc.retry_after)
            if exc.unreachable:
                request.setHeader(MISSING_HEADER, ", ".join(exc.unreachable).encode())
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
            if cached.complete and not cached.found and not self.fed.unavailable(cached):
                raise NotFound(f"{path}: no such file")  # every endpoint mapping the path said no
        return self._start(request, self._read(request, path, client, key))

    async def _read(self, request: server.Request, path: str, client: str, key: tuple[Any, ...]) -> bytes:
        started = self.fed.clock.seconds()
        via = self._via(request)
        try:
            replicas = await self.fed.find(path, client, method=request.method.decode(), via=via)
        except (NotFound, NoReplicaAvailable) as exc:
            # no file: a collection (listed even with an endpoint missing: the index says so)?
            if request.method == b"HEAD":
                if await self.fed.listdir(path, via, exc.not_collections) is None:
                    raise
                request.setHeader(b"content-type", b"text/html; charset=utf-8")
                return b""
            if not await self._index(request, path, exc.not_collections):
                raise
            return _ALREADY_ANSWERED
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
            via = self._via(request)
            try:
                replicas = await self.fed.find(path, client, method=method, via=via)
            except (NotFound, NoReplicaAvailable) as exc:
                if request.method == b"HEAD":
                    if await self.fed.listdir(path, via, exc.not_collections) is None:
                        raise
                    request.setHeader(b"content-type", b"text/html; charset=utf-8")
                    return b""
                if not await self._index(request, path, exc.not_collections):
                    raise
                return _ALREADY_ANSWERED
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
        replicas = await self.fed.find(path, self._client(request), wait_all=True, via=self._via(request))
        best = replicas[0].stat
        request.setHeader(b"content-type", METALINK_TYPE)
        request.setHeader(b"cache-control", b"no-store")
        hashes: dict[str, str] = {}
        for replica in replicas:  # the best-ranked replica's value wins where two disagree
            for algorithm, value in known_checksums(replica.stat).items():
                hashes.setdefault(algorithm, value)
        urls = [(_absolute(request, r.url), r.priority) for r in replicas]
        return xml.metalink(path, urls, best.size, best.mtime, sorted(hashes.items()))

    async def _index(self, request: server.Request, path: str, skip: frozenset[str]) -> bool:
        """The HTML index of a collection, streamed (fedd.web.listing)."""
        return await listing.index(self.fed, self.auth, request, path, skip, self._via(request))

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
        # first every endpoint's stat, then a listing from those that may hold a collection by that
        # name, written as it comes (Federation.lookup for why in this order)
        replicas, result = await self.fed.lookup(path, self._client(request), self._via(request))
        try:
            listed = await listing.propfind(
                self.fed,
                self.auth,
                request,
                path,
                self.fed.not_collections(result),
                self._via(request),
                depth=depth,
                mode=mode,
                wanted=wanted,
                quota=self._quota,
            )
        except NoReplicaAvailable:
            if not replicas:
                raise
            listed = False
        if listed:
            return _ALREADY_ANSWERED
        if not replicas:
            self.fed.no_replica(result)
        stat = replicas[0].stat
        request.setResponseCode(207)
        request.setHeader(b"content-type", b"application/xml; charset=utf-8")
        own = xml.response_xml(path, stat, mode, wanted, self._quota(path, stat))
        return (xml.MULTISTATUS_HEAD + own + xml.MULTISTATUS_TAIL).encode()

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
        """The bytes of a local endpoint's file, served by twisted.web's `File` (ranges included).

        `File` logs a malformed `Range` by decoding it as UTF-8 (a non-UTF-8 byte made that a 500 and a
        traceback) and answers any number of overlapping ranges: fedd hands it only a `Range` it has
        checked itself (ASCII `bytes=` ranges, at most MAX_RANGES); anything else is ignored and the whole
        file is sent (RFC 9110 section 14.2 lets a server ignore Range). An unsatisfiable one stays 416."""
        real = endpoint.resolve(endpoint_path)
        if real is None:
            raise Forbidden("outside of the endpoint")
        leaf = File(real)
        if not leaf.exists() or leaf.isdir():
            raise NotFound("no such file")
        leaf.type, leaf.encoding = getTypeAndEncoding(
            leaf.basename(), leaf.contentTypes, leaf.contentEncodings, "application/octet-stream"
        )
        headers = request.requestHeaders
        ranges = headers.getRawHeaders(b"range")
        if ranges is not None and (len(ranges) != 1 or not _usable_range(ranges[0], leaf.getFileSize())):
            headers.removeHeader(b"range")
        if headers.hasHeader(b"if-range"):
            headers.removeHeader(b"if-range")  # File ignores it (it would send a range for a changed file)
            headers.removeHeader(b"range")
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
        if self.gocdb is not None and self.gocdb.sources:
            data["gocdb"] = self.gocdb.to_json()
        if self.tpc is not None:
            data["tpc"] = self.tpc.to_json()
        if self.checksums is not None:
            data["checksums"] = self.checksums.to_json()
        if self.reload_status is not None:
            data["reload"] = self.reload_status.to_json()
        return data


# --- local data: the Range values twisted.web's File is given (see FeddResource._local_file) ----------

MAX_RANGES = 16
_RANGE_RE = re.compile(rb"bytes[ \t]*=[ \t]*([0-9]{0,18}-[0-9]{0,18}(?:[ \t]*,[ \t]*[0-9]{0,18}-[0-9]{0,18})*)[ \t]*")


def _usable_range(value: bytes, size: int) -> bool:
    """A `Range` value twisted.web's File may see: `bytes=` and 1..MAX_RANGES well-formed ranges, no
    suffix longer than the file (`bytes=-N`, N > size: File seeks before the start, a 500; ignoring it
    sends the whole file, which is what RFC 9110 section 14.1.3 asks for)."""
    match = _RANGE_RE.fullmatch(value)
    if match is None:
        return False
    specs = match.group(1).split(b",")
    if len(specs) > MAX_RANGES:
        return False
    for spec in specs:
        first, _, last = spec.strip(b" \t").partition(b"-")
        if (not first and not last) or (first and last and int(first) > int(last)):
            return False
        if not first and int(last) > size:
            return False
    return True
