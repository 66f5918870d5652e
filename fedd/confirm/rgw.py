"""Ceph RGW bucket notifications, read from RabbitMQ: RGW's own AMQP push endpoint publishes a JSON
document per created object to a topic exchange (docs/operations.md shows the topic and the bucket
notification to set up); fedd binds a queue to it and passes each record to the `confirm` service.

The AMQP client is pika's Twisted adapter, which fedd's event feed already uses (`fedd.events.sinks`:
its connection class keeps the broker's reason for a refused login). Notifications are few (one per
upload), so pika's per-message cost does not matter here, unlike for the event feed's publishing.
Messages are acknowledged after they were handed on; a connection lost is tried again with the
event feed's backoff. A message that is no RGW notification is logged once per connection and dropped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

import pika
from twisted.internet.defer import CancelledError, Deferred, DeferredList, ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.logger import Logger

from fedd.config.values import RgwNotify
from fedd.errors import describe
from fedd.events.sinks import AmqpSink, _Connection, close_connection
from fedd.twtypes import Service

log = Logger(namespace="fedd.confirm")
PREFETCH = 200
CREATED = ("ObjectCreated", "s3:ObjectCreated")  # RGW's eventName (AWS writes the "s3:" prefix)

# (endpoint id, endpoint path, size, event time) of one created object
Deliver = Callable[[str, str, int | None, float | None], None]


def created_objects(body: bytes, bucket: str) -> list[tuple[str, int | None, float | None]]:
    """(endpoint path, size, event time) of the `ObjectCreated` records of `bucket` in one RGW
    notification (`{"Records": [...]}`); ValueError when the body is no such document."""
    doc = json.loads(body)
    records = doc.get("Records") if isinstance(doc, dict) else None
    if not isinstance(records, list):
        raise ValueError("no Records list")
    out = []
    for record in records:
        if not isinstance(record, dict) or not str(record.get("eventName", "")).startswith(CREATED):
            continue
        s3 = record.get("s3") or {}
        if (s3.get("bucket") or {}).get("name") != bucket:
            continue
        obj = s3.get("object") or {}
        key = obj.get("key")
        if not isinstance(key, str) or not key:
            continue
        size = obj.get("size")
        out.append(("/" + key, size if isinstance(size, int) else None, _when(record.get("eventTime"))))
    return out


def _when(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class RgwNotifications(Service):
    """One AMQP connection consuming the notification queue of each `[confirm] notify` endpoint."""

    name = "rgw-notifications"

    def __init__(
        self,
        reactor: Any,
        url: str,
        notifies: tuple[RgwNotify, ...],
        buckets: dict[str, str],
        deliver: Deliver,
        *,
        timeout: float = 10.0,
    ) -> None:
        self.reactor = reactor
        self.params = pika.URLParameters(url)
        # this process's connection in `rabbitmqctl list_connections client_properties` and RabbitMQ's UI
        self.params.client_properties = {"connection_name": f"fedd-{os.getpid()} rgw-notifications"}
        self.notifies = notifies
        self.buckets = buckets  # endpoint id -> its bucket
        self.deliver = deliver
        self.timeout = timeout
        self.connected = False
        self.connections = 0  # made since start (1 + reconnections)
        self.failures = 0
        self.last_error = ""
        self.received = 0
        self.unreadable = 0
        self._proto: _Connection | None = None
        self._loop: Deferred[None] | None = None
        self._wake: Deferred[Any] | None = None
        self._endpoint = TCP4ClientEndpoint(reactor, self.params.host, self.params.port, timeout=timeout)
        self._factory = Factory.forProtocol(lambda: _Connection(self.params, reactor))
        self._factory.noisy = False

    def describe(self) -> str:
        return f"amqp://{self.params.host}:{self.params.port}{self.params.virtual_host}"  # never the password

    def startService(self) -> None:
        super().startService()
        self._loop = ensureDeferred(self._run())
        self._loop.addErrback(lambda f: log.failure("RGW notification loop stopped", f))

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        proto, self._proto = self._proto, None
        if self._wake is not None and not self._wake.called:
            self._wake.cancel()
        await close_connection(proto, self.timeout, self.reactor, "RGW notifications")
        if self._loop is not None:
            await self._loop

    async def _run(self) -> None:
        attempt = 0
        while self.running:
            try:
                proto, consumers = await self._connect()
            except CancelledError:
                return
            except Exception as exc:
                attempt += 1
                self.failures += 1
                if not self.last_error or attempt == 1:
                    log.warn(
                        "RGW notifications: broker {broker}: {reason}; retrying with backoff "
                        "(uploads are still confirmed by looking)",
                        broker=self.describe(),
                        reason=describe(exc),
                    )
                self.last_error = describe(exc)
                if await self._pause(AmqpSink.backoff(attempt)):
                    return
                continue
            attempt = 0
            self.connected, self.last_error = True, ""
            self.connections += 1
            log.info("RGW notifications: consuming {n} queue(s) on {broker}", n=len(consumers), broker=self.describe())
            await DeferredList([ensureDeferred(self._consume(q)) for q in consumers], consumeErrors=True)
            self.connected = False
            if proto.is_open:
                proto.close()
            if self.running:
                log.warn("RGW notifications: connection to {broker} lost; reconnecting", broker=self.describe())
                if await self._pause(1.0):
                    return

    async def _pause(self, seconds: float) -> bool:
        """Wait `seconds`; True when the service stopped meanwhile."""
        self._wake = deferLater(self.reactor, seconds, lambda: None)
        try:
            await self._wake
        except CancelledError:
            return True
        finally:
            self._wake = None
        return not self.running

    async def _connect(self) -> tuple[_Connection, list[tuple[str, Any]]]:
        proto = cast(_Connection, await self._endpoint.connect(self._factory))
        try:
            assert proto.ready is not None
            await self._within(proto.ready)
            channel = await self._within(proto.channel())
            await self._within(channel.basic_qos(prefetch_count=PREFETCH))
            consumers = []
            for n in self.notifies:
                await self._within(channel.exchange_declare(exchange=n.exchange, exchange_type="topic", durable=True))
                private = not n.queue
                frame = await self._within(
                    channel.queue_declare(queue=n.queue, durable=not private, exclusive=private, auto_delete=private)
                )
                queue = frame.method.queue
                await self._within(channel.queue_bind(queue=queue, exchange=n.exchange, routing_key="#"))
                messages, _ = await self._within(channel.basic_consume(queue=queue, auto_ack=False))
                consumers.append((n.endpoint, messages))
        except BaseException as exc:
            proto.transport.abortConnection()
            if proto.broker_close is not None and not isinstance(exc, CancelledError):
                raise proto.broker_close from None
            raise
        self._proto = proto
        return proto, consumers

    def _within(self, d: Deferred[Any]) -> Deferred[Any]:
        return d.addTimeout(self.timeout, self.reactor)

    async def _consume(self, consumer: tuple[str, Any]) -> None:
        endpoint, messages = consumer
        bucket = self.buckets.get(endpoint, "")
        warned = False
        while True:
            channel, method, _, body = await messages.get()  # fails once the channel or connection closes
            self.received += 1
            try:
                for path, size, at in created_objects(body, bucket):
                    self.deliver(endpoint, path, size, at)
            except (ValueError, TypeError, AttributeError) as exc:
                self.unreadable += 1
                if not warned:
                    warned = True
                    log.warn(
                        "RGW notifications for {endpoint}: a message is no RGW notification ({reason}): dropped",
                        endpoint=endpoint,
                        reason=describe(exc),
                    )
            except Exception:  # a bug in handing on must not stop consuming
                log.failure("RGW notifications for {endpoint}: handling a notification failed", endpoint=endpoint)
            channel.basic_ack(delivery_tag=method.delivery_tag)

    def to_json(self) -> dict[str, Any]:
        return {
            "broker": self.describe(),
            "connected": self.connected,
            "connections": self.connections,
            "received": self.received,
            "unreadable": self.unreadable,
            "failures": self.failures,
            "last_error": self.last_error or None,
            "exchanges": {n.endpoint: n.exchange for n in self.notifies},
        }
