"""WebDAV 207 multistatus answers to PROPFIND Depth 1, read into entries: whole (`parse_listing`) or
as they arrive (`MultistatusReader`). Pure parsing: no I/O, no reactor; the caller names the
endpoint (for its errors) and the collection's own path on it (to tell the collection from its
children)."""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from lxml import etree

from fedd.endpoints.base import LIST_BATCH, Entry, Stat, etag_value, parse_http_date, parse_int, parse_xml
from fedd.endpoints.multistatus_shapes import (
    _EMPTY_RE,
    _FILE_RESPONSE_RE,
    _HEAD,
    _MAX_SCOPES,
    _OPEN_RE,
    _PROP_RE,
    _RESPONSE_RE,
    _START_TAG,
    _WS,
    _declarations,
    _propstats,
    _unescape,
)
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
    """A 207 multistatus read incrementally: children handed on in batches of LIST_BATCH, memory
    independent of the size of the answer.

    Answers in the common shape (Apache mod_dav, dCache, EOS, nginx, fedd: UTF-8, one element per
    property, no CDATA, DOCTYPE or character references) are read by regular expressions that
    accept only that shape (`_HEAD`, `_RESPONSE_RE`): a third of the time of lxml's pull parser and
    its Python objects for every element. Whatever they do not accept, from there to the end, goes
    to `_TreeReader` (lxml, safe settings) with the document's head in front: same answer, any XML.
    """

    def __init__(self, endpoint_id: str, own: str, emit: Callable[[list[Entry]], None]) -> None:
        self._endpoint_id = endpoint_id
        self._own = own
        self._emit = emit
        self._batch: list[Entry] = []
        self._count = 0
        self.self_is_dir: bool | None = None
        self._raw = b""  # bytes before the head is known
        self._head = b""  # the XML declaration and the root's start tag, as sent
        self._names: dict[str, str] = {}  # the root's namespace declarations: prefix -> URI
        self._scopes: dict[str, dict[str, str]] = {}  # a response's declarations -> names in scope
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._text = ""  # decoded, not read yet
        self._checked = 0  # where to look for the end of a response in `_text`
        self._tree: _TreeReader | None = None

    def feed(self, chunk: bytes) -> None:
        if self._tree is not None:
            self._tree.feed(chunk)
        elif not self._head:
            self._raw += chunk
            self._read_head(final=False)
        else:
            self._read_body(chunk)
        if len(self._batch) >= LIST_BATCH:
            self._flush()

    def close(self) -> bool:
        """The answer is complete: True when the path is a collection."""
        if self._tree is None and not self._head:
            self._read_head(final=True)
        if self._tree is None:
            pending = self._decoder.getstate()[0]
            if pending or self._text.strip(_WS) != f"</{self._root}>":
                self._to_tree(pending)  # something after the responses: lxml reads it and checks the end
        if self._tree is not None:
            self._tree.close()
        self._flush()
        return self.self_is_dir is not False

    # --- the common shape ------------------------------------------------------------------------

    def _read_head(self, final: bool) -> None:
        m = _HEAD.match(self._raw)
        if m is None:
            # not (yet) the head of a UTF-8 multistatus in the common shape: lxml decides once an
            # element's start tag is in (or at the end, or past ROOT_WITHIN)
            if final or _START_TAG.search(self._raw) or len(self._raw) > ROOT_WITHIN:
                raw, self._raw = self._raw, b""
                self._tree = _TreeReader(self._endpoint_id, self._take)
                self._tree.feed(raw)
            return
        names = _declarations(m.group("decls").decode("ascii"))
        if names is None or names.get((m.group("prefix") or b"").decode("ascii")) != "DAV:":
            raw, self._raw = self._raw, b""
            self._tree = _TreeReader(self._endpoint_id, self._take)
            self._tree.feed(raw)
            return
        self._head = self._raw[: m.end()]
        self._root = m.group("root").decode("ascii")
        self._names = names
        rest, self._raw = self._raw[m.end() :], b""
        self._read_body(rest)

    def _read_body(self, chunk: bytes) -> None:
        pending = self._decoder.getstate()[0]
        try:
            text = self._decoder.decode(chunk)
        except UnicodeDecodeError:
            self._to_tree(pending + chunk)  # lxml says where
            return
        # "]]>" is not XML outside CDATA (the expressions' text excludes the other characters lxml refuses)
        if "]]>" in self._text[-2:] + text[:2] or "]]>" in text:
            self._to_tree(pending + chunk)
            return
        self._text += text
        text = self._text
        if text.find("response>", self._checked) < 0 and len(text) <= ROOT_WITHIN:
            # no response can have ended since the last look: do not scan the same bytes again
            self._checked = max(0, len(text) - len("response>"))
            return
        self._checked = 0
        pos = 0
        while True:
            m = _FILE_RESPONSE_RE.match(text, pos)
            if m is not None and self._file_fast(m):
                pos = m.end()
                continue
            m = _RESPONSE_RE.match(text, pos)
            if m is None or not self._response_fast(m):
                break
            pos = m.end()
        self._text = rest = text[pos:]
        start = _OPEN_RE.match(rest)
        if start is not None:
            # a response still arriving, or a complete one the expressions do not read: lxml reads it
            if rest.find(f"</{start.group(1) or ''}response>") >= 0 or len(rest) > ROOT_WITHIN:
                self._to_tree(self._decoder.getstate()[0])
            return
        tag = rest.lstrip(_WS)
        if not tag or tag.startswith(f"</{self._root}") or (">" not in tag and len(tag) < ROOT_WITHIN):
            return  # whitespace, the end (checked by `close`), or a start tag still arriving
        self._to_tree(self._decoder.getstate()[0])  # another element (<D:responsedescription>, ...)

    def _scope(self, decls: str) -> dict[str, str] | None:
        """The namespaces in scope in a response with these declarations (Apache declares the same
        on every response: worked out once); None for declarations lxml would refuse."""
        names = self._scopes.get(decls)
        if names is None:
            own = _declarations(decls)
            if own is None or len(self._scopes) > _MAX_SCOPES:
                return None
            names = self._scopes[decls] = {**self._names, **own}
        return names

    def _file_fast(self, m: re.Match[str]) -> bool:
        """A file's response as Apache writes it (`_FILE_RESPONSE_RE`): one expression, no loop."""
        prefix, decls, href, props_prefix, size, modified, tag, status = m.groups()
        names = self._scopes.get(decls) or self._scope(decls)
        if names is None or names.get(prefix) != "DAV:" or names.get(props_prefix) != "DAV:":
            return False
        if "&" in status:
            status = _unescape(status)
        if " 200 " not in status:
            return False
        if "&" in href:
            href = _unescape(href)
        if "&" in modified:
            modified = _unescape(modified)
        if "&" in tag:
            tag = _unescape(tag)
        # the expression took at most 19 digits: parse_int's int
        stat = Stat(size=int(size), mtime=parse_http_date(modified.strip()), etag=etag_value(tag))
        self._take(href, stat)
        return True

    def _response_fast(self, m: re.Match[str]) -> bool:
        """One <D:response> matched by `_RESPONSE_RE`, read with `response_stat`'s rules; False
        (nothing taken) when it uses namespaces in a way the expressions do not follow."""
        prefix, decls, props, status, more = m.group("prefix", "decls", "props", "status", "more")
        names = self._scope(decls)
        if names is None or names.get(prefix) != "DAV:":
            return False
        href = m.group("href")
        if "&" in href:
            href = _unescape(href)
        size: int | None = None
        mtime: float | None = None
        etag = ""
        is_dir = False
        propstats = [(props, status)]
        if more:
            propstats += _propstats(prefix).findall(more)
        for props, status in propstats:
            if "&" in status:
                status = _unescape(status)
            if " 200 " not in (status or " 200 "):
                continue
            for p, name, value, inner in _PROP_RE.findall(props):
                uri = names.get(p)
                if uri is None and p:
                    return False  # an undeclared prefix: lxml's error to report
                if uri != "DAV:":
                    continue
                if name == "resourcetype":
                    for child_prefix, child in _EMPTY_RE.findall(inner):
                        child_uri = names.get(child_prefix)
                        if child_uri is None and child_prefix:
                            return False
                        is_dir = is_dir or (child == "collection" and child_uri == "DAV:")
                    continue
                if inner or "&" in value:  # child elements: no text of its own (lxml's .text is None)
                    value = "" if inner else _unescape(value)
                if name == "getcontentlength":
                    size = parse_int(value.strip())
                elif name == "getlastmodified":
                    mtime = parse_http_date(value.strip())
                elif name == "getetag":
                    etag = etag_value(value)
        if is_dir:
            size = None
        elif size is None:
            size = 0
        self._take(href, Stat(size=size, mtime=mtime, is_dir=is_dir, etag=etag))
        return True

    def _to_tree(self, raw: bytes) -> None:
        """From here on lxml reads the answer: the head again, what was decoded and not read yet,
        then `raw` (bytes not decoded)."""
        rest, self._text = self._text.encode("utf-8"), ""
        self._tree = _TreeReader(self._endpoint_id, self._take)
        self._tree.feed(self._head + rest + raw)

    # --- both ----------------------------------------------------------------------------------------

    def _take(self, href: str, stat: Stat) -> None:
        # most servers send absolute paths; full URLs need splitting (before decoding: %3F is a name's)
        href_path = href if href.startswith("/") else urlsplit(href).path
        if "%" in href_path:
            href_path = unquote(href_path)
        href_path = href_path.rstrip("/")
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
        if len(self._batch) >= LIST_BATCH:
            self._flush()

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        if batch:
            self._emit(batch)


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
