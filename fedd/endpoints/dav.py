"""WebDAV/HTTP endpoints (dCache, EOS, StoRM, DPM, Apache mod_dav): HEAD to stat, PROPFIND to list."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from zope.interface import implementer

from fedd.config import EndpointConfig
from fedd.endpoints.base import (
    Entry,
    HttpClient,
    HttpResponse,
    Space,
    Stat,
    Valve,
    deferred,
    etag_value,
    parse_http_date,
    parse_int,
    parse_xml,
    quote_path,
    refused,
)
from fedd.endpoints.interfaces import IChecksumSource, IListable, IReadable, ISpaceSource, ITPCTarget, Reported
from fedd.endpoints.multistatus import MultistatusReader, parse_listing
from fedd.errors import EndpointError

_D = "{DAV:}"
PROPFIND_BODY = (
    b'<?xml version="1.0" encoding="utf-8"?>\n'
    b'<D:propfind xmlns:D="DAV:"><D:prop><D:resourcetype/><D:getcontentlength/>'
    b"<D:getlastmodified/><D:getetag/></D:prop></D:propfind>"
)
QUOTA_BODY = (
    b'<?xml version="1.0" encoding="utf-8"?>\n'
    b'<D:propfind xmlns:D="DAV:"><D:prop><D:quota-available-bytes/><D:quota-used-bytes/></D:prop></D:propfind>'
)
MAX_PARENTS = 64
STREAM_TIMEOUT = 24 * 3600.0  # a streamed listing is cut by its caller's idle watchdog instead
WANT_DIGEST = {"Want-Digest": "adler32, md5;q=0.5"}


@implementer(IReadable, IListable, ITPCTarget, IChecksumSource, ISpaceSource)
class DavEndpoint:
    collections_by_stat = True
    upload_headers: dict[str, str] = {}

    def __init__(self, config: EndpointConfig, http: HttpClient, *, instance: str = "") -> None:
        self.id = config.id
        self.config = config
        self.http = http
        self._base_path = urlsplit(config.url).path.rstrip("/")
        self._instance = instance  # this fedd's id, marked on the requests that locate and list

    def _via(self, via: tuple[str, ...], headers: dict[str, str] | None = None) -> dict[str, str]:
        """Headers with a `Via` naming the fedd instances the request came through and this one, so
        an endpoint that is a fedd can refuse a request that already went through it (a loop)."""
        out = dict(headers or {})
        chain = [*via, self._instance] if self._instance else list(via)
        if chain:
            out["Via"] = format_via(chain)
        return out

    def url_for(self, path: str, now: float, method: str = "GET") -> str:
        return self.config.url + quote_path(path)

    def _check(self, response: HttpResponse, what: str) -> None:
        if response.code >= 500:
            raise EndpointError(self.id, f"{what}: HTTP {response.code}")

    @deferred
    async def stat(self, path: str, via: tuple[str, ...] = ()) -> Stat | None:
        # RFC 3230: storage that keeps checksums (dCache, EOS, StoRM, fedd) answers with a Digest header
        response = await self.http.request("HEAD", self.url_for(path, 0), self._via(via, WANT_DIGEST))
        if response.code == 202:
            # a server computing the checksum now (another fedd): ask again for the stat alone
            response = await self.http.request("HEAD", self.url_for(path, 0), self._via(via))
        return self._stat_result(response, path)

    def _stat_result(self, response: HttpResponse, path: str) -> Stat | None:
        if response.code in (404, 410):
            return None
        refusal = refused(self.id, response.code, "HEAD")  # 400/403/414/508: this path, not the endpoint
        if refusal is not None:
            raise refusal
        self._check(response, "HEAD")
        location = response.header("Location") or ""
        if response.code in (301, 302, 307, 308) and location.rstrip("/").endswith(quote_path(path)):
            return Stat(is_dir=True)
        if response.code != 200:
            raise EndpointError(self.id, f"HEAD: unexpected HTTP {response.code}")
        if (response.header("Content-Type") or "").startswith("httpd/unix-directory"):
            return Stat(is_dir=True)
        size = parse_int(response.header("Content-Length"))
        digest = response.header("Digest")
        return Stat(
            size=size,
            mtime=parse_http_date(response.header("Last-Modified")),
            etag=etag_value(response.header("ETag")),
            reported=(("digest", digest),) if digest else (),
        )

    @deferred
    async def reported_checksums(self, path: str) -> Reported | None:
        """The RFC 3230 `Digest` header a HEAD with `Want-Digest` gets, raw; None when there is no such file."""
        response = await self.http.request("HEAD", self.url_for(path, 0), self._via((), WANT_DIGEST))
        if response.code in (404, 410):
            return None
        refusal = refused(self.id, response.code, "HEAD")
        if refusal is not None:
            raise refusal
        self._check(response, "HEAD")
        digest = response.header("Digest")
        return (("digest", digest),) if digest else ()

    @deferred
    async def listdir(self, path: str, via: tuple[str, ...] = ()) -> list[Entry] | None:
        url = self.url_for(path, 0)
        headers = self._via(via, {"Depth": "1", "Content-Type": "application/xml; charset=utf-8"})
        response = await self.http.request("PROPFIND", url, headers, PROPFIND_BODY)
        if response.code in (301, 302, 307, 308) and (response.header("Location") or "").endswith(
            quote_path(path) + "/"
        ):
            # servers with mod_dir-like behaviour redirect collections to the slashed name: follow once
            response = await self.http.request("PROPFIND", url + "/", headers, PROPFIND_BODY)
        if response.code in (404, 410, 301, 302, 307, 308) or refused(self.id, response.code, "PROPFIND"):
            return None  # not a collection here, or refused for its name: the endpoint is not at fault
        self._check(response, "PROPFIND")
        if response.code != 207:
            raise EndpointError(self.id, f"PROPFIND: unexpected HTTP {response.code}")
        return self._parse_multistatus(response.body, path)

    @deferred
    async def list_stream(
        self, path: str, emit: Callable[[list[Entry]], None], via: tuple[str, ...] = (), valve: Valve | None = None
    ) -> bool:
        """PROPFIND Depth 1 parsed as it arrives (lxml's pull parser, each <D:response> dropped once
        read): entries handed on in batches, memory independent of the size of the listing."""
        url = self.url_for(path, 0)
        headers = self._via(via, {"Depth": "1", "Content-Type": "application/xml; charset=utf-8"})
        # no total time limit of its own: a long listing takes long; the caller cuts it when no batch
        # came for a while (Federation.stream_listing)
        reader = MultistatusReader(self.id, (self._base_path + path).rstrip("/"), emit)
        response = await self.http.request(
            "PROPFIND", url, headers, PROPFIND_BODY, sink=reader.feed, timeout=STREAM_TIMEOUT, valve=valve
        )
        if response.code in (301, 302, 307, 308) and (response.header("Location") or "").endswith(
            quote_path(path) + "/"
        ):
            reader = MultistatusReader(self.id, (self._base_path + path).rstrip("/"), emit)
            response = await self.http.request(
                "PROPFIND", url + "/", headers, PROPFIND_BODY, sink=reader.feed, timeout=STREAM_TIMEOUT, valve=valve
            )
        if response.code in (404, 410, 301, 302, 307, 308) or refused(self.id, response.code, "PROPFIND"):
            return False
        self._check(response, "PROPFIND")
        if response.code != 207:
            raise EndpointError(self.id, f"PROPFIND: unexpected HTTP {response.code}")
        return reader.close()

    def _parse_multistatus(self, body: bytes, path: str) -> list[Entry] | None:
        return parse_listing(body, self.id, (self._base_path + path).rstrip("/"), path)

    def probe(self) -> Deferred[None]:
        url = self.config.url + quote_path(self.config.health_path or "/")
        return self.http.request("HEAD", url).addCallback(self._check, "probe")

    # --- writes -------------------------------------------------------------------------------

    def _refused(self, response: HttpResponse, what: str) -> EndpointError:
        if response.code in (401, 403):
            return EndpointError(self.id, f"{what}: refused by the endpoint (HTTP {response.code})")
        return EndpointError(self.id, f"{what}: unexpected HTTP {response.code}")

    @deferred
    async def delete(self, path: str) -> bool:
        url = self.url_for(path, 0)
        response = await self.http.request("DELETE", url)
        if response.code in (301, 308) and (response.header("Location") or "").endswith(quote_path(path) + "/"):
            # a collection named without its slash (Apache): delete it by its own name
            response = await self.http.request("DELETE", url + "/")
        self._check(response, "DELETE")
        if response.code in (200, 202, 204):
            return True
        if response.code in (404, 410):
            return False
        raise self._refused(response, "DELETE")

    @deferred
    async def mkcol(self, path: str) -> bool:
        return await self._mkcol(path, 0)

    async def _mkcol(self, path: str, depth: int) -> bool:
        response = await self.http.request("MKCOL", self.url_for(path, 0).rstrip("/") + "/")
        self._check(response, "MKCOL")
        if response.code in (200, 201):
            return True
        if response.code in (405, 301, 302, 307, 308):  # RFC 4918: the name is taken (or redirected to it)
            return False
        if response.code == 409 and depth < MAX_PARENTS and path.rstrip("/").count("/") > 1:
            # object-store semantics for the federation: parents come into being with their children
            await self._mkcol(path.rstrip("/").rpartition("/")[0], depth + 1)
            return await self._mkcol(path, depth + 1)
        if response.code == 400 and await self.stat(path) is not None:
            return False  # a file of that name: Apache refuses `name/` with 400 where RFC 4918 says 405
        raise self._refused(response, "MKCOL")

    @deferred
    async def prepare_put(self, path: str) -> None:
        """Make sure the parent collection exists, so the client's PUT does not get 409 Conflict."""
        parent = path.rstrip("/").rpartition("/")[0]
        if parent:
            await self._mkcol(parent, 0)

    @deferred
    async def move(self, source: str, destination: str) -> None:
        await self.prepare_put(destination)
        headers = {"Destination": self.url_for(destination, 0), "Overwrite": "T"}
        response = await self.http.request("MOVE", self.url_for(source, 0), headers)
        self._check(response, "MOVE")
        if response.code in (201, 204):
            return
        if response.code in (404, 410):
            raise EndpointError(self.id, "MOVE: the source disappeared")
        raise self._refused(response, "MOVE")

    def space(self, max_objects: int = 0) -> Deferred[Space]:  # one PROPFIND: nothing is listed
        root = self.config.mappings[0][1] if self.config.mappings else "/"
        headers = {"Depth": "0", "Content-Type": "application/xml; charset=utf-8"}
        url = self.url_for(root, 0).rstrip("/") + "/"
        return self.http.request("PROPFIND", url, headers, QUOTA_BODY).addCallback(self._space)

    def _space(self, response: HttpResponse) -> Space:
        self._check(response, "quota PROPFIND")
        if response.code != 207:
            raise self._refused(response, "quota PROPFIND")
        root = parse_xml(response.body, self.id, "quota PROPFIND")
        used = available = None
        for el in root.iter(f"{_D}quota-used-bytes", f"{_D}quota-available-bytes"):
            value = parse_int((el.text or "").strip())
            if el.tag.endswith("used-bytes"):
                used = value if used is None else used
            else:
                available = value if available is None else available
        if used is None and available is None:
            raise EndpointError(self.id, "quota PROPFIND: the endpoint reports no RFC 4331 quota")
        total = self.config.quota
        if total is None and used is not None and available is not None:
            total = used + available
        return Space(used=used, total=total, source="rfc4331", available=available)


VIA_PROTOCOL = "1.1"


def format_via(chain: list[str]) -> str:
    """`Via: 1.1 fedd-a, 1.1 fedd-b` (RFC 9110 7.6.3: received-protocol received-by)."""
    return ", ".join(f"{VIA_PROTOCOL} {name}" for name in chain)


def parse_via(values: list[str]) -> tuple[str, ...]:
    """The fedd instances named in `Via` header values, in order (other proxies are left out)."""
    out: list[str] = []
    for value in values:
        for part in value.split(","):
            words = part.split()
            if len(words) >= 2 and words[1].startswith("fedd-"):
                out.append(words[1][:64])
    return tuple(out)
