"""Where events go after the outbox: an AMQP 0-9-1 broker (RabbitMQ) or a JSON-lines spool file.

A sink's `publish(rows)` fires once every row is safely delivered (broker: publisher confirms; spool:
written and flushed), and fails otherwise; the outbox keeps the rows until then.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import pika
from pika.adapters.twisted_connection import TwistedProtocolConnection
from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from fedd.events.outbox import Row

log = Logger(namespace="fedd.events")


class Sink(Protocol):
    def publish(self, rows: list[Row]) -> Deferred[None]: ...

    @property
    def connected(self) -> bool: ...

    def describe(self) -> str: ...


class NotConnected(Exception):
    pass


class AmqpSink:
    """Publishes to a durable topic exchange with persistent messages and publisher confirms."""

    def __init__(self, reactor: Any, url: str, exchange: str, *, timeout: float = 10.0) -> None:
        self.reactor = reactor
        self.url = url
        self.exchange = exchange
        self.timeout = timeout
        self.params = pika.URLParameters(url)
        self.channel: Any = None
        self._down_logged = False
        endpoint = TCP4ClientEndpoint(reactor, self.params.host, self.params.port, timeout=timeout)
        factory = Factory.forProtocol(lambda: TwistedProtocolConnection(self.params))
        self.service = ClientService(
            endpoint, factory, retryPolicy=self._retry, clock=reactor, prepareConnection=self._prepare
        )
        self.properties = pika.BasicProperties(content_type="application/json", delivery_mode=2)

    def describe(self) -> str:
        host = f"{self.params.host}:{self.params.port}{self.params.virtual_host}"
        return f"amqp://{host} exchange {self.exchange}"  # never the password

    @property
    def connected(self) -> bool:
        return self.channel is not None

    def _retry(self, attempt: int) -> float:
        if not self._down_logged:
            self._down_logged = True
            log.warn("broker {broker} unreachable: events wait in the outbox", broker=self.describe())
        return float(min(30.0, 0.5 * 2 ** min(attempt, 6)))

    def _prepare(self, proto: TwistedProtocolConnection) -> Deferred[None]:
        return ensureDeferred(self._setup(proto))

    async def _setup(self, proto: TwistedProtocolConnection) -> None:
        ready = proto.ready
        assert ready is not None
        ready.addTimeout(self.timeout, self.reactor)
        await ready
        channel = await proto.channel()
        await channel.confirm_delivery()
        await channel.exchange_declare(exchange=self.exchange, exchange_type="topic", durable=True)
        channel.on_closed.addBoth(self._lost, channel, proto)
        if proto.closed is not None:
            proto.closed.addBoth(self._lost, channel, proto)
        self.channel = channel
        log.info("connected to broker {broker}", broker=self.describe())
        self._down_logged = False

    def _lost(self, reason: Any, channel: Any, proto: TwistedProtocolConnection) -> None:
        if self.channel is not channel:
            return
        self.channel = None
        if not self._down_logged:
            self._down_logged = True
            log.warn("broker {broker} connection lost: events wait in the outbox", broker=self.describe())
        if proto.is_open:  # a channel closed under an open connection: drop it, ClientService reconnects
            proto.close()

    def publish(self, rows: list[Row]) -> Deferred[None]:
        return ensureDeferred(self._publish(rows))

    async def _publish(self, rows: list[Row]) -> None:
        channel = self.channel
        if channel is None:
            raise NotConnected(self.describe())
        confirms = [channel.basic_publish(self.exchange, key, body, self.properties) for _, key, body in rows]
        results = DeferredList(confirms, consumeErrors=True)
        results.addTimeout(self.timeout, self.reactor)
        for ok, value in await results:
            if not ok:
                raise NotConnected(f"broker did not confirm: {value.getErrorMessage()}")


class SpoolSink:
    """Appends one JSON document per line to a file; rotates to `<file>.1` past `max_bytes`."""

    def __init__(self, reactor: Any, path: str, max_bytes: int) -> None:
        self.reactor = reactor
        self.path = path
        self.max_bytes = max_bytes
        self._pool = ThreadPool(1, 1, name="fedd-spool")  # started on first use: no thread before the reactor runs

    connected = True

    def describe(self) -> str:
        return f"spool file {self.path}"

    def publish(self, rows: list[Row]) -> Deferred[None]:
        if not self._pool.started:
            self._pool.start()
        return deferToThreadPool(self.reactor, self._pool, self._write, [body for _, _, body in rows])

    def _write(self, bodies: list[bytes]) -> None:
        if os.path.exists(self.path) and os.path.getsize(self.path) > self.max_bytes:
            os.replace(self.path, self.path + ".1")
        with open(self.path, "ab") as f:
            f.write(b"".join(body + b"\n" for body in bodies))
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        self._pool.stop()
