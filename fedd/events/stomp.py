"""STOMP 1.2 sink: Rucio Hermes' transport, to ActiveMQ (and RabbitMQ's STOMP plugin).

Why a protocol of our own: no maintained Twisted STOMP client exists (stompest's Twisted half was
last released in 2017, stomp.py runs a thread per connection and blocks), and the part fedd needs is
small: CONNECT, SEND with a receipt, RECEIPT, ERROR, heart-beats, DISCONNECT. The frame parser is a
pure class; the protocol runs on any transport (tests drive it with StringTransport and a Clock).

Guarantees, the same as the AMQP sink's: every SEND carries a `receipt` (or, with
`receipts = batch`, the last SEND of a batch), and `publish` fires only when the broker's RECEIPT
frames arrived, so the outbox keeps an event until the broker has taken it. An ERROR frame, a lost
connection, a receipt overdue or a silent peer past its heart-beat fail the pending batch, close the
connection, and the connector reconnects with backoff, trying the configured brokers in turn
(fail-over as Hermes does with its broker list).

Each SEND has `destination`, `content-type: application/json`, `content-length`,
`persistent: true` (ActiveMQ stores it), Hermes' own `event_type` header (the event type, lower
case, selectable by JMS selectors) and `fedd-id` (the envelope's id; the broker sets `message-id`).
With `bundle` > 1 the body is a JSON array of up to that many envelopes of one event type
(fedd.events.bundles), `fedd-id` its first event's id and `fedd-count` how many it holds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, FirstError, ensureDeferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from fedd.errors import describe
from fedd.events.bundles import COUNT_HEADER, bundle
from fedd.events.model import EVENT_TYPES, Event, routing_key
from fedd.events.sinks import BrokerConnector, NotConnected
from fedd.events.stomp_brokers import StompBroker, load_ca_file, parse_brokers, stomp_tls
from fedd.events.stomp_frames import Frame, FrameError, FrameParser, encode, escape, heartbeats, unescape
from fedd.events.stomp_protocol import HandshakeFailed, StompError, StompProtocol
from fedd.events.wakeup import Wakeup

__all__ = [  # the wire, the protocol and the brokers live beside this module; importable from here too
    "Frame",
    "FrameError",
    "FrameParser",
    "HandshakeFailed",
    "StompBroker",
    "StompError",
    "StompProtocol",
    "StompSink",
    "encode",
    "escape",
    "failure_kind",
    "heartbeats",
    "load_ca_file",
    "parse_brokers",
    "stomp_tls",
    "unescape",
]

log = Logger(namespace="fedd.events")


_OUTAGE_TEXT = {
    "authentication": "refused the connection of user {user}: {reason}",
    "error": "answered with an ERROR frame ({reason})",
    "unreachable": "unreachable ({reason})",
    "tls": "failed the TLS handshake ({reason}; check ca_file, the host name, tls_certificate)",
    "lost": "connection lost ({reason})",
}


def failure_kind(exc: BaseException, connected: bool) -> str:
    """ERROR before CONNECTED is a refused login (ActiveMQ and RabbitMQ send one for a wrong passcode)."""
    if isinstance(exc, StompError):
        return "error" if connected else "authentication"
    if isinstance(exc, HandshakeFailed):
        return "tls"
    return "lost" if connected else "unreachable"


class StompSink:
    """Publishes every event to `destination`, with receipts, on one connection at a time to the
    first of `brokers` that answers; its `service` keeps that connection up, with backoff."""

    def __init__(
        self,
        reactor: Any,
        brokers: tuple[StompBroker, ...],
        destination: str,
        *,
        routing_prefix: str = "fedd",
        timeout: float = 10.0,
        heartbeat: float = 10.0,
        receipts: str = "each",
        bundle: int = 1,
        tls_options: Callable[[StompBroker], Any] | None = None,
        endpoint: Callable[[StompBroker], IStreamClientEndpoint] | None = None,
    ) -> None:
        if not brokers:
            raise ValueError("no STOMP broker")
        self.reactor = reactor
        self.brokers = brokers
        self.destination = destination
        self.timeout = timeout
        self.heartbeat = heartbeat
        self.receipts_each = receipts == "each"
        self.bundle = bundle
        self._tls_options = tls_options
        self._endpoint = endpoint or self._hostname_endpoint
        self._types = {routing_key(routing_prefix, t): t for t in EVENT_TYPES}
        self._head = f"SEND\ndestination:{escape(destination)}\ncontent-type:application/json\npersistent:true\n"
        self.current = 0  # index of the broker in use or tried next
        self.failures = 0
        self.last_error = ""
        self.delivered = {b.describe(): 0 for b in brokers}  # receipted events per broker
        self._logged: dict[int, str] = {}  # per broker: the outage kind logged (once per outage)
        self._proto: StompProtocol | None = None
        self._ever_connected = False
        self._attempt: Deferred[StompProtocol] | None = None
        self._wakeup = Wakeup(reactor)  # the backoff between rounds, ended early by stop()
        self.service = BrokerConnector(self, "STOMP")

    def describe(self) -> str:
        names = [b.describe() for b in self.brokers]
        others = f" (fail-over: {', '.join(names[1:])})" if len(names) > 1 else ""
        return f"{names[0]}{others} destination {self.destination}"  # never the passcode

    @property
    def connected(self) -> bool:
        return self._proto is not None

    @staticmethod
    def backoff(attempt: int) -> float:
        return float(min(30.0, 0.5 * 2 ** min(attempt, 6)))

    def _hostname_endpoint(self, broker: StompBroker) -> IStreamClientEndpoint:
        # HostnameEndpoint tries every address of a DNS alias, as Hermes resolves its broker names
        tcp = HostnameEndpoint(self.reactor, broker.host, broker.port, timeout=self.timeout)
        if broker.tls:
            assert self._tls_options is not None
            return wrapClientTLS(self._tls_options(broker), tcp)
        return tcp

    # --- the connection loop --------------------------------------------------------------------

    async def run(self, service: Service) -> None:
        rounds = tried = 0
        while service.running:
            index = self.current
            broker = self.brokers[index]
            self._attempt = ensureDeferred(self._connect(broker))
            try:
                proto = await self._attempt
            except CancelledError:
                continue  # stopping
            except Exception as exc:
                self._failed(index, exc, connected=False)
                self.current = (index + 1) % len(self.brokers)
                tried += 1
                if tried >= len(self.brokers):  # every broker failed: wait before the next round
                    rounds, tried = rounds + 1, 0
                    await self._pause(self.backoff(rounds))
                continue
            finally:
                self._attempt = None
            if self._logged.get(index) != "error":
                if index in self._logged or not self._ever_connected:
                    log.info(
                        "connected to STOMP broker {broker} ({server})", broker=broker.describe(), server=proto.server
                    )
                self._logged.pop(index, None)
            self._proto = proto
            self._ever_connected = True
            await proto.closed
            self._proto = None
            if not service.running:
                break
            error = proto.error or NotConnected("connection closed by the broker")
            self._failed(index, error, connected=True)
            if isinstance(error, StompError | FrameError):  # not a blip: the next broker, after a pause
                self.current = (index + 1) % len(self.brokers)
                rounds, tried = rounds + 1, 0
                await self._pause(self.backoff(rounds))
            else:
                rounds = tried = 0

    async def _connect(self, broker: StompBroker) -> StompProtocol:
        factory = Factory.forProtocol(lambda: StompProtocol(self.reactor, broker, self.heartbeat))
        factory.noisy = False
        connecting = self._endpoint(broker).connect(factory)
        connecting.addTimeout(self.timeout, self.reactor)
        proto = cast(StompProtocol, await connecting)  # the factory above builds only these
        try:
            await proto.ready.addTimeout(self.timeout, self.reactor)
        except BaseException:
            proto.transport.abortConnection()
            raise
        return proto

    def _failed(self, index: int, exc: BaseException, *, connected: bool) -> None:
        self.failures += 1
        kind = failure_kind(exc, connected)
        reason = describe(exc)
        self.last_error = f"{self.brokers[index].describe()}: {reason}"
        seen = self._logged.get(index)
        if seen == kind or (kind == "unreachable" and seen == "lost"):
            return  # once per outage, not on every retry
        self._logged[index] = kind
        broker = self.brokers[index]
        text = _OUTAGE_TEXT[kind].format(user=broker.login or "(none)", reason=reason)
        nxt = self.brokers[(index + 1) % len(self.brokers)]
        then = f"failing over to {nxt.describe()}" if nxt is not broker else "retrying with backoff"
        emit = log.error if kind in ("authentication", "error", "tls") else log.warn
        emit(
            "STOMP broker {broker} {what}: events wait in the outbox, {then}",
            broker=broker.describe(),
            what=text,
            then=then,
        )

    async def _pause(self, seconds: float) -> None:
        await self._wakeup.sleep(seconds)

    async def stop(self) -> None:
        if self._attempt is not None:
            self._attempt.cancel()
        self._wakeup.wake()
        proto, self._proto = self._proto, None
        if proto is not None:
            await proto.disconnect(self.timeout)
            if not proto.closed.called:
                proto.transport.abortConnection()
            await proto.closed

    # --- publishing -----------------------------------------------------------------------------

    def frames(self, events: list[Event]) -> list[tuple[bytes, bytes]]:
        head = self._head
        if self.bundle > 1:
            return [
                (
                    f"{head}event_type:{escape(self._types.get(key, key))}\nfedd-id:{escape(first_id)}\n"
                    f"{COUNT_HEADER}:{n}\ncontent-length:{len(body)}\n".encode(),
                    body,
                )
                for first_id, key, body, n in bundle(events, self.bundle)
            ]
        return [
            (
                f"{head}event_type:{escape(self._types.get(key, key))}\nfedd-id:{escape(event_id)}\n"
                f"content-length:{len(body)}\n".encode(),
                body,
            )
            for event_id, key, body in events
        ]

    def publish(self, events: list[Event]) -> Deferred[None]:
        return ensureDeferred(self._publish(events))

    async def _publish(self, events: list[Event]) -> None:
        proto = self._proto
        if proto is None:
            raise NotConnected(self.describe())
        receipts = proto.send_events(self.frames(events), self.receipts_each)
        receipts.addTimeout(self.timeout, self.reactor)
        try:
            await receipts
        except Exception as exc:
            reason = exc.subFailure.value if isinstance(exc, FirstError) else exc
            if not isinstance(reason, StompError | NotConnected):  # overdue: this connection is stuck
                reason = NotConnected(f"no receipt within {self.timeout:g} s")
                proto.fail(reason)
            raise NotConnected(f"{proto.broker.describe()}: {describe(reason)}") from None
        broker = proto.broker.describe()
        self.delivered[broker] = self.delivered.get(broker, 0) + len(events)
        if self._logged.pop(self.current, None) == "error":
            log.info("STOMP broker {broker} takes events again", broker=broker)
