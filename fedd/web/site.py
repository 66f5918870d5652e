"""twisted.web plumbing for fedd's front: requests with a body cap, a channel that answers uploads
before their body (and over-long header lines with 431), and the site with metrics, the access log,
connection counting and the drain used on shutdown."""

from __future__ import annotations

import re
from typing import Any, cast

from twisted.logger import Logger
from twisted.web import http, server
from twisted.web.resource import Resource

from fedd.web.accesslog import AccessLog
from fedd.web.accesslog import record as access_record
from fedd.web.metrics import Metrics

log = Logger(namespace="fedd.web")
ALREADY_ANSWERED = b"<answered by the handler>"  # a distinct object, compared by identity
HOST_RE = re.compile(rb"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


class FeddRequest(server.Request):
    """Refuses request bodies over the site's limit before buffering them."""

    max_body = 1 << 20
    fedd_early = False  # answered before its body (an upload fedd redirects): the body is never read
    fedd_proxy = False  # an upload fedd carries itself (clients that cannot follow a 307 with a body)
    proxy_agents: tuple[bytes, ...] = ()
    proxy_max = 0

    def _limit(self) -> int:
        return self.proxy_max if self.fedd_proxy else self.max_body

    def gotLength(self, length: int | None) -> None:
        if self.fedd_early:
            super().gotLength(0)
            return
        if length is not None and length > self._limit():
            self._too_large()
            return
        self._body_seen = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
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


class _NullSink:
    def write(self, data: bytes) -> None:
        pass

    def seek(self, *args: Any) -> int:
        return 0

    def read(self, *args: Any) -> bytes:
        return b""

    def close(self) -> None:
        pass


LINGER_SECONDS = 5.0


class FeddChannel(http.HTTPChannel):
    """Answers an over-long request or header line with 431 instead of silently closing.

    Uploads are answered before their body: fedd only says where the bytes go (307), so a `PUT` that
    announces `Expect: 100-continue`, a body over the site's limit or a chunked body is handled as soon
    as its headers are in, and the connection is closed after the answer. Without `Expect`, the client
    may already be sending: the socket is half-closed after the answer and what still arrives is read
    and dropped for a few seconds, so the client sees the 307 rather than a connection reset.
    """

    _fedd_linger = False

    def allHeadersReceived(self) -> None:
        req = self.requests[-1]
        if getattr(self, "_command", None) == b"PUT" and self.length != 0:
            agent = (req.requestHeaders.getRawHeaders(b"user-agent") or [b""])[0]
            if (
                self.length is not None
                and self.length <= req.proxy_max
                and agent.startswith(req.proxy_agents or (b"\0",))
            ):
                # a client known not to follow a 307 with its body (rclone, Go): fedd carries the upload,
                # spooled to a temporary file by twisted.web, then streamed to the chosen endpoint
                req.fedd_proxy = True
                super().allHeadersReceived()
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
        if not self._fedd_linger or half_close is None or not hasattr(transport, "abortConnection"):
            super().loseConnection()
            return
        self._fedd_linger = False
        self._networkProducer.unregisterProducer()  # type: ignore[attr-defined]
        self.dataReceived = _drop  # type: ignore[method-assign]
        transport.resumeProducing()  # type: ignore[union-attr]
        half_close()

        def abort() -> None:
            if getattr(transport, "connected", False):
                transport.abortConnection()  # type: ignore[union-attr]

        self.callLater(LINGER_SECONDS, abort)

    def lineLengthExceeded(self, line: bytes) -> None:
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        self.transport.loseConnection()


def _drop(data: bytes) -> None:
    """Discard the rest of an upload that was redirected."""


def _channel(factory: object) -> http._GenericHTTPChannelProtocol:
    return http._GenericHTTPChannelProtocol(FeddChannel())


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
    ) -> None:
        super().__init__(resource)
        self._access_log = access_log
        self.metrics = metrics
        self.clock = clock
        self.access_file: AccessLog | None = None
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
        protocol = super().buildProtocol(addr)
        if protocol is not None:
            self.open_connections += 1
            self.connections.add(protocol)
            lost = protocol.connectionLost

            def connection_lost(reason: Any) -> None:
                self.open_connections -= 1
                self.connections.discard(protocol)
                lost(reason)

            protocol.connectionLost = connection_lost
        return protocol

    @property
    def open_requests(self) -> list[server.Request]:
        """Requests received (or being received) and not answered yet, over all open connections."""
        channels = (getattr(p, "_channel", p) for p in self.connections)
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
    """fedd-local targets are paths: make them absolute on the host the client asked for."""
    if not url.startswith("/"):
        return url
    host = request.getHeader(b"host")
    if host is None or not HOST_RE.match(host.encode("latin-1") if isinstance(host, str) else host):
        addr = request.getHost()
        host_s = f"{addr.host}:{addr.port}" if ":" not in addr.host else f"[{addr.host}]:{addr.port}"
    else:
        host_s = host if isinstance(host, str) else host.decode("ascii")
    scheme = "https" if request.isSecure() else "http"
    return f"{scheme}://{host_s}{url}"
