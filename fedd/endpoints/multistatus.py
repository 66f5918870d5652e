"""WebDAV 207 multistatus answers to PROPFIND Depth 1, read into entries: whole (`parse_listing`) or
as they arrive (`MultistatusReader`). Pure parsing: no I/O, no reactor; the caller names the
endpoint (for its errors) and the collection's own path on it (to tell the collection from its
children)."""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable
from itertools import repeat
from urllib.parse import unquote, urlsplit

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
from fedd.endpoints.multistatus_tree import _HREF, _MULTISTATUS, _RESPONSE, ROOT_WITHIN, _TreeReader, response_stat
from fedd.errors import EndpointError

MAX_LIST_ENTRIES = 1_000_000
READ_AT = 32 << 10  # characters decoded before they are read: the work of a look paid for a few responses


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
    What arrived is read READ_AT characters at a time; when its complete responses are all plain
    files' as Apache writes them, they are read at once (`_file_block`: one split, no Python per
    response but the entry's objects).
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
        self._file_scopes: set[tuple[str, str, str]] = set()  # (declarations, prefixes) of DAV file responses
        self._mixed = 0  # chunks whose complete responses were not all plain files' (`_file_block`)
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
            self._read_text()
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
        # "]]>" is not XML outside CDATA (the expressions' text excludes the other characters lxml refuses);
        # looked for only where there is a "]" (one memchr: ">" is everywhere and slows a search for "]]>")
        if ("]" in text or self._text[-1:] == "]") and ("]]>" in self._text[-2:] + text[:2] or "]]>" in text):
            self._to_tree(pending + chunk)
            return
        self._text += text
        if len(self._text) >= READ_AT:
            self._read_text()

    def _read_text(self) -> None:
        """The complete responses in what was decoded and not read yet."""
        text = self._text
        if text.find("response>", self._checked) < 0 and len(text) <= ROOT_WITHIN:
            # no response can have ended since the last look: do not scan the same bytes again
            self._checked = max(0, len(text) - len("response>"))
            return
        self._checked = 0
        bulk = self._mixed < 2  # reading all the complete responses at once: tried once a chunk at most
        pos = 0
        while True:
            m = _FILE_RESPONSE_RE.match(text, pos)
            if m is not None:
                end = self._file_block(text, pos, m) if bulk else 0
                bulk = False
                pos = end or self._files_one_by_one(text, pos, m)
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

    def _file_block(self, text: str, pos: int, first: re.Match[str]) -> int:
        """All the complete responses from `pos` on (the first, `first`, a file's as Apache writes it)
        read at once when they all are plain files' (one split by `_FILE_RESPONSE_RE`, no Python per
        response but the entry's objects): where they end, or 0 (nothing taken) when they need the
        rules `_files_one_by_one` follows response by response (any other response among them,
        entities)."""
        closing = f"</{first.group('prefix')}:response>"
        end = text.rfind(closing) + len(closing)
        block = text[pos:end]
        parts = _FILE_RESPONSE_RE.split(block)  # [gap, 8 groups, gap, 8 groups, ..., gap]
        names = self._plain_files(block, parts, first)
        if names is None:
            self._mixed += 1  # files and other responses: after twice, one by one only (each try costs a scan)
            return 0
        if self._count + len(names) > MAX_LIST_ENTRIES:
            return 0  # one by one: the error where the limit is passed
        self._count += len(names)
        # the expression took at most 19 digits: parse_int's int
        mtimes = map(parse_http_date, map(str.strip, parts[6::9]))
        stats = map(Stat, map(int, parts[5::9]), mtimes, repeat(False), map(etag_value, parts[7::9]))
        batch = self._batch
        batch += map(Entry, names, stats)
        while len(batch) >= LIST_BATCH:
            self._batch = batch[LIST_BATCH:]
            self._emit(batch[:LIST_BATCH])
            batch = self._batch
        return end

    def _plain_files(self, block: str, parts: list[str], first: re.Match[str]) -> list[str] | None:
        """The children's names when `parts` (`block` split by `_FILE_RESPONSE_RE`) are plain files'
        responses back to back, with one prefix and the same declarations, status 200 and no
        entities (what `_take` would make of them, without its steps); else None."""
        if any(parts[0::9]) or "&" in block:
            return None
        prefixes, decls, props, statuses = set(parts[1::9]), set(parts[2::9]), set(parts[4::9]), set(parts[8::9])
        if len(prefixes) != 1 or len(decls) != 1 or len(props) != 1 or any(" 200 " not in s for s in statuses):
            return None
        if not self._file_scope(*first.group("decls", "prefix", "props")):
            return None
        hrefs = parts[3::9]
        own = self._own + "/"
        cut = len(own)
        names = [href[cut:] for href in hrefs]
        if not all(map(str.startswith, hrefs, repeat(own))) or not all(names):
            return None
        if "%" in block:
            names = [unquote(name) if "%" in name else name for name in names]
        return None if "/" in "".join(names) else names

    def _files_one_by_one(self, text: str, pos: int, m: re.Match[str] | None) -> int:
        """Files' responses as Apache writes them (`_FILE_RESPONSE_RE`: one expression each) from
        `pos` (`m`: the first) on, one by one; returns where the first response it does not read
        starts (the general expression's to try)."""
        match = _FILE_RESPONSE_RE.match
        escaped = "&" in text  # entities somewhere in this text: each value unescaped
        own = self._own + "/"
        cut = len(own)
        known = self._file_scopes
        batch = self._batch
        while m is not None:
            prefix, decls, href, props, size, modified, tag, status = m.groups()
            if (decls, prefix, props) not in known and not self._file_scope(decls, prefix, props):
                break
            if escaped:
                href, modified, tag, status = _unescape(href), _unescape(modified), _unescape(tag), _unescape(status)
            if " 200 " not in status:
                break
            # the expression took at most 19 digits: parse_int's int
            stat = Stat(int(size), parse_http_date(modified.strip()), False, etag_value(tag))
            name = href[cut:]
            if name and href.startswith(own) and "/" not in name and "%" not in name:
                # a child named plainly (what `_take` would make of it, without its steps)
                self._count += 1
                if self._count > MAX_LIST_ENTRIES:
                    raise EndpointError(self._endpoint_id, f"listing exceeds {MAX_LIST_ENTRIES} entries")
                batch.append(Entry(name, stat))
                if len(batch) >= LIST_BATCH:
                    self._flush()
                    batch = self._batch
            else:
                self._take(href, stat)
                batch = self._batch
            pos = m.end()
            m = match(text, pos)
        return pos

    def _file_scope(self, decls: str, prefix: str, props: str) -> bool:
        """Whether a file's response with these declarations and prefixes names DAV's elements
        (worked out once: Apache writes the same on every response)."""
        names = self._scope(decls)
        if names is None or names.get(prefix) != "DAV:" or names.get(props) != "DAV:":
            return False
        if len(self._file_scopes) < _MAX_SCOPES:
            self._file_scopes.add((decls, prefix, props))
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
