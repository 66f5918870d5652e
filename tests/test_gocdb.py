"""GOCDB downtimes: parsing get_downtime, mapping to endpoints, refreshing, and fedd applying them.

- table tests of the parser on realistic documents (tests/data/gocdb/: GOCDB's flat `get_downtime`
  form, the nested form with cursor paging, damaged records, GOCDB's `<error>` answer, malformed XML,
  a DTD) and of the mapping (host names, overrides, service types, severities, time);
- the DowntimeBook applying GOCDB downtimes on time (Clock), and the refresh service with a Clock
  and a scripted in-process source (errors keep the last good set, paging, reload, stop);
- the real fetcher (fedd's HttpClient, thread pool) against a real HTTP server on loopback serving
  good XML, then malformed XML, a huge document, 500, a stalled answer, a redirect: the last good set
  is kept, each error is in the status and one log line without a traceback; file:// sources; TLS
  verified by default and with `ca_file`;
- end to end through `twistd fedd` with two Apache mod_dav endpoints: GOCDB declares an OUTAGE of one
  host now; a file only there is 503 + Retry-After, a file on both is a 302 to the other; broken
  answers keep the downtime; GOCDB dropping it lifts it.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThreadPool
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher

from fedd.config import Config, ConfigError, EndpointConfig, GocdbConfig, parse_config
from fedd.space.downtime import Declared, DowntimeBook
from fedd.space.gocdb import (
    Fetcher,
    GocdbError,
    GocdbService,
    endpoint_hostnames,
    next_page_url,
    parse_page,
    to_declared,
)
from tests.daemon import Fedd, start_fedd, wait_for
from tests.servers import free_port

DATA = Path(__file__).resolve().parent / "data" / "gocdb"
NOW = 1767225600.0  # 2026-01-01T00:00Z: the sample documents are written around it
H, D = 3600, 86400
URL = "https://goc.example.org/gocdbpi/public/?method=get_downtime&topentity=EXAMPLE-T2"


def data(name: str) -> bytes:
    return (DATA / name).read_bytes()


ENDPOINTS = (
    EndpointConfig(id="se01", kind="dav", url="https://SE01.example.org:2880/pnfs/example.org/data"),
    EndpointConfig(id="se02", kind="dav", url="https://se02.example.org:2880"),
    EndpointConfig(id="ceph", kind="s3", url="https://s3.example.org", gocdb_hostnames=("se03.example.org",)),
    EndpointConfig(id="scratch", kind="local", path="/tmp"),
    EndpointConfig(id="mirror", kind="dav", url="https://se01.example.org:2881", gocdb_hostnames=("none",)),
)


# --- the parser ---------------------------------------------------------------------------------


def test_flat_get_downtime_document() -> None:
    page = parse_page(data("site_flat.xml"))
    assert page.skipped == () and page.next_href == ""
    rows = sorted((d.id, d.hostname, d.service_type, d.severity) for d in page.downtimes)
    assert rows == [
        ("30090", "se01.example.org", "webdav", "OUTAGE"),  # past
        ("30101", "se01.example.org", "SRM", "OUTAGE"),  # one downtime, two services: two elements
        ("30101", "se01.example.org", "webdav", "OUTAGE"),
        ("30102", "se02.example.org", "webdav", "WARNING"),
        ("30103", "se02.example.org", "webdav", "OUTAGE"),  # future
        ("30104", "ce01.example.org", "ARC-CE", "OUTAGE"),
        ("30105", "se03.example.org", "XRootD", "OUTAGE"),  # SE03.Example.ORG in the document
    ]
    dt = next(d for d in page.downtimes if d.id == "30101")
    assert (dt.start, dt.end) == (NOW - H, NOW + 2 * H)
    assert (dt.classification, dt.site) == ("SCHEDULED", "EXAMPLE-T2")
    assert dt.description == "dCache upgrade 9.2 -> 10.2, all doors closed"
    assert dt.portal_url == "https://goc.egi.eu/portal/index.php?Page_Type=Downtime&id=30101"


@pytest.mark.parametrize(
    ("name", "count", "next_href"),
    [
        (
            "nested_page1.xml",
            3,
            "/gocdbpi/public/?method=get_downtime_nested_services&topentity=EXAMPLE-T2&next_cursor=30102",
        ),
        (
            "nested_page2.xml",
            2,
            "/gocdbpi/public/?method=get_downtime_nested_services&topentity=EXAMPLE-T2&next_cursor=30103",
        ),
        ("nested_page3.xml", 0, ""),  # the empty last page of cursor paging has no next link
    ],
)
def test_nested_pages(name: str, count: int, next_href: str) -> None:
    page = parse_page(data(name))
    assert (len(page.downtimes), page.next_href) == (count, next_href)


def test_nested_services_each_become_a_row() -> None:
    page = parse_page(data("nested_page2.xml"))
    assert sorted((d.id, d.hostname, d.service_type, d.site) for d in page.downtimes) == [
        ("30103", "ce01.example.org", "ARC-CE", "EXAMPLE-T2"),
        ("30103", "se02.example.org", "webdav", "EXAMPLE-T2"),
    ]


def test_damaged_records_are_left_out_with_a_reason() -> None:
    page = parse_page(data("broken_records.xml"))
    (good,) = page.downtimes
    assert good.id == "40001" and good.hostname == "se01.example.org"  # the trailing dot goes
    assert good.severity == "OUTAGE"  # "outage": case does not matter
    assert (good.start, good.end) == (NOW + 10 * H, NOW + 12.5 * H)  # FORMATED_* dates are UTC
    assert good.portal_url == ""  # the old PI's #GOCDB_BASE_PORTAL_URL# placeholder is no link
    assert good.description == "Tape library maintenance"
    assert page.skipped == (
        "downtime 40002: no readable START_DATE/END_DATE",
        "downtime 40003: unknown SEVERITY 'MAYBE'",
        "downtime 40004: ends before it starts",
        "a DOWNTIME without a usable ID attribute",
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (data("error.xml"), "GOCDB answered an error: Unsupported parameter: topentityy"),
        (data("malformed.xml"), "malformed XML (expected '>', line 34"),
        (data("dtd.xml"), "the document has a DTD (refused)"),
        (b"", "malformed XML"),
        (b"\xff\xfe\x00<<", "malformed XML"),
        (b"<html><body>Service Unavailable</body></html>", "not a get_downtime answer: the root element is <html>"),
        (b'<results xmlns="urn:x"/>', "not a get_downtime answer"),
    ],
)
def test_unusable_documents_are_clear_errors(body: bytes, message: str) -> None:
    with pytest.raises(GocdbError) as info:
        parse_page(body)
    assert str(info.value).startswith(message), str(info.value)


def test_an_empty_results_document_is_no_downtime() -> None:
    assert parse_page(b'<?xml version="1.0" encoding="UTF-8"?>\n<results/>\n').downtimes == ()


@pytest.mark.parametrize(
    ("href", "expected"),
    [
        (
            "/gocdbpi/public/?method=get_downtime&next_cursor=9",
            "https://goc.example.org/gocdbpi/public/?method=get_downtime&next_cursor=9",
        ),
        (
            "https://GOC.example.org/gocdbpi/public/?next_cursor=9",
            "https://GOC.example.org/gocdbpi/public/?next_cursor=9",
        ),
        ("https://evil.example.net/gocdbpi/public/?next_cursor=9", None),
        ("http://goc.example.org/gocdbpi/public/?next_cursor=9", None),  # no downgrade to http
    ],
)
def test_next_links_stay_on_the_server(href: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(GocdbError, match="leads to another server"):
            next_page_url(URL, href)
    else:
        assert next_page_url(URL, href) == expected


# --- the mapping --------------------------------------------------------------------------------


def test_endpoint_host_names() -> None:
    assert [endpoint_hostnames(ep) for ep in ENDPOINTS] == [
        ("se01.example.org",),  # the URL's host, lower case
        ("se02.example.org",),
        ("se03.example.org",),  # gocdb_hostname replaces the URL's host
        (),  # local: no URL
        (),  # gocdb_hostname = none
    ]


FLAT = parse_page(data("site_flat.xml")).downtimes
AT_NOW = {"gocdb-30101-se01": "all", "gocdb-30102-se02": "none", "gocdb-30103-se02": "all", "gocdb-30105-ceph": "all"}


@pytest.mark.parametrize(
    ("settings", "now", "expected", "unmatched"),
    [
        (
            {},
            NOW,
            AT_NOW,
            ("ce01.example.org",),
        ),
        (
            {"warning": "write"},
            NOW,
            {**AT_NOW, "gocdb-30102-se02": "write"},
            ("ce01.example.org",),
        ),
        (
            {"outage": "read"},
            NOW,
            {k: "none" if v == "none" else "read" for k, v in AT_NOW.items()},
            ("ce01.example.org",),
        ),
        (
            {"service_types": ("webdav", "xrootd")},  # matched case-insensitively; the CE is not asked for
            NOW,
            AT_NOW,
            (),
        ),
        ({"service_types": ("srm",)}, NOW, {"gocdb-30101-se01": "all"}, ()),
        ({}, NOW + 3 * H, {"gocdb-30103-se02": "all", "gocdb-30105-ceph": "all"}, ("ce01.example.org",)),
        ({}, NOW + 10 * D, {}, ()),  # everything over: nothing left
        ({}, NOW - 30 * D, {  # before any of them: the past one (30090) is still to come
            "gocdb-30090-se01": "all", "gocdb-30101-se01": "all", "gocdb-30102-se02": "none",
            "gocdb-30103-se02": "all", "gocdb-30105-ceph": "all"}, ("ce01.example.org",)),
    ],
)  # fmt: skip
def test_mapping(settings: dict[str, Any], now: float, expected: dict[str, str], unmatched: tuple[str, ...]) -> None:
    mapped = to_declared(FLAT, ENDPOINTS, GocdbConfig(**settings), now)
    assert {d.id: d.downtime.scope for d in mapped.declared} == expected
    assert mapped.unmatched_hosts == unmatched
    assert all(d.origin == "gocdb" and d.id.endswith("-" + d.endpoint) for d in mapped.declared)


def test_a_mapped_downtime_says_where_it_comes_from() -> None:
    mapped = to_declared(FLAT, ENDPOINTS, GocdbConfig(), NOW)
    d = next(d for d in mapped.declared if d.id == "gocdb-30101-se01")
    assert (d.downtime.start, d.downtime.end) == (NOW - H, NOW + 2 * H)
    assert d.downtime.reason.startswith("GOCDB OUTAGE 30101 (scheduled, se01.example.org ")
    assert d.downtime.reason.endswith("): dCache upgrade 9.2 -> 10.2, all doors closed")
    assert d.link == "https://goc.egi.eu/portal/index.php?Page_Type=Downtime&id=30101"
    assert d.to_json(NOW)["origin"] == "gocdb" and d.to_json(NOW)["link"] == d.link


# --- the book applies them on time --------------------------------------------------------------


def test_gocdb_downtimes_start_and_end_on_time() -> None:
    clock = Clock()
    clock.advance(NOW - 2 * H)
    changes: list[frozenset[str]] = []
    book = DowntimeBook({}, clock, on_change=changes.append)
    book.startService()
    book.replace_source("gocdb", list(to_declared(FLAT, ENDPOINTS, GocdbConfig(), clock.seconds()).declared))
    assert book.read_blocked == frozenset() and book.blocks("se01", "write", clock.seconds()) == ""
    clock.advance(H + 0.01)  # 30101 starts (OUTAGE -> all)
    assert book.read_blocked == frozenset({"se01"})
    assert book.blocks("se01", "write", clock.seconds()).startswith("in a planned downtime until 2026-01-01T02:00:00Z")
    clock.advance(H)  # NOW: the WARNING on se02 is on, and stops nothing
    listed = {d["id"]: d for d in book.to_json()}
    assert listed["gocdb-30102-se02"]["active"] and listed["gocdb-30102-se02"]["scope"] == "none"
    assert book.blocks("se02", "read", clock.seconds()) == book.blocks("se02", "write", clock.seconds()) == ""
    clock.advance(2 * H)  # 30101 ends
    assert book.read_blocked == frozenset()
    clock.advance(D - 2 * H)  # 30103 starts on se02
    assert book.read_blocked == frozenset({"se02"})
    assert frozenset({"se01"}) in changes and changes[-1] == frozenset({"se02"})  # the health registry's view
    book.replace_source("gocdb", [])  # GOCDB no longer lists it
    assert book.read_blocked == frozenset() and not [d for d in book.to_json() if d["origin"] == "gocdb"]
    book.stopService()


def test_a_source_only_replaces_its_own_downtimes() -> None:
    clock = Clock()
    clock.advance(NOW)
    config_downtime = to_declared(FLAT, ENDPOINTS, GocdbConfig(), NOW).declared[0].downtime
    book = DowntimeBook({"se02": (config_downtime,)}, clock)
    book.startService()
    book.replace_source("gocdb", list(to_declared(FLAT, ENDPOINTS, GocdbConfig(), NOW).declared))
    book.replace_source("gocdb", [])
    assert [d["origin"] for d in book.to_json()] == ["config"]
    for origin, declared in [
        ("admin", []),
        ("config", []),
        ("gocdb", [Declared("x", "se01", config_downtime, "admin")]),
    ]:
        with pytest.raises(ValueError):
            book.replace_source(origin, declared)
    book.stopService()


# --- the refresh service, with a Clock and a scripted source ------------------------------------


class Scripted:
    """The answers of an imagined GOCDB, for in-process service tests with a Clock (the real fetcher
    is tested further down against a real HTTP server)."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def __call__(self, url: str, settings: GocdbConfig) -> Deferred[bytes]:
        self.asked.append(url)
        answer = self.answers[url]
        if isinstance(answer, Deferred):
            return answer
        return fail(answer) if isinstance(answer, Exception) else succeed(answer)


