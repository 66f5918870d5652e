"""One contract for every endpoint kind, run against the in-memory `fedd.testing.FakeEndpoint` and the
real servers: Ceph RGW (s3), Azurite (azure), Apache mod_dav (dav) and a local directory.

Every case runs for every kind; what a case checks follows from the capabilities the kind declares
(`fedd.endpoints.interfaces`), so a kind without a capability is checked not to declare what the case
needs, never skipped. Each kind gets the same tree: /c/file.txt, /c/dir/inner.txt and an empty /c/empty.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
import urllib.request
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import treq
from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from fedd.checksums.reported import parse_reported
from fedd.config import EndpointConfig
from fedd.endpoints import CAPABILITIES, make_endpoint
from fedd.endpoints.base import Entry, Space
from fedd.endpoints.interfaces import (
    IChecksumSource,
    IChecksumStore,
    IListable,
    ILocalFiles,
    IPresignable,
    IReadable,
    ISpaceSource,
    ITPCTarget,
    IWritable,
)
from fedd.errors import EndpointError, PathRefused
from fedd.testing import FakeEndpoint
from tests import reactor

DATA = b"contract data\n"
INNER = b"i"
KINDS = ["fake", "local", "s3", "azure", "dav"]
# a name no file system takes (ENAMETOOLONG) in a request line no server reads: Apache 414, Node's
# HTTP parser 431 (Azurite checks no name length: a 1,100-character name is merely not found there)
TOO_LONG = "/c/" + "n" * 20_000


@dataclass
class Subject:
    kind: str
    endpoint: Any
    call: Callable[..., Any]  # runs an endpoint method and returns (or raises) what its Deferred gives
    fetch: Callable[[str], bytes]  # GET with a client of its own, as a redirected client would


def _now(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The fake answers at once: its Deferred has fired when the call returns."""
    out: list[Any] = []
    d = fn(*args, **kwargs)
    assert isinstance(d, Deferred)
    d.addBoth(out.append)
    assert out, f"{fn.__name__} did not answer at once"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def _fetch_real(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        data: bytes = response.read()
        return data


def _fake() -> Subject:
    clock = Clock()
    clock.advance(time.time())
    ep = FakeEndpoint("fake", write=True, clock=clock)
    ep.put("/c/file.txt", DATA)
    ep.put("/c/dir/inner.txt", INNER)
    _now(ep.mkcol, "/c/empty")
    ep.reported["/c/file.txt"] = (("digest", f"adler32={zlib.adler32(DATA):08x}"),)
    client = cast(HTTPClient, StubTreq(ep.resource()))  # StubTreq sets HTTPClient's methods at run time

    def fetch(url: str) -> bytes:
        response = _now(client.get, url)
        assert response.code == 200, response.code
        data: bytes = _now(treq.content, response)
        return data

    return Subject("fake", ep, _now, fetch)


def _local(tmp: Path) -> Subject:
    root = tmp / "local"
    (root / "c" / "dir").mkdir(parents=True)
    (root / "c" / "empty").mkdir()
    (root / "c" / "file.txt").write_bytes(DATA)
    (root / "c" / "dir" / "inner.txt").write_bytes(INNER)
    ep = make_endpoint(EndpointConfig(id="local", kind="local", path=str(root)), reactor=reactor.the_reactor())
    return Subject("local", ep, reactor.call, _fetch_real)


def _s3(ceph: Any, s3client: Any) -> Subject:
    bucket = f"fedd-contract-{uuid.uuid4().hex[:8]}"
    s3client.create_bucket(Bucket=bucket)
    s3client.put_object(Bucket=bucket, Key="c/file.txt", Body=DATA)
    s3client.put_object(Bucket=bucket, Key="c/dir/inner.txt", Body=INNER)
    s3client.put_object(Bucket=bucket, Key="c/empty/", Body=b"")
    config = EndpointConfig(
        id="s3",
        kind="s3",
        url=ceph.url,
        bucket=bucket,
        access_key=ceph.access_key,
        secret_key=ceph.secret_key,
        timeout=10.0,
        write=True,
    )
    return Subject("s3", make_endpoint(config, reactor=reactor.the_reactor()), reactor.call, _fetch_real)


def _azure(azurite: Any) -> Subject:
    from tests.test_azure_azurite import create_container

    config = EndpointConfig(
        id="azure",
        kind="azure",
        url=azurite.url,
        account=azurite.account,
        container=f"fedd-contract-{uuid.uuid4().hex[:8]}",
        account_key=azurite.key,
        timeout=10.0,
        write=True,
    )
    ep = make_endpoint(config, reactor=reactor.the_reactor())
    create_container(ep, {"c/file.txt": DATA, "c/dir/inner.txt": INNER})  # type: ignore[arg-type]
    assert reactor.call(IWritable(ep).mkcol, "/c/empty") is True  # a folder marker, as Azure's own tools make
    return Subject("azure", ep, reactor.call, _fetch_real)


def _dav(dav1: Any) -> Iterator[Subject]:
    top = f"contract-{uuid.uuid4().hex[:8]}"
    root = Path(dav1.docroot) / top
    (root / "c" / "dir").mkdir(parents=True)
    (root / "c" / "empty").mkdir()
    (root / "c" / "file.txt").write_bytes(DATA)
    (root / "c" / "dir" / "inner.txt").write_bytes(INNER)
    subprocess.run(["chown", "-R", "www-data:www-data", str(root)], check=True)
    config = EndpointConfig(id="dav", kind="dav", url=f"{dav1.url}/{top}", timeout=10.0, write=True)
    yield Subject("dav", make_endpoint(config, reactor=reactor.the_reactor()), reactor.call, _fetch_real)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=KINDS)
