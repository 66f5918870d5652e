"""The status page: the pure renderer, content negotiation, authorisation, and a real headless Chromium."""

from __future__ import annotations

import http.client
import json
import socket
import struct
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedd.web.statuspage import render_status_page, state_of, wants_html
from tests.daemon import Fedd, start_fedd, wait_for
from tests.servers import free_port
from tests.test_auth_tokens import AUD, Issuer

BROWSER_SCRIPT = Path(__file__).resolve().parent / "browser" / "statuspage.mjs"
NOW = 1_800_000_000.0


def health(state: str, last_check: float | None, **more: Any) -> dict[str, Any]:
    return {"state": state, "last_check": last_check, "latency_ms": None, "last_error": "", **more}


# --- the pure renderer ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        ("text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8", True),  # Chrome
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", True),  # Firefox
        ("*/*", False),  # curl
        (None, False),
        ("", False),
        ("application/json", False),
        ("application/json, text/html;q=0.5", False),
        ("text/html;q=0.5, application/json", False),
        ("text/html, application/json", False),  # a tie keeps the JSON
        ("text/html;q=0.9, application/json;q=0.4", True),
        ("text/*", True),
        ("text/html;q=0", False),
        ("text/html;q=bogus, */*;q=0.1", False),
    ],
)
def test_wants_html(accept: str | None, html: bool) -> None:
    assert wants_html(accept) is html


@pytest.mark.parametrize(
    ("h", "cls", "label"),
    [
        (health("unknown", None), "s-nodata", "no data"),
        ({}, "s-nodata", "no data"),
        (health("online", NOW), "s-online", "online"),
        (health("offline", NOW), "s-offline", "offline"),
        (health("unknown", NOW, consecutive_failures=2), "s-failing", "failing (2)"),
        (health("unknown", NOW, consecutive_failures=0), "s-unknown", "unknown"),
    ],
)
def test_states(h: dict[str, Any], cls: str, label: str) -> None:
    assert state_of(h) == (cls, label)


def test_empty_or_partial_status_still_renders() -> None:
    for status in ({}, {"endpoints": None, "fedd": None, "events": None, "space": None, "downtimes": None}):
        page = render_status_page(status).decode()
        assert page.startswith("<!DOCTYPE html>") and page.endswith("</html>\n")
        assert "no endpoints" in page and "Downtimes" not in page
    page = render_status_page(
        {
            "endpoints": {"a": {"kind": None, "url": None, "health": None}, "b": None},
            "space": {"a": {"used": None, "total": None, "free": None, "measured": None, "age": None, "stale": True}},
            "events": {"sink": None, "connected": None, "last_error": None},
            "locate": {"local_hits": None, "local_misses": 0, "memcached": {"servers": None}},
            "fedd": {"version": None, "started": None, "now": None},
        }
    ).decode()
    assert page.count('class="state s-nodata"') == 2 and "not measured yet" in page and 'class="stale"' not in page


def test_every_string_is_escaped() -> None:
    evil = '<script>alert("x")</script>'
    status = {
        "fedd": {"version": evil, "started": NOW - 90, "now": NOW},
        "endpoints": {
            evil: {
                "kind": evil,
                "url": f'http://h/"><img src=x onerror=alert(1)>{evil}',
                "health": health("offline", NOW - 5, last_error=evil, last_error_at=NOW - 5),
            }
        },
        "space": {evil: {"error": evil, "source": evil, "stale": False, "age": 3.0, "free": 1, "used": 2, "total": 3}},
        "downtimes": [{"endpoint": evil, "scope": evil, "reason": evil, "start": NOW, "end": NOW + 1, "active": True}],
        "events": {"sink": evil, "last_error": evil, "connected": False},
        "locate": {"memcached": {"servers": {evil: evil}}},
    }
    page = render_status_page(status).decode()
    assert "<script" not in page and "<img" not in page and 'href="http' not in page
    assert page.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;") >= 10
    assert "up 2 min" in page


