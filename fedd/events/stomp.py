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
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from cryptography import x509
from OpenSSL import SSL, crypto
from OpenSSL.crypto import X509
from twisted.application.service import Service
from twisted.internet._sslverify import VerifyError
from twisted.internet.defer import CancelledError, Deferred, DeferredList, FirstError, ensureDeferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.ssl import (
    Certificate,
    PrivateCertificate,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from fedd.errors import describe
from fedd.events.model import EVENT_TYPES, Event, routing_key
from fedd.events.sinks import BrokerConnector, NotConnected

log = Logger(namespace="fedd.events")

MAX_FRAME = 1 << 20  # bytes: a broker's frame larger than this is an error, not memory growth
MAX_HEADERS = 128
_COMMAND = re.compile(rb"[A-Z]{1,32}")
_ESCAPES = {"\\\\": "\\", "\\n": "\n", "\\r": "\r", "\\c": ":"}
_UNESCAPE = re.compile(r"\\.?")


class FrameError(Exception):
    """The broker sent something that is not a STOMP frame (or one too large)."""


class StompError(Exception):
    """The broker sent an ERROR frame: its `message` header and (short) body."""


class HandshakeFailed(NotConnected):
    """The TLS handshake failed: the broker's certificate is not trusted (`ca_file`), is not for its
    host name, or the broker refused ours. Not a blip: retrying will not help until someone acts."""


@dataclass(frozen=True)
class Frame:
    command: str
    headers: dict[str, str] = field(default_factory=dict)  # a repeated header: the first one counts (1.2)
    body: bytes = b""


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n").replace(":", "\\c")


def unescape(value: str) -> str:
    def one(match: re.Match[str]) -> str:
        try:
            return _ESCAPES[match.group()]
        except KeyError:
            raise FrameError(f"undefined escape {match.group()!r} in a header") from None

    return _UNESCAPE.sub(one, value) if "\\" in value else value


def encode(command: str, headers: Iterable[tuple[str, str]], body: bytes = b"") -> bytes:
    """One frame. CONNECT's headers are not escaped (STOMP 1.2), every other frame's are."""
    if command == "CONNECT":
        lines = [f"{k}:{v}" for k, v in headers]
    else:
        lines = [f"{escape(k)}:{escape(v)}" for k, v in headers]
    return "\n".join([command, *lines, "", ""]).encode() + body + b"\0"


class FrameParser:
    """Frames from a byte stream, bounded: at most `max_frame` bytes are held for one frame.
    End-of-lines between frames are heart-beats and skipped; lines end in LF or CR LF."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while True:
            frame = self._next()
            if frame is None:
                return frames
            frames.append(frame)

    def _next(self) -> Frame | None:
        buf = self._buf
        start = 0
        while start < len(buf) and buf[start] in b"\r\n":  # heart-beats
            start += 1
        if start:
            del buf[:start]
        if not buf:
            return None
        lf2, crlf2 = buf.find(b"\n\n"), buf.find(b"\n\r\n")
        ends = [(i, n) for i, n in ((lf2, 2), (crlf2, 3)) if i >= 0]
        if not ends:
            if len(buf) > self.max_frame:
                raise FrameError(f"frame header longer than {self.max_frame} bytes")
            return None
        head_end, sep = min(ends)
        lines = [line[:-1] if line.endswith(b"\r") else line for line in bytes(buf[:head_end]).split(b"\n")]
        command = lines[0]
        if not _COMMAND.fullmatch(command):
            raise FrameError(f"not a STOMP command: {command[:40]!r}")
        if len(lines) - 1 > MAX_HEADERS:
            raise FrameError(f"more than {MAX_HEADERS} headers")
        raw = command != b"CONNECTED"  # CONNECTED's headers are not escaped
        headers: dict[str, str] = {}
        for line in lines[1:]:
            try:
                text = line.decode()
            except UnicodeDecodeError:
                raise FrameError("a header is not UTF-8") from None
            name, colon, value = text.partition(":")
            if not colon:
                raise FrameError(f"header without ':': {text[:40]!r}")
            if raw:
                name, value = unescape(name), unescape(value)
            headers.setdefault(name, value)
        body_start = head_end + sep
        length_text = headers.get("content-length")
        if length_text is not None:
            if not length_text.isdigit() or len(length_text) > 12:
                raise FrameError(f"bad content-length {length_text[:20]!r}")
            length = int(length_text)
            if body_start + length + 1 > self.max_frame:
                raise FrameError(f"frame of {length} bytes over the limit of {self.max_frame}")
            if len(buf) < body_start + length + 1:
                return None
            if buf[body_start + length] != 0:
                raise FrameError("frame body not followed by NUL")
            end = body_start + length
        else:
            end = buf.find(b"\0", body_start)
            if end < 0:
                if len(buf) > self.max_frame:
                    raise FrameError(f"frame longer than {self.max_frame} bytes")
                return None
        if end + 1 > self.max_frame:
            raise FrameError(f"frame longer than {self.max_frame} bytes")
        body = bytes(buf[body_start:end])
        del buf[: end + 1]
        return Frame(command.decode(), headers, body)


def heartbeats(ours: tuple[int, int], theirs: str) -> tuple[float, float]:
    """(seconds between our beats, seconds of silence that mean the peer is gone; 0: none) from our
    `heart-beat` (cx, cy in ms) and the peer's header value "sx,sy" (STOMP 1.2 negotiation)."""
    try:
        sx, sy = (int(v) for v in theirs.split(","))
    except ValueError:
        sx = sy = 0
    cx, cy = ours
    send = max(cx, sy) / 1000 if cx and sy else 0.0
    receive = max(sx, cy) / 1000 if sx and cy else 0.0
    return send, receive * 2 + 1.0 if receive else 0.0  # allow for a late beat


@dataclass(frozen=True)
class StompBroker:
    host: str
    port: int
    tls: bool
    vhost: str  # the `host` header: RabbitMQ's virtual host; ActiveMQ ignores it
    login: str = field(default="", repr=False)
    passcode: str = field(default="", repr=False)

    def describe(self) -> str:
        return f"{'stomp+ssl' if self.tls else 'stomp'}://{self.host}:{self.port}"


def parse_brokers(text: str, login: str = "", passcode: str = "") -> tuple[StompBroker, ...]:
    """`stomp://[user:pass@]host:port[/vhost]` URLs separated by commas or spaces; a URL's own
    credentials win over `login`/`passcode`. The config parser has checked the URLs."""
    brokers = []
    for url in text.replace(",", " ").split():
        parts = urlsplit(url)
        tls = parts.scheme == "stomp+ssl"
        vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        user = unquote(parts.username) if parts.username else login
        password = unquote(parts.password) if parts.password is not None else passcode
        host = parts.hostname or ""
        brokers.append(StompBroker(host, parts.port or (61614 if tls else 61613), tls, vhost, user, password))
    return tuple(brokers)


def stomp_tls(ca_file: str, certificate: str, private_key: str) -> Callable[[StompBroker], Any]:
    """TLS options per broker: its certificate checked against `ca_file` (or the system's CAs) and
    its host name; a client certificate (the grid host certificate, as Hermes uses) when given.
    Files are read here, at start-up: a bad file is a usage error naming it before the daemon runs.
    `ca_file` may hold several CA certificates (a bundle): each one is trusted."""
    trust = trustRootFromCertificates(load_ca_file(ca_file)) if ca_file else platformTrust()
    client = None
    if certificate:
        try:
            client = PrivateCertificate.loadPEM(Path(certificate).read_bytes() + b"\n" + Path(private_key).read_bytes())
        except (OSError, ValueError, SSL.Error, crypto.Error, VerifyError) as exc:
            raise usage.UsageError(
                f"[events] tls_certificate {certificate} / tls_private_key {private_key}: {describe(exc)}"
            ) from None

    def options(broker: StompBroker) -> Any:
        return optionsForClientTLS(broker.host, trustRoot=trust, clientCertificate=client)

    return options


def load_ca_file(path: str) -> list[Certificate]:
    """Every certificate of a PEM bundle (pyOpenSSL's loader reads only the first one)."""
    try:
        certs = x509.load_pem_x509_certificates(Path(path).read_bytes())
    except OSError as exc:
        raise usage.UsageError(f"[events] ca_file {path}: {describe(exc)}") from None
    except ValueError:  # cryptography's text is long and points at a FAQ
        raise usage.UsageError(f"[events] ca_file {path}: not PEM certificates (or a malformed one)") from None
    return [Certificate(X509.from_cryptography(c)) for c in certs]


class StompProtocol(Protocol):
    """One STOMP connection. `ready` fires with the CONNECTED frame (or fails with StompError);
    `send_events` returns a Deferred that fires when the broker's receipts arrived."""

    transport: Any  # a TCP or TLS transport: abortConnection too

    def __init__(self, clock: Any, broker: StompBroker, heartbeat: float, max_frame: int = MAX_FRAME) -> None:
        self.clock = clock
        self.broker = broker
        self.heart = int(heartbeat * 1000)
        self.parser = FrameParser(max_frame)
        self.ready: Deferred[Frame] = Deferred()
        self.closed: Deferred[None] = Deferred()
        self.server = ""
        self.error: Exception | None = None  # why the connection ends, when we know better than the socket
        self._receipts: dict[str, Deferred[None]] = {}
        self._next_receipt = 0
        self._sent_at = self._heard_at = 0.0
        self._beat_every = self._silence_limit = 0.0
        self._timer: IDelayedCall | None = None
        self._open = False

    # --- wire ---------------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self._open = True
        self._heard_at = self.clock.seconds()
        headers = [("accept-version", "1.2"), ("host", self.broker.vhost)]
        if self.broker.login:
            headers += [("login", self.broker.login), ("passcode", self.broker.passcode)]
        headers.append(("heart-beat", f"{self.heart},{self.heart}"))
        self._write(encode("CONNECT", headers))

    def _write(self, data: bytes) -> None:
        self._sent_at = self.clock.seconds()
        self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        self._heard_at = self.clock.seconds()
        try:
            frames = self.parser.feed(data)
        except FrameError as exc:
            self.fail(exc)
            return
        for frame in frames:
            self._frame(frame)
            if not self._open:
                return

    def _frame(self, frame: Frame) -> None:
        if frame.command == "CONNECTED":
            if self.ready.called:
                return
            self.server = frame.headers.get("server", "")
            self._beat_every, self._silence_limit = heartbeats(
                (self.heart, self.heart), frame.headers.get("heart-beat", "0,0")
            )
            self._schedule()
            self.ready.callback(frame)
        elif frame.command == "RECEIPT":
            d = self._receipts.pop(frame.headers.get("receipt-id", ""), None)
            if d is not None and not d.called:  # called: given up on (overdue)
                d.callback(None)
        elif frame.command == "ERROR":
            text = frame.headers.get("message", "") or frame.body[:200].decode("utf-8", "replace").strip()
            body = frame.body[:200].decode("utf-8", "replace").strip()
            if body and body != text:
                text = f"{text}: {body}"
            self.fail(StompError(text.replace("\n", " ") or "ERROR frame without a message"))
        # MESSAGE and anything else: fedd subscribes to nothing

    def fail(self, exc: Exception) -> None:
        """Give up this connection: the pending receipts fail with `exc`, then it closes."""
        if self.error is None:
            self.error = exc
        if self._open:
            self._open = False
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._open = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        error = self.error
        if error is None and reason.check(SSL.Error):
            error = HandshakeFailed(f"TLS: {reason.getErrorMessage()}")
        elif error is None:
            error = NotConnected(f"connection lost: {reason.getErrorMessage()}")
        receipts, self._receipts = self._receipts, {}
        for d in receipts.values():
            if not d.called:
                d.errback(error)
        if not self.ready.called:
            self.ready.errback(error)
        self.closed.callback(None)

    # --- heart-beats ----------------------------------------------------------------------------

    def _schedule(self) -> None:
        steps = [s for s in (self._beat_every, self._silence_limit / 2) if s]
        if steps and self._open:
            self._timer = self.clock.callLater(min(steps), self._tick)

    def _tick(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        if self._silence_limit and now - self._heard_at > self._silence_limit:
            self.fail(NotConnected(f"no heart-beat from the broker for {now - self._heard_at:.0f} s"))
            return
        if self._beat_every and now - self._sent_at >= self._beat_every * 0.9:
            self._write(b"\n")
        self._schedule()

    # --- sending --------------------------------------------------------------------------------

    def send_events(self, frames: list[tuple[bytes, bytes]], receipts_each: bool) -> Deferred[Any]:
        """`frames`: (headers part of a SEND, without `receipt` and the blank line; body)."""
        if not self._open or not self.ready.called:
            raise NotConnected(self.broker.describe())
        waits = []
        out = []
        last = len(frames) - 1
        for i, (head, body) in enumerate(frames):
            if receipts_each or i == last:
                self._next_receipt += 1
                rid = str(self._next_receipt)
                d: Deferred[None] = Deferred()
                self._receipts[rid] = d
                waits.append(d)
                out.append(head + b"receipt:" + rid.encode() + b"\n\n" + body + b"\0")
            else:
                out.append(head + b"\n" + body + b"\0")
        self._write(b"".join(out))
        return DeferredList(waits, fireOnOneErrback=True, consumeErrors=True)

    def disconnect(self, timeout: float) -> Deferred[None]:
        """DISCONNECT with a receipt (the broker has everything sent before), then close."""
        if not self._open:
            return self.closed
        self._next_receipt += 1
        rid = str(self._next_receipt)
        done: Deferred[None] = Deferred()
        self._receipts[rid] = done
        self._write(encode("DISCONNECT", [("receipt", rid)]))
        return ensureDeferred(self._disconnect(done, timeout))

    async def _disconnect(self, done: Deferred[None], timeout: float) -> None:
        try:
            await done.addTimeout(timeout, self.clock)
        except Exception as exc:  # closing anyway
            log.debug("STOMP DISCONNECT: {reason}", reason=describe(exc))
        if self._open:
            self._open = False
            self.transport.loseConnection()


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
        self._wake: Deferred[None] | None = None
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
        proto: StompProtocol = await connecting  # type: ignore[assignment]
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
        wake: Deferred[None] = Deferred()
        self._wake = wake
        timer = deferLater(self.reactor, seconds, lambda: None)
        await DeferredList([wake, timer], fireOnOneCallback=True, consumeErrors=True)
        if not timer.called:
            timer.cancel()
        if self._wake is wake:
            self._wake = None

    async def stop(self) -> None:
        if self._attempt is not None:
            self._attempt.cancel()
        wake, self._wake = self._wake, None
        if wake is not None:
            wake.callback(None)
        proto, self._proto = self._proto, None
        if proto is not None:
            await proto.disconnect(self.timeout)
            if not proto.closed.called:
                proto.transport.abortConnection()
            await proto.closed

    # --- publishing -----------------------------------------------------------------------------

    def frames(self, events: list[Event]) -> list[tuple[bytes, bytes]]:
        head = self._head
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
