"""The non-blocking HTTP client the endpoint kinds share: treq with a total timeout and a body cap on
every call, an injectable client (StubTreq in tests), and streamed bodies paced by a `Valve`."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, cast

import treq
from twisted.internet import defer, error
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults, succeed
from twisted.internet.error import ConnectError, ConnectingCancelledError
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, RequestGenerationFailed, ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from fedd.endpoints.connect import DirectEndpoints
from fedd.endpoints.heads import HeadPool
from fedd.endpoints.response import HttpResponse as HttpResponse  # the answer type, where it was defined before
from fedd.errors import ClientGone, EndpointError, describe

# an ASCII URL treq (hyperlink) would send unchanged: already percent-encoded, no fragment, no IPv6 literal
_PLAIN_URL = re.compile(r"[A-Za-z0-9\-._~:/?&=%+,;!$'()*@]*")


def pooled_agent(
    reactor: Any,
    *,
    timeout: float,
    tls_policy: Any = None,
    connections_per_host: int = 16,
    endpoints: DirectEndpoints | None = None,
) -> tuple[Agent, HTTPConnectionPool]:
    """The Agent an `HttpClient` uses outside tests: a persistent pool (closed with the `HttpClient`),
    connecting within `timeout` (to an IP address without a resolver thread: fedd.endpoints.connect),
    checking certificates with `tls_policy` (or through the `endpoints` given, made so)."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = connections_per_host
    pool.retryAutomatically = True
    if endpoints is None:
        endpoints = DirectEndpoints(reactor, timeout=timeout, tls_policy=tls_policy)
    return Agent.usingEndpointFactory(reactor, endpoints, pool=pool), pool


def pooled_client(
    reactor: Any, *, timeout: float, tls_policy: Any = None, connections_per_host: int = 16
) -> tuple[treq.client.HTTPClient, HTTPConnectionPool]:
    """treq over a `pooled_agent`."""
    agent, pool = pooled_agent(
        reactor, timeout=timeout, tls_policy=tls_policy, connections_per_host=connections_per_host
    )
    return treq.client.HTTPClient(agent), pool


class HttpClient:
    """treq with a total timeout and a body-size cap on every call.

    `client`: a treq-compatible client (`treq.client.HTTPClient`, or `treq.testing.StubTreq` in
    tests, which answers from a twisted.web resource in process); without one, a pooled client is
    built on `reactor` (`pooled_client`). `reactor` only needs to be an `IReactorTime` then."""

    def __init__(
        self,
        reactor: Any,
        *,
        endpoint: str,
        timeout: float,
        tls_policy: Any = None,
        max_body: int = 256 << 20,
        connections_per_host: int = 16,
        client: Any = None,
    ) -> None:
        self._clock: IReactorTime = reactor
        self._endpoint = endpoint
        self.timeout = timeout
        self._max_body = max_body
        self._pool: HTTPConnectionPool | None = None
        # HEADs (stat, the cold locate's fan-out) go to the lean HEAD client (fedd.endpoints.heads), or
        # where it leaves one, to the Agent itself: treq's wrapping (URL parsing, cookie jar, gzip
        # decoding, response buffering) is most of a HEAD's cost and none of it applies
        self._agent: Agent | None = None
        self._heads: HeadPool | None = None
        if client is None:
            endpoints = DirectEndpoints(reactor, timeout=timeout, tls_policy=tls_policy)
            self._agent, self._pool = pooled_agent(
                reactor, timeout=timeout, connections_per_host=connections_per_host, endpoints=endpoints
            )
            self._heads = HeadPool(reactor, endpoints, per_host=connections_per_host)
            client = treq.client.HTTPClient(self._agent)
        self._http = client

    def request(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        body: bytes | IBodyProducer | None = None,
        *,
        timeout: float | None = None,
        read_body: bool = True,
        sink: Callable[[bytes], None] | None = None,
        valve: Valve | None = None,
    ) -> Deferred[HttpResponse]:
        """`sink`: a 2xx answer's body goes to it chunk by chunk as it arrives (never held whole);
        `valve`: pauses reading that body while whoever the sink writes to cannot take more."""
        d: Deferred[HttpResponse] | None = None
        if method == "HEAD" and body is None and self._agent is not None and _PLAIN_URL.fullmatch(url):
            if self._heads is not None:
                d = self._heads.head(url, headers or {})
            if d is None:
                d = self._head(self._agent, url, headers or {})
        if d is None:
            d = ensureDeferred(self._request(method, url, headers or {}, body, read_body, sink, valve))
        d.addTimeout(timeout or self.timeout, self._clock, onTimeoutCancel=self._timed_out(method))
        d.addErrback(self._translate, method)
        return d

    @staticmethod
    def _head(agent: Agent, url: str, headers: dict[str, str]) -> Deferred[HttpResponse]:
        """A HEAD straight on the pooled Agent: no body to read or decode (the connection goes back to
        the pool when the answer's headers are in); redirects are not followed, as with treq."""
        hdrs = Headers({k.encode(): [v.encode()] for k, v in headers.items()})
        requested: Deferred[Any] = agent.request(b"HEAD", url.encode("ascii"), hdrs, None)
        return requested.addCallback(_headers_only)

    async def _request(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: Any,
        read_body: bool,
        sink: Any = None,
        valve: Valve | None = None,
    ) -> HttpResponse:
        hdrs = Headers({k.encode(): [v.encode()] for k, v in headers.items()})
        # unbuffered for a sink: treq otherwise keeps every chunk of the body for later readers
        response = await self._http.request(
            method, url, headers=hdrs, data=body, allow_redirects=False, unbuffered=sink is not None
        )
        data = b""
        if sink is not None and 200 <= response.code < 300:
            if valve is None:
                await treq.collect(response, sink)
            else:
                done: Deferred[None] = Deferred()
                response.deliverBody(_ValvedBody(sink, valve, done))
                await done
        elif read_body and method != "HEAD":
            chunks: list[bytes] = []
            size = 0

            def collect(chunk: bytes) -> None:
                nonlocal size
                size += len(chunk)
                if size > self._max_body:
                    raise EndpointError(self._endpoint, f"answer larger than {self._max_body} bytes")
                chunks.append(chunk)

            await treq.collect(response, collect)
            data = b"".join(chunks)
        else:
            await treq.collect(response, _discard)
        return HttpResponse(response.code, response.headers, data)

    def _timed_out(self, method: str) -> Any:
        def replace(result: Any, timeout: float) -> Failure:
            return Failure(EndpointError(self._endpoint, f"{method} timed out after {timeout:g}s"))

        return replace

    def _translate(self, failure: Failure, method: str) -> Failure:
        if failure.check(EndpointError):
            return failure
        if failure.check(RequestGenerationFailed):
            # the request body failed: the client whose upload it was went away (not the endpoint)
            for reason in getattr(failure.value, "reasons", []):
                if isinstance(reason, Failure) and reason.check(ClientGone):
                    return reason
        if failure.check(defer.TimeoutError, error.TimeoutError, defer.CancelledError):
            reason = f"{method} timed out after {self.timeout:g}s"
        elif failure.check(ConnectError, ConnectingCancelledError):
            reason = f"cannot connect: {failure.getErrorMessage() or describe(failure)}"
        elif failure.check(ResponseFailed):
            reason = "connection lost or malformed HTTP answer"
        else:
            reason = describe(failure)
        return Failure(EndpointError(self._endpoint, reason))

    def close(self) -> Deferred[None]:
        """Close the pooled connections (an injected client belongs to whoever made it)."""
        if self._pool is None:
            return succeed(None)
        closing = [self._pool.closeCachedConnections()]  # HTTPConnectionPool is unannotated
        if self._heads is not None:
            closing.append(self._heads.close())
        closed: Deferred[Any] = gatherResults(closing)
        return closed.addCallback(lambda _: None)


