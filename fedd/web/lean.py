"""The lean front: cached redirects answered without building a twisted.web request.

Every connection starts here. Each request head is cut at its blank line and parsed by `httptools`
(llhttp); a GET or HEAD of a plain federation path that the resource can answer from a fresh redirect
plan (`FeddResource.hot_plan`: authorised, no body, no `Via`, no checksum or metalink wish; a query
string is ignored, as twisted.web's reads ignore it, but `metalink`) is answered at once with the
plan's prebuilt headers, counted in the metrics, the access log and the `get-redirect` event like any
other. Keep-alive, HTTP/1.0, `Connection: close` and pipelined requests are handled here (the hot
answers to requests that arrived together go out in one write).

Anything else -- another method, a body, a bearer token, an odd or malformed head, a head that is
too big -- and the connection is handed to twisted.web's channel (fedd.web.channel) for the rest of
its life: the bytes of that request (and whatever followed) are replayed into it unchanged, so every
rule of the full front applies there (strict heads, 400/408/413/431 answers, an HTTP/1.1 request
without Host, uploads answered before their body, the drain). The lean front never answers an error
itself except the 408 of its deadlines (fedd.web.deadlines) to a head begun and left unfinished.

While this front holds a connection (between requests, and while it answers them), its own deadlines
run: a head unfinished after the site's `header_timeout` gets 408; a connection silent for the
site's `timeOut` (`[server] idle_timeout`) is closed, with a 408 if a head is begun. twisted.web's
channel has its idle timer off meanwhile, and on while it has the connection.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httptools
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.server import version as SERVER_VERSION

from fedd.auth.identity import ANONYMOUS, Identity
from fedd.errors import FeddError
from fedd.twcompat import inner_channel, write_now
from fedd.web.accesslog import entry as access_entry
from fedd.web.channel import REQUEST_TIMEOUT
from fedd.web.deadlines import Deadlines

log = Logger(namespace="fedd.web")
MAX_HEAD = 16384  # bytes of one request head handled here (twisted.web's own limit decides beyond)
_REASONS = {code: b"%d %s" % (code, http.RESPONSES.get(code, b"")) for code in (200, 301, 302, 303, 307, 308)}
# a request with any of these goes to twisted.web (a body, a token, loop protection, checksums, ...)
_FULL_FRONT_HEADERS = frozenset(
    {b"authorization", b"via", b"want-digest", b"want-repr-digest", b"expect", b"transfer-encoding", b"upgrade"}
)
_NO_RETURN_HEADERS = frozenset({b"expect", b"transfer-encoding", b"upgrade"})  # a body or another protocol
_BORROW = b"<the full front answers this one>"  # compared by identity


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


class _Request:
    """What the lean front needs of a request head it may answer."""

    __slots__ = ("agent", "host", "keep", "method", "path", "url", "version")

    def __init__(self, method: bytes, url: bytes, host: bytes | None, agent: bytes, keep: bool, version: str) -> None:
        self.method, self.url, self.host, self.agent, self.keep, self.version = method, url, host, agent, keep, version
        self.path = url.partition(b"?")[0]  # as twisted.web's request.path: the plan, events, access file


def _parse(head: bytes) -> _Request | bytes | None:
    """A head the lean front may answer (`_Request`), one to lend the full front (`_BORROW`), or one to
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
        return _BORROW
    query = url.partition(b"?")[2]
    if query and any(part.partition(b"=")[0] == b"metalink" for part in query.split(b"&")):
        return _BORROW  # a metalink answer (fedd.web.reads); any other query is ignored there too
    # (httptools' should_keep_alive() already describes the next message once this one is complete)
    tokens = {t.strip() for t in connection.split(b",")}
    keep = b"close" not in tokens if version == "1.1" else b"keep-alive" in tokens
    return _Request(method, url, host, agent, keep, version)


def _response(plan: Any, request: _Request, *, keep: bool) -> tuple[bytes, bytes]:
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


