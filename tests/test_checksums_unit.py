"""Checksum headers and hashers (pure, tables of cases), Stat's cache form, the SQLite store, config."""

from __future__ import annotations

import base64
import hashlib
import os
import queue
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.abstract import FileDescriptor

from fedd.checksums.bulk import InlineHashing, ThreadedHashing, hashing_for, widen
from fedd.checksums.digest import (
    Adler32,
    format_value,
    md5_from_etag,
    new_hasher,
    normalise,
    parse_digest,
    parse_prefer_wait,
    parse_want_digest,
    parse_want_repr_digest,
    wants_of,
)
from fedd.checksums.store import ChecksumStore
from fedd.config import ConfigError, parse_config
from fedd.endpoints.base import Stat
from fedd.locate.cache import LocateResult
from tests.reactor import call, the_reactor

DATA = b"fedd checksums\n" * 1000
ADLER = f"{zlib.adler32(DATA) & 0xFFFFFFFF:08x}"
MD5 = hashlib.md5(DATA).hexdigest()
SHA256 = hashlib.sha256(DATA).hexdigest()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("adler32", ("adler32",)),
        ("ADLER32", ("adler32",)),  # gfal2
        ("MD5", ("md5",)),
        ("md5;q=0.3, adler32;q=0.9", ("adler32", "md5")),
        ("SHA-256;q=1, md5;q=1", ("sha256", "md5")),  # ties keep the client's order
        ("sha-512;q=0.1,ADLER32", ("adler32", "sha512")),
        ("md5;q=0, adler32;q=0.5", ("adler32",)),  # q=0: not acceptable
        ("crc32c, unixsum", ()),  # unknown only
        ("sha256", ()),  # not the registered RFC 3230 name (SHA-256)
        ("adler32;q=bad, md5", ("md5",)),
        ("adler32;q=1.5", ()),
        ("", ()),
        (" md5 ; q=0.2 , UNIXcksum , adler32 ; Q=0.4", ("adler32", "md5")),
        ("md5;q=0.2, md5;q=0.9", ("md5",)),
    ],
)
def test_want_digest(header: str, expected: tuple[str, ...]) -> None:
    assert parse_want_digest(header).algorithms == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("sha-256=1", ("sha256",)),
        ("sha-512=3, sha-256=10", ("sha256", "sha512")),
        ("adler=5, md5=2", ("adler32", "md5")),
        ("adler32=5", ()),  # not an RFC 9530 name
        ("sha-256=0, md5=1", ("md5",)),
        ("sha-256=11", ()),
        ("sha-256=x", ()),
        ("SHA-256=2", ("sha256",)),
        ("sha-256", ("sha256",)),  # bare key: boolean true
        ("unixsum=9, crc32c=2", ()),
    ],
)
def test_want_repr_digest(header: str, expected: tuple[str, ...]) -> None:
    assert parse_want_repr_digest(header).algorithms == expected


def test_pick_takes_the_most_wanted_known_one() -> None:
    want = parse_want_digest("sha-256;q=1, md5;q=0.8, adler32;q=0.5")
    assert want.pick({"adler32": ADLER, "md5": MD5}) == "md5"
    assert want.pick({"adler32": ADLER}) == "adler32"
    assert want.pick({"sha512": "ab" * 64}) is None
    assert wants_of(b"crc32c", None) == []
    assert [w.field for w in wants_of(b"adler32", b"sha-256=1")] == ["digest", "repr-digest"]


def test_format_values_as_the_clients_read_them() -> None:
    md5_b64 = base64.b64encode(bytes.fromhex(MD5)).decode()
    sha_b64 = base64.b64encode(bytes.fromhex(SHA256)).decode()
    assert format_value("digest", "adler32", "0000abcd") == b"adler32=0000abcd"
    assert format_value("digest", "md5", MD5) == f"md5={md5_b64}".encode()
    assert format_value("digest", "sha256", SHA256) == f"sha-256={sha_b64}".encode()
    assert format_value("repr-digest", "sha256", SHA256) == f"sha-256=:{sha_b64}:".encode()
    assert format_value("repr-digest", "adler32", "0a1b2c3d") == b"adler=:ChssPQ==:"
    assert format_value("repr-digest", "md5", MD5) == f"md5=:{md5_b64}:".encode()


