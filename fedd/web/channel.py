"""fedd's HTTP/1.1 channel: it answers uploads before their body and refuses malformed or slow
request heads, and the small protocol that turns away a client holding too many connections.

What a hostile or broken client gets (never a 500, never a traceback in the log):
- a line of the request head ending in a bare LF (or holding a bare CR): `400` at once, connection
  closed (RFC 9112 section 2.2 allows refusing it; accepting it would let fedd and a proxy in front
  of it disagree about where a request ends);
- a header line folded onto the next one (obs-fold): `400`, closed (RFC 9112 section 5.2);
- a second `Host` header, or none in an HTTP/1.1 request: `400`, closed (RFC 9112 section 3.2);
- a request head not complete `header_timeout` seconds after its first byte (also for the second
  and later requests of a kept-alive connection): `408`, closed; with no head deadline (`0`), or a
  longer one, a head begun (if only a byte of its request line) and then silent for `idle_timeout`
  seconds gets the same `408`;
- no byte from the client for `idle_timeout` seconds while a request body is being received:
  `408` (unless fedd had answered already), closed; an upload fedd carries to an endpoint is aborted
  there with it. A kept-alive connection idle that long between requests is closed without a word.
  Seconds in which fedd itself holds the client paused (a carried upload waiting for its endpoint)
  are not the client's silence, and neither is the time fedd takes to answer;
- a connection from an address that already holds `max_connections_per_client` open ones: `503`
  with `Retry-After`, closed;
- an over-long line `431`, too many headers or a malformed line `400` (Twisted's own checks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from fedd.errors import ClientGone
from fedd.twcompat import release_transport, request_line, wrap_channel
from fedd.twtypes import HTTPChannel

log = Logger(namespace="fedd.web")


LINGER_SECONDS = 5.0
ABORT_SECONDS = 5.0  # a refused client that does not read its answer is cut off after this
HEADER_TIMEOUT = 30.0
IDLE_TIMEOUT = 60.0
REFUSAL_LOG_SECONDS = 60.0


def _refusal(code: int, reason: bytes, extra: bytes = b"", text: bytes = b"") -> bytes:
    kind = b"Content-Type: text/plain\r\n" if text else b""
    return b"HTTP/1.1 %d %s\r\n%sContent-Length: %d\r\nConnection: close\r\n%s\r\n%s" % (
        code,
        reason,
        kind,
        len(text),
        extra,
        text,
    )


BAD_REQUEST = _refusal(400, b"Bad Request")
REQUEST_TIMEOUT = _refusal(408, b"Request Timeout")
NO_HOST = _refusal(400, b"Bad Request", text=b"an HTTP/1.1 request needs a Host header (RFC 9112 section 3.2)\n")
BUSY = _refusal(503, b"Service Unavailable", b"Retry-After: 5\r\n")


class FeddChannel(HTTPChannel):
    """HTTP/1.1 channel: early answers to uploads, strict request heads, a deadline for each head.

    Uploads are answered before their body: fedd only says where the bytes go (307), so a `PUT` that
    announces `Expect: 100-continue`, a body over the site's limit or a chunked body is handled as soon
    as its headers are in, and the connection is closed after the answer. Without `Expect`, the client
    may already be sending: the socket is half-closed after the answer and what still arrives is read
    and dropped for a few seconds, so the client sees the 307 rather than a connection reset.

    Request heads are split on LF (`delimiter`) so that a line without its CR is seen at once and
    refused, instead of waiting for a CRLF that never comes; the CR is stripped before Twisted's
    parser sees the line. The head deadline starts with the first byte of each head and ends when the
    last header is in; body and answer time are not counted (the idle timeout covers them).
    """

    delimiter = b"\n"
    _fedd_linger = False
    _fedd_head: IDelayedCall | None = None
    _fedd_begun = False  # a byte of a request head is in, its end is not
    _fedd_refused = False
    _fedd_request_line = True

    def __init__(self, header_timeout: float = HEADER_TIMEOUT) -> None:
        super().__init__()
        self.header_timeout = header_timeout

    # --- strict request heads -------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.line_mode and data and not self._fedd_begun:
            self._fedd_begun = True
            if self.header_timeout > 0:
                self._fedd_head = self.callLater(self.header_timeout, self._head_too_slow)
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if line[-1:] != b"\r" or b"\r" in line[:-1] or line[:1] in (b" ", b"\t"):
            # a bare LF ends this line, a bare CR is inside it, or it folds the previous header (obs-fold:
            # Twisted would join it, RFC 9112 section 5.2 lets a server refuse it instead)
            self._refuse(BAD_REQUEST)
            return
        line = line[:-1]
        if self._fedd_request_line and line:
            self._fedd_request_line = False
            if not line.isascii() or b"\x7f" in line:
                # RFC 9112: the request line is ASCII (Twisted lets bytes 0x7f-0xb0 through, which then
                # break its own log lines); a path's other bytes come %-escaped
                self._refuse(BAD_REQUEST)
                return
        super().lineReceived(line)

    def headerReceived(self, line: bytes) -> bool:
        if line[:5].lower() == b"host:" and self.requests and self.requests[-1].requestHeaders.hasHeader(b"host"):
            self._refuse(BAD_REQUEST)  # RFC 9112 section 3.2: exactly one Host
            return False
        ok: bool = super().headerReceived(line)
        return ok

    def _head_too_slow(self) -> None:
        self._fedd_head = None
        self._refuse(REQUEST_TIMEOUT)

    def timeoutConnection(self) -> None:
        """Twisted's idle timer (the site's `timeOut`, `[server] idle_timeout`) ran out: it runs while
        a request head or body is being received and between requests, restarted by every byte from
        the client, and is off while fedd answers."""
        request = self.requests[-1] if self.requests else None
        stream = getattr(request, "fedd_stream", None)
        if stream is not None and stream.holding_client:
            self.resetTimeout()  # fedd paused the client while the endpoint catches up: not its stall
            return
        if request is not None and not request.startedWriting and not self.line_mode:
            method, uri, _ = request_line(self)  # the body is still being read: not handed on yet
            log.info(
                "{client} {method} {uri}: no byte of the body for {seconds:g}s: 408, connection closed",
                client=getattr(self.transport.getPeer(), "host", "-") if self.transport is not None else "-",
                method=method.decode("latin-1"),
                uri=uri[:200].decode("latin-1"),
                seconds=self.timeOut,
            )
            self._refuse(REQUEST_TIMEOUT)
            if stream is not None:  # a carried upload: aborted at its endpoint now, its handler silent
                request.fedd_gone = True
                stream.fail(ClientGone(f"no byte of the upload for {self.timeOut:g}s"))
        elif self._fedd_begun or (request is not None and not request.startedWriting):
            # a head begun and stalled (the idle timeout came first, or there is no head deadline):
            # answered as the head deadline would, even before its request line is complete
            self._refuse(REQUEST_TIMEOUT)
        else:
            self._refuse(b"")  # idle between requests: closed without a word

    def _head_done(self) -> None:
        self._fedd_begun = False
        if self._fedd_head is not None:
            if self._fedd_head.active():
                self._fedd_head.cancel()
            self._fedd_head = None

    def _refuse(self, answer: bytes) -> None:
        """Answer a request that cannot be parsed (or came too slowly) and close; no log line."""
        self._head_done()
        if self._fedd_refused or self.transport is None:
            return
        self._fedd_refused = True
        self.persistent = False
        self.transport.write(answer)
        self.loseConnection()
        transport = self.transport

        def abort() -> None:  # a client that does not read its answer does not keep the socket
            if getattr(transport, "connected", False):
                transport.abortConnection()  # type: ignore[attr-defined]

        self.callLater(ABORT_SECONDS, abort)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._head_done()
        super().connectionLost(reason)

    # --- uploads answered before their body --------------------------------------------------------

    def allHeadersReceived(self) -> None:
        self._head_done()
        self._fedd_request_line = True  # the next line in line mode starts the next request
        req = self.requests[-1]
        if request_line(self)[2] == b"HTTP/1.1" and not req.requestHeaders.hasHeader(b"host"):
            self._refuse(NO_HOST)  # RFC 9112 section 3.2 (HTTP/1.0 needs none)
            return
        if request_line(self)[0] == b"PUT" and self.length != 0:
            agent = (req.requestHeaders.getRawHeaders(b"user-agent") or [b""])[0]
            if (
                self.length is not None
                and self.length <= (req.proxy_max or 1 << 62)
                and agent.startswith(req.proxy_agents or (b"\0",))
            ):
                # a client known not to follow a 307 with its body (rclone, Go): fedd carries the upload,
                # streamed to the chosen endpoint as it arrives (nothing on disk, the client paced by it)
                req.fedd_proxy = True
                length = self.length
                super().allHeadersReceived()
                req.start_streaming(length)
                return
            expect = (req.requestHeaders.getRawHeaders(b"expect") or [b""])[0].lower()
            if expect == b"100-continue" or self.length is None or self.length > req.max_body:
                req.fedd_early = True
                self._fedd_linger = expect != b"100-continue"
                self.persistent = False
                self.length = 0
                req.parseCookies()
                req.gotLength(0)
                return  # no "100 Continue": the answer comes now, and the body goes elsewhere
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        if self._fedd_refused:
            return  # refused at the end of its head (no Host): never handled
        super().allContentReceived()

    def loseConnection(self) -> None:
        transport = self.transport
        half_close = getattr(transport, "loseWriteConnection", None)
        if (
            not self._fedd_linger
            or half_close is None
            or not hasattr(transport, "abortConnection")
            or not getattr(transport, "connected", False)
        ):
            super().loseConnection()
            return
        self._fedd_linger = False
        release_transport(self)
        self.dataReceived = _drop  # type: ignore[method-assign]
        transport.resumeProducing()  # type: ignore[union-attr]
        half_close()

        def abort() -> None:
            if getattr(transport, "connected", False):
                transport.abortConnection()  # type: ignore[union-attr]

        self.callLater(LINGER_SECONDS, abort)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._refuse(_refusal(431, b"Request Header Fields Too Large"))


def _drop(data: bytes) -> None:
    """Discard the rest of an upload that was redirected."""


class Busy(Protocol):
    """A connection over the per-client limit: `503`, half-closed, what the client sends is dropped,
    cut off after a few seconds (closing outright would reset the connection and lose the answer)."""

    def __init__(self, callLater: Callable[..., Any]) -> None:
        self.callLater = callLater

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        transport.write(BUSY)
        half_close = getattr(transport, "loseWriteConnection", None)
        if half_close is None:
            transport.loseConnection()
            return
        half_close()

        def abort() -> None:
            if getattr(transport, "connected", False):
                transport.abortConnection()  # type: ignore[attr-defined]

        self.callLater(ABORT_SECONDS, abort)

    def dataReceived(self, data: bytes) -> None:
        pass


def channel_for(factory: Any) -> Any:
    """The protocol a site builds per connection: fedd's channel in Twisted's HTTP/1.1-or-2 wrapper."""
    return wrap_channel(FeddChannel(getattr(factory, "header_timeout", HEADER_TIMEOUT)))
