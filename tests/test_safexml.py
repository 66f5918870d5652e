"""fedd.safexml: hostile XML (entity expansion, external entities and DTDs) is refused, and the
parser itself expands and reads nothing even before the DOCTYPE check."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from lxml import etree

from fedd.errors import BadRequest
from fedd.safexml import UnsafeXML, parse_untrusted, safe_parser
from fedd.web.xml import parse_propfind

# 10^9 "lol"s once expanded (3 GB): refused in well under a second, memory untouched
LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10) for i in range(1, 10))
    + b']><D:propfind xmlns:D="DAV:"><D:prop><D:displayname>&lol9;</D:displayname></D:prop></D:propfind>'
)


def _secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text("SECRET-MARK-5f1e")
    return path


def _documents(tmp_path: Path) -> dict[str, bytes]:
    secret = _secret(tmp_path).as_uri().encode()
    dtd = tmp_path / "evil.dtd"
    dtd.write_text(f'<!ENTITY leak SYSTEM "{_secret(tmp_path).as_uri()}">')
    body = b'<D:propfind xmlns:D="DAV:"><D:prop><D:displayname>%s</D:displayname></D:prop></D:propfind>'
    return {
        "entity expansion": LAUGHS,
        "external entity": b'<!DOCTYPE x [<!ENTITY e SYSTEM "' + secret + b'">]>' + body % b"&e;",
        "external parameter entity": b'<!DOCTYPE x [<!ENTITY % p SYSTEM "'
        + dtd.as_uri().encode()
        + b'"> %p;]>'
        + body % b"&leak;",
        "external DTD": b'<!DOCTYPE D:propfind SYSTEM "' + dtd.as_uri().encode() + b'">' + body % b"&leak;",
        "network DTD": b'<!DOCTYPE D:propfind SYSTEM "http://127.0.0.1:9/x.dtd">' + body % b"x",
    }


@pytest.mark.parametrize(
    "name", ["entity expansion", "external entity", "external parameter entity", "external DTD", "network DTD"]
)
def test_hostile_documents_are_refused(tmp_path: Path, name: str) -> None:
    doc = _documents(tmp_path)[name]
    started = time.monotonic()
    with pytest.raises(UnsafeXML) as caught:
        parse_untrusted(doc)
    # libxml2 itself stops a billion laughs (amplification limit) before the DOCTYPE check can
    assert caught.value.reason in ("the XML document has a DOCTYPE (refused)", "malformed XML")
    with pytest.raises(BadRequest) as refused:
        parse_propfind(doc)
    assert str(refused.value) == f"unacceptable PROPFIND body: {caught.value.reason}"
    assert time.monotonic() - started < 1.0


SMALL_EXPANSION = b'<!DOCTYPE a [<!ENTITY l "lol"><!ENTITY l2 "&l;&l;&l;">]><a>&l2;</a>'


@pytest.mark.parametrize("name", ["small expansion", "external entity", "external parameter entity", "external DTD"])
def test_the_parser_expands_and_reads_nothing(tmp_path: Path, name: str) -> None:
    """Below the DOCTYPE check: an entity stays a reference, no file is read into the tree."""
    doc = SMALL_EXPANSION if name == "small expansion" else _documents(tmp_path)[name]
    text = etree.tostring(etree.fromstring(doc, safe_parser()))
    assert b"SECRET-MARK" not in text and b"lollol" not in text
    assert len(text) < 400


def test_plain_documents_parse_and_malformed_ones_are_refused() -> None:
    assert parse_untrusted(b"<a><b>x&amp;y</b></a>").findtext("b") == "x&y"
    with pytest.raises(UnsafeXML) as caught:
        parse_untrusted(b"<a>&undefined;</a>")
    assert caught.value.reason == "malformed XML" and "undefined" in str(caught.value)
    with pytest.raises(BadRequest) as refused:
        parse_propfind(b"<a>&undefined;</a>")
    assert "undefined" not in str(refused.value)  # the client's text is not echoed back
