"""The WebDAV endpoint against a real Apache httpd with mod_dav."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedd.config import EndpointConfig
from fedd.endpoints import make_endpoint
from fedd.endpoints.dav import DavEndpoint
from fedd.errors import EndpointError
from tests import reactor
from tests.badservers import BadServer


@pytest.fixture(scope="module")
def tree(dav1: Any) -> Path:
    root = Path(dav1.docroot) / "davtest"
    (root / "sub").mkdir(parents=True, exist_ok=True)
    (root / "a.txt").write_text("apache\n")
    (root / "with space & ü.txt").write_text("odd")
    (root / "sub" / "inner").write_text("i")
    return root


def endpoint(url: str, **kw: Any) -> DavEndpoint:
    ep = make_endpoint(EndpointConfig(id="dav", kind="dav", url=url, **kw), reactor=reactor.the_reactor())
    assert isinstance(ep, DavEndpoint)
    return ep


def test_stat(dav1: Any, tree: Path) -> None:
    ep = endpoint(dav1.url)
    stat = reactor.call(ep.stat, "/davtest/a.txt")
    assert stat.size == 7 and stat.mtime and stat.etag and not stat.is_dir
    assert reactor.call(ep.stat, "/davtest/nope") is None
    assert reactor.call(ep.stat, "/davtest/with space & ü.txt").size == 3
    assert reactor.call(ep.stat, "/davtest/sub").is_dir


def test_listdir(dav1: Any, tree: Path) -> None:
    ep = endpoint(dav1.url)
    entries = {e.name: e.stat for e in reactor.call(ep.listdir, "/davtest")}
    assert set(entries) == {"a.txt", "sub", "with space & ü.txt"}
    assert entries["sub"].is_dir and entries["a.txt"].size == 7
    assert reactor.call(ep.listdir, "/davtest/a.txt") is None
    assert reactor.call(ep.listdir, "/davtest/none") is None


def test_prefix_in_endpoint_url(dav1: Any, tree: Path) -> None:
    ep = endpoint(dav1.url + "/davtest")
    assert reactor.call(ep.stat, "/a.txt").size == 7
    assert {e.name for e in reactor.call(ep.listdir, "/")} == {"a.txt", "sub", "with space & ü.txt"}
    assert ep.url_for("/with space & ü.txt", 0) == dav1.url + "/davtest/with%20space%20&%20%C3%BC.txt"


def test_hanging_server_times_out_as_endpoint_error() -> None:
    hang = BadServer("hang")
    try:
        ep = endpoint(hang.url, timeout=0.5)
        with pytest.raises(EndpointError, match="timed out"):
            reactor.call(ep.stat, "/x")
    finally:
        hang.stop()


def test_garbage_server_is_endpoint_error() -> None:
    bad = BadServer("garbage")
    try:
        ep = endpoint(bad.url, timeout=2)
        with pytest.raises(EndpointError):
            reactor.call(ep.stat, "/x")
        with pytest.raises(EndpointError):
            reactor.call(ep.listdir, "/x")
    finally:
        bad.stop()


def test_garbage_xml_from_endpoint_is_endpoint_error() -> None:
    ep = endpoint("http://127.0.0.1:1")
    with pytest.raises(EndpointError, match="unreadable XML"):
        ep._parse_multistatus(b'<!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>', "/")
    with pytest.raises(EndpointError, match="unexpected answer"):
        ep._parse_multistatus(b"<html/>", "/")


def test_refused_connection_is_endpoint_error() -> None:
    from tests.servers import free_port

    ep = endpoint(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(EndpointError, match="cannot connect"):
        reactor.call(ep.stat, "/x")
