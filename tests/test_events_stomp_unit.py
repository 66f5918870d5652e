"""The STOMP sink in process: the frame parser (tables and hypothesis), the protocol on a
StringTransport with a Clock, the sink's fail-over and receipts. The real brokers (ActiveMQ,
RabbitMQ's STOMP plugin) are in tests/test_events_stomp.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.internet.defer import Deferred, FirstError, ensureDeferred, fail, succeed
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python import usage
from twisted.python.failure import Failure

from fedd.config import ConfigError, parse_config
from fedd.events.sinks import NotConnected
from fedd.events.stomp import (
    Frame,
    FrameError,
    FrameParser,
    HandshakeFailed,
    StompBroker,
    StompError,
    StompProtocol,
    StompSink,
    encode,
    escape,
    failure_kind,
    heartbeats,
    load_ca_file,
    parse_brokers,
    stomp_tls,
    unescape,
)
from fedd.twtypes import Service

BROKER = StompBroker("127.0.0.1", 61613, False, "/", "fedd", "secret")

# --- the frame parser ------------------------------------------------------------------------

PARSE_CASES = [
    # (bytes, frames as (command, headers, body))
    (b"CONNECTED\nversion:1.2\n\n\0", [("CONNECTED", {"version": "1.2"}, b"")]),
    (b"\n\r\n\nRECEIPT\nreceipt-id:7\n\n\0\n", [("RECEIPT", {"receipt-id": "7"}, b"")]),  # heart-beats around
    (b"RECEIPT\r\nreceipt-id:7\r\n\r\n\0", [("RECEIPT", {"receipt-id": "7"}, b"")]),  # CR LF lines
    (b"MESSAGE\ncontent-length:3\n\na\0b\0", [("MESSAGE", {"content-length": "3"}, b"a\0b")]),  # NUL in body
    (b"MESSAGE\na:1\na:2\n\nx\0", [("MESSAGE", {"a": "1"}, b"x")]),  # repeated header: the first counts
    (b"ERROR\nmessage:a\\cb\\nc\\\\d\\r\n\n\0", [("ERROR", {"message": "a:b\nc\\d\r"}, b"")]),  # 1.2 escapes
    (b"CONNECTED\nserver:a\\cb\n\n\0", [("CONNECTED", {"server": "a\\cb"}, b"")]),  # CONNECTED: not escaped
    (b"ERROR\nmessage:x:y\n\nbody\0", [("ERROR", {"message": "x:y"}, b"body")]),  # ':' in a value
    (
        b"RECEIPT\nreceipt-id:1\n\n\0RECEIPT\nreceipt-id:2\n\n\0",
        [("RECEIPT", {"receipt-id": "1"}, b""), ("RECEIPT", {"receipt-id": "2"}, b"")],
    ),
    (b"RECEIPT\nreceipt-id:1\n\n", []),  # incomplete: waits
    (b"MESSAGE\ncontent-length:5\n\nab", []),
    (b"", []),
    (b"\n\n\n", []),
]

BAD_FRAMES = [
    (b"receipt\n\n\0", "not a STOMP command"),
    (b"MESSAGE\nnocolon\n\n\0", "without ':'"),
    (b"MESSAGE\na:\\t\n\n\0", "undefined escape"),
    (b"MESSAGE\na:b\\\n\n\0", "undefined escape"),
    (b"MESSAGE\ncontent-length:-1\n\n\0", "bad content-length"),
    (b"MESSAGE\ncontent-length:2\n\nabc\0", "not followed by NUL"),
    (b"MESSAGE\ncontent-length:999999999999\n\n", "over the limit"),
    (b"MESSAGE\na:\xff\n\n\0", "not UTF-8"),
    (b"MESSAGE\n" + b"h:1\n" * 200 + b"\n\0", "more than 128 headers"),
]


@pytest.mark.parametrize(("data", "frames"), PARSE_CASES)
def test_parser_table(data: bytes, frames: list[tuple[str, dict[str, str], bytes]]) -> None:
    got = FrameParser().feed(data)
    assert [(f.command, f.headers, f.body) for f in got] == frames
    one_by_one = FrameParser()
    assert [f for i in range(len(data)) for f in one_by_one.feed(data[i : i + 1])] == got  # any split


@pytest.mark.parametrize(("data", "error"), BAD_FRAMES)
def test_parser_refuses(data: bytes, error: str) -> None:
    with pytest.raises(FrameError, match=error):
        FrameParser(max_frame=1 << 16).feed(data)


@pytest.mark.parametrize(
    "data",
    [
        b"MESSAGE\n\n" + b"x" * 5000,  # no NUL, ever
        b"MESSAGE\n" + b"h:" + b"x" * 5000,  # a header that never ends
        b"MESSAGE\ncontent-length:5000\n\n",  # announced too large
    ],
)
def test_parser_is_bounded(data: bytes) -> None:
    parser = FrameParser(max_frame=4096)
    with pytest.raises(FrameError, match="4096"):
        for i in range(0, len(data), 100):
            parser.feed(data[i : i + 100])
    assert len(parser._buf) <= 4096 + 100


_header_text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=20)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(
    command=st.sampled_from(["MESSAGE", "ERROR", "RECEIPT"]),
    headers=st.lists(st.tuples(_header_text.filter(bool), _header_text), max_size=6),
    body=st.binary(max_size=200),
    with_length=st.booleans(),
    beats=st.integers(0, 3),
    cuts=st.lists(st.integers(0, 400), max_size=5),
)
def test_parser_roundtrip(
    command: str, headers: list[tuple[str, str]], body: bytes, with_length: bool, beats: int, cuts: list[int]
) -> None:
    """Whatever we encode comes back the same, however the bytes are cut, with heart-beats between."""
    if not with_length:
        body = body.replace(b"\0", b"")
    headers = [(k, v) for k, v in headers if k != "content-length"]
    if with_length:
        headers.append(("content-length", str(len(body))))
    data = b"\n" * beats + encode(command, headers, body) + b"\r\n" * beats
    parser = FrameParser()
    frames = []
    last = 0
    for cut in sorted(c for c in cuts if c < len(data)):
        frames += parser.feed(data[last:cut])
        last = cut
    frames += parser.feed(data[last:])
    expected: dict[str, str] = {}
    for k, v in headers:
        expected.setdefault(k, v)
    assert frames == [Frame(command, expected, body)]


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.binary(max_size=300))
def test_parser_never_crashes(data: bytes) -> None:
    """Garbage from a broker is a FrameError or frames, nothing else, and stays bounded."""
    parser = FrameParser(max_frame=256)
    try:
        parser.feed(data)
    except FrameError:
        return
    assert len(parser._buf) <= 256 + 300


@pytest.mark.parametrize("value", ["", "a:b", "x\ny\r\\", "\\c", "ü:\n"])
def test_escape_roundtrip(value: str) -> None:
    assert unescape(escape(value)) == value and "\n" not in escape(value) and ":" not in escape(value)


@pytest.mark.parametrize(
    ("ours", "theirs", "expected"),
    [
        ((10000, 10000), "0,0", (0.0, 0.0)),
        ((10000, 10000), "5000,20000", (20.0, 21.0)),  # we beat every 20 s, they every 10 s: silence 2x + 1
        ((0, 0), "5000,5000", (0.0, 0.0)),
        ((10000, 10000), "junk", (0.0, 0.0)),
        ((1000, 1000), "0,500", (1.0, 0.0)),
    ],
)
def test_heartbeat_negotiation(ours: tuple[int, int], theirs: str, expected: tuple[float, float]) -> None:
    assert heartbeats(ours, theirs) == expected


def test_parse_brokers() -> None:
    got = parse_brokers("stomp://a:1, stomp+ssl://u:p%40w@b:2/vh stomp://c", "fedd", "secret")
    assert got == (
        StompBroker("a", 1, False, "/", "fedd", "secret"),
        StompBroker("b", 2, True, "vh", "u", "p@w"),
        StompBroker("c", 61613, False, "/", "fedd", "secret"),
    )
    assert "secret" not in repr(got)


# --- the protocol on a StringTransport --------------------------------------------------------


def connected(heartbeat: float = 0.0, server_beats: str = "0,0") -> tuple[StompProtocol, StringTransport, Clock]:
    clock = Clock()
    proto = StompProtocol(clock, BROKER, heartbeat)
    transport = StringTransport()
    proto.makeConnection(transport)
    connect = transport.value()
    assert connect.startswith(b"CONNECT\naccept-version:1.2\nhost:/\nlogin:fedd\npasscode:secret\n")
    transport.clear()
    proto.dataReceived(f"CONNECTED\nversion:1.2\nserver:ActiveMQ/5.17.2\nheart-beat:{server_beats}\n\n\0".encode())
    assert proto.ready.called and proto.server == "ActiveMQ/5.17.2"
    return proto, transport, clock


def sent_frames(transport: StringTransport) -> list[Frame]:
    return FrameParser().feed(transport.value())


def test_receipts_acknowledge_each_send() -> None:
    proto, transport, _ = connected()
    sink_frames = [(b"SEND\ndestination:/queue/a\n", b"{}"), (b"SEND\ndestination:/queue/a\n", b"[]")]
    d = proto.send_events(sink_frames, receipts_each=True)
    frames = sent_frames(transport)
    assert [f.headers["receipt"] for f in frames] == ["1", "2"] and [f.body for f in frames] == [b"{}", b"[]"]
    proto.dataReceived(b"RECEIPT\nreceipt-id:2\n\n\0")
    assert not d.called  # every receipt, not only the last
    proto.dataReceived(b"RECEIPT\nreceipt-id:1\n\n\0")
    assert d.called


def test_batch_mode_asks_one_receipt() -> None:
    proto, transport, _ = connected()
    d = proto.send_events([(b"SEND\ndestination:/q\n", b"a")] * 3, receipts_each=False)
    frames = sent_frames(transport)
    assert ["receipt" in f.headers for f in frames] == [False, False, True]
    proto.dataReceived(b"RECEIPT\nreceipt-id:1\n\n\0")
    assert d.called


def test_error_frame_fails_pending_and_closes() -> None:
    proto, transport, _ = connected()
    d = proto.send_events([(b"SEND\ndestination:/q\n", b"a")], receipts_each=True)
    proto.dataReceived(b"ERROR\nmessage:User fedd is not authorized to write to: queue://q\nreceipt-id:1\n\n\0")
    assert transport.disconnecting or transport.disconnected
    proto.connectionLost(Failure(ConnectionError("closed")))
    error = _failure(d).value
    assert isinstance(error, FirstError)  # one receipt's wait, of a DeferredList
    assert "not authorized" in str(error.subFailure.value)
    assert isinstance(error.subFailure.value, StompError)
    assert proto.closed.called


def test_error_before_connected_fails_ready() -> None:
    proto = StompProtocol(Clock(), BROKER, 0)
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(b"ERROR\nmessage:User name [fedd] or password is invalid.\n\n\0")
    proto.connectionLost(Failure(ConnectionError("closed")))
    assert isinstance(_failure(proto.ready).value, StompError)


def test_tls_handshake_failure_is_its_own_kind() -> None:
    """A refused certificate (pyOpenSSL's SSL.Error as the connection's end) is not 'unreachable'."""
    proto = StompProtocol(Clock(), BROKER, 0)
    proto.makeConnection(StringTransport())
    proto.connectionLost(Failure(SSL.Error([("SSL routines", "", "certificate verify failed")])))
    error = _failure(proto.ready).value
    assert isinstance(error, HandshakeFailed) and "certificate verify failed" in str(error)


@pytest.mark.parametrize(
    ("exc", "connected", "kind"),
    [
        (StompError("password is invalid"), False, "authentication"),
        (StompError("not authorized"), True, "error"),
        (HandshakeFailed("TLS: certificate verify failed"), False, "tls"),
        (NotConnected("connection lost: refused"), False, "unreachable"),
        (NotConnected("connection lost: reset"), True, "lost"),
        (TimeoutError(), False, "unreachable"),
    ],
)
def test_failure_kind(exc: Exception, connected: bool, kind: str) -> None:
    assert failure_kind(exc, connected) == kind


def test_huge_frame_from_broker_drops_connection() -> None:
    proto, transport, _ = connected()
    transport.clear()
    d = proto.send_events([(b"SEND\ndestination:/q\n", b"a")], receipts_each=True)
    proto.dataReceived(b"MESSAGE\ncontent-length:99999999\n\n")
    assert isinstance(proto.error, FrameError)
    proto.connectionLost(Failure(ConnectionError("closed")))
    error = _failure(d).value
    assert isinstance(error, FirstError) and isinstance(error.subFailure.value, FrameError)


def test_heartbeats_sent_and_silence_detected() -> None:
    proto, transport, clock = connected(heartbeat=1.0, server_beats="1000,1000")
    for _ in range(3):
        clock.advance(1.0)
        proto.dataReceived(b"\n")  # the broker beats
    assert transport.value().count(b"\n") >= 2 and set(transport.value()) == {ord("\n")}
    clock.advance(5.0)  # silence past 2 x 1 s + 1 s
    assert "no heart-beat" in str(proto.error) and transport.disconnecting


def test_disconnect_waits_for_its_receipt() -> None:
    proto, transport, _ = connected()
    d = proto.disconnect(5.0)
    assert sent_frames(transport)[0].command == "DISCONNECT"
    assert not d.called
    proto.dataReceived(b"RECEIPT\nreceipt-id:1\n\n\0")
    assert d.called and transport.disconnecting


def _failure(d: Deferred[Any]) -> Failure:
    got: list[Failure] = []
    d.addErrback(got.append)
    assert got, "expected a failure"
    return got[0]


# --- the sink: fail-over, receipts, logging --------------------------------------------------


class FakeEndpoints:
    """Connections to StringTransports; broker ports in `down` refuse."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.down: set[int] = set()
        self.protos: list[StompProtocol] = []

    def __call__(self, broker: StompBroker) -> Any:
        outer = self

        class Endpoint:
            def connect(self, factory: Factory) -> Deferred[Any]:
                if broker.port in outer.down:
                    return fail(ConnectionRefusedError(f"port {broker.port}"))
                proto = factory.buildProtocol(None)
                assert isinstance(proto, StompProtocol)
                proto.makeConnection(StringTransport())
                outer.protos.append(proto)
                return succeed(proto)

        return Endpoint()