def subject(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Subject]:
    kind = request.param
    if kind == "fake":
        yield _fake()
    elif kind == "local":
        yield _local(tmp_path)
    elif kind == "s3":
        yield _s3(request.getfixturevalue("ceph"), request.getfixturevalue("s3client"))
    elif kind == "azure":
        yield _azure(request.getfixturevalue("azurite"))
    else:
        yield from _dav(request.getfixturevalue("dav1"))


def names(entries: list[Entry]) -> dict[str, Any]:
    return {e.name: e.stat for e in entries}


# --- what every kind declares ---------------------------------------------------------------------


def test_declares_what_its_kind_promises(subject: Subject) -> None:
    promised = CAPABILITIES["dav"] if subject.kind == "fake" else CAPABILITIES[subject.kind]
    for capability in promised:
        assert capability.providedBy(subject.endpoint), capability
    assert IReadable.providedBy(subject.endpoint) and IListable.providedBy(subject.endpoint)
    # local directories are served read-only, by fedd itself: nothing to upload to, nothing signed
    assert IWritable.providedBy(subject.endpoint) == (subject.kind != "local")
    assert IPresignable.providedBy(subject.endpoint) == (subject.kind in ("fake", "s3", "azure"))
    assert IChecksumStore.providedBy(subject.endpoint) == (subject.kind in ("fake", "s3"))
    assert ILocalFiles.providedBy(subject.endpoint) == (subject.kind == "local")


# --- reading --------------------------------------------------------------------------------------


def test_stat_of_a_file(subject: Subject) -> None:
    stat = subject.call(subject.endpoint.stat, "/c/file.txt")
    assert stat is not None and not stat.is_dir
    assert stat.size == len(DATA) and stat.mtime and stat.etag


def test_stat_of_a_collection(subject: Subject) -> None:
    stat = subject.call(subject.endpoint.stat, "/c/dir")
    if subject.endpoint.collections_by_stat:
        assert stat is not None and stat.is_dir and stat.size is None
    else:  # an object store: the name is a prefix, not an object
        assert stat is None


def test_stat_of_a_missing_name(subject: Subject) -> None:
    assert subject.call(subject.endpoint.stat, "/c/nope.txt") is None
    assert subject.call(subject.endpoint.stat, "/nowhere/at/all") is None


