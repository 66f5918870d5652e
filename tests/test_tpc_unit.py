"""Pure parts of the third-party copy: the host guard, markers, digests, [tpc] configuration, the pump."""

from __future__ import annotations

import queue
import zlib
from typing import Any, cast

import pytest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from fedd.config import ConfigError, parse_config
from fedd.errors import BadRequest
from fedd.tpc.engine import adler32_of, mode_of, perf_marker, public_url
from fedd.tpc.guard import HostPolicy, parse_host_pattern
from fedd.tpc.pump import Pump

ENDPOINT = "[endpoint e]\nkind = dav\nurl = http://dav.example.org\n"


@pytest.mark.parametrize(
    ("patterns", "host", "port", "address", "allowed"),
    [
        (("*",), "dcache.example.org", 443, "188.184.1.1", True),
        (("*",), "metadata", 80, "169.254.169.254", False),
        (("*",), "localhost", 8080, "127.0.0.1", False),
        (("*",), "ip6-localhost", 80, "::1", False),
        (("*",), "internal", 80, "10.1.2.3", False),
        (("*",), "mapped", 80, "::ffff:127.0.0.1", False),
        (("*",), "zero", 80, "0.0.0.0", False),
        (("127.0.0.1",), "localhost", 8080, "127.0.0.1", True),
        (("127.0.0.1",), "dcache.example.org", 443, "188.184.1.1", False),  # a list replaces "*"
        (("127.0.0.1:8443",), "localhost", 8080, "127.0.0.1", False),
        (("127.0.0.1:8443",), "localhost", 8443, "127.0.0.1", True),
        (("10.0.0.0/8",), "storage.site", 443, "10.4.5.6", True),
        (("*.cern.ch",), "eosatlas.cern.ch", 443, "188.184.1.1", True),
        (("*.cern.ch",), "evilcern.ch", 443, "188.184.1.1", False),
        (("*.cern.ch",), "eos.cern.ch", 443, "10.0.0.1", False),  # a name never allows a private address
        (("eos.cern.ch:1094",), "eos.cern.ch", 443, "188.184.1.1", False),
        (("eos.cern.ch:1094",), "EOS.cern.ch.", 1094, "188.184.1.1", True),
        (("0.0.0.0/0",), "link", 80, "169.254.169.254", True),  # an explicit network allows it
        (("*", "169.254.0.0/16"), "meta", 80, "224.0.0.1", False),  # never multicast
    ],
)
def test_host_policy(patterns: tuple[str, ...], host: str, port: int, address: str, allowed: bool) -> None:
    reason = HostPolicy(patterns).refusal(host, port, address)
    assert (reason == "") == allowed, reason


def test_refusal_says_why() -> None:
    reason = HostPolicy(("*",)).refusal("169.254.169.254", 80, "169.254.169.254")
    assert "link-local" in reason and "allow_hosts" in reason


@pytest.mark.parametrize("bad", ["", "http://x", "host:port", "10.0.0.0/33", "a..b", "*.", "[::1]:99999"])
def test_bad_patterns(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_host_pattern(bad)


def test_tpc_config() -> None:
    config = parse_config(
        ENDPOINT + "tpc = yes\n[tpc]\nallow_hosts = 127.0.0.1\nallow_hosts = *.cern.ch\nmarker_interval = 0.5\n"
    )
    assert config.tpc.allow_hosts == ("127.0.0.1", "*.cern.ch") and config.tpc.marker_interval == 0.5
    assert config.endpoints[0].tpc is True
    assert parse_config(ENDPOINT).tpc.allow_hosts == ("*",) and parse_config(ENDPOINT).endpoints[0].tpc is False
    with pytest.raises(ConfigError) as err:
        parse_config(ENDPOINT + "[tpc]\nallow_hosts = http://x/\nmax_concurrent = 0\nbogus = 1\n")
    text = str(err.value)
    assert "<string>:5: allow_hosts" in text and "<string>:6: max_concurrent" in text and "'bogus'" in text


def test_perf_marker_format() -> None:
    assert perf_marker(1700000000.7, 1048576) == (
        b"Perf Marker\n"
        b"    Timestamp: 1700000000\n"
        b"    Stripe Index: 0\n"
        b"    Stripe Bytes Transferred: 1048576\n"
        b"    Total Stripe Count: 1\n"
        b"End\n"
    )


def test_adler32_from_headers() -> None:
    assert adler32_of(Headers({b"Digest": [b"md5=abc==,ADLER32=A1B2C3"]})) == "00a1b2c3"
    assert adler32_of(Headers({b"x-amz-meta-adler32": [b"0a1b2c3d"]})) == "0a1b2c3d"
    assert adler32_of(Headers({b"Digest": [b"md5=abc=="]})) is None
    assert adler32_of(Headers({b"Digest": [b"adler32=nothex"]})) is None


def test_public_url_hides_secrets() -> None:
    url = "https://user:pw@s3.example.org:8443/b/k?X-Amz-Signature=abc&authz=token"
    assert public_url(url) == "https://s3.example.org:8443/b/k"


def test_mode() -> None:
    assert mode_of("http://a/x", None) == "pull" and mode_of(None, "http://a/x") == "push"
    for source, destination in ((None, None), ("http://a", "http://b")):
        with pytest.raises(BadRequest):
            mode_of(source, destination)


class _Transport:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


class _Response:
    def __init__(self, length: int) -> None:
        self.length = length
        self.transport = _Transport()
        self.protocol: Any = None

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)