class Running(Service):
    pass


def make_sink(clock: Clock, endpoints: FakeEndpoints, ports: tuple[int, ...], **kw: Any) -> StompSink:
    brokers = tuple(StompBroker("127.0.0.1", p, False, "/", "fedd", "secret") for p in ports)
    return StompSink(clock, brokers, "/topic/fedd.events", endpoint=endpoints, timeout=5.0, **kw)


def answer(proto: StompProtocol, frame: bytes) -> None:
    proto.dataReceived(frame)
    if b"ERROR" in frame:
        proto.connectionLost(Failure(ConnectionError("closed")))


def test_sink_fails_over_and_publishes_with_receipts() -> None:
    clock = Clock()
    endpoints = FakeEndpoints(clock)
    endpoints.down = {1}
    sink = make_sink(clock, endpoints, (1, 2))
    svc = Running()
    svc.running = True
    loop = ensureDeferred(sink.run(svc))
    assert len(endpoints.protos) == 1 and endpoints.protos[0].broker.port == 2  # failed over at once
    answer(endpoints.protos[0], b"CONNECTED\nversion:1.2\n\n\0")
    assert sink.connected
    d = sink.publish([("id1", "fedd.get.redirect", b'{"x":1}')])
    transport = endpoints.protos[0].transport
    connect, frame = sent_frames(transport)
    assert connect.command == "CONNECT" and connect.headers["heart-beat"] == "10000,10000"
    assert frame.headers == {
        "destination": "/topic/fedd.events",
        "content-type": "application/json",
        "persistent": "true",
        "event_type": "get-redirect",
        "fedd-id": "id1",
        "content-length": "7",
        "receipt": "1",
    }
    assert not d.called
    answer(endpoints.protos[0], b"RECEIPT\nreceipt-id:1\n\n\0")
    assert d.called and sink.delivered == {"stomp://127.0.0.1:1": 0, "stomp://127.0.0.1:2": 1}
    svc.running = False
    stopping = ensureDeferred(sink.stop())
    answer(endpoints.protos[0], b"RECEIPT\nreceipt-id:2\n\n\0")  # the DISCONNECT's
    endpoints.protos[0].connectionLost(Failure(ConnectionError("closed")))
    assert stopping.called and loop.called


