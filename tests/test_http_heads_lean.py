"""The lean HEAD client (fedd.endpoints.heads): what it writes, how it reads an answer cut anywhere,
when it keeps, resends on or closes a connection, and the same over real sockets and TLS.

The unit part drives `HeadPool` on in-memory transports (every byte boundary, every connection
fate); the socket part runs it through `HttpClient` against loopback servers, with and without TLS.
The real endpoints (Ceph RGW, Apache mod_dav, Azurite) are asked HEADs through it by their own
suites (every stat and cold locate)."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed, ResponseNeverReceived

from fedd.endpoints import tls_policy
from fedd.endpoints.heads import IDLE_KEPT, HeadPool, MalformedAnswer
from fedd.endpoints.http import HttpClient
from fedd.endpoints.response import HttpResponse
from fedd.errors import EndpointError
from tests import reactor
from tests.test_http_head import RecordingServer
from tests.test_tls import make_cert

OK = b'HTTP/1.1 200 OK\r\nContent-Length: 42\r\nETag: "e1"\r\nX-Two: a\r\nX-Two: b\r\n\r\n'


class Transport:
    """An in-memory connection: what was written, and whether it was closed or aborted."""

    def __init__(self) -> None:
        self.written = b""
        self.disconnecting = False
        self.aborted = False
        self.protocol: Any = None

    def write(self, data: bytes) -> None:
        self.written += data

    def value(self) -> bytes:
        return self.written

    def abortConnection(self) -> None:
        self.aborted = True
        self.lose(ConnectionLost("aborted"))

    def loseConnection(self) -> None:
        self.disconnecting = True
        self.lose(ConnectionDone("closed"))

    def lose(self, why: Exception) -> None:
        protocol, self.protocol = self.protocol, None
        if protocol is not None:
            protocol.connectionLost(Failure(why))


class Connector:
    """`DirectEndpoints` stand-in: each connect makes a connection on a fresh in-memory transport, at
    once or (held) when the test says."""

    def __init__(self) -> None:
        self.transports: list[Transport] = []
        self.asked: list[tuple[bytes, bytes, int]] = []
        self.hold = False
        self.held: list[Deferred[Any]] = []

    def endpoint(self, scheme: bytes, host: bytes, port: int) -> Any:
        self.asked.append((scheme, host, port))
        connector = self

        class Endpoint:
            def connect(self, factory: Any) -> Deferred[Any]:
                if connector.hold:
                    d: Deferred[Any] = Deferred()
                    connector.held.append(d)
                    return d
                protocol = factory.buildProtocol(None)
                transport = Transport()
                transport.protocol = protocol
                protocol.makeConnection(transport)
                connector.transports.append(transport)
                return succeed(protocol)

        return Endpoint()


def pool(per_host: int = 16) -> tuple[HeadPool, Connector, Clock]:
    clock, connector = Clock(), Connector()
    return HeadPool(clock, connector, per_host=per_host), connector, clock  # type: ignore[arg-type]


def result(d: Deferred[Any]) -> Any:
    got: list[Any] = []
    d.addBoth(got.append)
    assert got, "not answered yet"
    if isinstance(got[0], Failure):
        got[0].raiseException()
    return got[0]


def head(p: HeadPool, url: str = "http://10.0.0.1:8080/d/f", headers: dict[str, str] | None = None) -> Deferred[Any]:
    d = p.head(url, headers or {})
    assert d is not None
    return d


def test_an_answer_cut_at_every_byte_is_read_the_same_and_the_connection_kept() -> None:
    for cut in range(len(OK) + 1):
        p, connector, _ = pool()
        d = head(p)
        transport = connector.transports[0]
        for part in (OK[:cut], OK[cut:]):
            if part:
                transport.protocol.dataReceived(part)
        answer: HttpResponse = result(d)
        assert (answer.code, answer.body) == (200, b"")
        assert answer.header("Content-Length") == "42" and answer.header("ETag") == '"e1"'
        assert answer.headers.getRawHeaders("X-Two") == ["a", "b"]
        assert not transport.disconnecting
        # the next HEAD to the same place goes on the same connection
        d2 = head(p, "http://10.0.0.1:8080/d/g")
        assert len(connector.transports) == 1
        transport.protocol.dataReceived(OK)
        assert result(d2).code == 200


def test_what_goes_on_the_wire() -> None:
    p, connector, _ = pool()
    head(p, "http://10.0.0.1:8080/d/f%20x?versionId=3", {"Authorization": "AWS4 x", "X-N": "1"})
    head(p, "http://10.0.0.1/d/g")
    head(p, "https://store.example:443?list")
    head(p, "https://store.example:8443/h", {"Host": "virtual.example"})
    wire = [t.value() for t in connector.transports]
    assert wire == [
        b"HEAD /d/f%20x?versionId=3 HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nAuthorization: AWS4 x\r\nX-N: 1\r\n\r\n",
        b"HEAD /d/g HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n",
        b"HEAD /?list HTTP/1.1\r\nHost: store.example\r\n\r\n",
        b"HEAD /h HTTP/1.1\r\nHost: virtual.example\r\n\r\n",
    ]
    assert connector.asked == [
        (b"http", b"10.0.0.1", 8080),
        (b"http", b"10.0.0.1", 80),
        (b"https", b"store.example", 443),
        (b"https", b"store.example", 8443),
    ]


def test_urls_and_headers_it_leaves_to_the_agent() -> None:
    p, connector, _ = pool()
    assert p.head("http://user:pw@10.0.0.1/f", {}) is None
    assert p.head("ftp://10.0.0.1/f", {}) is None
    assert p.head("http://10.0.0.1:port/f", {}) is None
    assert p.head("http://10.0.0.1/f", {"X-Bad": "a\r\nInjected: 1"}) is None
    assert p.head("http://10.0.0.1/f", {"Bad Name": "a"}) is None
    assert connector.transports == []


def test_interim_answers_are_skipped() -> None:
    answer = b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n" + OK
    for cut in (0, 20, len(answer) - len(OK), len(answer) - 3):
        p, connector, _ = pool()
        d = head(p)
        if cut:
            connector.transports[0].protocol.dataReceived(answer[:cut])
        connector.transports[0].protocol.dataReceived(answer[cut:])
        got = result(d)
        assert got.code == 200 and got.header("Link") is None


@pytest.mark.parametrize(
    ("answer", "kept"),
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, Close\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n", True),
        (b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", False),  # a body after a HEAD's answer
    ],
)
def test_which_connections_are_kept(answer: bytes, kept: bool) -> None:
    p, connector, _ = pool()
    d = head(p)
    connector.transports[0].protocol.dataReceived(answer)
    assert result(d).code in (200, 404)
    assert connector.transports[0].disconnecting is (not kept)
    head(p)
    assert len(connector.transports) == (1 if kept else 2)


@pytest.mark.parametrize(
    "answer",
    [
        b"\x00\xffNOT HTTP AT ALL\r\n\r\n",
        b"HTTP/2 200\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"x" * 70000,
    ],
)
def test_a_malformed_answer_fails_and_the_connection_is_dropped(answer: bytes) -> None:
    p, connector, _ = pool()
    d = head(p)
    connector.transports[0].protocol.dataReceived(answer)
    with pytest.raises(ResponseFailed) as info:
        result(d)
    assert not isinstance(info.value, ResponseNeverReceived)
    assert info.value.reasons[0].check(MalformedAnswer)
    assert connector.transports[0].aborted
    head(p)
    assert len(connector.transports) == 2


def test_a_reused_connection_closed_before_answering_is_resent_once_on_a_new_one() -> None:
    p, connector, _ = pool()
    d = head(p)
    connector.transports[0].protocol.dataReceived(OK)
    result(d)
    d = head(p, "http://10.0.0.1:8080/d/again")
    assert len(connector.transports) == 1
    connector.transports[0].lose(ConnectionDone("idle close raced the request"))
    assert len(connector.transports) == 2
    assert connector.transports[1].value().startswith(b"HEAD /d/again ")
    connector.transports[1].protocol.dataReceived(OK)
    assert result(d).code == 200


def test_a_new_connection_closed_before_answering_fails_without_resending() -> None:
    p, connector, _ = pool()
    d = head(p)
    connector.transports[0].lose(ConnectionDone("closed"))
    with pytest.raises(ResponseNeverReceived):
        result(d)
    assert len(connector.transports) == 1


def test_a_resent_request_is_not_resent_twice() -> None:
    p, connector, _ = pool()
    d = head(p)
    connector.transports[0].protocol.dataReceived(OK)
    result(d)
    d = head(p)
    connector.transports[0].lose(ConnectionDone("closed"))
    connector.transports[1].lose(ConnectionDone("closed again"))
    with pytest.raises(ResponseNeverReceived):
        result(d)
    assert len(connector.transports) == 2


def test_a_connection_lost_mid_answer_fails_without_resending() -> None:
    p, connector, _ = pool()
    d = head(p)
    connector.transports[0].protocol.dataReceived(OK)
    result(d)
    d = head(p)
    connector.transports[0].protocol.dataReceived(OK[:10])
    connector.transports[0].lose(ConnectionLost("reset"))
    with pytest.raises(ResponseFailed) as info:
        result(d)
    assert not isinstance(info.value, ResponseNeverReceived)
    assert len(connector.transports) == 1


def test_bytes_on_an_idle_connection_drop_it() -> None:
    p, connector, _ = pool()
    d = head(p)
    connector.transports[0].protocol.dataReceived(OK)
    result(d)
    connector.transports[0].protocol.dataReceived(b"HTTP/1.1 200 OK\r\n\r\n")
    assert connector.transports[0].aborted
    head(p)
    assert len(connector.transports) == 2


def test_cancelling_aborts_the_connection_waiting_or_connecting() -> None:
    p, connector, _ = pool()
    d = head(p)
    d.cancel()
    with pytest.raises(CancelledError):
        result(d)
    assert connector.transports[0].aborted
    connector.hold = True
    d = head(p)
    d.cancel()
    with pytest.raises(CancelledError):
        result(d)
    held = connector.held[0]
    assert held.called  # the connect itself was cancelled
    held.addErrback(lambda f: f.trap(CancelledError))


def test_idle_connections_beyond_per_host_are_closed() -> None:
    p, connector, _ = pool(per_host=2)
    waiting = [head(p) for _ in range(3)]
    assert len(connector.transports) == 3
    for t in connector.transports:
        t.protocol.dataReceived(OK)
    assert [result(d).code for d in waiting] == [200, 200, 200]
    assert [t.disconnecting for t in connector.transports] == [False, False, True]


def test_a_connection_idle_too_long_is_not_reused() -> None:
    p, connector, clock = pool()
    d = head(p)
    connector.transports[0].protocol.dataReceived(OK)
    result(d)
    clock.advance(IDLE_KEPT + 1)
    head(p)
    assert connector.transports[0].disconnecting
    assert len(connector.transports) == 2


def test_close_closes_the_idle_connections() -> None:
    p, connector, _ = pool()
    waiting = [head(p) for _ in range(2)]
    connector.transports[0].protocol.dataReceived(OK)
    result(waiting[0])
    closed = p.close()
    assert result(closed) is None
    assert connector.transports[0].disconnecting and not connector.transports[1].disconnecting
    connector.transports[1].protocol.dataReceived(OK)  # one in use still answers
    assert result(waiting[1]).code == 200


# --- over real sockets, through HttpClient ----------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(key, certificate) of a self-signed server certificate for localhost and 127.0.0.1."""
    cert, key = make_cert(tmp_path_factory.mktemp("tls"))
    return key, cert


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[RecordingServer]:
    key, cert = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = RecordingServer(lambda _: OK, tls=context)
    yield server
    server.stop()


