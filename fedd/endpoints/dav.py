"""WebDAV/HTTP endpoints (dCache, EOS, StoRM, DPM, Apache mod_dav): HEAD to stat, PROPFIND to list."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from twisted.internet.defer import Deferred, ensureDeferred

from fedd.config import EndpointConfig
from fedd.endpoints.base import (
    Entry,
    HttpClient,
    HttpResponse,
    Stat,
    parse_http_date,
    parse_int,
    parse_xml,
    quote_path,
)
from fedd.errors import EndpointError

_D = "{DAV:}"
PROPFIND_BODY = (
    b'<?xml version="1.0" encoding="utf-8"?>\n'
    b'<D:propfind xmlns:D="DAV:"><D:prop><D:resourcetype/><D:getcontentlength/>'
    b"<D:getlastmodified/><D:getetag/></D:prop></D:propfind>"
)
MAX_LIST_ENTRIES = 1_000_000


class DavEndpoint:
    def __init__(self, config: EndpointConfig, http: HttpClient) -> None:
        self.id = config.id
        self.config = config
        self._http = http
        self._base_path = urlsplit(config.url).path.rstrip("/")

    def url_for(self, path: str, now: float, method: str = "GET") -> str:
        return self.config.url + quote_path(path)

    def _check(self, response: HttpResponse, what: str) -> None:
        if response.code >= 500:
            raise EndpointError(self.id, f"{what}: HTTP {response.code}")

    def stat(self, path: str) -> Deferred[Stat | None]:
        return self._http.request("HEAD", self.url_for(path, 0)).addCallback(self._stat_result, path)

    def _stat_result(self, response: HttpResponse, path: str) -> Stat | None:
        self._check(response, "HEAD")
        if response.code in (404, 410, 401, 403):
            return None
        location = response.header("Location") or ""
        if response.code in (301, 302, 307, 308) and location.rstrip("/").endswith(quote_path(path)):
            return Stat(is_dir=True)
        if response.code != 200:
            raise EndpointError(self.id, f"HEAD: unexpected HTTP {response.code}")
        if (response.header("Content-Type") or "").startswith("httpd/unix-directory"):
            return Stat(is_dir=True)
        size = parse_int(response.header("Content-Length"))
        return Stat(
            size=size,
            mtime=parse_http_date(response.header("Last-Modified")),
            etag=(response.header("ETag") or "").strip('"'),
        )

    def listdir(self, path: str) -> Deferred[list[Entry] | None]:
        return ensureDeferred(self._listdir(path))

    async def _listdir(self, path: str) -> list[Entry] | None:
        url = self.url_for(path, 0)
        headers = {"Depth": "1", "Content-Type": "application/xml; charset=utf-8"}
        response = await self._http.request("PROPFIND", url, headers, PROPFIND_BODY)
        if response.code in (301, 302, 307, 308) and (response.header("Location") or "").endswith(
            quote_path(path) + "/"
        ):
            # servers with mod_dir-like behaviour redirect collections to the slashed name: follow once
            response = await self._http.request("PROPFIND", url + "/", headers, PROPFIND_BODY)
        if response.code in (404, 410, 401, 403, 301, 302, 307, 308):
            return None
        self._check(response, "PROPFIND")
        if response.code != 207:
            raise EndpointError(self.id, f"PROPFIND: unexpected HTTP {response.code}")
        return self._parse_multistatus(response.body, path)

    def _parse_multistatus(self, body: bytes, path: str) -> list[Entry] | None:
        root = parse_xml(body, self.id, "PROPFIND")
        if root.tag != _MULTISTATUS:
            raise EndpointError(self.id, f"PROPFIND: unexpected answer <{root.tag}>")
        own = (self._base_path + path).rstrip("/")
        entries: list[Entry] = []
        self_is_dir: bool | None = None
        for response in root.iterchildren(_RESPONSE):
            href = response.findtext(_HREF) or ""
            # most servers send absolute paths; full URLs need splitting
            href_path = unquote(href if href.startswith("/") else urlsplit(href).path).rstrip("/")
            stat = _props(response)
            if href_path == own:
                self_is_dir = stat.is_dir
                continue
            parent, _, name = href_path.rpartition("/")
            if parent != own or not name:
                continue
            entries.append(Entry(name, stat))
            if len(entries) > MAX_LIST_ENTRIES:
                raise EndpointError(self.id, f"listing of {path} exceeds {MAX_LIST_ENTRIES} entries")
        if self_is_dir is False:
            return None
        return entries

    def probe(self) -> Deferred[None]:
        url = self.config.url + quote_path(self.config.health_path or "/")
        return self._http.request("HEAD", url).addCallback(self._check, "probe")


_MULTISTATUS, _RESPONSE, _HREF = f"{_D}multistatus", f"{_D}response", f"{_D}href"
_PROPSTAT, _STATUS, _PROP = f"{_D}propstat", f"{_D}status", f"{_D}prop"
_RTYPE, _COLLECTION, _LENGTH = f"{_D}resourcetype", f"{_D}collection", f"{_D}getcontentlength"
_MODIFIED, _ETAG = f"{_D}getlastmodified", f"{_D}getetag"


def _props(response: Any) -> Stat:
    """The stat of one <D:response>, from its 200 propstats, in one pass over the children."""
    size: int | None = None
    mtime: float | None = None
    etag = ""
    is_dir = False
    for propstat in response.iterchildren(_PROPSTAT):
        ok = True
        prop = None
        for child in propstat:
            if child.tag == _STATUS:
                ok = " 200 " in (child.text or " 200 ")
            elif child.tag == _PROP:
                prop = child
        if not ok or prop is None:
            continue
        for el in prop:
            tag = el.tag
            if tag == _RTYPE:
                is_dir = is_dir or any(c.tag == _COLLECTION for c in el)
            elif tag == _LENGTH:
                size = parse_int((el.text or "").strip())
            elif tag == _MODIFIED:
                mtime = parse_http_date((el.text or "").strip())
            elif tag == _ETAG:
                etag = (el.text or "").strip().strip('"')
    if is_dir:
        size = None
    elif size is None:
        size = 0
    return Stat(size=size, mtime=mtime, is_dir=is_dir, etag=etag)
