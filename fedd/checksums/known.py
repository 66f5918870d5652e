"""What the `checksums` service knows of a replica's checksums without computing them
(fedd.checksums.service, steps 1 and 2 of its docstring).

- What the endpoints told while being located (`Stat.checksums`) and what this process already
  read or computed, in an LRU of MEMORY_ENTRIES replicas keyed by replica (an empty entry, "the
  database has nothing", is asked again after NEGATIVE_TTL seconds);
- fedd's own database (`[checksums] database`), read with a timeout of DB_TIMEOUT seconds, and
  written with each computed value (`keep`); a database that cannot be opened leaves the memory only;
- an endpoint that reports checksums when asked (`IChecksumSource`: Azure's Content-MD5).

Two replicas with different values for one algorithm are logged and published as
`checksum-mismatch`, once per path, algorithm and values.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

from fedd.checksums.compute import replica_key
from fedd.checksums.reported import known_checksums, parse_reported
from fedd.checksums.store import UNCOUNTED, ChecksumDatabase, Key
from fedd.endpoints.interfaces import IChecksumSource
from fedd.errors import describe
from fedd.events.model import file_fields

log = Logger(namespace="fedd.checksums")
NEGATIVE_TTL = 60.0  # a replica without a stored checksum is looked up again after this
MEMORY_ENTRIES = 100_000
DB_TIMEOUT = 10.0
MISMATCHES_KEPT = 10_000  # mismatches logged once each; the set starts again past this many


class KnownChecksums:
    def __init__(
        self,
        *,
        federation: Any,
        clock: Any,
        store: ChecksumDatabase,
        emit: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.fed = federation
        self.clock = clock
        self.store = store
        self.emit = emit
        self.db_ready = False
        self.db_error = ""
        self.memory: OrderedDict[Key, tuple[float, dict[str, str]]] = OrderedDict()
        self._mismatches: set[tuple[str, str, tuple[tuple[str, str], ...]]] = set()
        self.mismatches = self.stored_db = 0

    # --- the database's life ----------------------------------------------------------------------

    def open(self) -> None:
        self.store.open().addCallbacks(self._opened, self._open_failed)

    def _opened(self, count: int) -> None:
        self.db_ready = True
        if count == UNCOUNTED:  # the shared state database, unreachable for now
            log.info("checksum database {path}: not reachable yet (see the state service)", path=self.store.path)
            return
        log.info("checksum database {path}: {count} checksums", path=self.store.path, count=count)

    def _open_failed(self, failure: Any) -> None:
        self.db_error = describe(failure)
        log.error("cannot open the checksum database {path}: {reason}", path=self.store.path, reason=self.db_error)

    def close(self) -> Deferred[None]:
        return ensureDeferred(self._close())

    async def _close(self) -> None:
        try:
            await self.store.close()
        except Exception as exc:
            log.warn("closing the checksum database: {reason}", reason=describe(exc))

    # --- the memory -------------------------------------------------------------------------------

    def remember(self, key: Key, values: dict[str, str]) -> None:
        old = self.memory.pop(key, None)
        merged = dict(old[1]) if old is not None else {}
        merged.update(values)
        self.memory[key] = (self.clock.seconds(), merged)
        while len(self.memory) > MEMORY_ENTRIES:
            self.memory.popitem(last=False)

    def forget(self, key: Key, *, only_if_empty: bool = False) -> None:
        """Drop what is remembered of replica `key` (`only_if_empty`: only an entry without a value),
        so that the next lookup reads the database again."""
        hit = self.memory.get(key)
        if not only_if_empty or hit is None or not hit[1]:
            self.memory.pop(key, None)

    def keys(self, path: str, replicas: list[Any]) -> list[tuple[Any, Key]]:
        """Each replica of `path` (best-ranked first) with its key, those of known size on an endpoint
        that maps `path`."""
        targets = self.fed.locator.targets(path)
        out = []
        for r in replicas:
            endpoint_path = targets.get(r.endpoint)
            if endpoint_path is not None and r.stat.size is not None:
                out.append((r, replica_key(r.endpoint, endpoint_path, r.stat)))
        return out

    def known(self, path: str, replicas: list[Any]) -> dict[str, str]:
        """Checksums known without asking anyone (synchronous); notes mismatches between replicas."""
        best: dict[str, str] = {}
        by_algorithm: dict[str, dict[str, str]] = {}
        for replica, key in self.keys(path, replicas):
            values = known_checksums(replica.stat)
            hit = self.memory.get(key)
            if hit is not None:
                values.update(hit[1])
            for algorithm, value in values.items():
                best.setdefault(algorithm, value)
                by_algorithm.setdefault(algorithm, {})[replica.endpoint] = value
        for algorithm, seen in by_algorithm.items():
            if len(set(seen.values())) > 1:
                self._mismatch(path, algorithm, seen)
        return best

    def _mismatch(self, path: str, algorithm: str, seen: dict[str, str]) -> None:
        token = (path, algorithm, tuple(sorted(seen.items())))
        if token in self._mismatches:
            return
        if len(self._mismatches) > MISMATCHES_KEPT:
            self._mismatches.clear()
        self._mismatches.add(token)
        self.mismatches += 1
        log.warn(
            "checksum mismatch for {path}: {algorithm} {values}",
            path=path,
            algorithm=algorithm,
            values=", ".join(f"{eid}={value}" for eid, value in sorted(seen.items())),
        )
        if self.emit is not None:
            self.emit(
                "checksum-mismatch",
                {
                    **file_fields(path),
                    "algorithm": algorithm,
                    "values": dict(sorted(seen.items())),
                    "endpoints": sorted(seen),
                },
            )

    # --- asking -----------------------------------------------------------------------------------

    async def lookup(self, path: str, replicas: list[Any]) -> None:
        """Ask the database (and Azure's Content-MD5) about replicas not looked up recently."""
        now = self.clock.seconds()
        todo: list[tuple[Any, Key]] = []
        for replica, key in self.keys(path, replicas):
            hit = self.memory.get(key)
            if hit is None or (not hit[1] and now - hit[0] > NEGATIVE_TTL):
                todo.append((replica, key))
        if not todo:
            return
        found: dict[Key, dict[str, str]] = {}
        if self.db_ready:
            try:
                d = self.store.get([key for _, key in todo])
                d.addTimeout(DB_TIMEOUT, self.clock)
                found = await d
            except Exception as exc:
                log.warn("checksum database lookup failed: {reason}", reason=describe(exc))
        for replica, key in todo:
            values = dict(found.get(key, {}))
            source = self.fed.endpoints.get(replica.endpoint)
            told = known_checksums(replica.stat)
            if IChecksumSource.providedBy(source) and "md5" not in values and "md5" not in told:
                try:
                    asked = IChecksumSource(source).reported_checksums(key[1])
                    asked.addTimeout(IChecksumSource(source).config.timeout, self.clock)
                    reported = await asked
                except Exception as exc:
                    log.warn("checksums of {endpoint}: {reason}", endpoint=replica.endpoint, reason=describe(exc))
                    reported = None
                for algorithm, value in parse_reported(reported or ()).items():
                    values.setdefault(algorithm, value)
            self.remember(key, values)

    async def keep(self, key: Key, values: dict[str, str]) -> None:
        """Store a computed value in the database (when it is open)."""
        if not self.db_ready:
            return
        try:
            d = self.store.put(key, values, self.clock.seconds())
            d.addTimeout(DB_TIMEOUT, self.clock)
            await d
            self.stored_db += 1
        except Exception as exc:
            log.warn("storing a checksum in the database failed: {reason}", reason=describe(exc))