def test_sink_error_frame_keeps_events_and_moves_on(caplog: Any) -> None:
    clock = Clock()
    endpoints = FakeEndpoints(clock)
    sink = make_sink(clock, endpoints, (1, 2))
    svc = Running()
    svc.running = True
    ensureDeferred(sink.run(svc))
    for _ in range(3):  # the same ERROR three times
        proto = endpoints.protos[-1]
        answer(proto, b"CONNECTED\nversion:1.2\n\n\0")
        d = sink.publish([("id1", "fedd.get.redirect", b"{}")])
        answer(proto, b"ERROR\nmessage:not authorized\nreceipt-id:1\n\n\0")
        failure = _failure(d)
        assert isinstance(failure.value, NotConnected) and "not authorized" in str(failure.value)
        assert not sink.connected
        clock.advance(31)  # the backoff
    assert [p.broker.port for p in endpoints.protos] == [1, 2, 1, 2]  # each ERROR: the next broker
    assert "not authorized" in sink.last_error
    svc.running = False
    ensureDeferred(sink.stop())


def test_sink_receipt_overdue_drops_connection() -> None:
    clock = Clock()
    endpoints = FakeEndpoints(clock)
    sink = make_sink(clock, endpoints, (1,))
    svc = Running()
    svc.running = True
    ensureDeferred(sink.run(svc))
    proto = endpoints.protos[0]
    answer(proto, b"CONNECTED\nversion:1.2\n\n\0")
    d = sink.publish([("id1", "fedd.get.redirect", b"{}")])
    clock.advance(5.1)
    assert "no receipt within 5 s" in str(_failure(d).value)
    assert proto.transport.disconnecting
    proto.connectionLost(Failure(ConnectionError("closed")))
    answer(proto, b"RECEIPT\nreceipt-id:1\n\n\0")  # late: ignored, no AlreadyCalledError
    assert not sink.connected and len(endpoints.protos) == 2  # reconnecting at once
    svc.running = False
    ensureDeferred(sink.stop())