class Rig:
    def __init__(self, answers: dict[str, Any], **settings: Any) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.book = DowntimeBook({}, self.clock)
        self.book.startService()
        self.config = Config(endpoints=ENDPOINTS, gocdb=GocdbConfig(**{"urls": (URL,), "interval": 600, **settings}))
        self.fetch = Scripted(answers)
        self.service = GocdbService(
            self.book, clock=self.clock, config=self.config, fetch=self.fetch, to_thread=maybeDeferred
        )

    def gocdb_ids(self) -> list[str]:
        return sorted(d["id"] for d in self.book.to_json() if d["origin"] == "gocdb")

    def source(self, url: str = URL) -> dict[str, Any]:
        return self.service.sources[url].to_json()


@pytest.fixture()
def logged() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observer)


def gocdb_lines(events: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(e) for e in events if e.get("log_namespace") == "fedd.gocdb"]


def test_errors_keep_the_last_good_set(logged: list[dict[str, Any]]) -> None:
    rig = Rig({URL: data("site_flat.xml")}, interval=60)  # all within the WARNING (30 min)
    rig.service.startService()
    good = ["gocdb-30101-se01", "gocdb-30102-se02", "gocdb-30103-se02", "gocdb-30105-ceph"]
    assert rig.gocdb_ids() == good
    src = rig.source()
    assert (src["ok"], src["downtimes"], src["fetched_at"], src["last_error"]) == (True, 7, NOW, None)
    assert src["unmatched_hosts"] == ["ce01.example.org"] and rig.service.to_json()["applied"] == 4
    for answer, error in [
        (data("malformed.xml"), "malformed XML (expected '>', line 34"),
        (GocdbError("HTTP 500"), "HTTP 500"),
        (GocdbError("answer larger than 65536 bytes ([gocdb] max_bytes)"), "answer larger than 65536 bytes"),
        (data("error.xml"), "GOCDB answered an error: Unsupported parameter"),
        (b"<html>maintenance</html>", "not a get_downtime answer"),
        (data("dtd.xml"), "the document has a DTD"),
    ]:
        rig.fetch.answers[URL] = answer
        rig.clock.advance(60)
        src = rig.source()
        assert src["last_error"].startswith(error), src
        assert (src["ok"], src["downtimes"], src["fetched_at"]) == (False, 7, NOW), src
        assert src["last_error_at"] == rig.clock.seconds()
        assert rig.gocdb_ids() == good  # the last good set stays
    assert rig.source()["errors"] == 6 and len(rig.fetch.asked) == 7
    lines = gocdb_lines(logged)
    assert sum("keeping the last good set of 7 downtime(s) from 2026-01-01T00:00:00Z" in line for line in lines) == 6
    assert not [e for e in logged if "log_failure" in e]  # expected faults: one line each, no traceback
    rig.fetch.answers[URL] = data("site_flat.xml")
    rig.clock.advance(60)
    assert rig.source()["ok"] and rig.source()["last_error"] is None and rig.gocdb_ids() == good
    rig.service.stopService()


