"""HEADs on a lean HTTP/1.1 client of their own: every stat, every cold locate's fan-out.

A cold locate asks each endpoint mapping the path for a HEAD and answers when the best-ranked one has
confirmed the file; on the twisted.web Agent each HEAD cost URI parsing, the request's and the
response's objects, the client parser's state machine and the pool's bookkeeping: about 40% of fedd's
busy time on a cold request (py-spy; benchmarks/cold_locate.py). A HEAD's answer has no body
(RFC 9110 9.3.2), so reading it is finding the end of its head: this client writes the request on a
pooled persistent connection and parses the status line and the header fields itself.

What it keeps from the Agent path (`HttpClient` used it, and still does for every other request):
- one pool per (scheme, host, port) of up to `per_host` idle connections, reused most recent first;
- a request made on a reused connection that is closed before any byte of its answer is sent once
  more on a new connection (the server closed the idle connection as the request left: Agent's
  `retryAutomatically`);
- connecting through `DirectEndpoints` (IP literals without the resolver, TLS with the same policy);
- failures raised as twisted.web's `ResponseNeverReceived`/`ResponseFailed` and connection errors as
  they are, so `HttpClient` words them as before; cancelling (the timeout) aborts the connection.
An answer is not trusted past its head: interim 1xx answers are skipped, an answer that is not
HTTP/1.x, a head over 64 KiB or bytes after a HEAD's answer make the connection close (the first two
fail the request). URLs with user info and header values with line breaks are not taken here
(`head` returns None, and the caller uses the Agent, which refuses or sends them as before).
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed, ResponseNeverReceived
from twisted.web.http_headers import Headers

from fedd.endpoints.connect import DirectEndpoints
from fedd.endpoints.response import HttpResponse

MAX_HEAD = 64 * 1024  # an answer's head longer than this is refused (Apache's own limit is 8 KiB a field)
IDLE_KEPT = 240.0  # seconds an idle connection is kept for reuse (as HTTPConnectionPool's cachedConnectionTimeout)
DEFAULT_PORTS = {"http": 80, "https": 443}

Key = tuple[str, str, int]  # scheme, host, port

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_STATUS = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: .*)?")
_UNSAFE = re.compile(r"[\r\n\x00]")


class MalformedAnswer(Exception):
    """The endpoint's answer is not an HTTP/1.x answer to a HEAD."""


class HeadPool:
    """HEAD requests on persistent connections, pooled per (scheme, host, port)."""

    def __init__(self, reactor: Any, endpoints: DirectEndpoints, *, per_host: int = 16) -> None:
        self._clock = reactor
        self._endpoints = endpoints
        self._per_host = per_host
        self._idle: dict[Key, list[_HeadConnection]] = {}
        self._targets: dict[Key, Any] = {}  # the connect endpoint of each key (a TLS one keeps its context)

    def head(self, url: str, headers: dict[str, str]) -> Deferred[HttpResponse] | None:
        """The answer to a HEAD of `url` (an ASCII URL sent as it is), or None when this client does not
        take it (user info in the URL, a scheme other than http/https, a header with a line break)."""
        target = _split(url)
        if target is None:
            return None
        key, host_value, path = target
        request = _request(path, host_value, headers)
        if request is None:
            return None
        return _Exchange(self, key, request).result

    def take(self, key: Key) -> _HeadConnection | None:
        """An idle connection of `key` used within `IDLE_KEPT`, the most recently used first."""
        idle = self._idle.get(key)
        now = self._clock.seconds()
        while idle:
            connection = idle.pop()
            if connection.transport is None or connection.lost:
                continue
            if now - connection.idle_since > IDLE_KEPT:
                connection.transport.loseConnection()
                continue
            return connection
        return None

    def connect(self, key: Key) -> Deferred[_HeadConnection]:
        endpoint = self._targets.get(key)
        if endpoint is None:
            scheme, host, port = key
            endpoint = self._targets[key] = self._endpoints.endpoint(scheme.encode(), host.encode(), port)
        connected: Deferred[Any] = endpoint.connect(_Factory(self, key))  # fires with the _HeadConnection
        return connected

    def release(self, connection: _HeadConnection) -> None:
        """A connection whose answer has been read whole and that the server keeps open."""
        idle = self._idle.setdefault(connection.key, [])
        if len(idle) >= self._per_host:
            _transport(connection).loseConnection()
            return
        connection.idle_since = self._clock.seconds()
        idle.append(connection)

    def forget(self, connection: _HeadConnection) -> None:
        idle = self._idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)

    def close(self) -> Deferred[None]:
        """Close the idle connections (one in use closes or comes back when its answer is in)."""
        idle = [c for kept in self._idle.values() for c in kept if c.transport is not None and not c.lost]
        self._idle.clear()
        waits = []
        for connection in idle:
            gone: Deferred[None] = Deferred()
            connection.on_lost = gone
            _transport(connection).loseConnection()
            waits.append(gone)
        if not waits:
            return succeed(None)
        closed: Deferred[Any] = gatherResults(waits)
        return closed.addCallback(lambda _: None)


