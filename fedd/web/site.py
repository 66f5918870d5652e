"""twisted.web plumbing for fedd's front: requests with a body cap, a channel that answers uploads
before their body and refuses malformed or slow request heads, and the site with metrics, the access
log, connection counting (and a per-client limit), the public base of absolute URLs and the drain used
on shutdown.

What a hostile or broken client gets (never a 500, never a traceback in the log):
- a line of the request head ending in a bare LF (or holding a bare CR): `400` at once, connection
  closed (RFC 9112 section 2.2 allows refusing it; accepting it would let fedd and a proxy in front
  of it disagree about where a request ends);
- a header line folded onto the next one (obs-fold): `400`, closed (RFC 9112 section 5.2);
- a second `Host` header: `400`, closed (RFC 9112 section 3.2);
- a request head not complete `header_timeout` seconds after its first byte (also for the second
  and later requests of a kept-alive connection): `408`, closed;
- a connection from an address that already holds `max_connections_per_client` open ones: `503`
  with `Retry-After`, closed;
- an over-long line `431`, too many headers or a malformed line `400` (Twisted's own checks).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import Resource

from fedd.errors import ClientGone
from fedd.twcompat import inner_channel, release_transport, request_line, wrap_channel
from fedd.web.accesslog import AccessLog
from fedd.web.accesslog import record as access_record
from fedd.web.metrics import Metrics
from fedd.web.streambody import StreamBody, transport_of

log = Logger(namespace="fedd.web")
ALREADY_ANSWERED = b"<answered by the handler>"  # a distinct object, compared by identity
HOST_RE = re.compile(rb"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


class FeddRequest(server.Request):
    """Refuses request bodies over the site's limit before buffering them."""

    max_body = 1 << 20
    fedd_early = False  # answered before its body (an upload fedd redirects): the body is never read
    fedd_proxy = False  # an upload fedd carries itself (clients that cannot follow a 307 with a body)
    fedd_stream: StreamBody | None = None  # that upload's body, passed on as it arrives
    proxy_agents: tuple[bytes, ...] = ()
    proxy_max = 0  # 0: no limit but the endpoint's

    def start_streaming(self, length: int) -> None:
        """Handle this request now, at the end of its head: its body is passed on (`fedd_stream`) to
        the endpoint as it arrives, never spooled, with the client paused while the endpoint lags."""
        channel = self.channel
        self.fedd_stream = StreamBody(length, transport_of(channel))
        self.content = _NullSink()
        command, path, version = request_line(channel)
        server.Request.requestReceived(self, command, path, version)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.fedd_stream is not None:
            self.fedd_stream.end()  # the whole body is in: handled already, at the end of its head
            return
        super().requestReceived(command, path, version)

    def finish(self) -> None:
        stream = self.fedd_stream
        if stream is not None and not stream.complete and self.channel is not None:
            # answered before the whole body arrived (refused, or the endpoint failed): the rest of
            # the body must not be read as the next request; it is dropped and the connection closed
            stream.fail(ClientGone("answered before the end of the upload"))
            self.channel.persistent = False
            self.channel._fedd_linger = True  # type: ignore[attr-defined]
        super().finish()

    fedd_gone = False  # the client's connection was lost before the answer

    def connectionLost(self, reason: Any) -> None:
        self.fedd_gone = True
        super().connectionLost(reason)  # first: whoever learns of the failure below sees no channel
        if self.fedd_stream is not None:
            self.fedd_stream.fail(ClientGone("the client's connection was lost during the upload"))

    def __repr__(self) -> str:
        # Twisted's own repr decodes the URI as ASCII and fails (a traceback in the log) on other bytes
        method = self.method.decode("latin-1", "replace") if isinstance(self.method, bytes) else self.method
        uri = self.uri.decode("ascii", "backslashreplace") if isinstance(self.uri, bytes) else self.uri
        return f"<Request {method} {uri[:200]!r}>"

    def render(self, resrc: Any) -> None:
        if self.method == b"HEAD":
            resrc = _HeadOf(resrc)  # no "HEAD request is returning a message body" line per HEAD
        super().render(resrc)

    def _limit(self) -> int:
        if self.fedd_proxy:
            return self.proxy_max or (1 << 62)
        return self.max_body

    def gotLength(self, length: int | None) -> None:
        if self.fedd_early:
            super().gotLength(0)
            return
        if self.fedd_proxy:
            self.content = _NullSink()  # streamed (start_streaming): no buffer, no temporary file
            return
        if length is not None and length > self._limit():
            self._too_large()
            return
        self._body_seen = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.fedd_stream is not None:
            self.fedd_stream.feed(data)
            return
        self._body_seen = getattr(self, "_body_seen", 0) + len(data)
        if self._body_seen > self._limit():
            self._too_large()
            return
        super().handleContentChunk(data)

    def _too_large(self) -> None:
        transport = self.channel.transport if self.channel is not None else None
        if transport is not None:
            transport.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            transport.loseConnection()
        self.content = _NullSink()
        self.channel = None  # type: ignore[assignment]