def test_listdir(subject: Subject) -> None:
    listing = names(subject.call(subject.endpoint.listdir, "/c"))
    assert set(listing) == {"file.txt", "dir", "empty"}
    assert listing["dir"].is_dir and listing["empty"].is_dir
    assert listing["file.txt"].size == len(DATA) and not listing["file.txt"].is_dir
    assert [e.name for e in subject.call(subject.endpoint.listdir, "/c/dir")] == ["inner.txt"]
    assert subject.call(subject.endpoint.listdir, "/c/empty") == []
    assert subject.call(subject.endpoint.listdir, "/c/nope") is None
    assert subject.call(subject.endpoint.listdir, "/c/file.txt") is None


def test_list_stream(subject: Subject) -> None:
    batches: list[list[Entry]] = []
    assert subject.call(subject.endpoint.list_stream, "/c", batches.append) is True
    assert batches and all(batches)
    assert set(names([e for batch in batches for e in batch])) == {"file.txt", "dir", "empty"}
    batches.clear()
    assert subject.call(subject.endpoint.list_stream, "/c/nope", batches.append) is False
    assert batches == []


def test_probe(subject: Subject) -> None:
    assert subject.call(subject.endpoint.probe) is None


def test_a_refused_name_is_the_paths_fault_not_the_endpoints(subject: Subject) -> None:
    with pytest.raises(PathRefused) as refusal:
        subject.call(subject.endpoint.stat, TOO_LONG)
    assert refusal.value.endpoint == subject.endpoint.id


def test_redirect_url_is_fetchable_where_presignable(subject: Subject) -> None:
    url = subject.endpoint.url_for("/c/file.txt", time.time())
    if IPresignable.providedBy(subject.endpoint):
        assert subject.fetch(url) == DATA
    elif ILocalFiles.providedBy(subject.endpoint):  # fedd serves the bytes itself: a path on fedd, no host
        assert url.startswith("/.well-known/fedd/local/local/c/file.txt")
        real = ILocalFiles(subject.endpoint).resolve("/c/file.txt")
        assert real is not None and Path(real).read_bytes() == DATA
        assert ILocalFiles(subject.endpoint).resolve("/../../etc/passwd") is None
    else:  # the endpoint's own URL: readable here because the test Apache needs no credentials
        assert subject.fetch(url) == DATA


# --- checksums and space --------------------------------------------------------------------------


def test_reported_checksums_are_the_contents(subject: Subject) -> None:
    if not IChecksumSource.providedBy(subject.endpoint):
        assert subject.kind == "local"  # fedd hashes local files itself
        return
    truth = {"md5": hashlib.md5(DATA).hexdigest(), "adler32": f"{zlib.adler32(DATA):08x}"}
    reported = subject.call(subject.endpoint.reported_checksums, "/c/file.txt")
    assert isinstance(reported, tuple)
    parsed = parse_reported(reported)
    assert {a: truth[a] for a in parsed} == parsed  # whatever it reports is right
    if subject.kind in ("fake", "s3", "azure"):  # a digest, a one-part ETag, a Content-MD5
        assert parsed
    stat = subject.call(IReadable(subject.endpoint).stat, "/c/file.txt")
    assert parse_reported(stat.reported) == parsed  # the stat carries the same fields
    assert subject.call(subject.endpoint.reported_checksums, "/c/nope.txt") is None


def test_stored_checksums_are_reported_back(subject: Subject) -> None:
    if not IChecksumStore.providedBy(subject.endpoint):
        assert subject.kind in ("local", "azure", "dav")
        return
    path = "/c/dir/inner.txt"
    stat = subject.call(IReadable(subject.endpoint).stat, path)
    assert "adler32" not in parse_reported(stat.reported)
    assert subject.call(subject.endpoint.store_checksums, path, {"adler32": "0badf00d"}, "changed") is False
    source = IChecksumSource(subject.endpoint)  # what a store keeps, it reports back as a source
    assert "adler32" not in parse_reported(subject.call(source.reported_checksums, path))
    assert subject.call(subject.endpoint.store_checksums, path, {"adler32": "0badf00d"}, stat.etag) is True
    assert parse_reported(subject.call(source.reported_checksums, path))["adler32"] == "0badf00d"