class _Consumer:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


def test_pump_streams_counts_and_passes_flow_control_on() -> None:
    response = _Response(10)
    seen: list[int] = []
    pump = Pump(cast(IResponse, response), seen.append, reactor=None)
    consumer = _Consumer()
    done: Deferred[None] = pump.startProducing(consumer)
    pump.pauseProducing()
    pump.resumeProducing()
    assert response.transport.calls == ["pause", "resume"]  # the download follows the upload's pace
    response.protocol.dataReceived(b"hello")
    response.protocol.dataReceived(b"world")
    response.protocol.connectionLost(Failure(ResponseDone()))
    assert consumer.data == b"helloworld" and seen == [5, 5] and pump.bytes == 10
    assert pump.adler32 == "1736043d" and done.called


def test_pump_reports_a_short_source() -> None:
    response = _Response(10)
    pump = Pump(cast(IResponse, response), lambda n: None, reactor=None)
    done = pump.startProducing(_Consumer())
    failures: list[Failure] = []
    done.addErrback(failures.append)
    response.protocol.dataReceived(b"abc")
    response.protocol.connectionLost(Failure(ConnectionError("reset")))
    assert failures and str(failures[0].value) == "the source closed the connection after 3 of 10 bytes"


def test_pump_stopped_by_the_upload_stops_the_download() -> None:
    response = _Response(10)
    pump = Pump(cast(IResponse, response), lambda n: None, reactor=None)
    done = pump.startProducing(_Consumer())
    pump.stopProducing()
    response.protocol.connectionLost(Failure(ConnectionError("aborted")))
    assert response.transport.calls == ["stop"] and not done.called  # IBodyProducer: never fires after stop


def test_pump_abort_cuts_the_upload_connection() -> None:
    class Transport:
        aborted = False

        def abortConnection(self) -> None:
            self.aborted = True

    class LengthEnforcing:  # what twisted.web's client hands a body producer with a known length
        def __init__(self) -> None:
            self._consumer = Transport()

    response = _Response(10)
    pump = Pump(cast(IResponse, response), lambda n: None, reactor=None)
    consumer = LengthEnforcing()
    pump.startProducing(consumer)
    pump.abort()
    assert consumer._consumer.aborted and response.transport.calls == ["stop"]


class _ThreadReactor:
    """callFromThread queues the call; the test runs the queue (as the reactor thread would)."""

    def __init__(self) -> None:
        self.calls: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def callFromThread(self, f: Any, *args: Any) -> None:
        self.calls.put((f, args))


def test_pump_reads_only_while_upload_and_hashing_both_keep_up() -> None:
    response = _Response(1 << 30)  # large: hashed in a thread of its own
    pump = Pump(cast(IResponse, response), lambda n: None, reactor=_ThreadReactor())
    pump.startProducing(_Consumer())
    calls = response.transport.calls
    pump.pauseProducing()  # the upload is full
    pump._backlog(True)  # ... and so is the hashing thread's queue
    pump.resumeProducing()  # the upload drained: still paused for the hashing
    assert calls == ["pause"]
    pump._backlog(False)
    assert calls == ["pause", "resume"]
    pump._backlog(False)  # said twice (from the hashing thread): no second resume
    pump.stopProducing()
    assert calls == ["pause", "resume", "stop"]


def test_pump_checksum_waits_for_the_hashing_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedd.checksums.bulk import ThreadedHashing
    from fedd.checksums.digest import Adler32

    monkeypatch.setattr(Adler32, "fast", False)  # the system zlib's Adler-32: hashed in a thread
    reactor = _ThreadReactor()
    data = bytes(range(256)) * 4096  # 1 MiB
    response = _Response(2 * len(data))
    pump = Pump(cast(IResponse, response), lambda n: None, reactor=reactor)
    consumer = _Consumer()
    done = pump.startProducing(consumer)
    response.protocol.dataReceived(data)
    response.protocol.dataReceived(data)
    response.protocol.connectionLost(Failure(ResponseDone()))
    assert done.called and pump.bytes == 2 * len(data) and isinstance(pump._hashing, ThreadedHashing)
    value: list[str] = []
    pump.checksum().addCallback(value.append)
    while not value:
        f, args = reactor.calls.get(timeout=10)
        f(*args)
    assert value == [f"{zlib.adler32(data * 2) & 0xFFFFFFFF:08x}"]
