"""A local directory as an endpoint (the embedded default). fedd serves the bytes itself.

File-system calls run in the reactor's thread pool, so a slow disk never stalls the reactor.
`resolve` is the only way from an endpoint path to a file-system path, and it never leaves the root.
"""

from __future__ import annotations

import errno
import os
import stat as statmod
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from zope.interface import implementer

from fedd.config import EndpointConfig
from fedd.endpoints.base import Entry, Space, Stat, Valve, emit_listing, quote_path
from fedd.endpoints.interfaces import IListable, ILocalFiles, ISpaceSource
from fedd.errors import EndpointError, PathRefused

LOCAL_PREFIX = "/.well-known/fedd/local/"
# errors caused by the path asked, not by the file system: never an endpoint fault
PATH_ERRNOS = frozenset({errno.ENOTDIR, errno.ENAMETOOLONG, errno.EINVAL, errno.ELOOP, errno.EACCES, errno.EPERM})


@implementer(ILocalFiles, IListable, ISpaceSource)
class LocalEndpoint:
    collections_by_stat = True

    def __init__(self, config: EndpointConfig, reactor: Any) -> None:
        self.id = config.id
        self.config = config
        self.root = os.path.realpath(config.path)
        self._reactor = reactor

    def _defer(self, fn: Any, *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), fn, *args)

    def resolve(self, path: str) -> str | None:
        """File-system path for an endpoint path, or None if it would leave the root, or if a symlink
        leads out of the mapped prefix the path is under (into another prefix, whose access rules
        the path asked would bypass, or into a part of the root that is not published)."""
        lexical = os.path.normpath(os.path.join(self.root, path.lstrip("/")))
        candidate = os.path.realpath(lexical)
        if not self._inside_dir(candidate, self.root):
            return None
        if candidate != lexical:  # a symlink was followed: it must stay in the prefix it starts from
            asked = self._deepest(lexical, [os.path.normpath(self.root + p) for p in self._prefixes])
            # the prefixes' own directories may be symlinks within the root: compare real places
            landed = self._deepest(candidate, [os.path.realpath(self.root + p) for p in self._prefixes])
            if asked is None or landed is None or os.path.realpath(asked) != landed:
                return None
        return candidate

    @staticmethod
    def _inside_dir(path: str, directory: str) -> bool:
        return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)

    @property
    def _prefixes(self) -> list[str]:
        return sorted({"" if ep == "/" else ep for _, ep in self.config.mappings})

    @staticmethod
    def _deepest(path: str, places: list[str]) -> str | None:
        """The most specific of the mapped prefixes' directories that holds `path`."""
        holding = [place for place in places if LocalEndpoint._inside_dir(path, place)]
        return max(holding, key=len) if holding else None

    def url_for(self, path: str, now: float, method: str = "GET") -> str:
        return LOCAL_PREFIX + self.id + quote_path(path)

    def stat(self, path: str, via: tuple[str, ...] = ()) -> Deferred[Stat | None]:
        return self._defer(self._stat, path)

    def _stat(self, path: str) -> Stat | None:
        real = self.resolve(path)
        if real is None:
            return None
        try:
            st = os.stat(real)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in PATH_ERRNOS:  # a path below a file, a name too long: the request's fault
                raise PathRefused(self.id, f"stat: {exc.strerror}") from None
            raise EndpointError(self.id, f"stat: {exc.strerror}") from None
        return _to_stat(st)

    def listdir(self, path: str, via: tuple[str, ...] = ()) -> Deferred[list[Entry] | None]:
        return self._defer(self._listdir, path)

    def list_stream(
        self, path: str, emit: Callable[[list[Entry]], None], via: tuple[str, ...] = (), valve: Valve | None = None
    ) -> Deferred[bool]:
        return emit_listing(self.listdir(path), emit)

    def _listdir(self, path: str) -> list[Entry] | None:
        real = self.resolve(path)
        if real is None or not os.path.isdir(real):
            return None
        entries: list[Entry] = []
        try:
            with os.scandir(real) as it:
                base = path.rstrip("/")
                for item in it:
                    if item.is_symlink() and self.resolve(f"{base}/{item.name}") is None:
                        continue  # a link out of its mapped prefix: not served, so not listed either
                    try:
                        entries.append(Entry(item.name, _to_stat(item.stat())))
                    except OSError:
                        continue
        except OSError as exc:
            if exc.errno in PATH_ERRNOS:
                return None
            raise EndpointError(self.id, f"list: {exc.strerror}") from None
        return entries

    def probe(self) -> Deferred[None]:
        return self._defer(self._probe)

    def _probe(self) -> None:
        if not os.path.isdir(self.root) or not os.access(self.root, os.R_OK | os.X_OK):
            raise EndpointError(self.id, f"directory {self.root} is missing or unreadable")

    # local directories are served read-only (no IWritable); space is the file system's

    def space(self, max_objects: int = 0) -> Deferred[Space]:  # statvfs: nothing is listed
        return self._defer(self._space)

    def _space(self) -> Space:
        try:
            st = os.statvfs(self.root)
        except OSError as exc:
            raise EndpointError(self.id, f"statvfs {self.root}: {exc.strerror}") from None
        total = st.f_blocks * st.f_frsize
        available = st.f_bavail * st.f_frsize
        used = total - st.f_bfree * st.f_frsize
        return Space(used=used, total=total, source="statvfs", available=available)


def _to_stat(st: os.stat_result) -> Stat:
    is_dir = statmod.S_ISDIR(st.st_mode)
    return Stat(
        size=None if is_dir else st.st_size,
        mtime=st.st_mtime,
        is_dir=is_dir,
        etag=f"{st.st_ino:x}-{st.st_size:x}-{int(st.st_mtime * 1e6):x}",
    )