class _HeadOf:
    """A resource's answer to HEAD: the body it rendered becomes a Content-Length, not a log line."""

    def __init__(self, resource: Any) -> None:
        self.resource = resource

    def render(self, request: server.Request) -> Any:
        body = self.resource.render(request)
        if isinstance(body, bytes) and body:
            request.setHeader(b"content-length", b"%d" % len(body))
            return b""
        return body


class _NullSink:
    def write(self, data: bytes) -> None:
        pass

    def tell(self) -> int:
        return 0

    def seek(self, *args: Any) -> int:
        return 0

    def read(self, *args: Any) -> bytes:
        return b""

    def close(self) -> None:
        pass


LINGER_SECONDS = 5.0
ABORT_SECONDS = 5.0  # a refused client that does not read its answer is cut off after this
HEADER_TIMEOUT = 30.0
REFUSAL_LOG_SECONDS = 60.0


def _refusal(code: int, reason: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %d %s\r\nContent-Length: 0\r\nConnection: close\r\n%s\r\n" % (code, reason, extra)


BAD_REQUEST = _refusal(400, b"Bad Request")
REQUEST_TIMEOUT = _refusal(408, b"Request Timeout")
BUSY = _refusal(503, b"Service Unavailable", b"Retry-After: 5\r\n")


class FeddChannel(http.HTTPChannel):
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
    _fedd_refused = False
    _fedd_request_line = True

    def __init__(self, header_timeout: float = HEADER_TIMEOUT) -> None:
        super().__init__()
        self.header_timeout = header_timeout

    # --- strict request heads -------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.line_mode and self._fedd_head is None and data and self.header_timeout > 0:
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

    def _head_done(self) -> None:
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


class _Busy(Protocol):
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


def _channel(factory: Any) -> Any:
    return wrap_channel(FeddChannel(getattr(factory, "header_timeout", HEADER_TIMEOUT)))


class PublicBase:
    """Where the absolute URLs fedd builds (redirects to its own local data, `Link`, metalink) point.

    - `public_url` set: always there; the client's `Host` is never copied into an answer.
    - `allowed_hosts` set: a `Host` in the list (a name alone matches any port, `name:port` only that
      port) is used as sent; any other goes to `public_url`, or to the first name of the list.
    - neither: the client's `Host` if it is a well-formed host[:port] (HOST_RE), else the address the
      client connected to. A client can then make fedd name any host in the answers it gets itself
      (a shared cache in front of fedd could keep such an answer: set one of the two above).
    """

    MEMO_ENTRIES = 4096

    def __init__(self, public_url: str = "", allowed_hosts: tuple[str, ...] = ()) -> None:
        self.public_url = public_url.rstrip("/")
        self.allowed = tuple(h.lower() for h in allowed_hosts)
        self._names = frozenset(h for h in self.allowed if not _has_port(h))
        self._exact = frozenset(h for h in self.allowed if _has_port(h))
        self._memo: dict[tuple[bytes | None, bool], str | None] = {}

    def base(self, host: bytes | None, secure: bool) -> str | None:
        """`scheme://host[:port]` for this Host value, or None for "the address the client reached"."""
        key = (host, secure)
        try:
            return self._memo[key]
        except KeyError:
            pass
        value = self._compute(host, secure)
        if len(self._memo) >= self.MEMO_ENTRIES:
            self._memo.clear()
        self._memo[key] = value
        return value

    def _compute(self, host: bytes | None, secure: bool) -> str | None:
        scheme = "https" if secure else "http"
        valid = host is not None and HOST_RE.match(host) is not None
        if not self.public_url and not self.allowed:
            return f"{scheme}://{host.decode('ascii')}" if valid and host is not None else None
        if valid and host is not None:
            name = host.decode("ascii").lower()
            if name in self._exact or _strip_port(name) in self._names:
                return f"{scheme}://{name}"
        if self.public_url:
            return self.public_url
        return f"{scheme}://{self.allowed[0]}"


def _has_port(host: str) -> bool:
    return host.rpartition("]")[2].count(":") == 1 if host.startswith("[") else ":" in host


def _strip_port(host: str) -> str:
    return host.rpartition(":")[0] if _has_port(host) else host


class FeddSite(server.Site):
    requestFactory = FeddRequest
    protocol = _channel

    def __init__(
        self,
        resource: Resource,
        *,
        max_body: int,
        access_log: bool,
        metrics: Metrics | None = None,
        clock: Any = None,
        proxy_agents: tuple[str, ...] = (),
        proxy_max: int = 0,
        header_timeout: float = HEADER_TIMEOUT,
        max_connections_per_client: int = 0,
        public: PublicBase | None = None,
        access_file: AccessLog | None = None,
    ) -> None:
        if clock is not None:
            super().__init__(resource, reactor=clock)  # Twisted's idle timeouts on the same clock
        else:
            super().__init__(resource)
        self.header_timeout = header_timeout
        self.max_per_client = max_connections_per_client
        self.public = public if public is not None else PublicBase()
        self.per_client: dict[str, int] = {}
        self.refused_connections = 0
        self._refusal_logged = float("-inf")
        self._access_log = access_log
        self.metrics = metrics
        self.clock = clock
        self.access_file = access_file
        self.open_connections = 0
        self.connections: set[Any] = set()  # open ones: on shutdown, the drain waits for their requests
        self.draining = False
        self.requestFactory = cast(
            type[FeddRequest],
            type(
                "Request",
                (FeddRequest,),
                {
                    "max_body": max_body,
                    "proxy_agents": tuple(a.encode() for a in proxy_agents if a),
                    "proxy_max": proxy_max,
                },
            ),
        )

    def buildProtocol(self, addr: Any) -> Any:
        client = addr.host if self.max_per_client and isinstance(addr, IPv4Address | IPv6Address) else None
        if client is not None and self.per_client.get(client, 0) >= self.max_per_client:
            return self._busy(client)
        protocol = super().buildProtocol(addr)
        if protocol is not None:
            self.open_connections += 1
            self.connections.add(protocol)
            if client is not None:
                self.per_client[client] = self.per_client.get(client, 0) + 1
            lost = protocol.connectionLost

            def connection_lost(reason: Any) -> None:
                self.open_connections -= 1
                self.connections.discard(protocol)
                if client is not None:
                    left = self.per_client.pop(client, 1) - 1
                    if left > 0:
                        self.per_client[client] = left
                lost(reason)

            protocol.connectionLost = connection_lost
        return protocol

    def _busy(self, client: str) -> Protocol:
        self.refused_connections += 1
        now = self.reactor.seconds()
        if now - self._refusal_logged >= REFUSAL_LOG_SECONDS:  # one line a minute, however hard the flood
            self._refusal_logged = now
            log.warn(
                "refusing connections over max_connections_per_client={limit} (from {client}; {n} refused so far)",
                limit=self.max_per_client,
                client=client,
                n=self.refused_connections,
            )
        return _Busy(self.reactor.callLater)

    @property
    def open_requests(self) -> list[server.Request]:
        """Requests received (or being received) and not answered yet, over all open connections."""
        channels = (inner_channel(p) for p in self.connections)
        return [r for c in channels for r in getattr(c, "requests", ())]

    def getResourceFor(self, request: server.Request) -> Any:
        if self.draining:  # a request that came in on a kept-alive connection during the drain
            _close_after(request)
        return super().getResourceFor(request)

    def drain(self) -> None:
        """Shutting down: no more keep-alive, each connection closes after its current answer."""
        self.draining = True
        for request in self.open_requests:
            _close_after(request)

    def log(self, request: http.Request) -> None:
        started = getattr(request, "fedd_started", None)
        if self.metrics is not None:
            elapsed = self.clock.seconds() - started if started is not None and self.clock is not None else None
            self.metrics.request(request.method, request.code, elapsed)
        if self.access_file is not None and self.clock is not None:
            self.access_file.write(access_record(request, self.clock.seconds(), started))
        if self._access_log:
            log.info(
                "{client} {method} {uri} {code}",
                client=request.getClientAddress().host if request.getClientAddress() else "-",
                method=request.method.decode("latin-1"),
                uri=request.uri.decode("latin-1"),
                code=request.code,
            )


def _close_after(request: server.Request) -> None:
    if request.channel is not None:
        request.channel.persistent = False
    if not request.startedWriting:
        request.setHeader(b"connection", b"close")


def absolute_url(request: server.Request, url: str) -> str:
    """fedd-local targets are paths: make them absolute on fedd's public base (see `PublicBase`).

    The base is worked out once per request (kept on it) and memoised per Host value by the site."""
    if not url.startswith("/"):
        return url
    base: str | None = getattr(request, "fedd_base", None)
    if base is None:
        site = getattr(request, "site", None)
        public: PublicBase = getattr(site, "public", None) or _DEFAULT_PUBLIC
        host = request.requestHeaders.getRawHeaders(b"host")
        base = public.base(host[0] if host else None, request.isSecure())
        if base is None:
            addr = request.getHost()
            scheme = "https" if request.isSecure() else "http"
            base = (
                f"{scheme}://{addr.host}:{addr.port}"
                if ":" not in addr.host
                else f"{scheme}://[{addr.host}]:{addr.port}"
            )
        request.fedd_base = base  # type: ignore[attr-defined]
    return base + url


_DEFAULT_PUBLIC = PublicBase()
