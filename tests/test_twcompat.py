"""The private Twisted names in fedd/twcompat.py still exist and do what fedd expects: a Twisted
upgrade that renames one fails here first, pointing at the one module to fix."""

from __future__ import annotations

import io
import signal
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.web.client import FileBodyProducer

from fedd.twcompat import (
    clean_exit_after_signal,
    inner_channel,
    raise_listen_errors,
    release_transport,
    request_line,
    transport_under,
    wrap_channel,
)
from fedd.web.site import FeddChannel


def test_channel_wrapper_and_inner_channel() -> None:
    protocol = wrap_channel(FeddChannel(7.0))
    channel = inner_channel(protocol)
    assert isinstance(channel, FeddChannel) and channel.header_timeout == 7.0
    protocol.makeConnection(StringTransport())
    release_transport(channel)


def test_request_line_is_readable_before_the_body() -> None:
    seen: list[tuple[bytes, bytes, bytes]] = []

    class Probe(FeddChannel):
        def allHeadersReceived(self) -> None:
            seen.append(request_line(self))
            super().allHeadersReceived()

    protocol = wrap_channel(Probe(7.0))
    protocol.makeConnection(StringTransport())
    protocol.dataReceived(b"PUT /a/b HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert seen and seen[0] == (b"PUT", b"/a/b", b"HTTP/1.1")


def test_transport_under_a_body_encoder() -> None:
    """The request body of an outgoing request is written to an encoder whose `_consumer` is the
    connection: twisted.web.http11 `LengthEnforcingConsumer` / `ChunkedEncoder`."""
    from twisted.web._newclient import ChunkedEncoder, LengthEnforcingConsumer

    transport = StringTransport()
    producer = FileBodyProducer(io.BytesIO(b""))
    assert transport_under(LengthEnforcingConsumer(producer, transport, Deferred())) is transport
    assert transport_under(ChunkedEncoder(transport)) is transport
    assert transport_under(transport) is transport


def test_clean_exit_after_sigterm() -> None:
    class Reactor:
        _exitSignal: Any = signal.SIGTERM

    reactor = Reactor()
    clean_exit_after_signal(reactor)
    assert reactor._exitSignal is None
    reactor._exitSignal = signal.SIGKILL
    clean_exit_after_signal(reactor)
    assert reactor._exitSignal == signal.SIGKILL


def test_adopted_port_accepts_one_connection_per_wakeup() -> None:
    """`[server] workers`: a worker's port takes one queued connection per readable event."""
    import socket

    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.testing import MemoryReactorClock

    from fedd.twcompat import adopt_port_one_accept

    built: list[Protocol] = []

    class Counting(Factory):
        def buildProtocol(self, addr: Any) -> Protocol:
            proto = Protocol()
            built.append(proto)
            return proto

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]  # queued in the kernel
    reactor = MemoryReactorClock()
    try:
        port = adopt_port_one_accept(reactor, listener.fileno(), socket.AF_INET, Counting())
        assert port.numberAccepts == 1
        port.doRead()
        assert len(built) == 1 and port.numberAccepts == 1  # Twisted's doRead would have taken all 3
        port.doRead()
        assert len(built) == 2
        port.stopListening()
        for proto in built:
            assert proto.transport is not None
            proto.transport.loseConnection()
        reactor.advance(0)
    finally:
        for c in clients:
            c.close()
        listener.close()


def test_a_failure_to_listen_is_raised_at_start() -> None:
    from twisted.application.internet import StreamServerEndpointService
    from twisted.internet.error import CannotListenError
    from twisted.internet.protocol import Factory

    class Refusing:
        def listen(self, factory: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            d.errback(CannotListenError("127.0.0.1", 1, OSError("in use")))
            return d

    service = StreamServerEndpointService(Refusing(), Factory())
    raise_listen_errors(service)
    try:
        service.privilegedStartService()
    except CannotListenError as exc:
        assert exc.port == 1
    else:
        raise AssertionError("privilegedStartService did not raise")


def test_write_now_sends_at_once_unless_something_is_queued() -> None:
    """The lean front's answers: on a plain TCP connection with nothing queued, one send() now (no
    writability registration); behind queued data, queued in order; other transports: `write`."""
    import socket

    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.testing import MemoryReactorClock

    from fedd.twcompat import adopt_port_one_accept, write_now

    built: list[Protocol] = []

    class Keeping(Factory):
        def buildProtocol(self, addr: Any) -> Protocol:
            built.append(Protocol())
            return built[-1]

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    client.settimeout(5)
    reactor = MemoryReactorClock()
    try:
        port = adopt_port_one_accept(reactor, listener.fileno(), socket.AF_INET, Keeping())
        port.doRead()
        transport: Any = built[0].transport
        write = write_now(transport)
        write(b"now")
        assert client.recv(100) == b"now" and transport not in reactor.writers  # sent, nothing registered
        transport.write(b"queued ")  # Twisted's write: buffered until the socket is writable
        write(b"behind")
        assert transport in reactor.writers
        client.setblocking(False)
        try:
            early = client.recv(100)
        except BlockingIOError:
            early = b""
        assert early == b""  # nothing overtook the queued bytes
        transport.doWrite()
        client.setblocking(True)
        assert client.recv(100) == b"queued behind"
        transport.loseConnection()
        port.stopListening()
        reactor.advance(0)
    finally:
        client.close()
        listener.close()
    other = StringTransport()
    assert write_now(other) == other.write  # TLS and test transports: their own write


def test_write_now_over_tls_encrypts_at_once_unless_something_is_gathered(tmp_path: Any) -> None:
    """Twisted's TLS transport gathers small writes until the next reactor turn (a callLater(0));
    the lean front's answers skip that while nothing is gathered, and queue behind what is."""
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.ssl import CertificateOptions
    from twisted.internet.task import Clock
    from twisted.protocols import tls

    from fedd.twcompat import write_now
    from tests.gridpki import CA

    ca = CA(tmp_path, "ca", "/DC=org/DC=fedd-test/CN=Twcompat CA")
    cert, key = ca.issue("host", "/DC=org/DC=fedd-test/CN=localhost", "host")
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    private: Any = load_pem_private_key(key.read_bytes(), None)  # pyOpenSSL takes cryptography's objects
    public: Any = x509.load_pem_x509_certificate(cert.read_bytes())
    options = CertificateOptions(privateKey=private, certificate=public)
    clock = Clock()
    factory = tls.TLSMemoryBIOFactory(options, False, Factory.forProtocol(Protocol))
    factory._clock = clock
    wrapper: Any = factory.buildProtocol(None)
    assert isinstance(wrapper, tls.BufferingTLSTransport)
    wrapper.makeConnection(StringTransport())
    gathering: Any = wrapper._aggregator
    write = write_now(wrapper)
    write(b"answer")  # before the handshake TLS keeps it; no flush is scheduled either way
    assert clock.getDelayedCalls() == [] and gathering._buffer == []
    wrapper.write(b"gathered")  # Twisted's write: gathered, a flush at the next turn
    assert len(clock.getDelayedCalls()) == 1
    write(b"behind")
    assert gathering._buffer == [b"gathered", b"behind"]  # in order, behind it
    clock.advance(0)
    assert gathering._buffer == []