@pytest.mark.parametrize(
    ("algorithm", "value", "expected"),
    [
        ("adler32", "0A1B2C3D", "0a1b2c3d"),
        ("adler32", "abcd", "0000abcd"),  # leading zeros lost by some tools
        ("adler32", "0x1234", "00001234"),
        ("adler32", "123456789", None),
        ("adler32", "xyz", None),
        ("adler32", "", None),
        ("md5", MD5.upper(), MD5),
        ("md5", MD5[1:], None),  # only adler32 is padded
        ("sha256", SHA256, SHA256),
        ("crc32c", "1234", None),
    ],
)
def test_normalise(algorithm: str, value: str, expected: str | None) -> None:
    assert normalise(algorithm, value) == expected


def test_parse_digest_answers_of_storage() -> None:
    md5_b64 = base64.b64encode(bytes.fromhex(MD5)).decode()
    assert parse_digest(f"adler32={ADLER}, md5={md5_b64}") == {"adler32": ADLER, "md5": MD5}
    assert parse_digest("ADLER32=1abc") == {"adler32": "00001abc"}  # dCache style, upper case, short
    assert parse_digest(f"MD5={MD5}") == {"md5": MD5}  # hex where base64 belongs: still understood
    assert parse_digest("md5=notbase64!, UNIXcksum=12") == {}
    assert parse_digest("adler32") == {}


def test_md5_from_etag() -> None:
    assert md5_from_etag(f'"{MD5}"') == MD5
    assert md5_from_etag(f"{MD5}-3") is None  # multipart
    assert md5_from_etag("") is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [("wait=10", 10.0), ("respond-async, wait=5", 0.0), ("return=minimal", None), ("wait=abc", None), ("", None)],
)
def test_prefer_wait(header: str, expected: float | None) -> None:
    assert parse_prefer_wait(header) == expected


def test_streaming_hashers_match_one_shot() -> None:
    blob = os.urandom(300_000)
    for algorithm, reference in (
        ("adler32", f"{zlib.adler32(blob) & 0xFFFFFFFF:08x}"),
        ("md5", hashlib.md5(blob).hexdigest()),
        ("sha256", hashlib.sha256(blob).hexdigest()),
        ("sha512", hashlib.sha512(blob).hexdigest()),
    ):
        h = new_hasher(algorithm)
        for i in range(0, len(blob), 65536):
            h.update(blob[i : i + 65536])
        assert h.hexdigest() == reference, algorithm
    assert Adler32().hexdigest() == "00000001"  # empty input
    with pytest.raises(ValueError):
        new_hasher("crc32c")


def test_adler32_uses_zlib_ng_with_the_same_values() -> None:
    from fedd.checksums.digest import ADLER32_IMPLEMENTATION

    assert ADLER32_IMPLEMENTATION == "zlib-ng"  # the `test` extra installs it, as `fast` does for sites
    blob = os.urandom(5 << 20)
    h = Adler32()
    for i in range(0, len(blob), 1 << 20):
        h.update(blob[i : i + (1 << 20)])
    h.update(b"")
    assert h.hexdigest() == f"{zlib.adler32(blob) & 0xFFFFFFFF:08x}"
    assert new_hasher("adler32").hexdigest() == "00000001"


def test_stat_cache_form_old_and_new() -> None:
    plain = Stat(size=5, mtime=1.5, etag="e")
    assert plain.to_json() == [5, 1.5, False, "e"]  # unchanged: older processes still read it
    with_sums = Stat(size=5, mtime=1.5, etag="e", checksums=(("adler32", ADLER), ("md5", MD5)))
    assert Stat.from_json(with_sums.to_json()) == with_sums
    assert Stat.from_json([5, 1.5, False, "e"]) == plain  # entries written before checksums existed
    old = LocateResult.from_bytes("/p", b'{"f":{"a":[5,1.5,false,"e"]},"m":[],"t":1}', {"a"})
    assert old is not None and old.found["a"] == plain
    new = LocateResult("/p", {"a": with_sums}, at=1.0)
    back = LocateResult.from_bytes("/p", new.to_bytes(), {"a"})
    assert back is not None and back.found["a"].checksums == with_sums.checksums


