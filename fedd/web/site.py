"""twisted.web plumbing for fedd's front: requests with a body cap, a channel that answers uploads
before their body and refuses malformed or slow request heads, and the site with metrics, the access
log, connection counting (and a per-client limit), the public base of absolute URLs and the drain used
on shutdown.

The channel (`fedd.web.channel`) says what a hostile or broken client gets; `fedd.web.public`
where absolute URLs point.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web import http, server
from twisted.web.resource import Resource

from fedd.errors import ClientGone
from fedd.twcompat import request_line
from fedd.twtypes import Request, Site
from fedd.web.accesslog import AccessLog
from fedd.web.accesslog import record as access_record
from fedd.web.channel import HEADER_TIMEOUT, IDLE_TIMEOUT, REFUSAL_LOG_SECONDS, Busy, FeddChannel, channel_for
from fedd.web.lean import LeanChannel
from fedd.web.metrics import Metrics
from fedd.web.notes import channel_noted
from fedd.web.public import PublicBase, absolute_url
from fedd.web.streambody import StreamBody, transport_of

log = Logger(namespace="fedd.web")
ALREADY_ANSWERED = b"<answered by the handler>"  # a distinct object, compared by identity


class FeddRequest(Request):
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
            channel_noted(self.channel)._fedd_linger = True
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


class FeddSite(Site):
    requestFactory = FeddRequest
    protocol = channel_for

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
        idle_timeout: float = IDLE_TIMEOUT,
        max_connections_per_client: int = 0,
        public: PublicBase | None = None,
        access_file: AccessLog | None = None,
    ) -> None:
        if clock is not None:
            super().__init__(resource, reactor=clock)  # Twisted's idle timeouts on the same clock
        else:
            super().__init__(resource)
        self.header_timeout = header_timeout
        # Twisted's idle timer of each channel (a request body, a kept-alive connection; FeddChannel.
        # timeoutConnection), and the lean front's between requests
        self.timeOut = idle_timeout if idle_timeout > 0 else None
        self.max_per_client = max_connections_per_client
        self.public = public if public is not None else PublicBase()
        self.per_client: dict[str, int] = {}
        self.refused_connections = 0
        self._refusal_logged = float("-inf")
        self.access_log_enabled = access_log
        self.metrics = metrics
        self.clock = clock
        self.access_file = access_file
        self.open_connections = 0
        self.hot_answers = 0  # answered by the lean front (fedd.web.lean) from a cached plan
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
        protocol = LeanChannel(
            self, lambda: server.Site.buildProtocol(self, addr), on_lost=lambda: self._closed(protocol, client)
        )
        self.open_connections += 1
        self.connections.add(protocol)
        if client is not None:
            self.per_client[client] = self.per_client.get(client, 0) + 1
        return protocol

    def _closed(self, protocol: LeanChannel, client: str | None) -> None:
        self.open_connections -= 1
        self.connections.discard(protocol)
        if client is not None:
            left = self.per_client.pop(client, 1) - 1
            if left > 0:
                self.per_client[client] = left

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
        return Busy(self.reactor.callLater)

    @property
    def open_requests(self) -> list[server.Request]:
        """Requests received (or being received) and not answered yet, over all open connections."""
        return [r for p in self.connections for r in p.open_requests()]

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
        if self.access_log_enabled:
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


__all__ = ["ALREADY_ANSWERED", "HEADER_TIMEOUT", "FeddChannel", "FeddRequest", "FeddSite", "PublicBase", "absolute_url"]
