"""The lean front (fedd.web.lean) in process: the real resource, site and federation over a
FakeEndpoint, bytes in and out of a memory transport. Every client test through twistd passes
through it as well (it is how every connection starts)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from fedd.config import parse_config
from fedd.endpoints.base import Stat
from fedd.events.model import Template, render
from fedd.federation import Federation
from fedd.health.service import HealthRegistry
from fedd.locate.locator import Locator
from fedd.namespace import Namespace
from fedd.select.geo import GeoLocator
from fedd.testing import FakeEndpoint
from fedd.web.channel import REQUEST_TIMEOUT
from fedd.web.lean import MAX_HEAD
from fedd.web.metrics import Metrics
from fedd.web.resource import FeddResource
from fedd.web.site import FeddSite

CONFIG = """
[endpoint a]
kind = dav
url = http://a.example
map = /atlas /
"""
GET = b"GET /atlas/f HTTP/1.1\r\nHost: fedd.example\r\n\r\n"
MISSING = b"GET /atlas/missing HTTP/1.1\r\nHost: fedd.example\r\n\r\n"


class Events:
    def __init__(self) -> None:
        self.emitted: list[tuple[str, dict[str, Any]]] = []

    def emit(self, kind: str, payload: dict[str, Any]) -> None:
        self.emitted.append((kind, payload))

    def emit_template(self, t: Template, values: tuple[bytes, ...]) -> None:
        self.emit(t.event_type, json.loads(render(t, "id", values, 0.0))["payload"])

    def to_json(self) -> dict[str, Any]:
        return {}


class Front:
    def __init__(self) -> None:
        config = parse_config(CONFIG)
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1_000_000)
        self.endpoint = FakeEndpoint("a", files={"/f": Stat(size=10, mtime=1.0, etag='"e"')})
        endpoints = {"a": self.endpoint}
        namespace = Namespace((ep.id, f, e) for ep in config.endpoints for f, e in ep.mappings)
        health = HealthRegistry(["a"], config.health, self.reactor)
        locator = Locator(
            clock=self.reactor, namespace=namespace, endpoints=endpoints, health=health, config=config.locate
        )
        self.fed = Federation(
            config,
            clock=self.reactor,
            endpoints=endpoints,
            health=health,
            locator=locator,
            geo=GeoLocator("", (), 16),
            namespace=namespace,
        )
        self.events = Events()
        self.metrics = Metrics()
        resource = FeddResource(self.fed, events=self.events, metrics=self.metrics)  # type: ignore[arg-type]
        self.site = FeddSite(resource, max_body=1 << 20, access_log=False, metrics=self.metrics, clock=self.reactor)

    def connect(self) -> tuple[Any, StringTransport]:
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        protocol.makeConnection(transport)
        return protocol, transport

    def warm(self) -> None:
        """One request through the full front makes the plan the lean front answers from."""
        protocol, transport = self.connect()
        protocol.dataReceived(GET)
        assert transport.value().startswith(b"HTTP/1.1 302 Found\r\n")


def statuses(data: bytes) -> list[bytes]:
    """The status of each response (bodies here are text or XML: a status line starts a line)."""
    return [line.split(b" ", 2)[1] for line in data.split(b"\n") if line.startswith(b"HTTP/1.")]


def without_date(data: bytes) -> bytes:
    return b"\r\n".join(line for line in data.split(b"\r\n") if not line.startswith(b"Date: "))


@pytest.fixture
def front() -> Front:
    return Front()


def test_a_cached_plan_is_answered_by_the_lean_front_with_the_full_fronts_bytes(front: Front) -> None:
    first, t1 = front.connect()
    first.dataReceived(GET)  # the full front answers (and makes the plan)
    assert front.site.hot_answers == 0
    second, t2 = front.connect()
    second.dataReceived(GET)
    assert front.site.hot_answers == 1
    assert without_date(t2.value()) == without_date(t1.value())
    assert b"Location: http://a.example/f" in t2.value() and b"Content-Length: 0\r\n" in t2.value()
    assert [kind for kind, _ in front.events.emitted] == ["get-redirect", "get-redirect"]
    assert front.events.emitted[1][1]["endpoint"] == "a" and front.events.emitted[1][1]["client"] == "127.0.0.1"
    assert b'fedd_requests_total{method="GET",status="302"} 2.0' in front.metrics.render()
    assert not t2.disconnecting


def test_pipelined_requests_are_answered_in_order_and_the_connection_comes_back(front: Front) -> None:
    front.warm()
    protocol, transport = front.connect()
    protocol.dataReceived(GET + MISSING + GET + GET)
    front.reactor.advance(0)  # the lean front resumes after the full front's answer
    assert statuses(transport.value()) == [b"302", b"404", b"302", b"302"]
    assert front.site.hot_answers == 3  # the last one came back to the lean front


def test_hot_answers_to_pipelined_requests_go_out_in_one_write_before_the_full_fronts(front: Front) -> None:
    front.warm()
    protocol, transport = front.connect()
    writes: list[bytes] = []
    write = transport.write

    def counting(data: bytes) -> None:
        writes.append(data)
        write(data)  # type: ignore[no-untyped-call]

    transport.write = counting  # type: ignore[method-assign]
    protocol.connectionMade()  # the lean front takes the transport's (counting) write again
    protocol.dataReceived(GET * 5)
    assert statuses(transport.value()) == [b"302"] * 5 and len(writes) == 1
    writes.clear()
    protocol.dataReceived(GET + GET + MISSING + GET)
    front.reactor.advance(0)
    assert statuses(transport.value())[5:] == [b"302", b"302", b"404", b"302"]  # in order
    assert statuses(writes[0]) == [b"302", b"302"]  # the two hot answers together, then the full front's


def test_a_query_string_is_answered_hot_unless_it_asks_for_a_metalink(front: Front) -> None:
    front.warm()
    protocol, transport = front.connect()
    protocol.dataReceived(b"GET /atlas/f?job=42&x HTTP/1.1\r\nHost: fedd.example\r\n\r\n")
    assert front.site.hot_answers == 1 and statuses(transport.value()) == [b"302"]
    assert b"Location: http://a.example/f\r\n" in transport.value()  # as the full front answers it
    assert front.events.emitted[-1][1]["path"] == "/atlas/f"  # the path, as twisted.web's request.path
    protocol.dataReceived(b"GET /atlas/f?metalink HTTP/1.1\r\nHost: fedd.example\r\n\r\n")
    front.reactor.advance(0)
    assert front.site.hot_answers == 1  # the full front's metalink answer
    assert b"application/metalink4+xml" in transport.value()


@pytest.mark.parametrize("cut", range(1, len(GET + GET)))
def test_any_split_of_two_pipelined_requests(front: Front, cut: int) -> None:
    front.warm()
    protocol, transport = front.connect()
    data = GET + GET
    protocol.dataReceived(data[:cut])
    protocol.dataReceived(data[cut:])
    assert statuses(transport.value()) == [b"302", b"302"]
    assert front.site.hot_answers == 2


def test_http_1_0_closes_unless_kept_alive(front: Front) -> None:
    front.warm()
    protocol, transport = front.connect()
    protocol.dataReceived(b"GET /atlas/f HTTP/1.0\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.0 302 Found\r\n") and transport.disconnecting
    assert b"Connection:" not in transport.value()
    protocol, transport = front.connect()
    protocol.dataReceived(b"GET /atlas/f HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert b"Connection: Keep-Alive\r\n" in transport.value() and not transport.disconnecting


def test_connection_close_and_the_drain_close_after_the_answer(front: Front) -> None:
    front.warm()
    protocol, transport = front.connect()
    protocol.dataReceived(b"GET /atlas/f HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" + GET)
    assert statuses(transport.value()) == [b"302"] and b"Connection: close\r\n" in transport.value()
    assert transport.disconnecting
    front.site.drain()
    protocol, transport = front.connect()
    protocol.dataReceived(GET)
    assert b"Connection: close\r\n" in transport.value() and transport.disconnecting


def test_a_body_hands_the_connection_over_for_good(front: Front) -> None:
    front.warm()
    protocol, transport = front.connect()
    body = b'<?xml version="1.0"?><propfind xmlns="DAV:"><allprop/></propfind>'
    head = b"PROPFIND /atlas/f HTTP/1.1\r\nHost: x\r\nDepth: 0\r\nContent-Length: %d\r\n\r\n" % len(body)
    protocol.dataReceived(head + body)
    protocol.dataReceived(GET)
    front.reactor.advance(0)
    assert statuses(transport.value()) == [b"207", b"302"]
    assert front.site.hot_answers == 0  # the GET after it was the full front's too


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /atlas/f HTTP/1.1\nHost: x\n\n", b"400"),  # bare LF
        (b"GET /atlas/f HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", b"400"),  # two Host headers
        (b"GET /atlas/f HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n", b"400"),  # obs-fold
        (b"GET /atlas/f HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * MAX_HEAD + b"\r\n\r\n", b"431"),
        (b"GET /atlas/f HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b"302"),
    ],
)
def test_heads_the_lean_front_refuses_get_the_full_fronts_answer(front: Front, head: bytes, status: bytes) -> None:
    front.warm()
    protocol, transport = front.connect()
    protocol.dataReceived(head)
    assert statuses(transport.value())[:1] == [status]
    assert front.site.hot_answers == 0


def test_other_requests_are_lent_to_the_full_front(front: Front) -> None:
    front.warm()
    protocol, transport = front.connect()
    for head in (
        b"GET /atlas/f?metalink HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /atlas/f HTTP/1.1\r\nHost: x\r\nWant-Digest: adler32\r\n\r\n",
        b"OPTIONS /atlas/f HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /.well-known/fedd/status HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PROPFIND /atlas/f HTTP/1.1\r\nHost: x\r\nDepth: 0\r\n\r\n",
    ):
        protocol.dataReceived(head)
        front.reactor.advance(0)
    protocol.dataReceived(GET)
    # (no checksum service here: Want-Digest is answered as a plain GET, by the full front)
    assert statuses(transport.value()) == [b"200", b"302", b"200", b"200", b"207", b"302"]
    assert front.site.hot_answers == 1


def test_a_slow_head_gets_408(front: Front) -> None:
    protocol, transport = front.connect()
    protocol.dataReceived(b"GET /atlas/f HTTP/1.1\r\nHo")
    front.reactor.advance(front.site.header_timeout - 0.1)
    assert transport.value() == b""
    front.reactor.advance(0.2)
    assert transport.value().startswith(b"HTTP/1.1 408 ") and transport.disconnecting


def test_each_head_has_its_own_deadline_from_its_first_byte(front: Front) -> None:
    """The rest of a head and the start of the next came together: the next one's deadline counts
    from then, not from the first head's first byte (as on twisted.web's channel)."""
    front.site.header_timeout = 2
    front.warm()
    protocol, transport = front.connect()
    protocol.dataReceived(GET[:10])
    front.reactor.advance(0.5)
    protocol.dataReceived(GET[10:] + GET[:10])
    assert statuses(transport.value()) == [b"302"] and front.site.hot_answers == 1
    front.reactor.advance(1.9)
    assert statuses(transport.value()) == [b"302"] and not transport.disconnecting
    front.reactor.advance(0.2)
    assert statuses(transport.value()) == [b"302", b"408"] and transport.disconnecting


def test_a_changed_endpoint_state_is_not_answered_from_an_old_plan(front: Front) -> None:
    front.warm()
    front.fed.health.block_reads(frozenset({"a"}))  # a read downtime: the plan's generation is old
    protocol, transport = front.connect()
    protocol.dataReceived(GET)
    assert statuses(transport.value()) == [b"503"]
    assert front.site.hot_answers == 0


def test_a_file_on_a_failing_endpoint_is_503_in_the_files_words(front: Front) -> None:
    """The listing tried after the failed lookup (is it a collection?) fails too: the answer still
    speaks of the file, not of a listing."""
    front.endpoint.broken = "connection refused"
    protocol, transport = front.connect()
    protocol.dataReceived(GET)
    answer = transport.value()
    assert statuses(answer) == [b"503"] and b"Retry-After: " in answer
    assert b"no replica available now" in answer and b"cannot be listed" not in answer


# --- HTTP/1.1 without Host; the idle deadline ([server] idle_timeout, the site's timeOut) -----------


def idle_of(front: Front) -> float:
    idle = front.site.timeOut  # [server] idle_timeout
    assert idle is not None
    return idle


@pytest.mark.parametrize(
    "head",
    [
        b"GET /atlas/f HTTP/1.1\r\n\r\n",  # a hot path: the lean front hands it over
        b"PROPFIND /atlas/f HTTP/1.1\r\nDepth: 0\r\n\r\n",  # the full front's own
        b"PUT /atlas/g HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",  # a body: never handled
        b"GET /atlas/f HTTP/1.1\r\nhost: x\r\n\r\nGET /atlas/f HTTP/1.1\r\nX-A: 1\r\n\r\n",  # the second
    ],
)
def test_an_http_1_1_request_without_host_gets_400(front: Front, head: bytes) -> None:
    front.warm()
    protocol, transport = front.connect()
    protocol.dataReceived(head)
    front.reactor.advance(0)
    answer = transport.value()
    assert statuses(answer)[-1:] == [b"400"] and transport.disconnecting
    assert answer.endswith(b"\r\n\r\nan HTTP/1.1 request needs a Host header (RFC 9112 section 3.2)\n")
    assert [kind for kind, _ in front.events.emitted].count("put-redirect") == 0


def test_an_http_1_0_request_without_host_is_answered(front: Front) -> None:
    front.warm()
    for head in (b"GET /atlas/f HTTP/1.0\r\n\r\n", b"PROPFIND /atlas/f HTTP/1.0\r\nDepth: 0\r\n\r\n"):
        protocol, transport = front.connect()
        protocol.dataReceived(head)
        assert statuses(transport.value()) in ([b"302"], [b"207"])


def test_an_idle_connection_is_closed_after_the_idle_timeout(front: Front) -> None:
    front.warm()
    idle = idle_of(front)
    assert idle == 60
    protocol, transport = front.connect()  # never a byte
    front.reactor.advance(idle - 0.1)
    assert not transport.disconnecting
    front.reactor.advance(0.2)
    assert transport.disconnecting and transport.value() == b""
    protocol, transport = front.connect()  # kept alive after an answer
    front.reactor.advance(idle - 1)
    protocol.dataReceived(GET)
    front.reactor.advance(idle - 0.1)
    assert not transport.disconnecting
    front.reactor.advance(0.2)
    assert transport.disconnecting and statuses(transport.value()) == [b"302"]  # closed without a word


def test_a_head_begun_and_left_gets_408_at_the_idle_timeout_when_it_comes_first(front: Front) -> None:
    front.site.header_timeout = 600
    protocol, transport = front.connect()
    protocol.dataReceived(b"GET /atlas/f HTTP/1.1\r\nHo")
    front.reactor.advance(idle_of(front) + 0.1)
    assert transport.value().startswith(b"HTTP/1.1 408 ") and transport.disconnecting


def test_a_busy_connection_lent_to_the_full_front_once_is_not_cut(front: Front) -> None:
    """twisted.web's channel keeps an idle timer of its own: once the lean front has the connection
    back, the hot answers it gives are no traffic there, and the channel must not cut it."""
    front.site.timeOut = 0.5  # below the plan's second: hot answers for longer than the idle timeout
    front.warm()
    protocol, transport = front.connect()
    protocol.dataReceived(b"OPTIONS /atlas/f HTTP/1.1\r\nHost: x\r\n\r\n")
    front.reactor.advance(0)
    for _ in range(4):  # a request every 0.2 s
        front.reactor.advance(0.2)
        protocol.dataReceived(GET)
        assert not transport.disconnecting
    protocol.dataReceived(b"OPTIONS /atlas/f HTTP/1.1\r\nHost: x\r\n\r\n")  # lent again, then idle
    front.reactor.advance(0)
    front.reactor.advance(idle_of(front) - 0.1)
    assert not transport.disconnecting
    front.reactor.advance(0.2)
    assert transport.disconnecting
    assert statuses(transport.value()) == [b"200"] + [b"302"] * 4 + [b"200"]
    assert front.site.hot_answers == 4


PROPFIND_BODY = b'<?xml version="1.0"?><propfind xmlns="DAV:"><allprop/></propfind>'
PROPFIND_HEAD = b"PROPFIND /atlas/f HTTP/1.1\r\nHost: x\r\nDepth: 0\r\nContent-Length: %d\r\n\r\n" % len(PROPFIND_BODY)


def test_a_stalled_body_gets_408_and_a_slow_one_is_read(front: Front) -> None:
    front.warm()
    idle = idle_of(front)
    protocol, transport = front.connect()
    protocol.dataReceived(PROPFIND_HEAD + PROPFIND_BODY[:10])
    front.reactor.advance(idle - 0.1)
    assert transport.value() == b""
    front.reactor.advance(0.2)
    assert transport.value().startswith(b"HTTP/1.1 408 ") and transport.disconnecting
    protocol, transport = front.connect()
    protocol.dataReceived(PROPFIND_HEAD)
    for at in range(0, len(PROPFIND_BODY), 8):  # 8 bytes every 50 s: slow, never stalled
        front.reactor.advance(idle - 10)
        protocol.dataReceived(PROPFIND_BODY[at : at + 8])
    front.reactor.advance(0)
    assert statuses(transport.value()) == [b"207"] and not transport.disconnecting


@pytest.mark.parametrize(
    ("begun", "answer"),
    [
        (b"", b""),  # silent between requests: closed without a word
        (b"G", REQUEST_TIMEOUT),  # a request line begun
        (b"GET /atlas/f HTTP/1.1", REQUEST_TIMEOUT),  # all of it but its line end
        (b"GET /atlas/f HTTP/1.1\r\nHost: x\r\nUser-Ag", REQUEST_TIMEOUT),  # a head begun
    ],
    ids=["silent", "one-byte", "request-line", "headers"],
)
@pytest.mark.parametrize("before", [b"", GET, PROPFIND_HEAD + PROPFIND_BODY], ids=["new", "lean", "twisted.web"])
def test_without_a_head_deadline_a_head_left_unfinished_gets_408_at_the_idle_timeout(
    front: Front, before: bytes, begun: bytes, answer: bytes
) -> None:
    """`[server] header_timeout = 0`: no head deadline; the idle deadline answers a head begun and
    left as a head deadline would (408, Connection: close), on a new connection, on one kept alive
    by the lean front, and on one that is twisted.web's for good (a request with a body came first)."""
    front.site.header_timeout = 0
    front.warm()
    idle = idle_of(front)
    protocol, transport = front.connect()
    protocol.dataReceived(before)
    front.reactor.advance(0)
    answered = transport.value()
    assert len(statuses(answered)) == (1 if before else 0)
    protocol.dataReceived(begun)
    front.reactor.advance(idle - 0.1)
    assert transport.value() == answered and not transport.disconnecting
    front.reactor.advance(0.2)
    assert transport.value() == answered + answer and transport.disconnecting