def test_space(subject: Subject) -> None:
    assert ISpaceSource.providedBy(subject.endpoint)
    try:
        space = subject.call(subject.endpoint.space, 1000)
    except EndpointError as exc:
        # RFC 4331 is optional in WebDAV, and Apache's mod_dav_fs does not report it
        assert subject.kind == "dav" and "RFC 4331" in exc.reason
        return
    assert isinstance(space, Space) and space.source
    for value in (space.used, space.total, space.files, space.available):
        assert value is None or (isinstance(value, int) and value >= 0)
    if space.source == "listing":  # it counted the objects: our two files at least
        assert space.files is not None and space.files >= 2
        assert space.used is not None and space.used >= len(DATA) + len(INNER)


# --- writing --------------------------------------------------------------------------------------


def _upload(subject: Subject, path: str, data: bytes) -> int:
    """An upload the way fedd has clients (or itself) send one: prepare_put, then a PUT to the
    upload URL with the kind's upload headers, through the endpoint's own HTTP client."""
    target = ITPCTarget(subject.endpoint)
    assert subject.call(target.prepare_put, path) is None
    url = IReadable(target).url_for(path, time.time(), "PUT")
    response = subject.call(target.http.request, "PUT", url, dict(target.upload_headers), data)
    return int(response.code)


def test_put_then_stat_then_delete(subject: Subject) -> None:
    if not IWritable.providedBy(subject.endpoint):
        assert subject.kind == "local" and not ITPCTarget.providedBy(subject.endpoint)
        return
    path = "/c/new/deeper/put.txt"  # parents that do not exist yet: prepare_put's job where needed
    assert _upload(subject, path, b"uploaded") in (200, 201, 204)
    readable, listable = IReadable(subject.endpoint), IListable(subject.endpoint)
    stat = subject.call(readable.stat, path)
    assert stat is not None and stat.size == len(b"uploaded")
    assert "put.txt" in names(subject.call(listable.listdir, "/c/new/deeper"))
    assert subject.call(subject.endpoint.delete, path) is True
    assert subject.call(readable.stat, path) is None
    assert subject.call(subject.endpoint.delete, path) is False


def test_mkcol_and_move(subject: Subject) -> None:
    if not IWritable.providedBy(subject.endpoint):
        assert subject.kind == "local"
        return
    ep = subject.endpoint
    readable, listable = IReadable(ep), IListable(ep)
    assert subject.call(ep.mkcol, "/c/made") is True
    assert subject.call(ep.mkcol, "/c/made") is False
    assert subject.call(ep.mkcol, "/c/file.txt") is False  # the name is taken by a file
    assert names(subject.call(listable.listdir, "/c"))["made"].is_dir
    assert subject.call(listable.listdir, "/c/made") == []
    assert _upload(subject, "/c/made/a.txt", b"moving") in (200, 201, 204)
    assert subject.call(ep.move, "/c/made/a.txt", "/c/made/b.txt") is None
    assert subject.call(readable.stat, "/c/made/a.txt") is None
    assert subject.call(readable.stat, "/c/made/b.txt").size == len(b"moving")
    with pytest.raises(EndpointError):
        subject.call(ep.move, "/c/made/a.txt", "/c/made/c.txt")
    assert subject.call(ep.delete, "/c/made/b.txt") is True
    assert subject.call(ep.delete, "/c/made") is True
    assert "made" not in names(subject.call(listable.listdir, "/c"))


def test_md5_of_the_content_matches_what_was_uploaded(subject: Subject) -> None:
    """A checksum source reports, for what fedd uploaded, values that are that upload's (or none)."""
    if not (IWritable.providedBy(subject.endpoint) and IChecksumSource.providedBy(subject.endpoint)):
        assert subject.kind == "local"
        return
    data = os.urandom(1000)
    assert _upload(subject, "/c/random.bin", data) in (200, 201, 204)
    parsed = parse_reported(subject.call(subject.endpoint.reported_checksums, "/c/random.bin"))
    truth = {"md5": hashlib.md5(data).hexdigest(), "adler32": f"{zlib.adler32(data):08x}"}
    assert {a: truth[a] for a in parsed} == parsed
    assert subject.call(subject.endpoint.delete, "/c/random.bin") is True
