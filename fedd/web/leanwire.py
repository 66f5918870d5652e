"""The lean front's wire (fedd.web.lean): which request heads it may answer, and its answers' bytes.

Pure: a head's bytes in, what it says out (`parse_head`); a plan and a request in, the answer's bytes
out (`answer_parts`, around the `Date` value). A head is answered here only if twisted.web would read
it the same way: anything odd (a bare CR or LF, obs-fold, a second Host, no Host in HTTP/1.1, a body,
an upgrade) is left to the full front, whose answer it gets.
"""

from __future__ import annotations

import time
from typing import Any

import httptools
from twisted.web import http
from twisted.web.server import version as SERVER_VERSION

MAX_HEAD = 16384  # bytes of one request head handled here (twisted.web's own limit decides beyond)
_REASONS = {code: b"%d %s" % (code, http.RESPONSES.get(code, b"")) for code in (200, 301, 302, 303, 307, 308)}
# a request with any of these goes to twisted.web (a body, a token, loop protection, checksums, ...)
_FULL_FRONT_HEADERS = frozenset(
    {b"authorization", b"via", b"want-digest", b"want-repr-digest", b"expect", b"transfer-encoding", b"upgrade"}
)
_NO_RETURN_HEADERS = frozenset({b"expect", b"transfer-encoding", b"upgrade"})  # a body or another protocol
BORROW = b"<the full front answers this one>"  # compared by identity


class _Head:
    """httptools callbacks: what one request head says."""

    __slots__ = ("complete", "headers", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_message_complete(self) -> None:
        self.complete = True


class HotRequest:
    """What the lean front needs of a request head it may answer."""

    __slots__ = ("agent", "host", "keep", "method", "path", "url", "version")

    def __init__(self, method: bytes, url: bytes, host: bytes | None, agent: bytes, keep: bool, version: str) -> None:
        self.method, self.url, self.host, self.agent, self.keep, self.version = method, url, host, agent, keep, version
        self.path = url.partition(b"?")[0]  # as twisted.web's request.path: the plan, events, access file


def parse_head(head: bytes) -> HotRequest | bytes | None:
    """A head the lean front may answer (`HotRequest`), one to lend the full front (`BORROW`), or one to
    hand over for good (None: a body follows, or a head the full front refuses)."""
    if head.count(b"\r") != head.count(b"\r\n") or head.count(b"\n") != head.count(b"\r\n"):
        return None  # a bare CR or LF: refused by the full front
    if b"\r\n " in head or b"\r\n\t" in head:
        return None  # obs-fold
    parsed = _Head()
    parser = httptools.HttpRequestParser(parsed)
    try:
        parser.feed_data(head)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return None  # malformed, or CONNECT / Upgrade: the full front's answer
    if not parsed.complete:
        return None  # a body follows
    method = parser.get_method()
    host: bytes | None = None
    agent = connection = b""
    borrow = method not in (b"GET", b"HEAD")
    for name, value in parsed.headers:
        if name == b"host":
            if host is not None:
                return None  # a second Host: 400 there
            host = value
        elif name in _FULL_FRONT_HEADERS:
            if name in _NO_RETURN_HEADERS:
                return None
            borrow = True
        elif name == b"accept" and b"metalink" in value:
            borrow = True
        elif name == b"content-length" and value.strip() != b"0":
            return None
        elif name == b"user-agent":
            agent = value
        elif name == b"connection":
            connection = value.lower()
    url = parsed.url
    version = parser.get_http_version()
    if version == "1.1" and host is None:
        return None  # RFC 9112 section 3.2: the full front's 400
    if borrow or not url.startswith(b"/") or b"#" in url:
        return BORROW
    query = url.partition(b"?")[2]
    if query and any(part.partition(b"=")[0] == b"metalink" for part in query.split(b"&")):
        return BORROW  # a metalink answer (fedd.web.reads); any other query is ignored there too
    # (httptools' should_keep_alive() already describes the next message once this one is complete)
    tokens = {t.strip() for t in connection.split(b",")}
    keep = b"close" not in tokens if version == "1.1" else b"keep-alive" in tokens
    return HotRequest(method, url, host, agent, keep, version)


def answer_parts(plan: Any, request: HotRequest, *, keep: bool) -> tuple[bytes, bytes]:
    """The answer's bytes before and after the Date value."""
    head = [
        b"HTTP/1.1 " if request.version == "1.1" else b"HTTP/1.0 ",
        _REASONS.get(plan.code) or b"%d %s" % (plan.code, http.RESPONSES.get(plan.code, b"")),
        b"\r\nServer: ",
        SERVER_VERSION,
        b"\r\nDate: ",
    ]
    tail = [b"\r\n", plan.wire]
    if plan.code != 200:  # a HEAD answered by fedd carries the file's Content-Length in its plan
        tail.append(b"Content-Length: 0\r\n")
    if not keep and request.version == "1.1":
        tail.append(b"Connection: close\r\n")
    elif keep and request.version != "1.1":
        tail.append(b"Connection: Keep-Alive\r\n")
    tail.append(b"\r\n")
    return b"".join(head), b"".join(tail)


class DateHeader:
    """The `Date` header value, computed once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def value(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second, self._value = now, http.datetimeToString(now)
        return self._value


DATE = DateHeader()