class _Date:
    """The `Date` header value, computed once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def value(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second, self._value = now, http.datetimeToString(now)
        return self._value


_DATE = _Date()


class LeanChannel(Protocol):
    """One client connection, answered here while its requests are plan-cache hits."""

    def __init__(self, site: Any, full_channel: Callable[[], Any], on_lost: Callable[[], None]) -> None:
        self.site = site
        self._on_lost = on_lost  # the site's connection count
        self._full_channel = full_channel  # builds twisted.web's channel, as the site would
        self.inner: Any = None  # twisted.web's channel, once a request needed it
        self._handed_over = False  # the channel reads the rest of the connection
        self._waiting = False  # for the channel's answer to a request it was lent
        self._buf = bytearray()
        self._secure = False
        self._client = ""
        self._who: Identity | None = None
        self._deadlines = Deadlines(
            site.reactor, header_timeout=site.header_timeout, idle_timeout=site.timeOut, expire=self._expired
        )
        self._closing = False
        self._last_head = b""  # the last head answered here, parsed: clients repeat themselves
        self._last_request: _Request | None = None
        self._last_plan: Any = None  # and the plan it was answered from, with the answer's bytes
        self._last_parts = (b"", b"")
        self._write: Callable[[bytes], None] = lambda data: None  # the transport's, at connectionMade

    # --- the connection ------------------------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        self._secure = ISSLTransport.providedBy(transport)
        self._write = write_now(transport)
        peer = transport.getPeer()
        self._client = getattr(peer, "host", "") or ""
        self._deadlines.read()

    def dataReceived(self, data: bytes) -> None:
        if self._handed_over:
            self.inner.dataReceived(data)
            return
        self._buf += data
        self._serve()

    def _serve(self) -> None:
        """Answer the complete request heads in the buffer, in order, until one must wait. The hot
        answers to pipelined requests that arrived together go out in one write (before anything the
        full front writes, so the order holds)."""
        transport = self.transport
        buf = self._buf
        answers: list[bytes] = []
        while buf and not self._waiting and not self._closing and transport is not None:
            if getattr(transport, "disconnecting", False):
                break  # the full front closes the connection after its answer (Connection: close, an error)
            end = buf.find(b"\r\n\r\n")
            if end < 0 or end + 4 > MAX_HEAD:
                bare_cr = buf.count(b"\r") - buf.endswith(b"\r") != buf.count(b"\r\n")
                if len(buf) > MAX_HEAD or bare_cr or buf.count(b"\n") != buf.count(b"\r\n"):
                    self._send(answers)
                    self._hand_over()  # too big, or bare CR/LF line ends: the full front's answer
                    return
                self._send(answers)
                self._deadlines.read()
                self._deadlines.head_begun()
                return
            head = bytes(buf[: end + 4])
            answer = self._answer(head)
            if answer is None:
                self._send(answers)
                self._hand_over()
                return
            del buf[: end + 4]
            if answer is _BORROW:
                self._send(answers)
                self._borrow(head)
                continue
            answers.append(answer)
            if self._closing:
                self._send(answers)
                self._deadlines.stop()
                transport.loseConnection()
                return
        self._send(answers)
        if not buf:
            self._deadlines.head_done()
        if self._waiting:
            self._deadlines.stop()  # the full front answers a request: no idle time until it is done
        elif not self._closing:
            self._deadlines.read()

    def _send(self, answers: list[bytes]) -> None:
        if answers:
            self._write(answers[0] if len(answers) == 1 else b"".join(answers))
            answers.clear()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._deadlines.stop()
        self._closing = True
        self._on_lost()
        if self.inner is not None:
            self.inner.connectionLost(reason)

    def open_requests(self) -> list[Any]:
        """Requests received and not answered yet (the drain waits for them): only the full front's."""
        if self.inner is None:
            return []
        channel = getattr(self.inner, "_channel", self.inner)
        return list(getattr(channel, "requests", ()))

    # --- one request ---------------------------------------------------------------------------

    def _answer(self, head: bytes) -> bytes | None:
        """The whole response to a hot request; `_BORROW` for another request without a body (the
        full front answers it, then this connection comes back here); None to hand the connection
        over for good (a body follows, or the head is one the full front refuses)."""
        request = self._last_request
        if head != self._last_head or request is None:  # else a client asking again the same way
            parsed = _parse(head)
            if not isinstance(parsed, _Request):
                return parsed  # _BORROW or None
            request = parsed
            self._last_head, self._last_request = head, request
        resource = self.site.resource
        try:
            who = self._identity()
            hot = resource.hot_plan(request.method, request.path, request.host, self._secure, self._client, who)
        except FeddError:
            return _BORROW  # the full front says why (an unusable certificate: 403)
        if hot is None:
            return _BORROW
        plan = hot[0]
        draining = self.site.draining
        self._closing = not request.keep or draining
        resource.reads.announce(plan, path=request.path, method=request.method, client=self._client, who=who)
        self._count(request, plan.code, plan.endpoint, who)
        if plan is not self._last_plan or draining:
            self._last_plan = plan if not draining else None
            self._last_parts = _response(plan, request, keep=request.keep and not draining)
        before, after = self._last_parts
        return before + _DATE.value() + after

    def _identity(self) -> Identity:
        if self._who is None:
            gate = self.site.resource.gate
            self._who = gate.transport_identity(self.transport) if self._secure else ANONYMOUS
        return self._who

    def _count(self, request: _Request, code: int, endpoint: str, who: Identity) -> None:
        site = self.site
        method = request.method
        site.hot_answers += 1
        if site.metrics is not None:
            site.metrics.request(method, code, 0.0)
        if site.access_file is not None and site.clock is not None:
            now = site.clock.seconds()
            site.access_file.write(
                access_entry(
                    now=now,
                    started=now,
                    client=self._client,
                    who=who,
                    method=method,
                    path=request.path,
                    status=code,
                    sent=0,
                    endpoint=endpoint,
                    locate_ms=0.0,
                    agent=request.agent,
                )
            )
        if site.access_log_enabled:
            log.info(
                "{client} {method} {uri} {code}",
                client=self._client or "-",
                method=method.decode("latin-1"),
                uri=request.url.decode("latin-1"),
                code=code,
            )

    # --- the full front ------------------------------------------------------------------------

    def _channel(self) -> Any:
        if self.inner is None:
            self.inner = self._full_channel()
            self.inner.makeConnection(self.transport)
        else:  # its idle timer was off while this front held the connection
            inner_channel(self.inner).setTimeout(self.site.timeOut)
        return self.inner

    def _borrow(self, head: bytes) -> None:
        """The full front answers this request (it has no body); the connection comes back here
        once the answer is complete, so later requests can be hot again."""
        self._deadlines.head_done()
        inner = self._channel()
        inner.dataReceived(head)
        waiting = self.open_requests()
        if waiting and not self._handed_over:
            self._waiting = True
            waiting[-1].notifyFinish().addBoth(self._answered)
        else:
            self._take_back()  # answered at once

    def _answered(self, _: object) -> None:
        self._waiting = False
        if self.transport is not None and not self._handed_over:
            self._take_back()
            self.site.reactor.callLater(0, self._serve)  # not inside the full front's finish()

    def _take_back(self) -> None:
        """The connection is this front's again, and so is its idle time: twisted.web's channel
        would otherwise cut it `timeOut` after the last byte it read, however busy it is here."""
        inner_channel(self.inner).setTimeout(None)

    def _hand_over(self) -> None:
        """From now on twisted.web's channel reads this connection, starting with the request at the
        head of the buffer (and whatever follows)."""
        self._deadlines.stop()
        inner = self._channel()
        self._handed_over = True
        pending, self._buf = bytes(self._buf), bytearray()
        if pending:
            inner.dataReceived(pending)

    # --- a deadline passed (fedd.web.deadlines) ----------------------------------------------------

    def _expired(self) -> None:
        """Closed, with a 408 if a head is begun (a slow head, or one left unfinished); without a
        word between requests."""
        if self._handed_over or self._waiting or self._closing:
            return
        self._closing = True
        self._deadlines.stop()
        transport = self.transport
        if transport is not None:
            if self._buf:
                transport.write(REQUEST_TIMEOUT)
            transport.loseConnection()
