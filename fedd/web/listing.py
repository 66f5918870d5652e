"""Merged listings written as the endpoints answer: the WebDAV multistatus of a PROPFIND and the
HTML index of a GET on a collection. First bytes go out before the slowest endpoint is done, and
memory holds the names seen (for the merge), not the entries (Federation.stream_listing)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from html import escape
from urllib.parse import quote
from xml.sax.saxutils import escape as xml_escape

from twisted.web import server

from fedd.auth.service import AuthService
from fedd.endpoints.base import Entry, Stat, Valve, format_etag, quote_path
from fedd.federation import Federation
from fedd.web import xml

MISSING_HEADER = b"fedd-missing-endpoints"
Quota = Callable[[str, Stat], "tuple[int, int] | None"]


def mark_missing(request: server.Request, failed: dict[str, str]) -> None:
    """A listing without some endpoints says so, in a header: which endpoints, and why."""
    if failed:
        names = ", ".join(f'{eid}; reason="{why[:80]}"' for eid, why in sorted(failed.items()))
        request.setHeader(MISSING_HEADER, names.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace"))


async def stream_listing(
    fed: Federation,
    auth: AuthService | None,
    request: server.Request,
    path: str,
    skip: frozenset[str],
    via: tuple[str, ...],
    head: Callable[[], bytes],
    rows: Callable[[list[Entry]], bytes],
    tail: Callable[[dict[str, str]], bytes],
    content_type: bytes,
) -> bool:
    """Answer with a merged listing written as the endpoints answer (first bytes before the
    slowest endpoint is done; memory for the names, not the entries). False when no endpoint
    has `path` as a collection (nothing written). Endpoints known to be out at the start are in
    the `Fedd-Missing-Endpoints` header, those failing later in `tail`."""
    open_writes = [True]
    known_out = fed.unlistable(path)  # in the header; those failing later go into `tail`
    valve = Valve()  # the client's connection paces the endpoints' answers: memory stays bounded

    def write(data: bytes) -> None:
        if open_writes[0] and not request.finished and not getattr(request, "fedd_gone", False):
            request.write(data)

    def on_start() -> None:
        request.setResponseCode(207 if content_type.startswith(b"application/xml") else 200)
        request.setHeader(b"content-type", content_type)
        mark_missing(request, known_out)
        request.registerProducer(valve, True)
        write(head())

    # a child with access rules of its own (an embargo) is named only to who may read or list it
    who = getattr(request, "fedd_identity", None)
    shown = auth.listing_filter(who, path) if auth is not None and who is not None else None

    def on_entries(entries: list[Entry]) -> None:
        write(rows(entries if shown is None else [e for e in entries if shown(e.name)]))

    try:
        failed = await fed.stream_listing(path, on_start, on_entries, via, skip, valve)
    finally:
        if request.producer is valve:
            request.unregisterProducer()
    if failed is None:
        return False
    write(tail({eid: why for eid, why in failed.items() if eid not in known_out}))
    open_writes[0] = False
    if not request.finished and not getattr(request, "fedd_gone", False):
        request.finish()
    return True


async def index(
    fed: Federation,
    auth: AuthService | None,
    request: server.Request,
    path: str,
    skip: frozenset[str],
    via: tuple[str, ...],
) -> bool:
    """The HTML index of a collection, streamed (see `stream_listing`)."""
    base = path.rstrip("/")

    def head() -> bytes:
        return (
            f"<!DOCTYPE html><html><head><title>{escape(path)}</title></head><body><h1>{escape(path)}</h1><ul>"
        ).encode()

    prefix = quote(base + "/")

    def rows(entries: list[Entry]) -> bytes:
        return "".join(index_row(prefix, e) for e in entries).encode()

    def tail(failed: dict[str, str]) -> bytes:
        note = "".join(f"<p>not listed: {escape(eid)} ({escape(why)})</p>" for eid, why in sorted(failed.items()))
        return f"</ul>{note}</body></html>\n".encode()

    return await stream_listing(fed, auth, request, path, skip, via, head, rows, tail, b"text/html; charset=utf-8")


async def propfind(
    fed: Federation,
    auth: AuthService | None,
    request: server.Request,
    path: str,
    skip: frozenset[str],
    via: tuple[str, ...],
    *,
    depth: bytes,
    mode: str,
    wanted: Sequence[tuple[str, str]],
    quota: Quota,
) -> bool:
    """The multistatus of a PROPFIND on a collection, streamed (see `stream_listing`): the
    collection's own response first, then its children when `depth` is 1."""
    base = path.rstrip("/")
    collection = Stat(is_dir=True)

    def head() -> bytes:
        own = xml.response_xml(path, collection, mode, wanted, quota(path, collection))
        return (xml.MULTISTATUS_HEAD + own).encode()

    files = AllpropFiles(base) if mode == "allprop" else None

    def rows(entries: list[Entry]) -> bytes:
        if depth != b"1":
            return b""
        return "".join(
            files(e.name, e.stat)
            if files is not None and not e.stat.is_dir
            else xml.response_xml(f"{base}/{e.name}", e.stat, mode, wanted, quota(f"{base}/{e.name}", e.stat))
            for e in entries
        ).encode()

    def tail(failed: dict[str, str]) -> bytes:
        return xml.multistatus_tail(failed).encode()

    return await stream_listing(
        fed, auth, request, path, skip, via, head, rows, tail, b"application/xml; charset=utf-8"
    )


# names that quote_path, quote and both escapes leave as they are: most names in a big directory
_PLAIN = re.compile(r"[A-Za-z0-9_.~-]+")


def index_row(prefix: str, entry: Entry) -> str:
    """One <li> of the HTML index; `prefix` is the quoted collection path with its slash."""
    name = entry.name
    slash = "/" if entry.stat.is_dir else ""
    if _PLAIN.fullmatch(name):
        return f'<li><a href="{prefix}{name}{slash}">{name}{slash}</a></li>'
    return f'<li><a href="{escape(prefix + quote(name))}{slash}">{escape(name)}{slash}</a></li>'


class AllpropFiles:
    """`xml.response_xml(f"{base}/{name}", stat, "allprop", ())` for files (no quota: collections
    only), from pieces worked out once per listing: a third of the time per entry."""

    def __init__(self, base: str) -> None:
        self._head = "<D:response><D:href>" + xml_escape(quote_path(base + "/"))

    def __call__(self, name: str, stat: Stat) -> str:
        if _PLAIN.fullmatch(name):
            href = shown = name
        else:
            href, shown = xml_escape(quote_path(name)), xml_escape(name)
        size = "" if stat.size is None else f"<D:getcontentlength>{stat.size}</D:getcontentlength>"
        dates = "" if stat.mtime is None else _dates(stat.mtime)
        etag = ""
        if stat.etag:
            etag = format_etag(stat.etag)
            if "&" in etag or "<" in etag or ">" in etag:
                etag = xml_escape(etag)
            etag = f"<D:getetag>{etag}</D:getetag>"
        return (
            f"{self._head}{href}</D:href><D:propstat><D:prop><D:resourcetype/>{size}{dates}{etag}"
            f"<D:displayname>{shown}</D:displayname><D:getcontenttype>application/octet-stream</D:getcontenttype>"
            "</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>"
        )


@lru_cache(maxsize=4096)  # a big directory's files share a few modification times
def _dates(mtime: float) -> str:
    return (
        f"<D:getlastmodified>{xml._http_date(mtime)}</D:getlastmodified>"
        f"<D:creationdate>{xml._iso_date(mtime)}</D:creationdate>"
    )