def test_heads_over_tls_on_one_connection_with_a_trusted_ca(tls_server: RecordingServer, certificate: Any) -> None:
    http = HttpClient(
        reactor.the_reactor(), endpoint="tls", timeout=5.0, tls_policy=tls_policy(True, str(certificate[1]))
    )
    try:
        for n in range(10):
            answer = reactor.call(http.request, "HEAD", f"https://127.0.0.1:{tls_server.port}/d/f{n}")
            assert answer.code == 200 and answer.header("ETag") == '"e1"'
    finally:
        reactor.call(http.close)
    assert tls_server.connections == 1
    assert [h.split(b"\r\n")[0] for h in tls_server.heads] == [f"HEAD /d/f{n} HTTP/1.1".encode() for n in range(10)]


def test_an_untrusted_certificate_is_an_endpoint_error(tls_server: RecordingServer) -> None:
    http = HttpClient(reactor.the_reactor(), endpoint="tls", timeout=5.0, tls_policy=tls_policy(True, ""))
    try:
        with pytest.raises(EndpointError, match="connection lost or malformed HTTP answer"):
            reactor.call(http.request, "HEAD", f"https://127.0.0.1:{tls_server.port}/d/f")
    finally:
        reactor.call(http.close)


def test_a_server_closing_idle_connections_costs_no_failed_head() -> None:
    """The server closes each connection after one answer, without saying so: the next HEAD finds the
    pooled connection closed (or closing as it is written) and is answered on a new one."""
    server = RecordingServer(lambda _: OK)

    def one_answer_then_close(conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            conn.sendall(OK)

    server._handle = one_answer_then_close  # type: ignore[method-assign]
    http = HttpClient(reactor.the_reactor(), endpoint="closing", timeout=5.0)
    try:
        for n in range(20):
            assert reactor.call(http.request, "HEAD", f"http://127.0.0.1:{server.port}/f{n}").code == 200
    finally:
        reactor.call(http.close)
        server.stop()
    assert server.connections >= 20