def test_a_bug_in_one_refresh_does_not_end_the_loop(logged: list[dict[str, Any]]) -> None:
    rig = Rig({URL: data("site_flat.xml")})
    rig.service.startService()
    rig.fetch.answers[URL] = ZeroDivisionError("a bug")
    rig.clock.advance(600)
    assert rig.source()["last_error"] == "ZeroDivisionError: a bug" and len(rig.gocdb_ids()) == 4
    assert [e for e in logged if "log_failure" in e]  # a bug is logged with its traceback
    rig.fetch.answers[URL] = data("site_flat.xml")
    rig.clock.advance(600)
    assert rig.source()["ok"] and len(rig.fetch.asked) == 3
    rig.service.stopService()


def test_the_first_read_failing_leaves_no_gocdb_downtimes() -> None:
    rig = Rig({URL: GocdbError("cannot connect: Connection refused")})
    rig.service.startService()
    src = rig.source()
    assert (src["ok"], src["downtimes"], src["last_error"]) == (False, None, "cannot connect: Connection refused")
    assert rig.gocdb_ids() == []
    rig.service.stopService()


def test_every_page_is_read() -> None:
    base = "https://goc.example.org/gocdbpi/public/?method=get_downtime_nested_services&topentity=EXAMPLE-T2"
    answers = {
        base + "&next_cursor=0": data("nested_page1.xml"),
        base + "&next_cursor=30102": data("nested_page2.xml"),
        base + "&next_cursor=30103": data("nested_page3.xml"),
    }
    rig = Rig(answers, urls=(base + "&next_cursor=0",))
    rig.service.startService()
    src = rig.source(base + "&next_cursor=0")
    assert (src["ok"], src["pages"], src["downtimes"]) == (True, 3, 5)
    assert rig.gocdb_ids() == ["gocdb-30101-se01", "gocdb-30102-se02", "gocdb-30103-se02"]
    rig.service.stopService()
    rig = Rig(answers, urls=(base + "&next_cursor=0",), max_pages=2)
    rig.service.startService()
    assert rig.source(base + "&next_cursor=0")["last_error"] == "more than 2 pages ([gocdb] max_pages)"
    rig.service.stopService()
    rig = Rig({URL: data("nested_page1.xml").replace(b'href="/gocdbpi', b'href="https://evil.example.net/gocdbpi')})
    rig.service.startService()
    assert "the next page link leads to another server" in rig.source()["last_error"]
    assert rig.fetch.asked == [URL]
    rig.service.stopService()


