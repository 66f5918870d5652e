"""WebDAV 207 multistatus answers to PROPFIND Depth 1, read into entries: whole (`parse_listing`) or
as they arrive (`MultistatusReader`). Pure parsing: no I/O, no reactor; the caller names the
endpoint (for its errors) and the collection's own path on it (to tell the collection from its
children)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from lxml import etree

from fedd.endpoints.base import LIST_BATCH, Entry, Stat, etag_value, parse_http_date, parse_int, parse_xml
from fedd.errors import EndpointError

_D = "{DAV:}"
MAX_LIST_ENTRIES = 1_000_000
ROOT_WITHIN = 1 << 20  # bytes of a streamed answer within which its <D:multistatus> root must start

_MULTISTATUS, _RESPONSE, _HREF = f"{_D}multistatus", f"{_D}response", f"{_D}href"
_PROPSTAT, _STATUS, _PROP = f"{_D}propstat", f"{_D}status", f"{_D}prop"
_RTYPE, _COLLECTION, _LENGTH = f"{_D}resourcetype", f"{_D}collection", f"{_D}getcontentlength"
_MODIFIED, _ETAG = f"{_D}getlastmodified", f"{_D}getetag"


def parse_listing(body: bytes, endpoint_id: str, own: str, path: str) -> list[Entry] | None:
    """The children of the collection at `own` (its path on the endpoint, no trailing slash) from a
    whole multistatus body; None when the endpoint says `path` is not a collection."""
    root = parse_xml(body, endpoint_id, "PROPFIND")
    if root.tag != _MULTISTATUS:
        raise EndpointError(endpoint_id, f"PROPFIND: unexpected answer <{root.tag}>")
    entries: list[Entry] = []
    self_is_dir: bool | None = None
    for response in root.iterchildren(_RESPONSE):
        href = response.findtext(_HREF) or ""
        # most servers send absolute paths; full URLs need splitting
        href_path = unquote(href if href.startswith("/") else urlsplit(href).path).rstrip("/")
        stat = response_stat(response)
        if href_path == own:
            self_is_dir = stat.is_dir
            continue
        parent, _, name = href_path.rpartition("/")
        if parent != own or not name:
            continue
        entries.append(Entry(name, stat))
        if len(entries) > MAX_LIST_ENTRIES:
            raise EndpointError(endpoint_id, f"listing of {path} exceeds {MAX_LIST_ENTRIES} entries")
    if self_is_dir is False:
        return None
    return entries


class MultistatusReader:
    """A 207 multistatus read incrementally: children handed on in batches of LIST_BATCH."""

    def __init__(self, endpoint_id: str, own: str, emit: Callable[[list[Entry]], None]) -> None:
        self._endpoint_id = endpoint_id
        self._own = own
        self._emit = emit
        # events for the root and each <D:response> only, not for every property (a tenth of the work)
        self._parser = etree.XMLPullParser(
            events=("start", "end"),
            tag=[_MULTISTATUS, _RESPONSE],
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            huge_tree=False,
        )
        self._fed = 0
        self._batch: list[Entry] = []
        self._count = 0
        self._root_checked = False
        self.self_is_dir: bool | None = None

    def feed(self, chunk: bytes) -> None:
        self._fed += len(chunk)
        try:
            self._parser.feed(chunk)
            self._drain()
            if not self._root_checked and self._fed > ROOT_WITHIN:
                raise EndpointError(self._endpoint_id, "PROPFIND: the answer is not a DAV multistatus")
        except etree.XMLSyntaxError as exc:
            raise EndpointError(self._endpoint_id, f"PROPFIND: unreadable XML ({exc.msg})") from None

    def _drain(self) -> None:
        for event, el in self._parser.read_events():
            if event == "start":
                if not self._root_checked:
                    self._root_checked = True
                    if el.tag != _MULTISTATUS:
                        raise EndpointError(self._endpoint_id, f"PROPFIND: unexpected answer <{el.tag}>")
                continue
            if el.tag != _RESPONSE:
                continue
            self._response(el)
            el.clear()
            parent = el.getparent()
            if parent is not None:
                parent.remove(el)  # what was read is dropped: memory stays one response deep
        if len(self._batch) >= LIST_BATCH:
            self._flush()

    def _response(self, response: Any) -> None:
        href = response.findtext(_HREF) or ""
        href_path = unquote(href if href.startswith("/") else urlsplit(href).path).rstrip("/")
        stat = response_stat(response)
        if href_path == self._own:
            self.self_is_dir = stat.is_dir
            return
        parent, _, name = href_path.rpartition("/")
        if parent != self._own or not name:
            return
        self._count += 1
        if self._count > MAX_LIST_ENTRIES:
            raise EndpointError(self._endpoint_id, f"listing exceeds {MAX_LIST_ENTRIES} entries")
        self._batch.append(Entry(name, stat))

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        if batch:
            self._emit(batch)

    def close(self) -> bool:
        """The answer is complete: True when the path is a collection."""
        try:
            root = self._parser.close()
        except etree.XMLSyntaxError as exc:
            raise EndpointError(self._endpoint_id, f"PROPFIND: unreadable XML ({exc.msg})") from None
        if not self._root_checked:
            tag = getattr(root, "tag", None)
            raise EndpointError(self._endpoint_id, f"PROPFIND: unexpected answer <{tag}>" if tag else "PROPFIND: empty")
        self._drain()
        self._flush()
        return self.self_is_dir is not False


def response_stat(response: Any) -> Stat:
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
                etag = etag_value(el.text)
    if is_dir:
        size = None
    elif size is None:
        size = 0
    return Stat(size=size, mtime=mtime, is_dir=is_dir, etag=etag)
