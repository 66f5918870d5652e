"""fedd's own paths: the status (JSON and HTML), the health answer for load balancers, the WLCG
storage report (SRR), RFC 4331 quota values, the downtime admin resource, and the bytes of local
endpoints' files."""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from typing import Any

from twisted.web import server
from twisted.web.http_headers import Headers
from twisted.web.static import File, getTypeAndEncoding

from fedd.auth.service import AuthService
from fedd.endpoints.interfaces import ILocalFiles
from fedd.errors import Forbidden, MethodNotAllowed, NotFound, Unauthorized, UnsupportedMediaType
from fedd.federation import Federation
from fedd.namespace import normalise_path
from fedd.space.downtime import DowntimeBook
from fedd.space.downtime import parse_request as parse_downtime
from fedd.space.service import SpaceService
from fedd.web.answer import client_ip, identity, start
from fedd.web.site import FeddSite
from fedd.web.site import absolute_url as _absolute
from fedd.web.statuspage import render_status_page, wants_html

STATUS_PATH = b"/.well-known/fedd/status"
STATUS_HTML_PATH = b"/.well-known/fedd/status.html"
STATUS_PATHS = (STATUS_PATH, STATUS_HTML_PATH)
# the status page needs nothing but its own inline styles (and an empty data: favicon)
STATUS_PAGE_CSP = b"default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"
DOWNTIMES_PATH = b"/.well-known/fedd/downtimes"
# for load balancers (HAProxy `option httpchk`): no authorisation, no body to parse, no I/O
HEALTH_PATH = b"/.well-known/fedd/health"
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


class Admin:
    def __init__(
        self,
        federation: Federation,
        *,
        status: Callable[[], dict[str, Any]],
        auth: AuthService | None = None,
        space: SpaceService | None = None,
        downtimes: DowntimeBook | None = None,
    ) -> None:
        self.fed = federation
        self.status = status
        self.auth = auth
        self.space = space
        self.downtimes = downtimes
        self._local: dict[str, ILocalFiles] = {}
        self.refresh_local()

    def refresh_local(self) -> None:
        """The local endpoints fedd serves bytes for (again after a reload)."""
        self._local = {eid: ILocalFiles(ep) for eid, ep in self.fed.endpoints.items() if ILocalFiles.providedBy(ep)}

    def srr(self, request: server.Request) -> bytes:
        assert self.space is not None
        if request.method not in (b"GET", b"HEAD"):
            raise MethodNotAllowed("the storage report is read-only")
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        base = _absolute(request, "/").rstrip("/")  # [server] public_url, never an unchecked Host
        return json.dumps(self.space.srr(base), indent=1, sort_keys=True).encode() + b"\n"

    def downtimes_api(self, request: server.Request, raw: bytes) -> bytes | int:
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
            body = json.dumps(declared.to_json(self.fed.clock.seconds()), indent=1).encode() + b"\n"
            return start(request, _once_settled(self.downtimes, body))
        if request.method == b"DELETE" and raw.startswith(DOWNTIMES_PATH + b"/"):
            if not self.downtimes.remove(raw[len(DOWNTIMES_PATH) + 1 :].decode("latin-1")):
                raise NotFound("no such run-time downtime (configured ones are changed in the configuration)")
            request.setResponseCode(204)
            return start(request, _once_settled(self.downtimes, b""))
        raise MethodNotAllowed("GET, POST (new downtime) or DELETE .../<id>")

    def _admin_only(self, request: server.Request) -> None:
        """Changing downtimes: an identity the access rules let write the downtimes path; without
        [auth], clients on the same host only (see `local_admin_refusal`). A POST body must be JSON."""
        if request.method == b"POST" and not is_json(request.getHeader(b"content-type")):
            # a browser sends text/plain or a form cross-site without asking first; JSON needs a CORS
            # preflight, which fedd never grants
            raise UnsupportedMediaType("a downtime is declared with Content-Type: application/json")
        if self.auth is None:
            refusal = local_admin_refusal(client_ip(request), request.requestHeaders)
            if refusal is not None:
                raise Forbidden(refusal)
            return
        who = identity(request)
        decision = self.auth.decide(who, "w", DOWNTIMES_PATH.decode())
        if not decision.allowed:
            if who.anonymous:
                raise Unauthorized(f"authentication required: {decision.reason}")
            raise Forbidden(f"forbidden: {decision.reason}")

    def quota(self, path: str, stat: Any) -> tuple[int, int] | None:
        """(available, used) over the endpoints serving a collection (writable ones if any), or None."""
        if self.space is None or not stat.is_dir:
            return None
        targets = [t.endpoint for t in self.fed.mapped(path) if t.endpoint in self.fed.endpoints]
        writable = [eid for eid in targets if self.fed.endpoints[eid].config.write]
        return self.space.quota(writable or targets)

    def health(self, request: server.Request) -> bytes:
        """200 while this host serves; 503 while it drains (SIGTERM, see `[server] drain_notice`),
        before it has read the shared downtimes ([state] database), or when none of its endpoints
        is usable (all offline or in a downtime closing reads), so a load balancer sends the
        clients elsewhere."""
        if request.method not in (b"GET", b"HEAD"):
            raise MethodNotAllowed("health is read-only")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if isinstance(request.site, FeddSite) and request.site.draining:
            request.setResponseCode(503)
            return b"draining\n"
        if self.downtimes is not None and not self.downtimes.ready:
            request.setResponseCode(503)
            return b"starting: reading the shared downtimes\n"
        if not any(self.fed.health.usable(eid) for eid in self.fed.endpoints):
            request.setResponseCode(503)
            return b"no usable endpoint\n"
        return b"serving\n"

    def internal(self, request: server.Request, raw: bytes) -> bytes | int:
        if raw == HEALTH_PATH:
            return self.health(request)
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

    def local_target(self, request: server.Request, rest: bytes) -> tuple[ILocalFiles, str, str]:
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

    def local_file(self, request: server.Request, endpoint: ILocalFiles, endpoint_path: str) -> bytes | int:
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


# --- local data: the Range values twisted.web's File is given (see Admin.local_file) ----------

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


async def _once_settled(downtimes: DowntimeBook, body: bytes) -> bytes:
    """The answer to a downtime change, once every worker of the host applies it (fedd.workers)."""
    await downtimes.settled()
    return body