def test_reload_applies_at_the_next_refresh() -> None:
    rig = Rig({URL: data("site_flat.xml")})
    rig.service.startService()
    assert rig.service.next_refresh == NOW + 600
    # a new interval, an endpoint that now answers to the CE's name, WARNINGs applied to writes
    endpoints = (
        *ENDPOINTS[:3],
        EndpointConfig(id="scratch", kind="local", path="/tmp", gocdb_hostnames=("ce01.example.org",)),
    )
    rig.service.reconfigure(Config(endpoints=endpoints, gocdb=GocdbConfig(urls=(URL,), interval=60, warning="write")))
    rig.clock.advance(600)
    assert rig.service.next_refresh == NOW + 660
    scopes = {d["id"]: d["scope"] for d in rig.book.to_json() if d["origin"] == "gocdb"}
    assert scopes["gocdb-30104-scratch"] == "all" and scopes["gocdb-30102-se02"] == "write"
    rig.service.reconfigure(Config(endpoints=endpoints, gocdb=GocdbConfig(urls=(), interval=60)))  # [gocdb] url removed
    rig.clock.advance(60)
    assert rig.gocdb_ids() == [] and rig.service.sources == {}
    rig.service.stopService()


def test_stopping_cancels_a_read_in_flight() -> None:
    pending: Deferred[bytes] = Deferred()
    rig = Rig({URL: pending})
    rig.service.startService()
    rig.service.stopService()
    assert pending.called  # cancelled
    assert rig.service.sources[URL].last_error is None and rig.clock.getDelayedCalls() == []


