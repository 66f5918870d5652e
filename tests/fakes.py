"""In-memory endpoints for unit tests. The same behaviour is tested against real servers in test_s3_ceph,
test_dav_apache and test_daemon."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred, fail, succeed

from fedd.config import EndpointConfig
from fedd.endpoints.base import Entry, Stat, Valve, emit_listing
from fedd.errors import EndpointError


@dataclass
class FakeEndpoint:
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

    def __post_init__(self) -> None:
        self.config = EndpointConfig(id=self.id, kind="dav", url=f"http://{self.id}.example")

    def stat(self, path: str, via: tuple[str, ...] = ()) -> Deferred[Stat | None]:
        self.calls.append(path)
        if self.broken:
            return fail(EndpointError(self.id, self.broken))
        if self.manual:
            d: Deferred[Stat | None] = Deferred()
            self.pending[path] = d
            return d
        return succeed(self.files.get(path))

    def answer(self, path: str) -> None:
        self.pending.pop(path).callback(self.files.get(path))

    def listdir(self, path: str, via: tuple[str, ...] = ()) -> Deferred[list[Entry] | None]:
        if self.broken:
            return fail(EndpointError(self.id, self.broken))
        return succeed(self.dirs.get(path))

    def list_stream(
        self, path: str, emit: Callable[[list[Entry]], None], via: tuple[str, ...] = (), valve: Valve | None = None
    ) -> Deferred[bool]:
        return emit_listing(self.listdir(path, via), emit)

    def url_for(self, path: str, now: float, method: str = "GET") -> str:
        return f"http://{self.id}.example{path}"

    def probe(self) -> Deferred[None]:
        self.probes += 1
        if self.probe_ok:
            return succeed(None)
        return fail(EndpointError(self.id, "probe refused"))