@implementer(IPushProducer)
class Valve:
    """Flow control for a body passed on as it arrives (a streamed listing): the consumer at the far
    end (the client's connection) pauses and resumes the endpoints' answers feeding it."""

    def __init__(self) -> None:
        self.paused = False
        self._producers: list[Any] = []
        self._waiters: list[Deferred[None]] = []

    def attach(self, producer: Any) -> None:
        self._producers.append(producer)
        if self.paused:
            producer.pauseProducing()

    def detach(self, producer: Any) -> None:
        if producer in self._producers:
            self._producers.remove(producer)

    def wait(self) -> Deferred[None]:
        """Fires when the consumer takes more (at once when it does now): for page-by-page readers."""
        if not self.paused:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d

    def pauseProducing(self) -> None:
        self.paused = True
        for producer in list(self._producers):
            producer.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        for producer in list(self._producers):
            producer.resumeProducing()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def stopProducing(self) -> None:
        self.resumeProducing()  # the consumer is gone: let the readers run to their end


class _ValvedBody(TwistedProtocol):
    """A response body handed to `sink` chunk by chunk, its transport paused by the `valve`."""

    def __init__(self, sink: Callable[[bytes], None], valve: Valve, done: Deferred[None]) -> None:
        self._sink = sink
        self._valve = valve
        self._done: Deferred[None] | None = done

    def connectionMade(self) -> None:
        self._valve.attach(self.transport)

    def dataReceived(self, data: bytes) -> None:
        if self._done is None:
            return
        try:
            self._sink(data)
        except BaseException:
            done, self._done = self._done, None
            self._valve.detach(self.transport)
            if self.transport is not None:
                cast(IPushProducer, self.transport).stopProducing()  # a TCP or TLS connection: a push producer
            done.errback(Failure())

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._valve.detach(self.transport)
        done, self._done = self._done, None
        if done is None:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            done.callback(None)
        else:
            done.errback(reason)


def _headers_only(response: Any) -> Deferred[HttpResponse]:
    """A HEAD's answer once its (empty) body has ended, which is at once."""
    ended: Deferred[None] = treq.collect(response, _discard)
    return ended.addCallback(lambda _: HttpResponse(response.code, response.headers, b""))


def _discard(chunk: bytes) -> None:
    """Drop a body we did not ask for (so the connection can go back to the pool)."""
