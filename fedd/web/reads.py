"""The read side of the web front: GET/HEAD answered with a redirect (302) or fedd's own metadata,
metalinks, checksums (`Want-Digest`), the HTML index of a collection and PROPFIND.

The cached GET path is synchronous: redirect plan (headers already built) reused for PLAN_SECONDS
while nothing changed, else the in-process locate cache and the cached ranking. Everything else runs
as a coroutine through `fedd.web.answer.start`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any
from urllib.parse import quote

from twisted.web import server
from twisted.web.http_headers import Headers

from fedd.auth.identity import Identity
from fedd.auth.service import AuthService
from fedd.checksums.digest import Want, format_value, parse_prefer_wait, wants_of
from fedd.checksums.reported import known_checksums
from fedd.checksums.service import ChecksumService
from fedd.endpoints.base import Stat, format_etag
from fedd.errors import NoReplicaAvailable, NotFound
from fedd.events.model import Template, json_value, template
from fedd.events.service import EventsService
from fedd.federation import Federation, Replica
from fedd.replicate.counting import ReadCounter
from fedd.web import listing, xml
from fedd.web.answer import client_ip, identity, start
from fedd.web.answer import via as via_of
from fedd.web.notes import noted
from fedd.web.site import ALREADY_ANSWERED
from fedd.web.site import absolute_url as _absolute

METALINK_TYPE = b"application/metalink4+xml"
PLAN_SECONDS = 1.0
PLAN_ENTRIES = 100_000
EVENT_VARYING = ("client_dn", "locate_ms")  # a get-redirect's fields that a plan does not fix
Quota = Callable[[str, Stat], "tuple[int, int] | None"]


@dataclass(frozen=True)
class Plan:
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
    wire: bytes = b""  # the headers as the lean front writes them (canonical names, CRLF after each)


def wire_headers(headers: tuple[tuple[bytes, bytes], ...]) -> bytes:
    """Header lines with the names twisted.web would write (`ETag`, `Cache-Control`, ...)."""
    out = Headers()
    for name, value in headers:
        out.addRawHeader(name, value)
    return b"".join(name + b": " + value + b"\r\n" for name, values in out.getAllRawHeaders() for value in values)


class Reads:
    def __init__(
        self,
        federation: Federation,
        *,
        head_redirect: bool = False,
        events: EventsService | None = None,
        checksums: ChecksumService | None = None,
        auth: AuthService | None = None,
        quota: Quota | None = None,
        counter: ReadCounter | None = None,
    ) -> None:
        self.fed = federation
        self.counter = counter  # [replicate]: every redirect counted, one dict increment
        self.head_redirect = head_redirect
        self.events = events
        self.checksums = checksums
        self.auth = auth  # listings name a child with rules of its own only to who may see it
        self.quota: Quota = quota or (lambda path, stat: None)
        self._plans: dict[tuple[Any, ...], Plan] = {}
        # get-redirect envelopes encoded once per (path as asked, method, client) and plan: announce()
        self._event_templates: dict[tuple[bytes, bytes, str], tuple[Plan, Template]] = {}
        self._dns: dict[str, bytes] = {}  # client DN -> its JSON

    def clear_plans(self) -> None:
        self._plans.clear()
        self._event_templates.clear()

    def _wants_metalink(self, request: server.Request) -> bool:
        query = request.uri.partition(b"?")[2]
        if query and any(part.partition(b"=")[0] == b"metalink" for part in query.split(b"&")):
            return True
        accept = request.getHeader(b"accept")
        return accept is not None and METALINK_TYPE in accept

    def read(self, request: server.Request, path: str) -> bytes | int:
        """GET or HEAD of a federation path: the cached plan, else the cached locate answer, else a locate."""
        if self._wants_metalink(request):
            return start(request, self._metalink(request, path))
        if self.checksums is not None:
            wd, wr = request.getHeader(b"want-digest"), request.getHeader(b"want-repr-digest")
            if wd is not None or wr is not None:
                wants = wants_of(wd, wr)
                if wants:  # RFC 3230: only algorithms fedd does not know: answered as if not asked
                    return start(request, self._read_digest(request, path, wants))
        client = client_ip(request)
        key = (path, client, request.method, request.getHeader(b"host"), request.isSecure())
        plan = self.cached_plan(key)
        if plan is not None:
            return self._send_plan(request, plan)
        cached = self.fed.locator.cached(path)
        if cached is not None:
            order = self.fed.order(path, client)
            replicas = self.fed.replicas(cached, order, request.method.decode())
            if replicas:
                return self._redirect(request, path, replicas, key)
            if cached.complete and not cached.found and not self.fed.unavailable(cached):
                raise NotFound(f"{path}: no such file")  # every endpoint mapping the path said no
        return start(request, self._read(request, path, client, key))

    async def _read(self, request: server.Request, path: str, client: str, key: tuple[Any, ...]) -> bytes:
        started = self.fed.clock.seconds()
        via = via_of(request)
        try:
            replicas = await self.fed.find(path, client, method=request.method.decode(), via=via)
        except (NotFound, NoReplicaAvailable) as exc:
            # no file: a collection (listed even with an endpoint missing: the index says so)?
            return await self._collection_instead(request, path, via, exc)
        self._redirect(request, path, replicas, key, (self.fed.clock.seconds() - started) * 1000.0)
        return b""

    async def _collection_instead(
        self, request: server.Request, path: str, via: tuple[str, ...], exc: NotFound | NoReplicaAvailable
    ) -> bytes:
        """No file by that name: the answer for a collection (HEAD: its headers; GET: the index), or
        the file's own answer `exc`. When that was already a 503, the listing's failure does not
        replace it (its words are about the file)."""
        try:
            if request.method == b"HEAD":
                if await self.fed.listdir(path, via, exc.not_collections) is None:
                    raise exc
                request.setHeader(b"content-type", b"text/html; charset=utf-8")
                return b""
            if not await self._index(request, path, exc.not_collections):
                raise exc
            return ALREADY_ANSWERED
        except NoReplicaAvailable as failed:
            if failed is not exc and isinstance(exc, NoReplicaAvailable):
                raise exc from None
            raise

    async def _read_digest(self, request: server.Request, path: str, wants: list[Want]) -> bytes:
        """A read asking for checksums: the usual answer plus `Digest`/`Repr-Digest` when known. A HEAD
        that fedd answers itself may wait for a computation (`Prefer: wait=N`) or get 202 + Retry-After;
        a GET redirect is never delayed by one."""
        assert self.checksums is not None
        client, method = client_ip(request), request.method.decode()
        cached = self.fed.locator.cached(path)
        replicas = self.fed.replicas(cached, self.fed.order(path, client), method) if cached is not None else []
        if not replicas:
            via = via_of(request)
            try:
                replicas = await self.fed.find(path, client, method=method, via=via)
            except (NotFound, NoReplicaAvailable) as exc:
                return await self._collection_instead(request, path, via, exc)
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
        plan = Plan(
            until=self.fed.clock.seconds() + PLAN_SECONDS,
            generation=self.fed.generation(),
            endpoint=best.endpoint,
            url=best.url.split("?", 1)[0],
            candidates=len(replicas),
            code=code,
            headers=tuple(headers),
            wire=wire_headers(tuple(headers)),
        )
        # an early answer (slower endpoints still being asked) is not reused: the next request
        # gets the complete list of replicas in its Link header
        if key is not None and self.fed.locator.cached(path) is not None:
            if len(self._plans) >= PLAN_ENTRIES:
                self._plans.clear()
            self._plans[key] = plan
        return self._send_plan(request, plan, locate_ms)

    def cached_plan(self, key: tuple[Any, ...]) -> Plan | None:
        """The redirect plan for (path, client, method, Host, secure) while it is fresh: the hot path
        (also of the lean front, fedd.web.lean)."""
        plan = self._plans.get(key)
        if plan is not None and plan.until > self.fed.clock.seconds() and plan.generation == self.fed.generation():
            stamps = self.fed.locator.stamps  # workers: not after another worker wrote the path
            if stamps is not None and stamps.since(key[0]) >= plan.until - PLAN_SECONDS:
                return None
            return plan
        return None

    def announce(
        self, plan: Plan, *, path: bytes, method: bytes, client: str, who: Identity, locate_ms: float = 0.0
    ) -> None:
        """What a redirect sent by `plan` means beyond the answer: the endpoint's load and the
        `get-redirect` event. The event's envelope is encoded once per plan and request line
        (`_event_template`): a redirect adds only its DN, locate time, id and time (docs/events.md)."""
        if plan.code != 302:
            return
        self.fed.note_redirect(plan.endpoint)
        if self.counter is not None:
            self.counter.note(path, client, plan.endpoint)
        events = self.events
        if events is None:
            return
        key = (path, method, client)
        memo = self._event_templates.get(key)
        if memo is None or memo[0] is not plan:
            if len(self._event_templates) >= PLAN_ENTRIES:
                self._event_templates.clear()
            memo = self._event_templates[key] = (plan, self._event_template(plan, path, method, client))
        dn = self._dns.get(who.subject)
        if dn is None:
            if len(self._dns) >= PLAN_ENTRIES:
                self._dns.clear()
            dn = self._dns[who.subject] = json_value(who.subject or None)
        events.emit_template(memo[1], (dn, json_value(round(locate_ms, 3)) if locate_ms else b"0.0"))

    def _event_template(self, plan: Plan, path: bytes, method: bytes, client: str) -> Template:
        payload = {
            "path": path.decode("utf-8", "replace"),
            "method": method.decode("latin-1"),
            "client": client,
            "client_country": self.fed.geo.country(client),
            "client_dn": None,
            "endpoint": plan.endpoint,
            "url": plan.url,
            "candidates": plan.candidates,
            "locate_ms": 0.0,
        }
        return template("get-redirect", payload, EVENT_VARYING)

    def _send_plan(self, request: server.Request, plan: Plan, locate_ms: float = 0.0) -> bytes:
        noted(request).fedd_endpoint = plan.endpoint
        noted(request).fedd_locate_ms = round(locate_ms, 3)
        self.announce(
            plan,
            path=request.path,
            method=request.method,
            client=client_ip(request),
            who=identity(request),
            locate_ms=locate_ms,
        )
        request.setResponseCode(plan.code)
        for name, value in plan.headers:
            request.setHeader(name, value)
        return b""

    async def _metalink(self, request: server.Request, path: str) -> bytes:
        replicas = await self.fed.find(path, client_ip(request), wait_all=True, via=via_of(request))
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
        return await listing.index(self.fed, self.auth, request, path, skip, via_of(request))

    async def propfind(self, request: server.Request, path: str) -> bytes:
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
        replicas, result = await self.fed.lookup(path, client_ip(request), via_of(request))
        try:
            listed = await listing.propfind(
                self.fed,
                self.auth,
                request,
                path,
                self.fed.not_collections(result),
                via_of(request),
                depth=depth,
                mode=mode,
                wanted=wanted,
                quota=self.quota,
            )
        except NoReplicaAvailable:
            if not replicas:
                raise
            listed = False
        if listed:
            return ALREADY_ANSWERED
        if not replicas:
            self.fed.no_replica(result)
        stat = replicas[0].stat
        request.setResponseCode(207)
        request.setHeader(b"content-type", b"application/xml; charset=utf-8")
        own = xml.response_xml(path, stat, mode, wanted, self.quota(path, stat))
        return (xml.MULTISTATUS_HEAD + own + xml.MULTISTATUS_TAIL).encode()
