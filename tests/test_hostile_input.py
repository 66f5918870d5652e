"""Hostile and malformed HTTP input against a live `twistd fedd`: clean 4xx, never 5xx or a traceback.

The observed bugs of issue 13 (a non-UTF-8 `Range` on the local data URL, bare-LF request lines,
a duplicate `Host`, the client's Host copied into `Location`) first, then a seeded raw-socket mutation
fuzz run of every method (bounded in count and time; a failure prints its seed and request).
"""

from __future__ import annotations

import asyncio
import http.client
import os
import random
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fedd.config import ConfigError, parse_config
from fedd.web.site import PublicBase
from tests.daemon import Fedd, start_fedd, wait_for
from tests.servers import free_port

DATA = bytes(range(256)) * 8  # 2048 bytes
LOCAL_URL = "/.well-known/fedd/local/rw/data/a.bin"


def _tree(base: Path) -> None:
    (base / "rw" / "data" / "sub").mkdir(parents=True)
    (base / "ro").mkdir(parents=True)
    (base / "rw" / "data" / "a.bin").write_bytes(DATA)
    (base / "rw" / "data" / "b.txt").write_text("bee\n")
    (base / "rw" / "data" / "sub" / "c.txt").write_text("sea\n")
    (base / "ro" / "probe.txt").write_text("probe\n")


def _config(base: Path, port: int, server_extra: str = "") -> str:
    return f"""
[server]
listen = tcp:{port}:interface=127.0.0.1
max_body_bytes = 65536
header_timeout = 2
{server_extra}
[locate]
negative_ttl = 0
[endpoint rw]
kind = local
path = {base / "rw"}
map = /atlas /
[endpoint ro]
kind = local
path = {base / "ro"}
map = /static /
write = no
"""


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fedd]:
    base = tmp_path_factory.mktemp("hostile")
    _tree(base)
    port = free_port()
    fedd = start_fedd(base / "run", _config(base, port), port)
    yield fedd
    fedd.stop()


@pytest.fixture(scope="module")
def public_fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fedd]:
    base = tmp_path_factory.mktemp("hostile-public")
    _tree(base)
    port = free_port()
    extra = f"public_url = https://fedd.example.org:{port}\nallowed_hosts = alias.example.org localhost:{port}"
    fedd = start_fedd(base / "run", _config(base, port, extra), port)
    yield fedd
    fedd.stop()


