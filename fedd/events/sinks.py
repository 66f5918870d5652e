"""Where events go after the outbox: an AMQP 0-9-1 broker (RabbitMQ) or a JSON-lines spool file.

A sink's `publish(events)` fires once every event is safely delivered (broker: publisher confirms;
spool: written and flushed), and fails otherwise; the outbox keeps the events until then.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

import pika
from pika.adapters.twisted_connection import TwistedProtocolConnection
from twisted.internet.defer import CancelledError, Deferred, DeferredList, ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from fedd.errors import describe
from fedd.events.amqp_frames import Confirms, Publisher
from fedd.events.journal import read_segments
from fedd.events.model import Event
from fedd.events.outbox import encode_all
from fedd.events.spoolfile import append_batch
from fedd.twtypes import Service

log = Logger(namespace="fedd.events")


class Sink(Protocol):
    def publish(self, events: list[Event]) -> Deferred[None]: ...

    @property
    def connected(self) -> bool: ...

    def describe(self) -> str: ...


class NotConnected(Exception):
    pass


class _Connection(TwistedProtocolConnection):  # type: ignore[misc]  # pika ships no type information
    """pika's protocol, remembering why the broker closed the connection: pika's Twisted adapter
    replaces the broker's reason (`403 ACCESS_REFUSED` for a wrong password) by `ConnectionDone` once
    the socket closes, and a refused login would look like a dead broker. `callbacks` is pika's own
    registry of frame handlers (tests/test_events_durable.py checks that this still works)."""

    def __init__(self, parameters: pika.URLParameters, reactor: Any) -> None:
        super().__init__(parameters, custom_reactor=reactor)
        self.broker_close: pika.exceptions.ConnectionClosedByBroker | None = None
        self._impl.callbacks.add(0, pika.spec.Connection.Close, self._closed_by_broker, one_shot=False)

    def _closed_by_broker(self, method_frame: Any) -> None:
        method = method_frame.method
        self.broker_close = pika.exceptions.ConnectionClosedByBroker(method.reply_code, method.reply_text)

    def publisher(self, channel: Any, exchange: str) -> Publisher:
        """Frames for `channel` cut at the frame size negotiated with the broker."""
        return Publisher(channel.channel_number, exchange, self._impl.params.frame_max)

    def confirm(self, channel: Any, confirms: Confirms) -> Deferred[Any]:
        """Confirm mode on `channel` with the acks counted by `confirms`, not by pika's Twisted channel
        (a Deferred per message, all scanned on every ack): the underlying pika channel is asked."""
        d: Deferred[Any] = Deferred()

        def answer(frame: Any) -> None:
            method = frame.method
            confirms.answer(method.delivery_tag, method.multiple, isinstance(method, pika.spec.Basic.Nack))

        channel._channel.confirm_delivery(ack_nack_callback=answer, callback=d.callback)
        return d


def failure_kind(exc: BaseException) -> str:
    """`authentication`, `access` (vhost or exchange refused), `setup` or `unreachable`."""
    errors = pika.exceptions
    code = getattr(exc, "reply_code", None)
    if isinstance(exc, errors.ProbableAuthenticationError | errors.AuthenticationError) or code == 403:
        return "authentication" if isinstance(exc, errors.AMQPConnectionError) else "access"
    if isinstance(exc, errors.ProbableAccessDeniedError) or code == 530:
        return "access"
    if isinstance(exc, errors.AMQPChannelError):
        return "setup"
    return "unreachable"


_OUTAGE_TEXT = {
    "authentication": "refused the login of user {user}: authentication failed ({reason})",
    "access": "refused access for user {user} ({reason})",
    "setup": "refused to set up the exchange ({reason})",
    "unreachable": "unreachable ({reason})",
    "lost": "connection lost",
}


async def close_connection(proto: Any, timeout: float, reactor: Any, what: str) -> None:
    """Close an AMQP connection (a pika Twisted protocol, or None) within `timeout`; a failure to
    close is only logged at debug level: the connection is going away anyway."""
    if proto is None or not proto.is_open:
        return
    closed = proto.close()
    if closed is None:
        return
    closed.addTimeout(timeout, reactor)
    try:
        await closed
    except Exception as exc:
        log.debug("{what} close: {reason}", what=what, reason=describe(exc))


class AmqpSink:
    """Publishes to a durable topic exchange with persistent messages, publisher confirms and each
    event's id as `message_id`; with `bundle` > 1, up to that many events per message
    (fedd.events.bundles). Its `service` keeps one connection up, reconnecting with backoff."""

    def __init__(self, reactor: Any, url: str, exchange: str, *, timeout: float = 10.0, bundle: int = 1) -> None:
        self.reactor = reactor
        self.url = url
        self.exchange = exchange
        self.timeout = timeout
        self.bundle = bundle
        self.params = pika.URLParameters(url)
        self.channel: Any = None
        self._confirms: Confirms | None = None
        self._publisher: Publisher | None = None
        self.failures = 0  # connection attempts that failed since start
        self.last_error = ""
        self._outage: str | None = None  # what the current outage was logged as
        self._proto: _Connection | None = None
        self._attempt: Deferred[tuple[_Connection, Any]] | None = None
        self._wake: Deferred[None] | None = None
        self._endpoint = TCP4ClientEndpoint(reactor, self.params.host, self.params.port, timeout=timeout)
        self._factory = Factory.forProtocol(lambda: _Connection(self.params, reactor))
        self._factory.noisy = False  # no "Starting factory" line per reconnection attempt
        self.service = BrokerConnector(self)

    def describe(self) -> str:
        host = f"{self.params.host}:{self.params.port}{self.params.virtual_host}"
        return f"amqp://{host} exchange {self.exchange}"  # never the password

    @property
    def connected(self) -> bool:
        return self.channel is not None

    @staticmethod
    def backoff(attempt: int) -> float:
        return float(min(30.0, 0.5 * 2 ** min(attempt, 6)))

    # --- the connection loop ----------------------------------------------------------------

    async def run(self, service: Service) -> None:
        attempt = 0
        while service.running:
            self._attempt = ensureDeferred(self._connect())
            try:
                self._proto, channel = await self._attempt
            except CancelledError:
                continue  # stopping
            except Exception as exc:
                attempt += 1
                self._failed(exc)
                await self._pause(self.backoff(attempt))
                continue
            finally:
                self._attempt = None
            attempt = 0
            self.channel = channel
            self._publisher = self._proto.publisher(channel, self.exchange)
            log.info("connected to broker {broker}", broker=self.describe())
            self._outage = None
            await self._pause(None)  # until the connection is lost or the service stops

    async def _connect(self) -> tuple[_Connection, Any]:
        proto = cast(_Connection, await self._endpoint.connect(self._factory))  # what self._factory builds
        try:
            assert proto.ready is not None
            await self._within(proto.ready)
            channel = await self._within(proto.channel())
            self._confirms = Confirms()  # a new channel numbers its messages from 1
            await self._within(proto.confirm(channel, self._confirms))
            await self._within(channel.exchange_declare(exchange=self.exchange, exchange_type="topic", durable=True))
        except BaseException as exc:
            proto.transport.abortConnection()
            if proto.broker_close is not None and not isinstance(exc, CancelledError):
                raise proto.broker_close from None
            raise
        channel.on_closed.addBoth(self._lost, channel, proto)
        if proto.closed is not None:
            proto.closed.addBoth(self._lost, channel, proto)
        return proto, channel

    def _within(self, d: Deferred[Any]) -> Deferred[Any]:
        return d.addTimeout(self.timeout, self.reactor)

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        kind = failure_kind(exc)
        reason = describe(exc)
        self.last_error = f"authentication failed: {reason}" if kind == "authentication" else reason
        if kind == self._outage or (kind == "unreachable" and self._outage == "lost"):
            return  # once per outage, not on every retry
        self._outage = kind
        text = _OUTAGE_TEXT[kind].format(user=self.params.credentials.username, reason=reason)
        emit = log.error if kind in ("authentication", "access", "setup") else log.warn
        emit(
            "broker {broker} {what}: events wait in the outbox, retrying with backoff",
            broker=self.describe(),
            what=text,
        )

    def _lost(self, reason: Any, channel: Any, proto: _Connection) -> None:
        if self.channel is not channel:
            return
        self.channel = None
        if self._confirms is not None:
            self._confirms.fail(NotConnected("connection lost"))
        if self._outage is None:
            self._outage = "lost"
            log.warn("broker {broker} connection lost: events wait in the outbox", broker=self.describe())
        if proto.is_open:  # a channel closed under an open connection: drop the connection, reconnect
            proto.close()
        self._kick()

    async def _pause(self, seconds: float | None) -> None:
        wake: Deferred[None] = Deferred()
        self._wake = wake
        waits: list[Deferred[Any]] = [wake]
        if seconds is not None:
            waits.append(deferLater(self.reactor, seconds, lambda: None))
        await DeferredList(waits, fireOnOneCallback=True, consumeErrors=True)
        for d in waits[1:]:
            d.cancel()
        if self._wake is wake:
            self._wake = None

    def _kick(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None:
            wake.callback(None)

    async def stop(self) -> None:
        if self._attempt is not None:
            self._attempt.cancel()
        self._kick()
        proto, self._proto, self.channel = self._proto, None, None
        await close_connection(proto, self.timeout, self.reactor, "broker")

    # --- publishing ---------------------------------------------------------------------------

    def publish(self, events: list[Event]) -> Deferred[None]:
        """Write the batch now (one write of frames encoded by fedd.events.amqp_frames); the Deferred
        fires when the broker confirmed all of it. Several batches may be in flight."""
        return ensureDeferred(self._publish(events))

    async def _publish(self, events: list[Event]) -> None:
        proto, confirms, publisher = self._proto, self._confirms, self._publisher
        if self.channel is None or proto is None or confirms is None or publisher is None:
            raise NotConnected(self.describe())
        data, messages = publisher.bundles(events, self.bundle)
        proto.transport.write(data)
        confirmed = confirms.published(messages)  # a bundle is confirmed (or not) as a whole
        confirmed.addTimeout(self.timeout, self.reactor)
        try:
            await confirmed
        except Exception as exc:
            raise NotConnected(f"broker did not confirm: {describe(exc)}") from exc


class _Runs(Protocol):
    """A sink with its own connection loop (AMQP, STOMP)."""

    async def run(self, service: Service) -> None: ...

    async def stop(self) -> None: ...


class BrokerConnector(Service):
    """A broker sink's connection loop as a service (child of `events`, named `broker`)."""

    def __init__(self, sink: _Runs, what: str = "broker") -> None:
        self.sink = sink
        self._what = what
        self._loop: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = ensureDeferred(self.sink.run(self))
        self._loop.addErrback(lambda f: log.failure("{what} connection loop stopped", f, what=self._what))

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        await self.sink.stop()
        if self._loop is not None:
            await self._loop


