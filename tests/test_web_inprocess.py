"""The whole web front in process: `build_service` on a MemoryReactorClock (never started: no port, no
thread), its resource driven with treq's StubTreq, over a local-directory endpoint and a FakeEndpoint.
The same requests through twistd and real clients: test_daemon_local, test_writes, test_reload."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

import fedd.service
from fedd.config import Config, EndpointConfig, parse_config
from fedd.endpoints.base import Endpoint, Stat
from fedd.fleet import EndpointFactory
from fedd.service import Fedd, build_service
from fedd.testing import FakeEndpoint
from tests.inprocess import PoolReactor

DAV = "{DAV:}"


class Web:
    def __init__(self, tmp_path: Path) -> None:
        self.reactor = PoolReactor(immediate=True, start=1_700_000_000)  # a plausible wall clock for presigned URLs
        self.data = tmp_path / "data"
        (self.data / "local").mkdir(parents=True)
        (self.data / "local" / "f.txt").write_text("local file\n")
        self.fakes: list[FakeEndpoint] = []
        self.files: dict[str, Stat] = {"/atlas/both.bin": Stat(size=5, mtime=1.0, etag="e1")}
        self.text = f"""
[server]
listen = tcp:0:interface=127.0.0.1
[events]
spool = {tmp_path / "events.jsonl"}
[checksums]
workers = 0
database = {tmp_path / "sums.sqlite"}
[endpoint disk]
kind = local
path = {self.data}
map = /local /local
map = /atlas /atlas
[endpoint fake]
kind = dav
url = http://fake.example
map = /atlas /atlas
write = yes
"""
        (self.data / "atlas").mkdir()
        (self.data / "atlas" / "both.bin").write_bytes(b"both\n")
        real = fedd.service.endpoint_factory

        def factory(reactor: Any, instance: str) -> EndpointFactory:
            make = real(reactor, instance)

            def build(ep: EndpointConfig, config: Config) -> Endpoint:
                if ep.url != "http://fake.example":
                    return make(ep, config)
                fake = FakeEndpoint(ep.id, files=dict(self.files), write=ep.write, clock=reactor)
                self.fakes.append(fake)
                return fake

            return build

        self.config = parse_config(self.text)
        self.fedd: Fedd = build_service(self.config, reactor=self.reactor, make_endpoint=factory)
        self.client: Any = StubTreq(self.fedd.resource)  # its methods are made at run time: untyped

    @property
    def fake(self) -> FakeEndpoint:
        return self.fakes[-1]

    def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
        response = self._wait(
            self.client.request(method, "http://fedd.example" + path, allow_redirects=False, **kwargs)
        )
        body: bytes = self._wait(response.content())
        headers = {k.decode().lower(): v[-1].decode() for k, v in response.headers.getAllRawHeaders()}
        return response.code, headers, body

    def _wait(self, d: Deferred[Any], rounds: int = 50) -> Any:
        """Move bytes between client and resource, and run what is due now, until `d` has a result."""
        out: list[Any] = []
        d.addBoth(out.append)
        for _ in range(rounds):
            if out:
                break
            self.client.flush()
            self.reactor.advance(0)
        assert out, "no answer: the request waits for something the test did not provide"
        if isinstance(out[0], Failure):
            out[0].raiseException()
        return out[0]


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Web]:
    w = Web(tmp_path)
    yield w
    w.fedd.events.journal.close(everything_stored=True)


LOCAL_URL = "http://fedd.example/.well-known/fedd/local/disk"


def test_get_redirects_to_the_best_replica_and_names_the_others(web: Web) -> None:
    code, headers, body = web.request("GET", "/atlas/both.bin")
    assert (code, body) == (302, b"")
    assert headers["location"] == "http://fake.example/atlas/both.bin"
    assert f"<{LOCAL_URL}/atlas/both.bin>; rel=duplicate; pri=2" in headers["link"]
    assert '</atlas/both.bin?metalink>; rel=describedby; type="application/metalink4+xml"' in headers["link"]


def test_a_local_file_is_redirected_to_fedd_itself(web: Web) -> None:
    code, headers, _ = web.request("GET", "/local/f.txt")
    assert code == 302 and headers["location"] == f"{LOCAL_URL}/local/f.txt"


def test_head_answers_size_etag_and_every_replica(web: Web) -> None:
    code, headers, body = web.request("HEAD", "/atlas/both.bin")
    assert (code, body) == (200, b"")
    assert headers["content-length"] == "5" and headers["etag"] == '"e1"'  # the best replica's
    assert "<http://fake.example/atlas/both.bin>; rel=duplicate; pri=1" in headers["link"]
    assert f"<{LOCAL_URL}/atlas/both.bin>; rel=duplicate; pri=2" in headers["link"]


def test_the_metalink_lists_the_replicas_in_rank_order(web: Web) -> None:
    code, headers, body = web.request("GET", "/atlas/both.bin?metalink")
    assert code == 200 and headers["content-type"] == "application/metalink4+xml"
    urls = [u.text for u in ElementTree.fromstring(body).iter("{urn:ietf:params:xml:ns:metalink}url")]
    assert urls == ["http://fake.example/atlas/both.bin", f"{LOCAL_URL}/atlas/both.bin"]


def test_a_file_every_endpoint_said_no_to_is_404(web: Web) -> None:
    code, _, body = web.request("GET", "/atlas/nothing.bin")
    assert (code, body) == (404, b"/atlas/nothing.bin: no such file\n")
    assert web.fake.calls[-1] == "/atlas/nothing.bin"  # asked, and said no


def test_an_endpoint_that_did_not_answer_makes_it_503_not_404(web: Web) -> None:
    web.fake.broken = "HEAD: HTTP 500"
    code, headers, body = web.request("GET", "/atlas/maybe-on-fake.bin")
    assert code == 503 and headers["retry-after"] == "30"  # the next health check ([health] interval)
    assert headers["fedd-missing-endpoints"] == "fake" and b"fake (HEAD: HTTP 500)" in body
    assert web.request("GET", "/local/none.bin")[0] == 404  # the broken endpoint does not map /local


def test_propfind_merges_the_endpoints(web: Web) -> None:
    web.fake.put("/atlas/fake-only.bin", b"fake\n")
    code, _, body = web.request("PROPFIND", "/atlas/", headers={"Depth": "1"})
    assert code == 207
    hrefs = [e.text for e in ElementTree.fromstring(body).iter(DAV + "href")]
    assert hrefs == ["/atlas/", "/atlas/both.bin", "/atlas/fake-only.bin"]


def test_put_is_redirected_to_the_writable_endpoint(web: Web) -> None:
    code, headers, _ = web.request("PUT", "/atlas/new.bin", data=b"12345")
    assert code == 307 and headers["location"] == "http://fake.example/atlas/new.bin"
    assert headers["cache-control"] == "no-store"
    code, _, body = web.request("PUT", "/local/new.bin", data=b"1")
    assert (code, body) == (403, b"no writable endpoint serves /local/new.bin\n")


def test_delete_removes_the_file_from_the_writable_endpoint(web: Web) -> None:
    web.fake.put("/atlas/gone.bin", b"bye\n")
    assert web.request("GET", "/atlas/gone.bin")[0] == 302
    assert web.request("DELETE", "/atlas/gone.bin")[0] == 204
    assert "/atlas/gone.bin" not in web.fake.files
    assert web.request("GET", "/atlas/gone.bin")[0] == 404  # the cached answer was dropped
    assert web.request("DELETE", "/atlas/gone.bin")[0] == 404


def test_a_reload_with_a_changed_endpoint_uses_the_new_object_and_mapping(web: Web) -> None:
    before = web.fake
    assert web.request("GET", "/atlas/only-here.bin")[0] == 404  # and cached as "not found"
    old = web.config.endpoint("fake")
    moved = replace(old, mappings=(("/atlas", "/moved"),))
    new = replace(web.config, endpoints=tuple(moved if ep.id == "fake" else ep for ep in web.config.endpoints))
    web.files = {"/moved/only-here.bin": Stat(size=3, mtime=1.0, etag="m")}
    web.fedd.reloader.apply(new)
    assert web.fake is not before  # a changed endpoint gets a new object
    code, headers, _ = web.request("GET", "/atlas/only-here.bin")
    assert code == 302 and headers["location"] == "http://fake.example/moved/only-here.bin"
    assert web.request("GET", "/atlas/both.bin")[2] == b""
    assert web.fedd.reloader.status.reloads == 1
