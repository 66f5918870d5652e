"""The few private Twisted names fedd relies on, all in this module (checked on Twisted 26.10).

twisted.web has no public way to (a) build the HTTP/1.1-or-HTTP/2 channel wrapper around a channel
subclass of our own, (b) reach the channel inside that wrapper, (c) read the request line before the
body, (d) stop the channel from pausing the transport while it is being closed, or (e) reach the
connection under the body producer of an outgoing request (to cut an upload). twistd has no public
way (f) to say that a stop asked for by SIGTERM was a clean one, nor (g) to make a listening port
accept one connection per wake-up; and (h) a `StreamServerEndpointService` reports a failure to
listen only through its Deferred unless told (privately) to raise it. If a Twisted upgrade renames
one of them, tests/test_twcompat.py fails first, pointing here.
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.internet import tcp
from twisted.protocols import tls
from twisted.web import http


def raise_listen_errors(service: Any) -> None:
    """Make a `StreamServerEndpointService` raise a failure to listen out of
    `privilegedStartService` (so start-up stops there) instead of only logging it."""
    service._raiseSynchronously = True


def wrap_channel(channel: http.HTTPChannel) -> Any:
    """The protocol `Site` hands to the reactor: Twisted's HTTP/1.1 / HTTP/2 switch around `channel`."""
    return http._GenericHTTPChannelProtocol(channel)


def inner_channel(protocol: Any) -> Any:
    """The `HTTPChannel` inside a protocol built by `wrap_channel` (the protocol itself otherwise)."""
    return getattr(protocol, "_channel", protocol)


def request_line(channel: http.HTTPChannel) -> tuple[bytes, bytes, bytes]:
    """(method, target, version) of the request whose head the channel has just read, before its
    body: what the channel later passes to `Request.requestReceived` (kept there until then)."""
    return channel._command, channel._path, channel._version


def release_transport(channel: http.HTTPChannel) -> None:
    """Stop the channel from pausing/resuming the transport (it is about to be half-closed)."""
    channel._networkProducer.unregisterProducer()  # type: ignore[attr-defined]


def transport_under(consumer: Any) -> Any:
    """The connection an outgoing request's body is written to: Twisted hands a body producer a
    length- or chunk-encoding wrapper whose `_consumer` is the transport."""
    return getattr(consumer, "_consumer", None) or getattr(consumer, "transport", None) or consumer


def clean_exit_after_signal(reactor: Any) -> None:
    """A stop asked for by SIGTERM/SIGINT that got this far (drain done) exits 0, not "killed by
    signal": twistd reads `_exitSignal` after the reactor stops and re-raises the signal if set."""
    if getattr(reactor, "_exitSignal", None) in (signal.SIGTERM, signal.SIGINT):
        reactor._exitSignal = None


class _OneAcceptPort(tcp.Port):
    """A TCP port that accepts one connection each time the reactor says the socket is readable.
    Twisted accepts up to 100 (and more as it adapts) per wake-up: with several worker processes
    on one socket, the first awake takes a whole burst of connections. One at a time, a busy
    worker (not waiting in epoll) leaves the next connection to an idle one."""

    @property
    def numberAccepts(self) -> int:
        return 1

    @numberAccepts.setter
    def numberAccepts(self, value: int) -> None:
        pass  # Twisted's adaptive count (tcp.Port.doRead) stays at one


def adopt_port_one_accept(reactor: Any, fd: int, family: Any, factory: Any) -> Any:
    """`reactor.adoptStreamPort(fd, family, factory)` with a port that accepts one connection per
    wake-up (the descriptor is duplicated, as adoptStreamPort does: the caller closes `fd`)."""
    port = _OneAcceptPort._fromListeningDescriptor(reactor, fd, family, factory)  # type: ignore[no-untyped-call]
    port.startListening()
    return port


def write_now(transport: Any) -> Any:
    """`transport.write`, or for a plain TCP connection a write that sends at once while nothing is
    queued on it: one send() where Twisted buffers, registers the socket for writability, wakes up,
    sends and unregisters (two epoll_ctl calls and a loop turn per answer). What the kernel does not
    take at once (a full socket buffer) is queued behind it with `transport.write`, in order. Over
    TLS, the answer is encrypted at once rather than at the next loop turn (`_write_tls_now`)."""
    if isinstance(transport, tls.BufferingTLSTransport):
        return _write_tls_now(transport)
    if type(transport) is not tcp.Server:
        return transport.write

    def write(data: bytes) -> None:
        t = transport
        if t._tempDataLen or len(t.dataBuffer) > t.offset or t.disconnecting or t._writeDisconnected:
            t.write(data)  # something is queued, or the connection is ending: Twisted's order and checks
            return
        sent = t.writeSomeData(data)
        if not isinstance(sent, int):  # the connection broke: Twisted's write path finds and reports it
            t.write(data)
        elif sent < len(data):
            t.write(data[sent:])

    return write


def _write_tls_now(transport: tls.BufferingTLSTransport) -> Any:
    """Twisted's TLS transport gathers small writes until the next reactor turn (a `callLater(0)`
    per answer, and the answer waits for that turn): while nothing is gathered, encrypt and pass
    the answer on at once (`TLSMemoryBIOProtocol.write`, the write under the gathering)."""

    def write(data: bytes) -> None:
        aggregator = transport._aggregator
        if isinstance(aggregator, tls._AggregateSmallWrites) and not aggregator._buffer:
            tls.TLSMemoryBIOProtocol.write(transport, data)
        else:
            transport.write(data)  # something gathered goes first, or the connection is gone

    return write