def test_sink_publish_without_connection() -> None:
    sink = make_sink(Clock(), FakeEndpoints(Clock()), (1,))
    assert isinstance(_failure(sink.publish([("a", "k", b"{}")])).value, NotConnected)


# --- configuration --------------------------------------------------------------------------

ENDPOINT = "[endpoint d]\nkind = local\npath = /tmp\n"


def test_config_stomp_keys(tmp_path: Any) -> None:
    secret = tmp_path / "passcode"
    secret.write_text("s3cret\n")
    text = (
        "[events]\nbroker = stomp://a:61613,stomp+ssl://b:61614\ndestination = /topic/rucio.events\n"
        f"login_env = STOMP_USER\npasscode_file = {secret}\nheartbeat = 0\nreceipts = batch\n" + ENDPOINT
    )
    ev = parse_config(text, environ={"STOMP_USER": "hermes"}).events
    assert ev.broker == "stomp://a:61613, stomp+ssl://b:61614" and ev.destination == "/topic/rucio.events"
    assert (ev.login, ev.passcode, ev.heartbeat, ev.receipts) == ("hermes", "s3cret", 0.0, "batch")
    assert "s3cret" not in repr(ev)


@pytest.mark.parametrize(
    ("events", "error"),
    [
        ("broker = stomp://a:61613, http://b\n", "<string>:2: broker: expected stomp://"),
        ("broker = stomp://a:99999\n", "<string>:2: broker"),
        ("broker = amqp://g:g@a/\ndestination = /topic/x\n", "<string>:3: 'destination' only applies to a stomp"),
        ("broker = stomp://a\nreceipts = some\n", "<string>:3: receipts: expected one of each, batch"),
        ("broker = stomp://a\nheartbeat = -1\n", "<string>:3: heartbeat"),
        ("broker = stomp://a\npasscode_env = NOPE\n", "<string>:3: passcode_env: environment variable NOPE"),
        ("broker = stomp://a\npasscode = x\npasscode_env = NOPE\n", "give only one of passcode, passcode_env"),
        ("broker = stomp://a\npasscode_file = /nonexistent/p\n", "<string>:3: passcode_file: cannot read"),
        ("broker = stomp://a\ntls_certificate = /etc/hostname\n", "give both tls_certificate and tls_private_key"),
        ("broker = stomp://a\nca_file = /nonexistent\n", "<string>:3: ca_file: no such file"),
    ],
)
def test_config_stomp_errors(events: str, error: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("[events]\n" + events + ENDPOINT, environ={})
    assert error in str(info.value)


PEM_CERT = """-----BEGIN CERTIFICATE-----
{}
-----END CERTIFICATE-----
"""


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    from tests.gridpki import run

    key, pem = tmp_path / f"{name}.key", tmp_path / f"{name}.pem"
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(pem),
        "-days", "2", "-subj", f"/CN={name}")  # fmt: skip
    return pem, key