def test_space_freshness_and_downtimes() -> None:
    status = {
        "fedd": {"now": NOW, "started": NOW - 7200, "version": "1.2.3"},
        "endpoints": {
            "fresh": {
                "kind": "s3",
                "url": "https://s3.example/b",
                "health": health("online", NOW - 2, latency_ms=12.34),
            },
            "old": {"kind": "dav", "url": "https://dav.example/d", "health": health("online", NOW - 2)},
        },
        "space": {
            "fresh": {
                "used": 1 << 30,
                "total": 4 << 40,
                "free": 3 << 40,
                "measured": NOW - 30,
                "age": 30.0,
                "stale": False,
                "error": None,
                "source": "srr",
            },
            "old": {
                "used": 5,
                "total": 10,
                "free": 5,
                "measured": NOW - 7200,
                "age": 7200.0,
                "stale": True,
                "error": "HTTP 500",
                "error_at": NOW - 60,
                "source": "propfind",
            },
        },
        "downtimes": [
            {
                "endpoint": "old",
                "start": NOW - 60,
                "end": NOW + 3600,
                "scope": "write",
                "reason": "disk swap",
                "active": True,
            },
            {
                "endpoint": "fresh",
                "start": NOW + 86400,
                "end": NOW + 90000,
                "scope": "all",
                "reason": "upgrade",
                "active": False,
            },
        ],
    }
    page = render_status_page(status).decode()
    rows = {r.split("</td>", 1)[0]: r for r in page.split('<tr><td class="id">')[1:]}
    assert "stale" not in rows["fresh"] and "30 s ago" in rows["fresh"] and "3.0 TiB" in rows["fresh"]
    assert "1.0 GiB" in rows["fresh"] and "12.3 ms" in rows["fresh"] and "downtime" not in rows["fresh"]
    assert 'class="stale"' in rows["old"] and "2.0 h ago" in rows["old"] and "HTTP 500" in rows["old"]
    assert "downtime (write)" in rows["old"]
    assert "disk swap" in page and "upgrade" in page and "scheduled" in page and "in 1.0 d" in page
    assert "1 min ago</span> <b>space of old</b>" in page  # recent errors, with when
    assert "version 1.2.3 · up 2.0 h" in page


# --- the daemon: negotiation, and what a browser shows ---------------------------------------------


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fedd]:
    # `quiet` is a port that accepts connections (in the kernel) and never answers: its probe stays in flight
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    base = tmp_path_factory.mktemp("statuspage")
    (base / "disk").mkdir()
    port = free_port()
    conf = f"""[server]
listen = tcp:{port}:interface=127.0.0.1
[health]
interval = 60
timeout = 60
failures_to_offline = 1
[endpoint disk]
kind = local
path = {base / "disk"}
[endpoint dead]
kind = dav
url = http://127.0.0.1:{free_port()}/gone
[endpoint quiet]
kind = dav
url = http://127.0.0.1:{silent.getsockname()[1]}/never
timeout = 60
"""
    f = start_fedd(base / "run", conf, port)
    try:
        wanted = {"disk": "online", "dead": "offline", "quiet": "unknown"}
        wait_for(
            lambda: {k: v["health"]["state"] for k, v in f.status()["endpoints"].items()},
            15,
            f"endpoint states {wanted}",
            interval=0.05,
            until=wanted.__eq__,
        )
        yield f
    finally:
        silent.close()  # resets the waiting connection, so the probe ends and fedd can stop at once
        f.stop()


