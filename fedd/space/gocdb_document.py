"""GOCDB downtime documents: one page of the programmatic interface (PI) read into plain values.

What is read (checked against GOCDB's source, github.com/GOCDB/gocdb: `htdocs/PI/index.php`,
`lib/Gocdb_Services/PI/GetDowntime.php`, `lib/Gocdb_Services/PI/QueryBuilders/Helpers.php`,
`htdocs/PI/xmlschema/get_downtime.xsd`):

- `?method=get_downtime` is a public PI method (no certificate). Its answer is UTF-8 XML with root
  `<results>` and one `<DOWNTIME ID=".." PRIMARY_KEY=".." CLASSIFICATION="SCHEDULED|UNSCHEDULED">`
  per downtime and affected service, holding `SEVERITY` (`OUTAGE` or `WARNING`), `DESCRIPTION`,
  `START_DATE`/`END_DATE` (Unix seconds), `FORMATED_START_DATE`/`FORMATED_END_DATE`
  (`YYYY-MM-DD HH:MM`, rendered in UTC: the PI sets its time zone to UTC), `HOSTNAME`,
  `SERVICE_TYPE`, `ENDPOINT` (host name + service type), `HOSTED_BY` (older schema: `SITENAME`),
  `GOCDB_PORTAL_URL` and `AFFECTED_ENDPOINTS`. A downtime on several services repeats its
  `DOWNTIME` element once per service, with the same `ID`.
- `?method=get_downtime_nested_services` gives one `DOWNTIME` per downtime with its services in
  `<SERVICES><SERVICE>` (`HOSTNAME`, `SERVICE_TYPE`, `HOSTED_BY`, ...). Both forms are read.
- With cursor paging (`next_cursor=0`, or paging on by default on the server) the answer starts
  with `<meta>` holding `<link rel="next" href="...">` (plus `self`, `prev`, `start`), `<count>` and
  `<max_page_size>`; the next link is present whenever the page had rows, so the last page is an
  empty one. fedd follows `next` links on the same scheme and host, up to `[gocdb] max_pages`.
- A refused query is answered with HTTP 200 and a document `<error>...</error>`: an error here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

from lxml import etree

from fedd.safexml import has_doctype, safe_parser

SEVERITIES = ("OUTAGE", "WARNING")
MAX_REASON = 300  # characters of a downtime's description kept in its reason
_EPOCH_RE = re.compile(r"[0-9]{1,12}")


class GocdbError(Exception):
    """A GOCDB answer fedd cannot use; the message says why, in one line."""


@dataclass(frozen=True)
class GocdbDowntime:
    """One downtime of one service, as GOCDB lists it."""

    id: str
    severity: str  # OUTAGE or WARNING
    classification: str  # SCHEDULED or UNSCHEDULED
    start: float
    end: float
    hostname: str  # lower case, no trailing dot
    service_type: str
    site: str = ""
    description: str = ""
    portal_url: str = ""


@dataclass(frozen=True)
class Page:
    downtimes: tuple[GocdbDowntime, ...]
    skipped: tuple[str, ...] = ()  # why DOWNTIME elements were left out
    next_href: str = ""  # <meta><link rel="next" href=..>, as written


def parse_page(body: bytes) -> Page:
    """One get_downtime (or get_downtime_nested_services) document; GocdbError when unusable.

    Safe on hostile input: a fresh lxml parser per call (this runs in the thread pool, and lxml
    parsers are not to be shared between threads) that loads no DTD, expands no entity, reads
    nothing from the network and refuses huge trees; a document with a DTD is refused outright."""
    try:
        root = etree.fromstring(body, safe_parser())
    except etree.XMLSyntaxError as exc:
        raise GocdbError(f"malformed XML ({exc.msg})") from None
    if root is None:
        raise GocdbError("empty document")
    if has_doctype(root):
        raise GocdbError("the document has a DTD (refused)")
    if root.tag == "error":
        raise GocdbError(f"GOCDB answered an error: {clip(''.join(root.itertext()).strip(), 200)}")
    if root.tag != "results":
        raise GocdbError(f"not a get_downtime answer: the root element is <{clip(str(root.tag), 60)}>")
    found: dict[tuple[str, str, str], GocdbDowntime] = {}
    skipped: list[str] = []
    for element in root.iterchildren("DOWNTIME"):
        try:
            for downtime in _downtimes_of(element):
                found.setdefault((downtime.id, downtime.hostname, downtime.service_type), downtime)
        except GocdbError as exc:
            skipped.append(str(exc))
    return Page(tuple(found.values()), tuple(skipped), _next_href(root))


def _downtimes_of(element: Any) -> list[GocdbDowntime]:
    ident = (element.get("ID") or "").strip()
    if not ident or len(ident) > 64:
        raise GocdbError("a DOWNTIME without a usable ID attribute")
    severity = _child_text(element, "SEVERITY").upper()
    if severity not in SEVERITIES:
        raise GocdbError(f"downtime {ident}: unknown SEVERITY {clip(severity, 40)!r}")
    start = _moment(element, "START_DATE", "FORMATED_START_DATE")
    end = _moment(element, "END_DATE", "FORMATED_END_DATE")
    if start is None or end is None:
        raise GocdbError(f"downtime {ident}: no readable START_DATE/END_DATE")
    if end <= start:
        raise GocdbError(f"downtime {ident}: ends before it starts")
    services = element.find("SERVICES")
    if services is not None:
        hosts = [
            (_child_text(s, "HOSTNAME"), _child_text(s, "SERVICE_TYPE"), _child_text(s, "HOSTED_BY"))
            for s in services.iterchildren("SERVICE")
        ]
    else:
        site = _child_text(element, "HOSTED_BY") or _child_text(element, "SITENAME")
        hosts = [(_child_text(element, "HOSTNAME"), _child_text(element, "SERVICE_TYPE"), site)]
    hosts = [(h.lower().rstrip("."), t, s) for h, t, s in hosts if h]
    if not hosts:
        raise GocdbError(f"downtime {ident}: no HOSTNAME")
    portal = _child_text(element, "GOCDB_PORTAL_URL")
    return [
        GocdbDowntime(
            id=ident,
            severity=severity,
            classification=(element.get("CLASSIFICATION") or "").strip().upper(),
            start=start,
            end=end,
            hostname=host,
            service_type=service_type,
            site=site,
            description=clip(" ".join(_child_text(element, "DESCRIPTION").split()), MAX_REASON),
            # the old PI wrote a placeholder (#GOCDB_BASE_PORTAL_URL#/...): only real web links are kept
            portal_url=portal if re.match(r"^https?://[^\s#]+$", portal) else "",
        )
        for host, service_type, site in hosts
    ]


def _child_text(element: Any, name: str) -> str:
    child = element.find(name)
    if child is None:
        return ""
    return "".join(child.itertext()).strip()


def _moment(element: Any, epoch_name: str, formatted_name: str) -> float | None:
    """Unix seconds from the epoch element, else from the formatted one (UTC)."""
    text = _child_text(element, epoch_name)
    if _EPOCH_RE.fullmatch(text):
        return float(text)
    formatted = _child_text(element, formatted_name)
    try:
        return datetime.strptime(formatted, "%Y-%m-%d %H:%M").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def _next_href(root: Any) -> str:
    meta = root.find("meta")
    if meta is None:
        return ""
    for link in meta.iterchildren("link"):
        if (link.get("rel") or "").strip() == "next":
            return (link.get("href") or "").strip()
    return ""


def next_page_url(current: str, href: str) -> str:
    """The absolute URL of a `next` link; GocdbError when it leaves the configured server."""
    target = urljoin(current, href)
    here, there = urlsplit(current), urlsplit(target)
    if (there.scheme, there.netloc.lower()) != (here.scheme, here.netloc.lower()):
        raise GocdbError(f"the next page link leads to another server ({clip(redact(target), 120)})")
    return target


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def redact(url: str) -> str:
    """A URL fit for logs and the status: no user:password@."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