def raw(fedd: Fedd, data: bytes, timeout: float = 5.0) -> bytes:
    """Send `data` on a new connection; everything the server sends until it closes (or `timeout`)."""
    with socket.create_connection(("127.0.0.1", fedd.port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk
    raise AssertionError(f"no close within {timeout}s after {data[:80]!r}; got {out[:200]!r}")


def no_tracebacks(fedd: Fedd) -> None:
    text = fedd.log_text()
    for word in ("Traceback", "Unhandled", "#critical]"):
        assert word not in text, f"{word!r} in fedd's log:\n{text[text.index(word) - 2000 : text.index(word) + 3000]}"


# --- 1. Range on the local data URL -----------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        b"bytes=\xff0-1",
        b"bytes=0-1\xc3",
        b"\xff\xfe",
        b"bytes=5-3",
        b"bytes=-",
        b"bytes=,",
        b"bytes=0-1,,",
        b"bytes=--5",
        b"bytes=1_0-20",
        b"bytes=0-" + b"9" * 5000,
        b"items=0-5",
        b"bytes=" + b",".join(b"%d-%d" % (i, i) for i in range(17)),  # too many ranges: ignored
        b"bytes=0-0,0-0,0-0,0-0,0-0,0-0,0-0,0-0,0-0,0-0,0-0,0-0,0-0,0-0,0-0,0-0,0-0,0-0,0-0,0-0",
    ],
)
def test_malformed_range_on_local_data_is_ignored(fed: Fedd, value: bytes) -> None:
    answer = raw(
        fed,
        b"GET " + LOCAL_URL.encode() + b" HTTP/1.1\r\nHost: x\r\nRange: " + value + b"\r\nConnection: close\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert answer.endswith(b"\r\n\r\n" + DATA)
    no_tracebacks(fed)


def test_valid_ranges_on_local_data_still_work(fed: Fedd) -> None:
    r = _get(fed, LOCAL_URL, {"Range": "bytes=2-5"})
    assert r.status == 206 and r.read() == DATA[2:6]
    r = _get(fed, LOCAL_URL, {"Range": "bytes=-3"})
    assert r.status == 206 and r.read() == DATA[-3:]
    r = _get(fed, LOCAL_URL, {"Range": "bytes=0-1, 10-11"})
    assert r.status == 206 and (r.getheader("Content-Type") or "").startswith("multipart/byteranges")
    r = _get(fed, LOCAL_URL, {"Range": "bytes=99999-"})
    assert r.status == 416
    # If-Range is not checked by twisted.web: fedd sends the whole file rather than a stale range
    r = _get(fed, LOCAL_URL, {"Range": "bytes=2-5", "If-Range": '"some-old-etag"'})
    assert r.status == 200 and r.read() == DATA
    twice = b"Range: bytes=0-1\r\nRange: bytes=2-3\r\n"  # two Range headers: ignored
    answer = raw(fed, b"GET " + LOCAL_URL.encode() + b" HTTP/1.1\r\nHost: x\r\n" + twice + b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(DATA)
    no_tracebacks(fed)


def _get(fedd: Fedd, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", fedd.port, timeout=10)
    conn.request(method, path, headers=headers or {})
    return conn.getresponse()


# --- 2. bare LF, bare CR ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"GET /atlas/data/b.txt HTTP/1.1\nHost: x\n\n",
        b"GET /atlas/data/b.txt HTTP/1.1\r\nHost: x\n\r\n",
        b"GET /atlas/data/b.txt HTTP/1.1\r\nHost: x\r\n\n",
        b"GET /atlas/data/b.txt HTTP/1.1\r\nHost: x\rX-A: b\r\n\r\n",
        b"GET /atlas/data/b.txt\r HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /atlas/data/b.txt HTTP/1.1\r\nHost: x\r\n y\r\n\r\n",  # obs-fold
        b"GET /atlas/data/b.txt\xa0 HTTP/1.1\r\nHost: x\r\n\r\n",  # not ASCII
        b"GET /atlas/data/\x7f HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /atlas/data/b.txt HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\tmore\r\n\r\n",
    ],
)
def test_bare_lf_or_cr_is_refused_at_once(fed: Fedd, head: bytes) -> None:
    started = time.monotonic()
    answer = raw(fed, head, timeout=5)
    assert answer == b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    assert time.monotonic() - started < 1.0
    no_tracebacks(fed)


def test_lines_split_across_packets_are_still_fine(fed: Fedd) -> None:
    with socket.create_connection(("127.0.0.1", fed.port), timeout=5) as s:
        for piece in (b"GET /atlas/data/b.txt HTTP/1.1\r", b"\nHost: x\r", b"\n", b"Connection: close\r\n\r", b"\n"):
            s.sendall(piece)
            time.sleep(0.05)  # separate TCP segments, on purpose
        assert s.recv(100).startswith(b"HTTP/1.1 302 ")


# --- 3. Host: duplicates, and what goes into Location ------------------------------------------------


@pytest.mark.parametrize(
    "hosts",
    [
        b"Host: a.example\r\nHost: evil.example\r\n",
        b"Host: a.example\r\nhost: a.example\r\n",
        b"HOST: a.example\r\nX-A: 1\r\nHost: evil.example\r\n",
    ],
)
def test_duplicate_host_is_400(fed: Fedd, hosts: bytes) -> None:
    answer = raw(fed, b"GET /atlas/data/b.txt HTTP/1.1\r\n" + hosts + b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ") and b"evil" not in answer


def test_without_public_url_a_valid_host_is_used_and_an_invalid_one_is_not(fed: Fedd) -> None:
    r = _get(fed, "/atlas/data/b.txt", {"Host": "fedd.site.example:8443"})
    assert r.status == 302 and r.getheader("Location", "").startswith("http://fedd.site.example:8443/.well-known/")
    r = _get(fed, "/atlas/data/b.txt", {"Host": "evil.example/<x>"})
    assert r.status == 302 and r.getheader("Location", "").startswith(f"http://127.0.0.1:{fed.port}/.well-known/")


def test_public_url_and_allowed_hosts_decide_location(public_fed: Fedd) -> None:
    port = public_fed.port
    for host, expected in [
        ("evil.example", f"https://fedd.example.org:{port}"),  # not allowed: the public URL
        ("evil.example/<x>", f"https://fedd.example.org:{port}"),
        ("ALIAS.example.org:9999", "http://alias.example.org:9999"),  # a name alone allows any port
        (f"localhost:{port}", f"http://localhost:{port}"),
        ("localhost:1", f"https://fedd.example.org:{port}"),  # name:port allows that port only
    ]:
        r = _get(public_fed, "/atlas/data/b.txt", {"Host": host})
        location = r.getheader("Location", "")
        assert r.status == 302 and location.startswith(expected + "/.well-known/fedd/local/"), (host, location)
    r = _get(public_fed, "/atlas/data/b.txt?metalink", {"Host": "evil.example"})
    assert r.status == 200 and b"evil" not in r.read()
    r = _get(public_fed, "/atlas/data/b.txt", {"Host": "evil.example"}, method="HEAD")
    assert r.status == 200 and "evil" not in (r.getheader("Link") or "")


def test_public_base_unit() -> None:
    only_url = PublicBase("https://f.example.org")
    assert only_url.base(b"evil.example", False) == "https://f.example.org"
    assert only_url.base(None, True) == "https://f.example.org"
    listed = PublicBase("", ("a.example", "b.example:8443", "[::1]:8443"))
    assert listed.base(b"A.example:1234", False) == "http://a.example:1234"
    assert listed.base(b"b.example:8443", True) == "https://b.example:8443"
    assert listed.base(b"b.example", True) == "https://a.example"  # not allowed: the first name
    assert listed.base(b"[::1]:8443", True) == "https://[::1]:8443"
    neither = PublicBase()
    assert neither.base(b"x.example:80", False) == "http://x.example:80"
    assert neither.base(b"x y", False) is None and neither.base(None, False) is None


def test_server_keys_are_checked_with_file_and_line() -> None:
    bad = "[server]\nheader_timeout = -1\nmax_connections_per_client = x\npublic_url = https://a/b\n"
    bad += "allowed_hosts = ok.example bad/host\n[endpoint e]\nkind = local\npath = /tmp\n"
    with pytest.raises(ConfigError) as info:
        parse_config(bad)
    text = str(info.value)
    for line, key in (
        (2, "header_timeout"),
        (3, "max_connections_per_client"),
        (4, "public_url"),
        (5, "allowed_hosts"),
    ):
        assert f"<string>:{line}: {key}:" in text, text
    good = parse_config(
        "[server]\nheader_timeout = 0\nmax_connections_per_client = 8\npublic_url = https://F.example.org/\n"
        "allowed_hosts = a.example, B.example:8443\n[endpoint e]\nkind = local\npath = /tmp\n"
    )
    assert good.server.header_timeout == 0 and good.server.max_connections_per_client == 8
    assert good.server.public_url == "https://f.example.org"
    assert good.server.allowed_hosts == ("a.example", "b.example:8443")
    assert parse_config("[endpoint e]\nkind = local\npath = /tmp\n").server.header_timeout == 30


# --- 5. the fuzz run --------------------------------------------------------------------------------

SEED = int(os.environ.get("FEDD_FUZZ_SEED", "1313"))
MAX_REQUESTS = 3000
MAX_SECONDS = 60.0
BATCH = 250
CONCURRENCY = 64
ANSWER_WAIT = 3.0  # > header_timeout (2 s) of the fuzzed fedd: an incomplete head gets its 408
METHODS = [b"GET", b"HEAD", b"PUT", b"DELETE", b"MKCOL", b"MOVE", b"COPY", b"PROPFIND", b"OPTIONS"]
GARBAGE_METHODS = [
    b"POST",
    b"PATCH",
    b"TRACE",
    b"CONNECT",
    b"BREW",
    b"get",
    b"G\x00T",
    b"\xffGET",
    b"G(T",
    b"X" * 300,
    b"",
]
PATHS = [
    b"/atlas/data/a.bin",
    b"/atlas/data/b.txt",
    b"/atlas/data/",
    b"/atlas/data/sub/c.txt",
    b"/atlas/new/n.txt",
    b"/atlas",
    b"/static/probe.txt",
    b"/static/",
    b"/",
    b"/.well-known/fedd/local/rw/data/a.bin",
    b"/.well-known/fedd/local/ro/probe.txt",
    b"/.well-known/fedd/local/nope/x",
    b"/.well-known/fedd/status",
    b"/.well-known/fedd/status.html",
    b"/.well-known/fedd/srr.json",
    b"/.well-known/fedd/downtimes",
    b"/.well-known/fedd/other",
    b"/metrics",
    b"/atlas/data/a.bin?metalink",
    b"*",
    b"http://127.0.0.1/atlas/data/b.txt",
]
PATH_BITS = [
    b"%00",
    b"%2e%2e",
    b"%2f",
    b"%2F..%2F",
    b"%ff",
    b"%",
    b"%zz",
    b"%25",
    b"%c3%a9",
    b"\x00",
    b"\x01",
    b"\x7f",
    b"\xff",
    b"\xc3\xa9",
    b"..",
    b"/../..",
    b"//",
    b"/./",
    b"a" * 300,
    b"b" * 5000,
    b"?x=\xff",
    b"#frag",
    b";p=1",
]
BAD_BYTES = [b"\x00", b"\xff", b"\xc3\x28", b"\x80", b"\x1b[31m", b"\x7f", b"\t", b" ", b"\xe2\x80\xa8", b"\r", b"\n"]
XML = [
    b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>',
    b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop><D:getetag/><D:quota-used-bytes/></D:prop></D:propfind>',
    b'<D:propfind xmlns:D="DAV:"><D:propname/></D:propfind>',
    b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
    b'<D:propfind xmlns:D="DAV:">&b;</D:propfind>',
    b'<?xml version="1.0" encoding="latin-1"?><D:propfind xmlns:D="DAV:"><D:prop><D:\xff/></D:prop></D:propfind>',
    b"<a><b></a>",
    b"\xff\xfe<\x00a\x00>\x00",
    b"",
    b"{}",
]


@dataclass
class Template:
    method: bytes
    target: bytes
    version: bytes = b"HTTP/1.1"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    # lines fedd may act on over the network (COPY's Source, MOVE/COPY's Destination): loopback only, so
    # they are added after the byte-level mutations and never mutated themselves
    safe_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    line_end: bytes = b"\r\n"
    flips: int = 0
    truncate: bool = False
    pipeline: bytes = b""
    set_length: bool = True


def template(rng: random.Random, port: int) -> Template:
    method = rng.choice(METHODS) if rng.random() < 0.9 else rng.choice(GARBAGE_METHODS)
    t = Template(method, rng.choice(PATHS), headers=[(b"Host", b"127.0.0.1:%d" % port)])
    loop = b"http://127.0.0.1:%d" % port
    if method in (b"GET", b"HEAD"):
        for name, values in (
            (b"Range", [b"bytes=0-10", b"bytes=-5", b"bytes=0-1,5-9", b"bytes=\xff0-1", b"bytes=9-1", b"x"]),
            (
                b"Want-Digest",
                [b"adler32", b"MD5;q=0.3, adler32;q=1", b"sha-256;q=x", b"\xff", b"adler32;q=" + b"9" * 400],
            ),
            (b"Want-Repr-Digest", [b"sha-256=1", b"sha-256=\xff", b"md5=10, sha-512=x"]),
            (b"Accept", [b"application/metalink4+xml", b"text/html", b"*/*;q=\xff"]),
            (
                b"If-Modified-Since",
                [b"Mon, 30 Nov 2026 20:10:42 GMT", b"yesterday", b"\xff\xff", b"Mon, 99 Foo 2026 99:99:99 GMT"],
            ),
            (b"If-Range", [b'"x"', b"Mon, 30 Nov 2026 20:10:42 GMT"]),
            (b"Prefer", [b"wait=1", b"wait=-1", b"wait=99999999999999999999", b"wait=\xff"]),
            (b"Authorization", [b"Bearer x.y.z", b"Bearer \xff", b"Basic Zm9vOmJhcg=="]),
        ):
            if rng.random() < 0.3:
                t.headers.append((name, rng.choice(values)))
    elif method == b"PROPFIND":
        t.headers.append((b"Depth", rng.choice([b"0", b"1", b"infinity", b"2", b"\xff", b""])))
        if rng.random() < 0.7:
            t.headers.append((b"Content-Type", rng.choice([b"application/xml", b"text/xml; charset=\xff", b"x/y"])))
            t.body = rng.choice(XML)
    elif method == b"PUT":
        t.body = rng.randbytes(rng.choice([0, 1, 100, 5000]))
        if rng.random() < 0.3:
            t.headers.append((b"Expect", rng.choice([b"100-continue", b"200-ok", b"\xff"])))
        if rng.random() < 0.3:
            t.headers.append((b"Content-Type", b"application/octet-stream"))
    elif method in (b"MOVE", b"COPY"):
        dest = rng.choice([b"/atlas/new/m.txt", b"/atlas/data/b.txt", b"/static/x", b"/atlas/%ff", b"/", b""])
        if rng.random() < 0.5:
            dest = loop + dest
        t.safe_headers.append((b"Destination", dest))
        if rng.random() < 0.3:
            t.headers.append((b"Overwrite", rng.choice([b"T", b"F", b"x", b"\xff"])))
        if method == b"COPY" and rng.random() < 0.4:
            t.safe_headers = [(b"Source", loop + rng.choice([b"/atlas/data/b.txt", b"/nope", b"/%00"]))]
        if method == b"COPY" and rng.random() < 0.2:
            t.headers.append((b"TransferHeaderAuthorization", b"Bearer x"))
    elif method == b"DELETE" and rng.random() < 0.3:
        t.headers.append((b"Depth", rng.choice([b"infinity", b"0", b"\xff"])))
    if rng.random() < 0.9:
        t.headers.append((b"Connection", b"close"))
    return t


def mutate(rng: random.Random, t: Template) -> str:
    """Apply one to four mutations; return their names (printed with a failing request)."""
    names = []
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(14)
        names.append(str(kind))
        if kind == 0:  # path bits: escapes, NUL, control bytes, long segments, dot segments
            pos = rng.randint(0, len(t.target))
            t.target = t.target[:pos] + rng.choice(PATH_BITS) + t.target[pos:]
        elif kind == 1:
            t.method = rng.choice(GARBAGE_METHODS + METHODS)
        elif kind == 2:
            t.version = rng.choice(
                [b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"http/1.1", b"", b"HTTP/1.1 x", b"HTTP/\xff"]
            )
        elif kind == 3:  # header names
            name = rng.choice(
                [b"X-A ", b" X-A", b"X A", b"", b"X\xffA", b"X-" + b"n" * 9000, b"Host\x00", b"(x)", b"Range:"]
            )
            t.headers.insert(rng.randint(0, len(t.headers)), (name, b"v"))
        elif kind == 4 and t.headers:  # header values: bad bytes, long, folded
            i = rng.randrange(len(t.headers))
            name, value = t.headers[i]
            bit = rng.choice([*BAD_BYTES, b"v" * 9000, b"\r\n continued"])
            pos = rng.randint(0, len(value))
            t.headers[i] = (name, value[:pos] + bit + value[pos:])
        elif kind == 5 and t.headers:  # a duplicate header (same or other value)
            name, value = rng.choice([*t.headers, (b"Content-Length", b"0"), (b"Range", b"bytes=0-1")])
            t.headers.append((rng.choice([name, name.lower(), name.upper()]), rng.choice([value, b"other"])))
        elif kind == 6:  # Content-Length / Transfer-Encoding conflicts
            t.set_length = False
            choice = rng.randrange(6)
            cl = b"%d" % len(t.body)
            if choice == 0:
                t.headers += [(b"Content-Length", cl), (b"Transfer-Encoding", b"chunked")]
            elif choice == 1:
                t.headers += [(b"Content-Length", cl), (b"Content-Length", b"%d" % (len(t.body) + 5))]
            elif choice == 2:
                t.headers.append(
                    (b"Content-Length", rng.choice([b"-1", b"1e3", b"+5", b"0x10", b"9" * 30, b" 5", b""]))
                )
            elif choice == 3:
                t.headers.append(
                    (b"Transfer-Encoding", rng.choice([b"gzip, chunked", b"chunked, identity", b"xchunked"]))
                )
            elif choice == 4:
                t.headers.append((b"Transfer-Encoding", b"chunked"))
                t.body = rng.choice(
                    [b"zz\r\nab\r\n0\r\n\r\n", b"ffffffffffffffffff\r\n", b"5\r\nab\r\n0\r\n\r\n", b"0\r\n\r\n"]
                )
            else:
                t.headers.append((b"Transfer-Encoding", b"chunked"))
                t.body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(t.body), t.body)
        elif kind == 7:  # a body where none belongs, or longer/shorter than announced
            t.body = rng.choice([rng.randbytes(rng.randint(1, 3000)), *XML])
            if rng.random() < 0.3:
                t.set_length = False
                t.headers.append((b"Content-Length", b"%d" % (len(t.body) + rng.choice([-1, 1, 100]))))
        elif kind == 8:  # bare LF in the head (some or all lines)
            t.line_end = rng.choice([b"\n", b"\r\n\n", b"\r\r\n"])
        elif kind == 9:
            t.flips += rng.randint(1, 3)
        elif kind == 10:
            t.truncate = True
        elif kind == 11:  # a second request right behind (keep-alive)
            t.headers = [(n, v) for n, v in t.headers if n != b"Connection"]
            t.pipeline = rng.choice(
                [
                    b"GET /static/probe.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    b"\xff\xfe\r\n\r\n",
                    b"GET /",
                ]
            )
        elif kind == 12:
            t.target = rng.choice([b"", b" ", b"/a b", b"a", b"//", b"/" + b"x/" * 2500, b"/atlas/" + b"%2e%2e/" * 50])
        elif kind == 13:  # drop Host, or make it hostile
            t.headers = [(n, v) for n, v in t.headers if n != b"Host"]
            if rng.random() < 0.7:
                t.headers.append((b"Host", rng.choice([b"evil.example", b"a b", b"\xff", b"[::1", b"x:99999999", b""])))
    return ",".join(names)


def serialise(rng: random.Random, t: Template) -> bytes:
    headers = list(t.headers)
    if t.set_length and t.body:
        headers.append((b"Content-Length", b"%d" % len(t.body)))
    line = b" ".join(p for p in (t.method, t.target, t.version) if p) if t.version else t.method + b" " + t.target
    head = bytearray(line + b"\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in headers))
    for _ in range(t.flips):
        if head:
            head[rng.randrange(len(head))] = rng.randrange(256)
    safe = b"".join(n + b": " + v + b"\r\n" for n, v in t.safe_headers)
    data = (bytes(head) + safe + b"\r\n").replace(b"\r\n", t.line_end) + t.body + t.pipeline
    if t.truncate:
        data = data[: rng.randint(1, max(1, len(data) - 1))]
    return data


STATUS_RE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")
OTHER_SERVER = re.compile(rb"\r\n\r\nDestination '[^'\n]*' is outside this federation\n")


async def exchange(port: int, data: bytes) -> tuple[list[int], bytes]:
    """Send one (mutated) request; the status codes of the answers the server sent before closing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = b""
    try:
        writer.write(data)
        await writer.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ANSWER_WAIT
        while (left := deadline - loop.time()) > 0:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), left)
            except TimeoutError:
                break
            if not chunk:
                break
            got += chunk
    except ConnectionError:
        pass  # refused mid-send (413, 431, 400): what arrived before the reset is still judged
    finally:
        writer.close()
    return [int(m.group(1)) for m in _answers(got)], got


def _answers(got: bytes) -> list[re.Match[bytes]]:
    """Status lines at the start of each answer (not inside a body such as the status page)."""
    found, pos = [], 0
    while (m := STATUS_RE.match(got, pos)) is not None:
        found.append(m)
        end = got.find(b"\r\n\r\n", pos)
        if end < 0:
            break
        length = re.search(rb"\r\ncontent-length: *(\d+)", got[pos:end], re.I)
        pos = end + 4 + (int(length.group(1)) if length else 0)
    return found


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def normal_get_is_fast(fedd: Fedd) -> None:
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", fedd.port, timeout=5)
    conn.request("GET", "/static/probe.txt")
    r = conn.getresponse()
    r.read()
    elapsed = time.monotonic() - started
    assert r.status == 302 and elapsed < 1.0, f"normal GET: {r.status} in {elapsed:.2f}s"


def open_connections(fedd: Fedd) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", fedd.port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return float(re.search(r"^fedd_open_connections (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]


def test_fuzz_raw_requests(fed: Fedd) -> None:
    rng = random.Random(SEED)
    normal_get_is_fast(fed)
    rss_before = rss_kib(fed.proc.pid)
    counts: dict[int, int] = {}
    bad: list[str] = []
    sent = 0
    started = time.monotonic()

    async def batch(items: list[tuple[int, str, bytes]]) -> None:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(n: int, how: str, data: bytes) -> None:
            async with gate:
                codes, got = await exchange(fed.port, data)
            if not codes and os.environ.get("FEDD_FUZZ_SHOW_SILENT"):
                print(f"silent #{n} ({how}): {data[:300]!r} -> {got[:100]!r}")
            for code in codes or [0]:
                counts[code] = counts.get(code, 0) + 1
                if code == 502 and OTHER_SERVER.search(got):
                    continue  # MOVE/COPY to a Destination on another host: 502 is RFC 4918's answer
                if code >= 500:
                    bad.append(f"#{n} (seed {SEED}, mutations {how}): {code} for {data[:600]!r}\n  -> {got[:400]!r}")

        await asyncio.gather(*(one(*item) for item in items))

    while sent < MAX_REQUESTS and time.monotonic() - started < MAX_SECONDS:
        items = []
        for n in range(sent, min(sent + BATCH, MAX_REQUESTS)):
            t = template(rng, fed.port)
            how = mutate(rng, t) if rng.random() < 0.85 else "none"
            items.append((n, how, serialise(rng, t)))
        asyncio.run(batch(items))
        sent += len(items)
        normal_get_is_fast(fed)
        assert not bad, "5xx answers:\n" + "\n".join(bad[:10])
        no_tracebacks(fed)
    elapsed = time.monotonic() - started
    rss_after = rss_kib(fed.proc.pid)
    print(
        f"fuzz: {sent} requests in {elapsed:.1f}s, answers {dict(sorted(counts.items()))},"
        f" RSS {rss_before} -> {rss_after} KiB"
    )
    assert sent >= 1000, f"only {sent} requests in {MAX_SECONDS}s"
    assert rss_after - rss_before < 50 * 1024
    assert sum(n for code, n in counts.items() if 400 <= code < 500) > sent // 4  # the mutations did bite
    wait_for(lambda: open_connections(fed) <= 1, timeout=10, what="every fuzz connection closed by fedd")
    no_tracebacks(fed)
