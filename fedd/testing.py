"""An in-memory endpoint for tests (txacme's `testing.py` pattern): it declares every capability of
`fedd.endpoints.interfaces`, and tests/test_contract.py runs the same suite against it and against
the real servers (Ceph RGW, Apache mod_dav, Azurite, a local directory), so what the fake does is
what the real kinds do.

Its URLs (`http://<id>.example/...`) are served in process by `FakeEndpoint.resource()`; its own
`http` client reaches them through `treq.testing.StubTreq`, so uploads carried by fedd land in it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from urllib.parse import unquote, urlsplit

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.web import resource, server
from zope.interface import implementer

from fedd.config import EndpointConfig
from fedd.endpoints.base import Entry, HttpClient, Space, Stat, Valve, emit_listing, quote_path
from fedd.endpoints.interfaces import (
    IChecksumSource,
    IChecksumStore,
    IListable,
    IPresignable,
    ISpaceSource,
    ITPCTarget,
    Reported,
)
from fedd.errors import EndpointError, PathRefused
from fedd.twtypes import Resource

MAX_NAME = 255  # a longer path component is refused for its name (as ENAMETOOLONG, HTTP 414)


@implementer(IPresignable, IListable, ITPCTarget, IChecksumSource, IChecksumStore, ISpaceSource)
@dataclass(eq=False)
class FakeEndpoint:
    """Files are `files` (path -> Stat, bytes in `contents` when uploaded or given), collections
    are `dirs` (path -> its entries). Knobs for failure tests: `broken` (every call fails with an
    EndpointError of that text), `manual` (stat answers only when the test calls `answer`),
    `probe_ok`. An object store by default (`collections_by_stat` False: a stat of a collection
    says None); `write` makes its configuration writable."""

    id: str
    files: dict[str, Stat] = field(default_factory=dict)
    dirs: dict[str, list[Entry]] = field(default_factory=dict)
    manual: bool = False  # if set, stat() answers only when the test fires the Deferred
    broken: str = ""
    calls: list[str] = field(default_factory=list)
    pending: dict[str, Deferred[Stat | None]] = field(default_factory=dict)
    probes: int = 0
    probe_ok: bool = True
    collections_by_stat: bool = False
    contents: dict[str, bytes] = field(default_factory=dict)
    reported: dict[str, Reported] = field(default_factory=dict)  # path -> raw checksum fields it keeps
    quota: int | None = None
    write: bool = False
    clock: IReactorTime = field(default_factory=Clock)

    upload_headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.config = EndpointConfig(id=self.id, kind="dav", url=f"http://{self.id}.example", write=self.write)
        self._http: HttpClient | None = None

    # --- reading ------------------------------------------------------------------------------

    def _refusal(self, path: str) -> PathRefused | None:
        if any(len(part) > MAX_NAME for part in path.split("/")):
            return PathRefused(self.id, "name too long")
        if any(path.startswith(f.rstrip("/") + "/") for f in self.files):
            return PathRefused(self.id, "a path below a file")
        return None

    def stat(self, path: str, via: tuple[str, ...] = ()) -> Deferred[Stat | None]:
        self.calls.append(path)
        if self.broken:
            return fail(EndpointError(self.id, self.broken))
        refusal = self._refusal(path)
        if refusal is not None:
            return fail(refusal)
        if self.manual:
            d: Deferred[Stat | None] = Deferred()
            self.pending[path] = d
            return d
        return succeed(self._stat(path))

    def _stat(self, path: str) -> Stat | None:
        found = self.files.get(path)
        if found is not None and path in self.reported:
            return replace(found, reported=self.reported[path])  # what the stat's answer tells of the content
        if found is None and self.collections_by_stat and (path in self.dirs or path == "/"):
            return Stat(is_dir=True)
        return found

    def answer(self, path: str) -> None:
        self.pending.pop(path).callback(self._stat(path))

    def listdir(self, path: str, via: tuple[str, ...] = ()) -> Deferred[list[Entry] | None]:
        if self.broken:
            return fail(EndpointError(self.id, self.broken))
        listing = self.dirs.get(path.rstrip("/") or "/")
        return succeed(None if listing is None else list(listing))

    def list_stream(
        self, path: str, emit: Callable[[list[Entry]], None], via: tuple[str, ...] = (), valve: Valve | None = None
    ) -> Deferred[bool]:
        return emit_listing(self.listdir(path, via), emit)

    def url_for(self, path: str, now: float, method: str = "GET") -> str:
        return f"http://{self.id}.example{quote_path(path)}"

    def probe(self) -> Deferred[None]:
        self.probes += 1
        if self.probe_ok and not self.broken:
            return succeed(None)
        return fail(EndpointError(self.id, self.broken or "probe refused"))

    def reported_checksums(self, path: str) -> Deferred[Reported | None]:
        if self.broken:
            return fail(EndpointError(self.id, self.broken))
        if path not in self.files:
            return succeed(None)
        return succeed(self.reported.get(path, ()))

    def store_checksums(self, path: str, values: dict[str, str], etag: str) -> Deferred[bool]:
        found = self.files.get(path)
        if found is None or found.etag != etag:
            return succeed(False)
        kept = dict(self.reported.get(path, ()))
        kept.update((f"x-amz-meta-{algorithm}", value) for algorithm, value in values.items())
        self.reported[path] = tuple(sorted(kept.items()))
        return succeed(True)

    def space(self, max_objects: int = 50_000_000) -> Deferred[Space]:
        if self.broken:
            return fail(EndpointError(self.id, self.broken))
        sizes = [s.size or 0 for s in self.files.values()]
        return succeed(Space(used=sum(sizes), total=self.quota, files=len(sizes), source="listing"))

    # --- writing ------------------------------------------------------------------------------

    def prepare_put(self, path: str) -> Deferred[None]:
        refusal = self._refusal(path)
        return fail(refusal) if refusal is not None else succeed(None)

    def put(self, path: str, data: bytes) -> None:
        """What an upload to `url_for(path, now, "PUT")` does: the file, and its parents."""
        etag = hashlib.md5(data).hexdigest()
        self.contents[path] = data
        self._add(path, Stat(size=len(data), mtime=self.clock.seconds(), etag=etag))

    def _add(self, path: str, stat: Stat) -> None:
        if stat.is_dir:
            self.dirs.setdefault(path, [])
        else:
            self.files[path] = stat
        parent, _, name = path.rpartition("/")
        parent = parent or "/"
        if parent != "/" and parent not in self.dirs:
            self._add(parent, Stat(is_dir=True))
        entries = [e for e in self.dirs.setdefault(parent, []) if e.name != name]
        self.dirs[parent] = [*entries, Entry(name, stat)]

    def delete(self, path: str) -> Deferred[bool]:
        if self.broken:
            return fail(EndpointError(self.id, self.broken))
        if self.dirs.get(path):
            return fail(EndpointError(self.id, f"DELETE {path}: collection not empty"))
        existed = self.files.pop(path, None) is not None or self.dirs.pop(path, None) is not None
        self.contents.pop(path, None)
        self.reported.pop(path, None)
        parent, _, name = path.rpartition("/")
        if existed and (parent or "/") in self.dirs:
            self.dirs[parent or "/"] = [e for e in self.dirs[parent or "/"] if e.name != name]
        return succeed(existed)

    def mkcol(self, path: str) -> Deferred[bool]:
        if self.broken:
            return fail(EndpointError(self.id, self.broken))
        if path in self.files or path in self.dirs:
            return succeed(False)
        self._add(path, Stat(is_dir=True))
        return succeed(True)

    def move(self, source: str, destination: str) -> Deferred[None]:
        if source not in self.files:
            return fail(EndpointError(self.id, "MOVE: the source disappeared"))
        data = self.contents.get(source, b"")
        stat = self.files[source]
        self.delete(source)
        self._add(destination, stat)
        self.contents[destination] = data
        return succeed(None)

    # --- HTTP, in process ---------------------------------------------------------------------

    @property
    def http(self) -> HttpClient:
        """An HttpClient whose requests reach `resource()` in process (StubTreq)."""
        if self._http is None:
            self._http = HttpClient(
                self.clock, endpoint=self.id, timeout=self.config.timeout, client=StubTreq(self.resource())
            )
        return self._http

    def resource(self) -> resource.IResource:
        """GET/HEAD/PUT on the URLs `url_for` gives, served from memory."""
        return _Served(self)


class _Served(Resource):
    isLeaf = True

    def __init__(self, endpoint: FakeEndpoint) -> None:
        super().__init__()
        self._endpoint = endpoint

    def render(self, request: server.Request) -> bytes:
        ep = self._endpoint
        path = unquote(urlsplit(request.uri.decode("latin-1")).path) or "/"
        method = request.method.decode("ascii")
        if method == "PUT":
            assert request.content is not None
            ep.put(path, request.content.read())
            request.setResponseCode(201)
            return b""
        if method not in ("GET", "HEAD"):
            request.setResponseCode(405)
            return b""
        found = ep.files.get(path)
        if found is None:
            request.setResponseCode(404)
            return b""
        request.setHeader(b"etag", f'"{found.etag}"'.encode())
        return ep.contents.get(path, b"\0" * (found.size or 0))