class _Exchange:
    """One HEAD: a connection taken or made, the request written, the answer (or the failure) given to
    `result`; sent once more on a new connection when a reused one closed before answering."""

    def __init__(self, pool: HeadPool, key: Key, request: bytes) -> None:
        self.pool = pool
        self.key = key
        self.request = request
        self.result: Deferred[HttpResponse] = Deferred(self._cancel)
        self.connection: _HeadConnection | None = None
        self._connecting: Deferred[_HeadConnection] | None = None
        self._resent = False
        connection = pool.take(key)
        if connection is not None:
            connection.send(self)
        else:
            self._connect()

    def _connect(self) -> None:
        connecting = self._connecting = self.pool.connect(self.key)
        connecting.addCallbacks(self._connected, self._not_connected)

    def _connected(self, connection: _HeadConnection) -> None:
        self._connecting = None
        if self.result.called:  # cancelled while connecting (a TLS endpoint may still hand it over)
            _transport(connection).loseConnection()
            return
        connection.send(self)

    def _not_connected(self, failure: Failure) -> None:
        self._connecting = None
        if not self.result.called:
            self.result.errback(failure)

    def answered(self, response: HttpResponse) -> None:
        self.connection = None
        if not self.result.called:
            self.result.callback(response)

    def failed(self, reason: Failure, *, nothing_received: bool, reused: bool) -> None:
        self.connection = None
        if self.result.called:
            return
        if nothing_received and reused and not self._resent:
            self._resent = True
            self._connect()
            return
        if nothing_received:
            self.result.errback(Failure(ResponseNeverReceived([reason])))
        else:
            self.result.errback(Failure(ResponseFailed([reason])))

    def _cancel(self, result: Deferred[HttpResponse]) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        connection, self.connection = self.connection, None
        if connection is not None:  # its answer will never be read: the connection cannot be reused
            connection.exchange = None
            connection.abort()