def test_config_keys() -> None:
    config = parse_config(
        "[gocdb]\nurl = https://goc.egi.eu/gocdbpi/public/?method=get_downtime&topentity=EXAMPLE-T2\n"
        "url = file:///var/lib/fedd/gocdb-copy.xml\ninterval = 120\ntimeout = 10\nmax_bytes = 4MiB\n"
        "max_pages = 5\nservice_types = webdav, SRM xrootd\noutage = read\nwarning = write\n"
        "[endpoint se01]\nkind = dav\nurl = https://se01.example.org:2880\n"
        "gocdb_hostname = SE01.example.org.\ngocdb_hostname = se01-door.example.org\n"
    )
    assert config.gocdb == GocdbConfig(
        urls=(
            "https://goc.egi.eu/gocdbpi/public/?method=get_downtime&topentity=EXAMPLE-T2",
            "file:///var/lib/fedd/gocdb-copy.xml",
        ),
        interval=120,
        timeout=10,
        max_bytes=4 << 20,
        max_pages=5,
        service_types=("webdav", "srm", "xrootd"),
        outage="read",
        warning="write",
    )
    assert config.endpoints[0].gocdb_hostnames == ("se01.example.org", "se01-door.example.org")
    bad = (
        "[gocdb]\nurl = ftp://goc.egi.eu/x\nurl = file://relative/x\ninterval = 0\nmax_bytes = 0\n"
        "warning = maybe\noutage = none\nservice_types = web/dav\n"
        "[endpoint se01]\nkind = dav\nurl = https://se01.example.org\ngocdb_hostname = se01 example\n"
        "[endpoint se02]\nkind = dav\nurl = https://se02.example.org\ngocdb_hostname = none\ngocdb_hostname = se02\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_config(bad)
    errors = info.value.errors
    for line, text in [
        (2, "url: expected an http(s):// URL"),
        (3, "url: expected file:///absolute/path"),
        (4, "interval: expected a positive number"),
        (5, "max_bytes: expected a size above 0"),
        (6, "warning: expected one of none, write, read, all"),
        (7, "outage: expected one of all, read, write"),
        (8, "service_types: expected GOCDB service types"),
        (12, "gocdb_hostname: expected a host name"),
    ]:
        assert any(e.startswith(f"<string>:{line}: {text}") for e in errors), (line, errors)
    assert any("gocdb_hostname = none cannot go with other names" in e for e in errors), errors
    with pytest.raises(ConfigError, match=r"\[gocdb\] needs url"):
        parse_config("[gocdb]\ninterval = 60\n[endpoint a]\nkind = dav\nurl = http://a\n")


# --- the real fetcher against a real HTTP server on loopback ------------------------------------


def shifted(body: bytes, delta: float) -> bytes:
    """A sample document moved in time by `delta` seconds (epoch and formatted dates alike)."""

    def epoch(m: re.Match[bytes]) -> bytes:
        return m.group(1) + str(int(m.group(2)) + int(delta)).encode() + m.group(3)

    def formatted(m: re.Match[bytes]) -> bytes:
        moment = datetime.strptime(m.group(2).decode(), "%Y-%m-%d %H:%M").replace(tzinfo=UTC).timestamp()
        return m.group(1) + datetime.fromtimestamp(moment + delta, UTC).strftime("%Y-%m-%d %H:%M").encode() + m.group(3)

    body = re.sub(rb"(<(?:START|END|INSERT)_DATE>)([0-9]+)(<)", epoch, body)
    return re.sub(rb"(<FORMATED_(?:START|END)_DATE>)([^<]+)(<)", formatted, body)


def huge_document(size: int) -> bytes:
    """A well-formed get_downtime answer of at least `size` bytes (a whole grid's worth of rows)."""
    row = data("site_flat.xml").split(b"<results>\n", 1)[1].split(b"</results>", 1)[0]
    rows = [row] * (size // len(row) + 1)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n<results>\n' + b"".join(rows) + b"</results>\n"


class GocdbServer:
    """GOCDB's PI on loopback: answers each path with what the test sets; can stall an answer."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, tuple[int, bytes, dict[str, str]]] = {}
        self.stall = threading.Event()  # set: answers wait until `release` (bounded)
        self.release = threading.Event()
        self.hits = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                server.hits += 1
                if server.stall.is_set():
                    server.release.wait(20)
                code, body, headers = server.routes.get(self.path, (404, b"<error>no such route</error>", {}))
                self.send_response(code)
                self.send_header("Content-Type", "text/xml; charset=UTF-8")
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # fedd hanging up on an oversized answer is expected here

        self.httpd = Server(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.scheme = "https" if tls is not None else "http"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="gocdb")
        self.thread.start()

    def url(self, path: str = "/gocdbpi/public/?method=get_downtime&topentity=EXAMPLE-T2") -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def answer(
        self,
        code: int,
        body: bytes,
        path: str = "/gocdbpi/public/?method=get_downtime&topentity=EXAMPLE-T2",
        **headers: str,
    ) -> None:
        self.routes[path] = (code, body, headers)

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def gocdb() -> Iterator[GocdbServer]:
    server = GocdbServer()
    try:
        yield server
    finally:
        server.close()


class RealRig:
    """GocdbService with the real fetcher on the global reactor (running in a thread)."""

    def __init__(self, urls: tuple[str, ...], **settings: Any) -> None:
        from tests.reactor import the_reactor

        reactor = the_reactor()

        def to_thread(work: Any) -> Any:
            return deferToThreadPool(reactor, reactor.getThreadPool(), work)

        self.book = DowntimeBook({}, reactor)  # not started: it only keeps what it is given here
        self.config = Config(endpoints=ENDPOINTS, gocdb=GocdbConfig(urls=urls, interval=3600, **settings))
        self.fetcher = Fetcher(reactor, to_thread)
        self.service = GocdbService(
            self.book, clock=reactor, config=self.config, fetch=self.fetcher, to_thread=to_thread
        )

    def refresh(self) -> None:
        from tests.reactor import call

        call(self.service.refresh)

    def source(self, url: str) -> dict[str, Any]:
        return self.service.sources[url].to_json()

    def gocdb_ids(self) -> list[str]:
        return sorted(d.id for d in self.book.all if d.origin == "gocdb")

    def close(self) -> None:
        from tests.reactor import call

        call(self.fetcher.close)


def test_real_http_good_then_malformed_huge_500_stalled_redirect(
    gocdb: GocdbServer, logged: list[dict[str, Any]]
) -> None:
    now = datetime.now(UTC).timestamp()
    good = shifted(data("site_flat.xml"), now - NOW)
    url = gocdb.url()
    rig = RealRig((url,), timeout=1.0, max_bytes=64 * 1024)
    try:
        gocdb.answer(200, good)
        rig.refresh()
        assert rig.source(url)["ok"] and rig.source(url)["downtimes"] == 7
        expected = ["gocdb-30101-se01", "gocdb-30102-se02", "gocdb-30103-se02", "gocdb-30105-ceph"]
        assert rig.gocdb_ids() == expected
        big = huge_document(1 << 20)
        assert len(big) > 1 << 20 and parse_page(big).downtimes  # well-formed, only too large
        steps: list[tuple[Callable[[], object], str]] = [
            (lambda: gocdb.answer(200, data("malformed.xml")), "malformed XML (expected '>', line 34"),
            (lambda: gocdb.answer(200, big), "answer larger than 65536 bytes ([gocdb] max_bytes)"),
            (lambda: gocdb.answer(500, b"<html>Internal Server Error</html>"), "HTTP 500"),
            (lambda: gocdb.answer(200, data("error.xml")), "GOCDB answered an error: Unsupported parameter"),
            (
                lambda: gocdb.answer(301, b"", Location="https://goc.egi.eu/"),
                "HTTP 301 (fedd follows no redirects: give the final URL)",
            ),
            (lambda: gocdb.stall.set(), "GET timed out after 1s"),
        ]
        for step, error in steps:
            step()
            rig.refresh()
            src = rig.source(url)
            assert src["last_error"] == error or src["last_error"].startswith(error), (error, src)
            assert (src["ok"], src["downtimes"]) == (False, 7)
            assert rig.gocdb_ids() == expected  # the last good set is kept
        gocdb.stall.clear()
        gocdb.release.set()
        gocdb.answer(200, good)
        rig.refresh()
        assert rig.source(url)["ok"] and rig.source(url)["errors"] == 6
        # a second source that cannot be reached does not disturb the first
        dead = f"http://127.0.0.1:{free_port()}/gocdbpi/public/?method=get_downtime"
        rig.service.reconfigure(Config(endpoints=ENDPOINTS, gocdb=GocdbConfig(urls=(url, dead), timeout=1.0)))
        rig.refresh()
        assert rig.source(dead)["last_error"].startswith("cannot connect")
        assert rig.source(url)["ok"] and rig.gocdb_ids() == expected
    finally:
        rig.close()
    lines = gocdb_lines(logged)
    print("\n".join(lines))
    assert sum("keeping the last good set of 7 downtime(s)" in line for line in lines) == 6
    assert any("no GOCDB downtimes from it yet" in line and "cannot connect" in line for line in lines)
    assert not [e for e in logged if "log_failure" in e]


def test_file_sources_are_read_in_the_thread_pool(tmp_path: Path) -> None:
    good = tmp_path / "gocdb.xml"
    good.write_bytes(shifted(data("site_flat.xml"), datetime.now(UTC).timestamp() - NOW))
    big = tmp_path / "huge.xml"
    big.write_bytes(huge_document(200_000))
    urls = (f"file://{good}", f"file://{big}", f"file://{tmp_path / 'missing.xml'}")
    rig = RealRig(urls, max_bytes=100_000)
    try:
        rig.refresh()
        assert rig.source(urls[0])["ok"] and rig.source(urls[0])["downtimes"] == 7
        assert rig.source(urls[1])["last_error"] == "answer larger than 100000 bytes ([gocdb] max_bytes)"
        assert rig.source(urls[2])["last_error"] == f"cannot read {tmp_path / 'missing.xml'}: No such file or directory"
        assert len(rig.gocdb_ids()) == 4
    finally:
        rig.close()


@pytest.fixture()
def tls_gocdb(tmp_path: Path) -> Iterator[tuple[GocdbServer, Path]]:
    key, cert = tmp_path / "gocdb.key", tmp_path / "gocdb.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = GocdbServer(tls=context)
    try:
        yield server, cert
    finally:
        server.close()


def test_tls_is_verified_by_default_and_ca_file_trusts_a_private_ca(tls_gocdb: tuple[GocdbServer, Path]) -> None:
    server, cert = tls_gocdb
    server.answer(200, shifted(data("site_flat.xml"), datetime.now(UTC).timestamp() - NOW))
    url = server.url()
    rig = RealRig((url,), timeout=5.0)
    try:
        rig.refresh()
        error = rig.source(url)["last_error"]
        assert (
            error
            == "connection lost or malformed HTTP answer (is the server's certificate trusted? see [gocdb] ca_file)"
        )
        assert rig.gocdb_ids() == []
    finally:
        rig.close()
    rig = RealRig((url,), timeout=5.0, ca_file=str(cert))
    try:
        rig.refresh()
        assert rig.source(url)["ok"] and len(rig.gocdb_ids()) == 4
    finally:
        rig.close()


# --- end to end: twistd fedd with two Apache mod_dav endpoints ------------------------------------


def flat_document(rows: list[tuple[int, str, str, str, float, float, str]]) -> bytes:
    """A get_downtime answer in GOCDB's flat form: (id, host, service type, severity, start, end, text)."""

    def day(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M")

    parts = ['<?xml version="1.0" encoding="UTF-8"?>\n<results>\n']
    for ident, host, stype, severity, start, end, text in rows:
        parts.append(
            f'  <DOWNTIME ID="{ident}" PRIMARY_KEY="{ident}G0" CLASSIFICATION="SCHEDULED">\n'
            f"    <PRIMARY_KEY>{ident}G0</PRIMARY_KEY>\n    <HOSTNAME>{host}</HOSTNAME>\n"
            f"    <SERVICE_TYPE>{stype}</SERVICE_TYPE>\n    <ENDPOINT>{host}{stype}</ENDPOINT>\n"
            "    <HOSTED_BY>EXAMPLE-T2</HOSTED_BY>\n"
            f"    <GOCDB_PORTAL_URL>https://goc.egi.eu/portal/index.php?Page_Type=Downtime&amp;id={ident}"
            "</GOCDB_PORTAL_URL>\n    <AFFECTED_ENDPOINTS/>\n"
            f"    <SEVERITY>{severity}</SEVERITY>\n    <DESCRIPTION>{text}</DESCRIPTION>\n"
            f"    <INSERT_DATE>{int(start) - 3600}</INSERT_DATE>\n"
            f"    <START_DATE>{int(start)}</START_DATE>\n    <END_DATE>{int(end)}</END_DATE>\n"
            f"    <FORMATED_START_DATE>{day(start)}</FORMATED_START_DATE>\n"
            f"    <FORMATED_END_DATE>{day(end)}</FORMATED_END_DATE>\n  </DOWNTIME>\n"
        )
    parts.append("</results>\n")
    return "".join(parts).encode()


def request(
    fed: Fedd, method: str, target: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", fed.port, timeout=30)
    try:
        conn.request(method, target, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_fedd_applies_a_gocdb_outage(dav1: Any, dav2: Any, gocdb: GocdbServer, tmp_path: Path) -> None:
    for dav, names in ((dav1, ("only-a.txt", "both.txt")), (dav2, ("both.txt",))):
        folder = Path(dav.docroot) / "gocdb-e2e"
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            (folder / name).write_text(f"{name}\n")
    now = datetime.now(UTC).timestamp()
    outage = flat_document(
        [
            (71001, "se-a.example.org", "webdav", "OUTAGE", now - 60, now + 3600, "Disk server replacement"),
            (71002, "SE-B.example.org", "webdav", "WARNING", now - 60, now + 3600, "At risk: network work"),
            (71003, "ce99.example.org", "ARC-CE", "OUTAGE", now - 60, now + 3600, "CE drained"),
        ]
    )
    gocdb.answer(200, outage)
    port = free_port()
    conf = f"""
[server]
listen = tcp:{port}:interface=127.0.0.1
[locate]
wait_budget = 3
negative_ttl = 0
positive_ttl = 0
[health]
interval = 1
[checksums]
workers = 0
database = {tmp_path / "sums.sqlite"}
[gocdb]
url = {gocdb.url()}
interval = 0.5
timeout = 2
max_bytes = 256K
[endpoint dav-a]
kind = dav
url = {dav1.url}
map = /grid /gocdb-e2e
gocdb_hostname = se-a.example.org
[endpoint dav-b]
kind = dav
url = {dav2.url}
map = /grid /gocdb-e2e
gocdb_hostname = se-b.example.org
"""
    fed = start_fedd(tmp_path / "fedd", conf, port)
    sample: list[str] = []
    try:

        def gocdb_downtimes() -> dict[str, dict[str, Any]]:
            return {d["id"]: d for d in fed.status()["downtimes"] if d["origin"] == "gocdb"}

        # (with workers, one that answers takes worker 0's GOCDB result within 0.25 s: one read holds both)
        listed = wait_for(
            gocdb_downtimes,
            20,
            "the GOCDB outage in fedd",
            until=lambda d: {"gocdb-71001-dav-a", "gocdb-71002-dav-b"} <= set(d),
        )
        assert listed["gocdb-71001-dav-a"]["active"] and listed["gocdb-71001-dav-a"]["scope"] == "all"
        assert listed["gocdb-71002-dav-b"]["scope"] == "none"  # a WARNING: shown, not applied
        assert listed["gocdb-71001-dav-a"]["link"].endswith("Page_Type=Downtime&id=71001")

        def reads() -> tuple[tuple[int, dict[str, str]], tuple[int, dict[str, str]]]:
            only = request(fed, "GET", "/grid/only-a.txt")
            both = request(fed, "GET", "/grid/both.txt")
            return (only[0], only[1]), (both[0], both[1])

        # with [server] workers, worker 0 reads GOCDB and the others apply its set within 0.25 s:
        # the status may come from worker 0 a moment before a read reaches another worker
        wait_for(lambda: reads()[0][0] == 503, 2, "every worker applying the outage")
        (code, hdrs), (code2, hdrs2) = reads()
        sample.append(f"GOCDB OUTAGE on se-a: GET only-a.txt -> {code} Retry-After: {hdrs.get('retry-after')}")
        sample.append(f"GOCDB OUTAGE on se-a: GET both.txt -> {code2} Location: {hdrs2.get('location')}")
        assert code == 503 and int(hdrs["retry-after"]) >= 1 and "dav-a" in hdrs["fedd-missing-endpoints"]
        assert code2 == 302 and hdrs2["location"].startswith(dav2.url), hdrs2
        # (with workers, a follower shows worker 0's GOCDB section within 0.25 s)
        status = wait_for(lambda: fed.status().get("gocdb"), 5, "the GOCDB section of every worker's status")
        src = status["sources"][0]
        assert (src["ok"], src["downtimes"], src["unmatched_hosts"]) == (True, 3, ["ce99.example.org"])
        assert status["applied"] == 2 and src["fetched_at"] > now - 5
        page = request(fed, "GET", "/.well-known/fedd/status.html")[2].decode()
        assert ">gocdb</a>" in page and "<h2>GOCDB</h2>" in page and "none (shown only)" in page
        assert "ce99.example.org" in page
        # broken answers: the error shows, the downtime stays
        for answer, error in [
            ((200, data("malformed.xml")), "malformed XML"),
            ((200, huge_document(300_000)), "answer larger than 256000 bytes"),
            ((500, b"<html>Internal Server Error</html>"), "HTTP 500"),
        ]:
            gocdb.answer(*answer)

            def reported(e: str = error) -> bool:
                sources = (fed.status().get("gocdb") or {}).get("sources") or [{}]
                return bool((sources[0].get("last_error") or "").startswith(e))

            wait_for(reported, 20, error)
            (code, _), (code2, _) = reads()
            sample.append(f"GOCDB answering {error!r}: only-a.txt -> {code}, both.txt -> {code2}")
            assert (code, code2) == (503, 302) and "gocdb-71001-dav-a" in gocdb_downtimes()
        page = request(fed, "GET", "/.well-known/fedd/status.html")[2].decode()
        assert "HTTP 500" in page
        # GOCDB no longer lists the outage (ended early): fedd lifts it at the next refresh
        gocdb.answer(200, flat_document([]))
        wait_for(lambda: not gocdb_downtimes(), 20, "the GOCDB outage lifted")
        wait_for(lambda: reads()[0][0] == 302, 2, "every worker lifting the outage")
        status_a = request(fed, "GET", "/grid/only-a.txt")
        sample.append(f"GOCDB lists nothing: only-a.txt -> {status_a[0]} Location: {status_a[1].get('location')}")
        assert status_a[0] == 302 and status_a[1]["location"].startswith(dav1.url)
        sample.append("status gocdb: " + json.dumps(fed.status()["gocdb"]["sources"][0], sort_keys=True))
    finally:
        fed.stop()
    log = fed.log_text()
    assert "Traceback" not in log
    lines = [line for line in log.splitlines() if "GOCDB" in line]
    assert any("malformed XML" in line and "keeping the last good set of 3 downtime(s)" in line for line in lines)
    assert any("answer larger than 256000 bytes ([gocdb] max_bytes)" in line for line in lines)
    assert any("HTTP 500" in line for line in lines)
    print("\n".join(sample + lines))


def test_status_page_shows_sources_and_gocdb_state() -> None:
    from fedd.web.statuspage import render_status_page

    declared = to_declared(FLAT, ENDPOINTS, GocdbConfig(), NOW).declared
    status = {
        "fedd": {"now": NOW},
        "downtimes": [d.to_json(NOW) for d in declared]
        + [{**declared[0].to_json(NOW), "id": "evil", "link": "javascript:alert(1)", "origin": "<b>x</b>"}],
        "gocdb": {
            "applied": 4,
            "outage": "all",
            "warning": "none",
            "next_refresh": NOW + 300,
            "sources": [
                {
                    "url": URL,
                    "fetched_at": NOW - 600,
                    "downtimes": 7,
                    "pages": 1,
                    "unmatched_hosts": ["ce01.example.org"],
                    "last_error": "HTTP 500 <script>",
                    "last_error_at": NOW - 5,
                }
            ],
        },
    }
    page = render_status_page(status).decode()
    assert page.count('rel="noreferrer">gocdb</a>') == 4
    assert 'href="https://goc.egi.eu/portal/index.php?Page_Type=Downtime&amp;id=30101"' in page
    assert "javascript:" not in page and "&lt;b&gt;x&lt;/b&gt;" in page  # not a link, escaped
    assert "none (shown only)" in page and "<h2>GOCDB</h2>" in page and "ce01.example.org" in page
    assert "OUTAGE → all, WARNING → none" in page and "10 min ago" in page
    assert page.count("HTTP 500 &lt;script&gt;") == 2  # the GOCDB table and the recent errors
    assert "<script>" not in page


def test_worker_0_reads_gocdb_and_the_other_workers_apply_what_it_published(tmp_path: Path) -> None:
    """[server] workers: one reader of GOCDB per host; the others apply its sets and show its status."""
    from fedd.workers.shared import HostShare

    rig = Rig({URL: data("site_flat.xml")}, interval=60)
    rig.service.shared = HostShare(tmp_path, leader=True)
    book = DowntimeBook({}, rig.clock)
    book.startService()
    never = Scripted({})  # a follower that fetched would find no answer here: KeyError
    shared = HostShare(tmp_path, leader=False)
    follower = GocdbService(
        book, clock=rig.clock, config=rig.config, fetch=never, to_thread=maybeDeferred, shared=shared
    )
    follower.startService()
    rig.service.startService()
    rig.clock.advance(0.25)
    ids = sorted(d["id"] for d in book.to_json() if d["origin"] == "gocdb")
    assert ids == rig.gocdb_ids() and len(ids) == 4 and never.asked == []
    assert follower.to_json()["sources"] == rig.service.to_json()["sources"]
    assert follower.to_json()["applied"] == 4 and follower.refreshes == rig.service.refreshes
    rig.fetch.answers[URL] = GocdbError("HTTP 500")  # an error on worker 0: the others show it, keep the set
    rig.clock.advance(60)
    rig.clock.advance(0.25)
    assert follower.to_json()["sources"][0]["last_error"] == "HTTP 500"
    assert sorted(d["id"] for d in book.to_json() if d["origin"] == "gocdb") == ids
    follower.stopService()
    rig.service.stopService()
