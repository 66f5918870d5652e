"""fedd.endpoints.connect: the endpoint clients connect to an IP literal without the resolver thread,
to a host name through it, and over TLS with the configured policy."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.web.client import URI, BrowserLikePolicyForHTTPS
from twisted.web.error import SchemeNotSupported

from fedd.endpoints.connect import DirectEndpoints
from fedd.endpoints.http import HttpClient
from tests import reactor
from tests.inprocess import captured_logs
from tests.test_http_head import RecordingServer


def endpoint_for(url: str, **kwargs: Any) -> Any:
    return DirectEndpoints(reactor.the_reactor(), timeout=3.0, **kwargs).endpointForURI(URI.fromBytes(url.encode()))


def test_ip_literals_connect_directly_names_through_the_resolver() -> None:
    v4 = endpoint_for("http://127.0.0.1:8080/f").inner
    assert isinstance(v4, TCP4ClientEndpoint) and (v4._host, v4._port, v4._timeout) == ("127.0.0.1", 8080, 3.0)
    v6 = endpoint_for("http://[::1]:8080/f").inner
    assert isinstance(v6, TCP6ClientEndpoint) and (v6._host, v6._port) == ("::1", 8080)
    named = endpoint_for("http://storage.example.org:8080/f")
    assert isinstance(named, HostnameEndpoint)


def test_https_is_wrapped_with_the_policy_for_the_url_host() -> None:
    asked: list[tuple[bytes, int]] = []

    class Policy(BrowserLikePolicyForHTTPS):
        def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
            asked.append((hostname, port))
            return super().creatorForNetloc(hostname, port)

    tls = endpoint_for("https://127.0.0.1:8443/f", tls_policy=Policy())  # type: ignore[no-untyped-call]
    assert isinstance(tls._wrappedEndpoint.inner, TCP4ClientEndpoint)
    assert asked == [(b"127.0.0.1", 8443)]
    with pytest.raises(SchemeNotSupported):
        endpoint_for("ftp://127.0.0.1/f")


class CountingResolver:
    """The reactor's resolver (an IHostnameResolver), counting the names it is asked for."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.names: list[str] = []

    def resolveHostName(self, receiver: Any, hostName: str, *args: Any, **kwargs: Any) -> Any:
        self.names.append(hostName)
        return self.inner.resolveHostName(receiver, hostName, *args, **kwargs)


def test_heads_to_an_ip_literal_never_ask_the_resolver() -> None:
    server = RecordingServer()
    the_reactor = reactor.the_reactor()
    counting = CountingResolver(the_reactor.nameResolver)
    old = the_reactor.installNameResolver(counting)  # implements IHostnameResolver by duck typing
    http = HttpClient(the_reactor, endpoint="rec", timeout=5.0)
    try:
        for n in range(3):  # a fresh connection each time: the pool is emptied between requests
            assert reactor.call(http.request, "HEAD", f"{server.url}/f{n}").code == 200
            reactor.call(http.close)
            http = HttpClient(the_reactor, endpoint="rec", timeout=5.0)
        assert server.connections == 3 and counting.names == []
        port = server.url.rsplit(":", 1)[1]
        assert reactor.call(http.request, "HEAD", f"http://localhost:{port}/named").code == 200
        assert counting.names == ["localhost"]  # a name still goes through the resolver
    finally:
        reactor.call(http.close)
        the_reactor.installNameResolver(old)
        server.stop()


def test_new_connections_log_no_factory_start_or_stop() -> None:
    server = RecordingServer()
    with captured_logs() as events:
        try:
            for n in range(2):  # a new pool (a new connection) each time, closed after
                http = HttpClient(reactor.the_reactor(), endpoint="rec", timeout=5.0)
                assert reactor.call(http.request, "HEAD", f"{server.url}/f{n}").code == 200
                reactor.call(http.close)
        finally:
            server.stop()
    assert server.connections == 2
    texts = [str(e.get("log_format") or e.get("format") or "") for e in events]
    assert not [text for text in texts if "factory" in text.lower()], texts
