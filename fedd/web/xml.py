"""WebDAV and metalink bodies: hostile-safe parsing of PROPFIND requests, rendering of answers."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import formatdate
from functools import lru_cache
from xml.sax.saxutils import escape

from fedd.endpoints.base import Stat, format_etag, quote_path
from fedd.errors import BadRequest
from fedd.safexml import UnsafeXML, parse_untrusted

DAV = "{DAV:}"
LIVE_PROPS = (
    "resourcetype",
    "getcontentlength",
    "getlastmodified",
    "creationdate",
    "getetag",
    "displayname",
    "getcontenttype",
)


def parse_propfind(body: bytes) -> tuple[str, list[tuple[str, str]]]:
    """('allprop' | 'propname' | 'prop', [(namespace, name), ...]) from a PROPFIND body.

    An empty body means allprop (RFC 4918 9.1). DTDs, entities and external references are refused.
    """
    if not body.strip():
        return "allprop", []
    try:
        root = parse_untrusted(body)
    except UnsafeXML as exc:
        raise BadRequest(f"unacceptable PROPFIND body: {exc.reason}") from None
    if root.tag != f"{DAV}propfind":
        raise BadRequest("PROPFIND body must be a DAV:propfind element")
    if root.find(f"{DAV}propname") is not None:
        return "propname", []
    prop = root.find(f"{DAV}prop")
    if prop is None:
        return "allprop", []
    wanted = []
    for child in prop:
        tag = str(child.tag)
        if tag.startswith("{"):
            ns, _, name = tag[1:].partition("}")
        else:
            ns, name = "", tag
        wanted.append((ns, name))
    return "prop", wanted


@lru_cache(maxsize=4096)
def _http_date(mtime: float) -> str:
    return formatdate(mtime, usegmt=True)


@lru_cache(maxsize=4096)
def _iso_date(mtime: float) -> str:
    return datetime.fromtimestamp(mtime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _live(name: str, href_name: str, stat: Stat) -> str | None:
    if name == "resourcetype":
        return "<D:resourcetype><D:collection/></D:resourcetype>" if stat.is_dir else "<D:resourcetype/>"
    if name == "getcontentlength":
        return None if stat.is_dir or stat.size is None else f"<D:getcontentlength>{stat.size}</D:getcontentlength>"
    if name == "getlastmodified" and stat.mtime is not None:
        return f"<D:getlastmodified>{_http_date(stat.mtime)}</D:getlastmodified>"
    if name == "creationdate" and stat.mtime is not None:
        return f"<D:creationdate>{_iso_date(stat.mtime)}</D:creationdate>"
    if name == "getetag" and stat.etag:
        return f"<D:getetag>{escape(format_etag(stat.etag))}</D:getetag>"
    if name == "displayname":
        return f"<D:displayname>{escape(href_name)}</D:displayname>"
    if name == "getcontenttype" and not stat.is_dir:
        return "<D:getcontenttype>application/octet-stream</D:getcontenttype>"
    return None


QUOTA_PROPS = ("quota-available-bytes", "quota-used-bytes")


def _quota(name: str, stat: Stat, quota: tuple[int, int] | None) -> str | None:
    """RFC 4331, on collections only: davix takes quota-used-bytes for a file's size if a file has it."""
    if not stat.is_dir or quota is None:
        return None
    value = quota[0] if name == "quota-available-bytes" else quota[1]
    return f"<D:{name}>{value}</D:{name}>"


