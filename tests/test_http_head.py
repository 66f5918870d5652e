"""HttpClient's HEADs (every stat, the cold locate's fan-out) go to the lean HEAD client
(fedd.endpoints.heads), not through treq: what goes on the wire and what comes back must be what
treq gave, on one persistent connection."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

import pytest

from fedd.endpoints.http import HttpClient
from fedd.errors import EndpointError
from tests import reactor
from tests.badservers import BadServer

ANSWER = (
    b'HTTP/1.1 200 OK\r\nContent-Length: 42\r\nETag: "e1"\r\nContent-Encoding: gzip\r\n'
    b"Set-Cookie: lb=node7; Path=/\r\n\r\n"
)
MOVED = b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n"


def recorded_answer(head: bytes) -> bytes:
    return MOVED if head.split(b" ")[1].startswith(b"/moved") else ANSWER


class RecordingServer:
    """Answers every request with `answer(its head)` (default: ANSWER, MOVED for a path starting
    /moved), keep-alive, over TLS with `tls`; records the request heads it got and how many
    connections they came on."""

    def __init__(self, answer: Callable[[bytes], bytes] = recorded_answer, tls: ssl.SSLContext | None = None) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.answer = answer
        self.tls = tls
        self.heads: list[bytes] = []
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            buffer = b""
            with conn:
                while True:
                    while b"\r\n\r\n" in buffer:
                        head, buffer = buffer.split(b"\r\n\r\n", 1)
                        self.heads.append(head)
                        conn.sendall(self.answer(head))
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
        except OSError:  # ssl.SSLError included: a client that refused the certificate
            return

    def stop(self) -> None:
        self.sock.close()


@pytest.fixture
def server() -> Any:
    s = RecordingServer()
    yield s
    s.stop()


def client(timeout: float = 5.0) -> HttpClient:
    return HttpClient(reactor.the_reactor(), endpoint="rec", timeout=timeout)


def test_heads_on_one_pooled_connection_with_their_headers(server: RecordingServer) -> None:
    http = client()
    try:
        for n in range(20):
            answer = reactor.call(
                http.request, "HEAD", f"{server.url}/data/f{n}%20x", {"Via": "1.1 fedd", "X-N": str(n)}
            )
            assert answer.code == 200 and answer.body == b""
            assert answer.header("Content-Length") == "42" and answer.header("ETag") == '"e1"'
            assert answer.header("Content-Encoding") == "gzip"  # a stat reports the stored headers as they are
    finally:
        reactor.call(http.close)
    assert server.connections == 1
    assert len(server.heads) == 20
    for n, head in enumerate(server.heads):
        lines = head.split(b"\r\n")
        assert lines[0] == f"HEAD /data/f{n}%20x HTTP/1.1".encode()
        fields = {k.lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
        assert fields[b"via"] == b"1.1 fedd" and fields[b"x-n"] == str(n).encode()
        assert b"cookie" not in fields and b"accept-encoding" not in fields  # a HEAD keeps no cookie jar, wants no gzip


def test_a_redirect_answer_is_returned_not_followed(server: RecordingServer) -> None:
    http = client()
    try:
        answer = reactor.call(http.request, "HEAD", f"{server.url}/moved/f")
    finally:
        reactor.call(http.close)
    assert answer.code == 302 and answer.header("Location") == "/elsewhere"
    assert [h.split(b" ")[1] for h in server.heads] == [b"/moved/f"]


def test_a_url_treq_would_encode_is_encoded_as_before(server: RecordingServer) -> None:
    http = client()
    try:
        reactor.call(http.request, "HEAD", f"{server.url}/odd/a b|c")
    finally:
        reactor.call(http.close)
    assert server.heads[0].split(b"\r\n")[0] == b"HEAD /odd/a%20b%7Cc HTTP/1.1"


def test_head_timeout_and_refusal_are_endpoint_errors() -> None:
    hang = BadServer("hang")
    http = client(timeout=0.5)
    try:
        with pytest.raises(EndpointError, match=r"HEAD timed out after 0\.5s"):
            reactor.call(http.request, "HEAD", hang.url + "/f")
        with pytest.raises(EndpointError, match=r"HEAD timed out after 0\.2s"):
            reactor.call(lambda: http.request("HEAD", hang.url + "/f", timeout=0.2))
        garbage = BadServer("garbage")
        try:
            with pytest.raises(EndpointError, match="connection lost or malformed HTTP answer"):
                reactor.call(http.request, "HEAD", garbage.url + "/f")
        finally:
            garbage.stop()
        refused = socket.create_server(("127.0.0.1", 0))
        port = refused.getsockname()[1]
        refused.close()
        with pytest.raises(EndpointError, match="cannot connect"):
            reactor.call(http.request, "HEAD", f"http://127.0.0.1:{port}/f")
    finally:
        reactor.call(http.close)
        hang.stop()