class _HeadConnection(Protocol):
    def __init__(self, pool: HeadPool, key: Key) -> None:
        self.pool = pool
        self.key = key
        self.exchange: _Exchange | None = None
        self.buffer = b""
        self.received = False
        self.reused = False  # it answered a request before this one
        self.lost = False
        self.idle_since = 0.0
        self.on_lost: Deferred[None] | None = None

    def send(self, exchange: _Exchange) -> None:
        self.exchange = exchange
        exchange.connection = self
        self.received = False
        _transport(self).write(exchange.request)

    def dataReceived(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:  # bytes nobody asked for: the connection cannot be trusted any more
            self.abort()
            return
        self.received = True
        buffer = self.buffer + data if self.buffer else data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    self._malformed(f"an answer's head over {MAX_HEAD} bytes")
                else:
                    self.buffer = buffer
                return
            try:
                keeps_alive, code, headers = _parse(buffer[:end])
            except MalformedAnswer as exc:
                self._malformed(str(exc))
                return
            buffer = buffer[end + 4 :]
            if code >= 200:
                break
        self.buffer = b""
        self.exchange = None
        self.reused = True
        if keeps_alive and not buffer:
            self.pool.release(self)
        else:  # closing, or bytes after an answer that has no body: not a connection to reuse
            _transport(self).loseConnection()
        exchange.answered(HttpResponse(code, headers, b""))

    def _malformed(self, why: str) -> None:
        exchange, self.exchange = self.exchange, None
        self.abort()
        if exchange is not None:
            exchange.failed(Failure(MalformedAnswer(why)), nothing_received=False, reused=self.reused)

    def abort(self) -> None:
        if self.transport is not None and not self.lost:
            _transport(self).abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        self.pool.forget(self)
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.failed(reason, nothing_received=not self.received, reused=self.reused)
        on_lost, self.on_lost = self.on_lost, None
        if on_lost is not None:
            on_lost.callback(None)


class _Factory(Factory):
    noisy = False

    def __init__(self, pool: HeadPool, key: Key) -> None:
        self.pool = pool
        self.key = key

    def buildProtocol(self, addr: Any) -> _HeadConnection:
        return _HeadConnection(self.pool, self.key)


def _transport(connection: Protocol) -> Any:
    """The connection's transport (TCP or TLS: both can abort)."""
    transport = connection.transport
    assert transport is not None
    return transport


def _split(url: str) -> tuple[Key, str, str] | None:
    """(key, Host header value, request target) of a plain URL, or None for one this client leaves."""
    scheme, sep, rest = url.partition("://")
    default = DEFAULT_PORTS.get(scheme)
    if not sep or default is None:
        return None
    cut = len(rest)
    for mark in "/?":
        at = rest.find(mark)
        if 0 <= at < cut:
            cut = at
    netloc, target = rest[:cut], rest[cut:]
    if not target.startswith("/"):
        target = "/" + target
    if "@" in netloc:
        return None
    host, colon, port_text = netloc.rpartition(":")
    if not colon:
        host, port = netloc, default
    elif port_text.isdigit() and port_text.isascii():
        port = int(port_text)
    else:
        return None
    if not host:
        return None
    host_value = host if port == default else f"{host}:{port}"  # as Agent's Host: no default port
    return (scheme, host, port), host_value, target


def _request(target: str, host_value: str, headers: dict[str, str]) -> bytes | None:
    lines = [f"HEAD {target} HTTP/1.1"]
    if not any(name.lower() == "host" for name in headers):
        lines.append(f"Host: {host_value}")
    for name, value in headers.items():
        if _UNSAFE.search(value) or not _TOKEN.fullmatch(name.encode()):
            return None
        lines.append(f"{name}: {value}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode()


def _parse(head: bytes) -> tuple[bool, int, Headers]:
    """(whether the connection stays open, the status code, the header fields) of an answer's head."""
    lines = head.split(b"\r\n")
    status = _STATUS.fullmatch(lines[0])
    if status is None:
        raise MalformedAnswer(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    code = int(status.group(2))
    if code < 100 or code == 101:
        raise MalformedAnswer(f"status {code} to a HEAD")
    headers = Headers()
    connection: list[bytes] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):  # obsolete line folding included (RFC 9112 5.2)
            raise MalformedAnswer(f"not a header field: {line[:80]!r}")
        value = value.strip(b" \t")
        headers.addRawHeader(name, value)
        if name.lower() == b"connection":
            connection.extend(token.strip().lower() for token in value.split(b","))
    if status.group(1) == b"1":
        keeps_alive = b"close" not in connection
    else:
        keeps_alive = b"keep-alive" in connection
    return keeps_alive, code, headers