def response_xml(
    path: str,
    stat: Stat,
    mode: str,
    wanted: Sequence[tuple[str, str]],
    quota: tuple[int, int] | None = None,
) -> str:
    """One <D:response> for a federation path; `quota` = (available, used) bytes for a collection."""
    href = quote_path(path)
    if stat.is_dir and not href.endswith("/"):
        href += "/"
    name = path.rsplit("/", 1)[-1]
    found: list[str] = []
    missing: list[str] = []
    if mode == "propname":
        found = [f"<D:{p}/>" for p in LIVE_PROPS]
        if stat.is_dir and quota is not None:
            found += [f"<D:{p}/>" for p in QUOTA_PROPS]
    elif mode == "allprop":
        found = [x for p in LIVE_PROPS if (x := _live(p, name, stat)) is not None]
        found += [x for p in QUOTA_PROPS if (x := _quota(p, stat, quota)) is not None]
    else:
        for ns, prop in wanted:
            if ns == "DAV:" and prop in QUOTA_PROPS:
                value = _quota(prop, stat, quota)
            else:
                value = _live(prop, name, stat) if ns == "DAV:" else None
            if value is not None:
                found.append(value)
            elif ns == "DAV:":
                missing.append(f"<D:{escape(prop)}/>")
            else:
                missing.append(f'<X:{escape(prop)} xmlns:X="{escape(ns, {chr(34): "&quot;"})}"/>')
    parts = [f"<D:response><D:href>{escape(href)}</D:href>"]
    if found or not missing:
        parts.append(f"<D:propstat><D:prop>{''.join(found)}</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>")
    if missing:
        parts.append(
            f"<D:propstat><D:prop>{''.join(missing)}</D:prop><D:status>HTTP/1.1 404 Not Found</D:status></D:propstat>"
        )
    parts.append("</D:response>")
    return "".join(parts)


MULTISTATUS_HEAD = '<?xml version="1.0" encoding="utf-8"?>\n<D:multistatus xmlns:D="DAV:">'
MULTISTATUS_TAIL = "</D:multistatus>\n"


def multistatus_tail(failed: dict[str, str]) -> str:
    """The end of a streamed multistatus; endpoints that failed while it was written are named in a
    closing <D:responsedescription> (RFC 4918 14.20: allowed after the responses), since the
    status and headers were sent before they failed."""
    if not failed:
        return MULTISTATUS_TAIL
    text = "; ".join(f"{eid}: {why}" for eid, why in sorted(failed.items()))
    return f"<D:responsedescription>incomplete listing, not answering: {escape(text)}</D:responsedescription>" + (
        MULTISTATUS_TAIL
    )


FINITE_DEPTH_ERROR = (
    b'<?xml version="1.0" encoding="utf-8"?>\n<D:error xmlns:D="DAV:"><D:propfind-finite-depth/></D:error>\n'
)


# RFC 5854 names (IANA hash function textual names) for the checksums endpoints tell; adler32 is not
# registered but is what grid tools (aria2, davix) understand under that name
METALINK_HASHES = {"md5": "md5", "sha256": "sha-256", "sha-256": "sha-256", "sha512": "sha-512", "adler32": "adler32"}


def metalink(
    path: str,
    replicas: Sequence[tuple[str, int]],
    size: int | None,
    mtime: float | None,
    hashes: Sequence[tuple[str, str]] = (),
) -> bytes:
    """A metalink v4 (RFC 5854) document: `<url>`s in rank order with priority 1..n, and the file's
    `<hash>`es (lowercase hex) where the endpoints told them."""
    name = escape(path.rsplit("/", 1)[-1] or "/")
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<metalink xmlns="urn:ietf:params:xml:ns:metalink">',
        "  <generator>fedd</generator>",
    ]
    if mtime is not None:
        lines.append(f"  <published>{datetime.fromtimestamp(mtime, UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}</published>")
    lines.append(f'  <file name="{name}">')
    if size is not None:
        lines.append(f"    <size>{size}</size>")
    for algorithm, value in hashes:
        kind = METALINK_HASHES.get(algorithm.lower())
        if kind is not None and re.fullmatch(r"[0-9a-f]{8,128}", value):
            lines.append(f'    <hash type="{kind}">{value}</hash>')
    for url, priority in replicas:
        lines.append(f'    <url priority="{priority}">{escape(url)}</url>')
    lines += ["  </file>", "</metalink>", ""]
    return "\n".join(lines).encode()