def fetch(fed: Fedd, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", fed.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_negotiation(fed: Fedd) -> None:
    chrome = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
    for accept in (None, "*/*", "application/json"):
        code, headers, body = fetch(fed, "/.well-known/fedd/status", {"Accept": accept} if accept else {})
        assert code == 200 and headers["content-type"] == "application/json" and headers["vary"] == "Accept"
        assert set(json.loads(body)["endpoints"]) == {"disk", "dead", "quiet"}
    for path, headers_in in (("/.well-known/fedd/status", {"Accept": chrome}), ("/.well-known/fedd/status.html", {})):
        code, headers, body = fetch(fed, path, headers_in)
        assert code == 200 and headers["content-type"] == "text/html; charset=utf-8"
        assert headers["content-security-policy"].startswith("default-src 'none'")
        assert body.startswith(b"<!DOCTYPE html>") and b'data-endpoint="quiet">no data<' in body
    subprocess.run(
        ["curl", "-sf", "-o", "/dev/null", fed.url + "/.well-known/fedd/status.html"], check=True, timeout=30
    )


def rgb(css: str) -> tuple[int, ...]:
    assert css.startswith("rgb(") and css.endswith(")"), css
    return tuple(int(x) for x in css[4:-1].split(","))


def png_rows(data: bytes, max_rows: int) -> tuple[int, int, list[bytes]]:
    """(width, height, first rows of pixels) of an 8-bit RGB/RGBA PNG, unfiltered by hand (no imaging library)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(min(height, max_rows)):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line) if bpp == 3 else bytes(v for k, v in enumerate(line) if k % 4 != 3))
        prev = line
    return width, height, rows


def test_headless_chromium_shows_states_in_colour(fed: Fedd, tmp_path: Path) -> None:
    assert Path("/usr/bin/chromium").exists() and BROWSER_SCRIPT.exists()
    shot = tmp_path / "status.png"
    out = subprocess.run(
        ["node", str(BROWSER_SCRIPT), fed.url + "/.well-known/fedd/status", str(shot), str(tmp_path / "profile")],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert out.returncode == 0, out.stderr
    facts = json.loads(out.stdout)
    assert facts["status"] == 200 and facts["contentType"] == "text/html; charset=utf-8"
    assert facts["title"] == "fedd status"
    states = {s["endpoint"]: s for s in facts["states"]}
    assert set(states) == {"disk", "dead", "quiet"}

    assert states["dead"]["text"] == "offline"
    r, g, b = rgb(states["dead"]["background"])
    assert r > 150 and g < 90 and b < 90, states["dead"]

    assert states["quiet"]["text"] == "no data"
    r, g, b = rgb(states["quiet"]["background"])
    assert r == g == b and 100 <= r <= 230, states["quiet"]  # neutral grey: not red, not green

    assert states["disk"]["text"] == "online"
    r, g, b = rgb(states["disk"]["background"])
    assert g > 100 and g > r + 40 and g > b + 40, states["disk"]

    assert facts["headings"][:1] == ["Endpoints"] and "Recent errors" in facts["headings"]
    assert facts["requests"] and facts["external"] == []
    assert all(u.startswith(fed.url + "/") for u in facts["requests"]), facts["requests"]

    data = shot.read_bytes()
    width, height, rows = png_rows(data, 260)
    assert (width, height) == (facts["viewport"]["width"], facts["viewport"]["height"]) == (1280, 800)
    colours = {row[i : i + 3] for row in rows for i in range(0, len(row), 3)}
    assert len(colours) > 20, len(colours)
    assert any(c[0] > 150 and c[1] < 90 and c[2] < 90 for c in colours)  # the red cell is on screen


# --- authorisation ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    i = Issuer()
    yield i
    i.stop()


def test_status_is_authorised_like_a_read_of_its_path(tmp_path: Path, issuer: Issuer) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "access.conf").write_text("/.well-known/fedd/status /admins r\n/ authenticated rl\n")
    port = free_port()
    conf = f"""[server]
listen = tcp:{port}:interface=127.0.0.1
[auth]
access_file = {tmp_path / "access.conf"}
token_audience = {AUD}
[issuer test]
issuer = {issuer.iss}
jwks_url = {issuer.url}/jwks.json
[endpoint l]
kind = local
path = {tmp_path / "data"}
"""
    f = start_fedd(tmp_path / "run", conf, port)
    try:
        admin = issuer.token("openid", groups=["/admins"])
        user = issuer.token("openid", groups=["/users"])
        for path in ("/.well-known/fedd/status", "/.well-known/fedd/status.html"):
            code, headers, body = fetch(f, path)
            assert code == 401 and "www-authenticate" in headers and b"authentication required" in body
            code, _, body = fetch(f, path, {"Authorization": f"Bearer {user}"})
            assert code == 403 and b"read on /.well-known/fedd/status not granted" in body
            code, headers, body = fetch(f, path, {"Authorization": f"Bearer {admin}"})
            assert code == 200 and (b'"endpoints"' in body or b"<!DOCTYPE html>" in body)
        code, headers, _ = fetch(f, "/.well-known/fedd/status.html", {"Authorization": f"Bearer {admin}"})
        assert headers["content-type"] == "text/html; charset=utf-8"
        assert fetch(f, "/.well-known/fedd/nothing")[0] == 404
        assert "denied GET /.well-known/fedd/status to" in f.log_text()
    finally:
        f.stop()
