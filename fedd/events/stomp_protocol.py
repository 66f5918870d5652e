"""One STOMP 1.2 connection as a Twisted protocol: CONNECT, SEND with receipts, RECEIPT, ERROR,
heart-beats and DISCONNECT. It runs on any transport (tests drive it with StringTransport and a Clock);
`fedd.events.stomp.StompSink` decides when to connect and where."""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from fedd.errors import describe
from fedd.events.sinks import NotConnected
from fedd.events.stomp_brokers import StompBroker
from fedd.events.stomp_frames import MAX_FRAME, Frame, FrameError, FrameParser, encode, heartbeats
from fedd.twtypes import Protocol

log = Logger(namespace="fedd.events")


class StompError(Exception):
    """The broker sent an ERROR frame: its `message` header and (short) body."""


class HandshakeFailed(NotConnected):
    """The TLS handshake failed: the broker's certificate is not trusted (`ca_file`), is not for its
    host name, or the broker refused ours. Not a blip: retrying will not help until someone acts."""


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