def test_ca_file_bundle_trusts_every_certificate(tmp_path: Path) -> None:
    a, _ = _self_signed(tmp_path, "ca-a")
    b, _ = _self_signed(tmp_path, "ca-b")
    bundle = tmp_path / "bundle.pem"
    bundle.write_text("# a comment line, as in distribution bundles\n" + a.read_text() + "\n" + b.read_text())
    certs = load_ca_file(str(bundle))
    assert [c.original.to_cryptography().subject.rfc4514_string() for c in certs] == ["CN=ca-a", "CN=ca-b"]
    options = stomp_tls(str(bundle), "", "")(BROKER)
    assert options is not None


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ("", "not PEM certificates"),
        ("hello\n", "not PEM certificates"),
        (PEM_CERT.format("bm90IGEgY2VydGlmaWNhdGU="), "not PEM certificates"),  # base64 of something else
        (PEM_CERT.format("@@@"), "not PEM certificates"),
    ],
)
def test_malformed_ca_file_is_a_usage_error(tmp_path: Path, content: str, error: str) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text(content)
    with pytest.raises(usage.UsageError, match=f"ca_file {bad}: {error}"):
        stomp_tls(str(bad), "", "")
    with pytest.raises(usage.UsageError, match=f"ca_file {tmp_path}/gone.pem: FileNotFoundError"):
        stomp_tls(str(tmp_path / "gone.pem"), "", "")


def test_bad_client_certificate_is_a_usage_error(tmp_path: Path) -> None:
    a, a_key = _self_signed(tmp_path, "a")
    _, b_key = _self_signed(tmp_path, "b")
    stomp_tls("", str(a), str(a_key))  # the good pair loads
    junk = tmp_path / "junk.pem"
    junk.write_text("junk\n")
    for cert, key in [(a, b_key), (junk, a_key), (a, junk)]:
        with pytest.raises(usage.UsageError, match=f"tls_certificate {cert} / tls_private_key {key}: "):
            stomp_tls("", str(cert), str(key))
