"""Shared cache tier on memcached, non-blocking (Twisted's memcache protocol), never in the way.

- Each server has a `ClientService` that reconnects with backoff on its own.
- A lookup while a server is disconnected answers "miss" at once; a lookup on a connected server
  has a hard timeout. Either way the caller falls back to the in-process cache and the endpoints.
- "memcached down" is logged once per outage, and its recovery once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from fedd.locate.ring import HashRing
from fedd.twtypes import MemCacheProtocol, MultiService

log = Logger(namespace="fedd.memcached")


class _Protocol(MemCacheProtocol):
    server: _Server

    def connectionMade(self) -> None:
        super().connectionMade()
        self.server.connected(self)

    def connectionLost(self, reason: Any = None) -> None:
        self.server.lost(self)
        super().connectionLost(reason)

    def callLater(self, period: float, func: Callable[[], object]) -> Any:
        # TimeoutMixin's own callLater is the global reactor's: the request timeout runs on the injected clock
        return self.server.clock.callLater(period, func)


class _Server:
    def __init__(self, reactor: Any, address: str, timeout: float) -> None:
        host, _, port = address.rpartition(":")
        self.address = address
        self.clock = reactor
        self.timeout = timeout
        self.proto: _Protocol | None = None
        self.down_logged = False
        self.errors = 0
        factory = Factory.forProtocol(self._build)
        endpoint = TCP4ClientEndpoint(reactor, host.strip("[]"), int(port), timeout=max(1, int(timeout * 4)))

        def retry(attempt: int) -> float:
            if attempt >= 1 and not self.down_logged:
                self.down_logged = True
                log.warn(
                    "memcached {address} unreachable: using the in-process cache alone until it is back",
                    address=address,
                )
            return min(30.0, 0.5 * 2.0 ** min(attempt, 6))

        self.service = ClientService(endpoint, factory, retryPolicy=retry, clock=reactor)

    def _build(self) -> _Protocol:
        proto = _Protocol(timeOut=self.timeout)
        proto.server = self
        return proto

    def connected(self, proto: _Protocol) -> None:
        self.proto = proto
        if self.down_logged:
            log.info("memcached {address} is back", address=self.address)
        self.down_logged = False

    def lost(self, proto: _Protocol) -> None:
        if self.proto is proto:
            self.proto = None
            if not self.down_logged:
                self.down_logged = True
                log.warn("memcached {address} connection lost: using the in-process cache alone", address=self.address)


class Memcached(MultiService):
    """A set of memcached servers; each key lives on one of them, chosen by consistent hashing
    (fedd/locate/ring.py: adding a server moves only the keys it takes over)."""

    name = "memcached"

    def __init__(self, reactor: Any, servers: Sequence[str], timeout: float) -> None:
        super().__init__()
        addresses = list(dict.fromkeys(servers))  # one client per server, however often it is listed
        self._servers = [_Server(reactor, s, timeout) for s in addresses]
        self._ring = HashRing(addresses)
        for server in self._servers:
            server.service.setServiceParent(self)
        self.hits = self.misses = self.errors = 0

    def _server(self, key: bytes) -> _Server:
        return self._servers[self._ring.node(key)]

    def get(self, key: bytes) -> Deferred[bytes | None]:
        proto = self._server(key).proto
        if proto is None:
            self.misses += 1
            return succeed(None)
        return proto.get(key).addCallbacks(self._got, self._failed)

    def _got(self, result: tuple[int, bytes | None]) -> bytes | None:
        value = result[1]
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def _failed(self, failure: Any) -> None:
        self.errors += 1
        return None

    def set(self, key: bytes, value: bytes, ttl: float) -> None:
        proto = self._server(key).proto
        if proto is None or ttl <= 0:
            return
        d = proto.set(key, value, expireTime=max(1, int(ttl)))
        d.addErrback(self._failed)

    def add(self, key: bytes, value: bytes, ttl: float) -> Deferred[bool]:
        """Store only if absent (a cheap lock between processes): True when this call stored it.
        Without a connected server every caller wins (each process then works alone)."""
        proto = self._server(key).proto
        if proto is None:
            return succeed(True)
        d = proto.add(key, value, expireTime=0 if ttl <= 0 else max(1, int(ttl)))  # 0: never expires
        return d.addCallbacks(bool, lambda _: False)

    def connected(self, key: bytes) -> bool:
        """Is the server holding `key` connected now?"""
        return self._server(key).proto is not None

    def incr(self, key: bytes) -> Deferred[int | None]:
        """Atomically add 1 and return the new value; None when the key is missing or no server answers."""
        proto = self._server(key).proto
        if proto is None:
            return succeed(None)
        d = proto.increment(key)
        # twisted's increment fires False for NOT_FOUND
        return d.addCallbacks(
            lambda value: value if isinstance(value, int) and value is not False else None, self._failed
        )

    def delete(self, key: bytes) -> None:
        proto = self._server(key).proto
        if proto is not None:
            proto.delete(key).addErrback(self._failed)

    def to_json(self) -> dict[str, Any]:
        return {
            "servers": {s.address: ("connected" if s.proto is not None else "down") for s in self._servers},
            "hits": self.hits,
            "misses": self.misses,
            "errors": self.errors,
        }