def test_store_keeps_values_per_replica_version(tmp_path: Path) -> None:
    store = ChecksumStore(the_reactor(), str(tmp_path / "sums.sqlite"))
    assert call(store.open) == 0
    key = ("dav", "/a/f", 10, "etag1")
    call(store.put, key, {"adler32": ADLER, "md5": MD5}, 1.0)
    other = ("dav", "/a/g", 10, "x")
    call(store.put, other, {"adler32": "00000001"}, 1.0)
    got = call(store.get, [key, other, ("s3", "/a/f", 10, "etag1")])
    assert got[key] == {"adler32": ADLER, "md5": MD5}
    assert got[other] == {"adler32": "00000001"}
    assert got[("s3", "/a/f", 10, "etag1")] == {}
    newer = ("dav", "/a/f", 11, "etag2")  # the file was rewritten: the old row goes
    call(store.put, newer, {"adler32": "0000abcd"}, 2.0)
    got = call(store.get, [key, newer])
    assert got == {key: {}, newer: {"adler32": "0000abcd"}}
    call(store.close)
    reopened = ChecksumStore(the_reactor(), str(tmp_path / "sums.sqlite"))
    assert call(reopened.open) == 2
    call(reopened.close)


def test_config_section(tmp_path: Path) -> None:
    base = f"[endpoint l]\nkind = local\npath = {tmp_path}\n"
    config = parse_config(base)
    assert config.checksums.workers == 2 and config.checksums.wait == 0
    config = parse_config(
        base + "[checksums]\nworkers = 0\nmax_file_bytes = 2G\nwait = 5\nmax_wait = 30\nstore_s3_metadata = no\n"
    )
    assert config.checksums.workers == 0 and config.checksums.max_file_bytes == 2 * 10**9
    assert config.checksums.wait == 5 and not config.checksums.store_s3_metadata
    with pytest.raises(ConfigError) as info:
        parse_config(base + "[checksums]\nworkers = -1\nalgorithm = md5\n")
    assert "workers" in str(info.value) and "unknown key 'algorithm'" in str(info.value)


class _ThreadReactor:
    """callFromThread queues the call; the test thread runs the queue (as the reactor thread would)."""

    def __init__(self) -> None:
        self.calls: queue.SimpleQueue[tuple[Any, tuple[Any, ...]]] = queue.SimpleQueue()

    def callFromThread(self, f: Any, *args: Any) -> None:
        self.calls.put((f, args))

    def run_until(self, done: Any, seconds: float = 10.0) -> None:
        deadline = time.monotonic() + seconds
        while not done():
            f, args = self.calls.get(timeout=max(0.01, deadline - time.monotonic()))
            f(*args)


