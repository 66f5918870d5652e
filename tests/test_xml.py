"""PROPFIND bodies are untrusted; answers follow RFC 4918; metalink follows RFC 5854."""

from __future__ import annotations

import pytest
from lxml import etree  # parses fedd's own answers here (trusted)

from fedd.endpoints.base import Stat
from fedd.errors import BadRequest
from fedd.web import xml

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<D:propfind xmlns:D="DAV:"><D:prop><D:displayname>&lol3;</D:displayname></D:prop></D:propfind>"""
XXE = b"""<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>
<D:propfind xmlns:D="DAV:"><D:prop><D:displayname>&e;</D:displayname></D:prop></D:propfind>"""


@pytest.mark.parametrize("body", [BILLION_LAUGHS, XXE, b"<not-closed", b"<x/>", b"\xff\xfe"])
def test_hostile_or_bad_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(BadRequest):
        xml.parse_propfind(body)


def test_propfind_modes() -> None:
    assert xml.parse_propfind(b"") == ("allprop", [])
    assert xml.parse_propfind(b'<D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>') == ("allprop", [])
    assert xml.parse_propfind(b'<D:propfind xmlns:D="DAV:"><D:propname/></D:propfind>') == ("propname", [])
    mode, wanted = xml.parse_propfind(
        b'<propfind xmlns="DAV:"><prop><getcontentlength/><quota xmlns="urn:x"/></prop></propfind>'
    )
    assert mode == "prop" and wanted == [("DAV:", "getcontentlength"), ("urn:x", "quota")]


def test_response_for_file_and_collection() -> None:
    body = (
        xml.MULTISTATUS_HEAD
        + xml.response_xml("/atlas/a b", Stat(size=5, mtime=0.0, etag="x"), "allprop", [])
        + xml.response_xml("/atlas", Stat(is_dir=True), "allprop", [])
        + xml.response_xml("/atlas/f", Stat(size=1), "prop", [("DAV:", "getcontentlength"), ("urn:x", "q")])
        + xml.MULTISTATUS_TAIL
    )
    root = etree.fromstring(body.encode())
    responses = root.findall("{DAV:}response")
    assert [r.findtext("{DAV:}href") for r in responses] == ["/atlas/a%20b", "/atlas/", "/atlas/f"]
    first = responses[0]
    assert first.findtext(".//{DAV:}getcontentlength") == "5"
    assert first.findtext(".//{DAV:}getlastmodified") == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert first.find(".//{DAV:}resourcetype/{DAV:}collection") is None
    assert responses[1].find(".//{DAV:}resourcetype/{DAV:}collection") is not None
    assert responses[1].find(".//{DAV:}getcontentlength") is None
    statuses = [p.findtext("{DAV:}status") for p in responses[2].findall("{DAV:}propstat")]
    assert statuses == ["HTTP/1.1 200 OK", "HTTP/1.1 404 Not Found"]


def test_metalink_orders_urls_and_escapes() -> None:
    doc = xml.metalink("/atlas/f&g", [("http://a/x?s=1&t=2", 1), ("http://b/x", 2)], 42, 0.0)
    root = etree.fromstring(doc)
    ns = "{urn:ietf:params:xml:ns:metalink}"
    f = root.find(f"{ns}file")
    assert f is not None and f.get("name") == "f&g"
    assert f.findtext(f"{ns}size") == "42"
    assert [(u.text, u.get("priority")) for u in f.findall(f"{ns}url")] == [
        ("http://a/x?s=1&t=2", "1"),
        ("http://b/x", "2"),
    ]


def test_entity_tags_keep_weak_markers() -> None:
    from fedd.endpoints.base import Stat, etag_value, format_etag
    from fedd.web.xml import response_xml

    assert etag_value('W/"493e0-5f1"') == "W/493e0-5f1"
    assert etag_value('"abc"') == "abc" and etag_value(None) == ""
    assert format_etag(etag_value('W/"493e0-5f1"')) == 'W/"493e0-5f1"'
    assert format_etag(etag_value('"abc"')) == '"abc"'
    body = response_xml("/f", Stat(size=1, etag="W/x"), "prop", [("DAV:", "getetag")])
    assert "<D:getetag>W/&quot;x&quot;</D:getetag>" in body or '<D:getetag>W/"x"</D:getetag>' in body
