"""Any WebDAV multistatus read by lxml (safe settings: no entities, no DTD, no network): the reader
of whatever the fast path (fedd.endpoints.multistatus) does not accept, and the rules for one
<D:response>'s stat that both follow. Pure parsing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lxml import etree

from fedd.endpoints.base import Stat, etag_value, parse_http_date, parse_int
from fedd.errors import EndpointError

_D = "{DAV:}"
ROOT_WITHIN = 1 << 20  # bytes of a streamed answer within which its <D:multistatus> root must start

_MULTISTATUS, _RESPONSE, _HREF = f"{_D}multistatus", f"{_D}response", f"{_D}href"
_PROPSTAT, _STATUS, _PROP = f"{_D}propstat", f"{_D}status", f"{_D}prop"
_RTYPE, _COLLECTION, _LENGTH = f"{_D}resourcetype", f"{_D}collection", f"{_D}getcontentlength"
_MODIFIED, _ETAG = f"{_D}getlastmodified", f"{_D}getetag"


class _TreeReader:
    """Any multistatus, read with lxml's pull parser (safe settings: no entities, no DTD, no
    network), each <D:response> dropped once read."""

    def __init__(self, endpoint_id: str, take: Callable[[str, Stat], None]) -> None:
        self._endpoint_id = endpoint_id
        self._take = take
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
        self._root_checked = False

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
            self._take(el.findtext(_HREF) or "", response_stat(el))
            el.clear()
            parent = el.getparent()
            if parent is not None:
                parent.remove(el)  # what was read is dropped: memory stays one response deep

    def close(self) -> None:
        try:
            root = self._parser.close()
        except etree.XMLSyntaxError as exc:
            raise EndpointError(self._endpoint_id, f"PROPFIND: unreadable XML ({exc.msg})") from None
        if not self._root_checked:
            tag = getattr(root, "tag", None)
            raise EndpointError(self._endpoint_id, f"PROPFIND: unexpected answer <{tag}>" if tag else "PROPFIND: empty")
        self._drain()


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