class _Gate:
    """A hasher that waits for the test to open it: lets the backlog build up."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.seen = 0

    def update(self, data: bytes, /) -> None:
        assert self.open.wait(10)
        self.seen += len(data)

    def hexdigest(self) -> str:
        return str(self.seen)


def test_threaded_hashing_matches_one_shot_and_bounds_its_backlog() -> None:
    reactor = _ThreadReactor()
    blob = os.urandom(10 * 65536)
    adler, md5, gate = Adler32(), hashlib.md5(), _Gate()
    calls: list[bool] = []
    hashing = ThreadedHashing([adler, md5, gate], reactor=reactor, on_backlog=calls.append, high=4 * 65536, low=65536)
    for i in range(0, len(blob), 65536):
        hashing.update(blob[i : i + 65536])
    # the gate holds the first chunk: the rest is queued, past the high mark -> pause, said once
    assert calls == [True] and hashing.held and hashing.backlog > 4 * 65536
    gate.open.set()
    finished: list[Any] = []
    hashing.finish().addBoth(finished.append)
    reactor.run_until(lambda: bool(finished))
    assert finished == [None] and calls == [True, False] and not hashing.held and hashing.backlog == 0
    assert adler.hexdigest() == f"{zlib.adler32(blob) & 0xFFFFFFFF:08x}"
    assert md5.hexdigest() == hashlib.md5(blob).hexdigest()
    assert gate.seen == len(blob)


def test_threaded_hashing_cancel_and_errors() -> None:
    reactor = _ThreadReactor()
    gate = _Gate()
    hashing = ThreadedHashing([gate], reactor=reactor)
    hashing.update(b"x" * 10_000)
    hashing.update(b"y" * 10_000)
    hashing.cancel()  # what is still queued is dropped, the thread ends
    gate.open.set()
    ended: list[Any] = []
    hashing.finish().addBoth(ended.append)
    reactor.run_until(lambda: bool(ended))
    assert ended == [None] and gate.seen <= 10_000

    class Broken:
        def update(self, data: bytes, /) -> None:
            raise ValueError("hasher bug")

        def hexdigest(self) -> str:
            return ""

    broken = ThreadedHashing([Broken()], reactor=reactor)
    broken.update(b"z" * 10_000)
    failures: list[Any] = []
    broken.finish().addErrback(failures.append)
    reactor.run_until(lambda: bool(failures))
    assert failures[0].check(ValueError)


def test_small_streams_are_hashed_inline_large_ones_in_a_thread() -> None:
    reactor = _ThreadReactor()
    assert isinstance(hashing_for([Adler32()], 1000, reactor=reactor), InlineHashing)
    assert isinstance(hashing_for([hashlib.md5()], 1000, reactor=reactor), InlineHashing)
    # zlib-ng's Adler-32 alone is cheaper inline than handed over; MD5 (or the system zlib's) is not
    assert isinstance(hashing_for([Adler32()], 1 << 30, reactor=reactor), InlineHashing)
    big = hashing_for([Adler32(), hashlib.md5()], 1 << 30, reactor=reactor)
    unknown = hashing_for([hashlib.sha256()], None, reactor=reactor)
    assert isinstance(big, ThreadedHashing) and isinstance(unknown, ThreadedHashing)
    for h in (big, unknown):
        h.cancel()


def test_widen_reaches_the_socket_under_tls() -> None:
    class TlsLike:  # TLSMemoryBIOProtocol: its own transport is the TCP connection
        def __init__(self, transport: Any) -> None:
            self.transport = transport

    tcp = FileDescriptor()
    widen(TlsLike(tcp), 1 << 20)
    assert tcp.bufferSize == 1 << 20 and tcp.SEND_LIMIT == 1 << 20
    assert FileDescriptor.bufferSize == 65536  # the class default stays: only bulk connections change
    widen(None)  # nothing to widen: no error


def test_tuned_allocator_reads_1mib_chunks_without_page_faults() -> None:
    """1 MiB recv() into freshly mapped pages faults every 4 KiB (measured 3x slower than the copy)."""
    script = """
import os, resource, socket, threading
from fedd.checksums.bulk import tune_allocator
assert tune_allocator() and tune_allocator()  # applied, once
a, b = socket.socketpair()
blob = os.urandom(1 << 20)
def send():
    for _ in range(256):
        a.sendall(blob)
    a.close()
t = threading.Thread(target=send)
t.start()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
held = []
while data := b.recv(1 << 20):
    held.append(data)  # a hashing backlog: a few chunks alive at once
    if len(held) > 8:
        held.pop(0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
t.join()
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert int(out.stdout) < 5000, out.stdout  # untuned: ~40,000-60,000 for these 256 MiB


def test_replica_key_is_the_same_for_a_weak_and_a_strong_etag() -> None:
    from fedd.checksums.compute import replica_key

    # Apache: W/"x" while the file is less than a second old, "x" after
    weak, strong = Stat(size=5, etag="W/1000-5f1"), Stat(size=5, etag="1000-5f1")
    assert replica_key("dav", "/f", weak) == replica_key("dav", "/f", strong) == ("dav", "/f", 5, "1000-5f1")
    assert replica_key("dav", "/f", Stat(size=6, etag="1000-5f1")) != replica_key("dav", "/f", strong)
    assert replica_key("s3", "/f", Stat(size=5, mtime=1.5)) == ("s3", "/f", 5, "1.500000")