class SpoolSink:
    """Appends one JSON document per line to a file; rotates to `<file>.1` past `max_bytes` (one file
    for all the workers of a host: fedd.events.spoolfile)."""

    def __init__(self, reactor: Any, path: str, max_bytes: int) -> None:
        self.reactor = reactor
        self.path = path
        self.max_bytes = max_bytes
        self._pool = ThreadPool(1, 1, name="fedd-spool")  # started on first use: no thread before the reactor runs

    connected = True
    last_error = ""

    def describe(self) -> str:
        return f"spool file {self.path}"

    def _in_thread(self, fn: Any, *args: Any) -> Deferred[Any]:
        if not self._pool.started:
            self._pool.start()
        return deferToThreadPool(self.reactor, self._pool, fn, *args)

    def publish(self, events: list[Event]) -> Deferred[None]:
        return self._in_thread(self._write, [body for _, _, body in events])

    def replay(self, paths: list[str], prefix: str) -> Deferred[tuple[int, int]]:
        """Write the events of journal segments (read in the spool's thread): (events, unreadable records)."""
        return self._in_thread(self._replay, paths, prefix)

    def _replay(self, paths: list[str], prefix: str) -> tuple[int, int]:
        raws, bad = read_segments(paths)
        events, unencodable = encode_all(raws, prefix)
        if events:
            self._write([body for _, _, body in events])
        return len(events), bad + unencodable

    def _write(self, bodies: list[bytes]) -> None:
        append_batch(self.path, self.max_bytes, bodies)  # locked: every worker of the host writes this file

    def close(self) -> None:
        if self._pool.started:
            self._pool.stop()
