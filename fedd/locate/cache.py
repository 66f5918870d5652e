"""Locate answers and the in-process LRU that holds them (in front of memcached)."""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from fedd.endpoints.base import Stat


@dataclass
class LocateResult:
    """What the endpoints said about one federation path.

    `found` holds stats (files and collections), `missing` the endpoints that said "no such name",
    `failed` the endpoints that did not answer usefully, `pending` those still being asked.
    """

    path: str
    found: dict[str, Stat] = field(default_factory=dict)
    missing: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)
    at: float = 0.0
    source: str = "endpoints"

    @property
    def complete(self) -> bool:
        return not self.pending

    def files(self) -> dict[str, Stat]:
        return {eid: st for eid, st in self.found.items() if not st.is_dir}

    def snapshot(self) -> LocateResult:
        return LocateResult(
            self.path, dict(self.found), set(self.missing), dict(self.failed), set(self.pending), self.at, self.source
        )

    def to_bytes(self) -> bytes:
        return json.dumps(
            {"f": {k: v.to_json() for k, v in self.found.items()}, "m": sorted(self.missing), "t": self.at},
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, path: str, data: bytes, endpoints: set[str]) -> LocateResult | None:
        """Decode a shared-cache entry; endpoints no longer configured are dropped. None if unusable."""
        try:
            raw: Any = json.loads(data)
            found = {k: Stat.from_json(v) for k, v in raw["f"].items() if k in endpoints}
            missing = {m for m in raw["m"] if m in endpoints}
            at = float(raw["t"])
        except (ValueError, KeyError, TypeError):
            return None
        result = cls(path, found, missing, at=at, source="memcached")
        if set(found) | missing != endpoints:
            result.pending = endpoints - set(found) - missing
        return result


def cache_key(path: str) -> bytes:
    return b"fedd1:loc:" + hashlib.sha1(path.encode()).hexdigest().encode()


class LocalCache:
    """A bounded LRU of locate answers, each with its own expiry. `generation` grows whenever an
    answer is dropped before its expiry, so caches derived from these answers (the web front's
    redirect plans) know to drop theirs."""

    def __init__(self, entries: int) -> None:
        self._entries = entries
        self._data: OrderedDict[str, tuple[float, LocateResult]] = OrderedDict()
        self.hits = self.misses = 0
        self.generation = 0

    def get(self, path: str, now: float) -> LocateResult | None:
        hit = self._data.get(path)
        if hit is None:
            self.misses += 1
            return None
        if hit[0] <= now:
            del self._data[path]
            self.misses += 1
            return None
        self._data.move_to_end(path)
        self.hits += 1
        return hit[1]

    def put(self, path: str, result: LocateResult, expires: float) -> None:
        self._data[path] = (expires, result)
        self._data.move_to_end(path)
        while len(self._data) > self._entries:
            self._data.popitem(last=False)

    def drop(self, *paths: str) -> None:
        for path in paths:
            self._data.pop(path, None)
        self.generation += 1

    def clear(self) -> None:
        self._data.clear()
        self.generation += 1

    def drop_negative(self) -> int:
        """Forget every answer that found no file (after the endpoints changed); returns how many."""
        gone = [path for path, (_, result) in self._data.items() if not result.files()]
        for path in gone:
            del self._data[path]
        self.generation += 1
        return len(gone)

    def __len__(self) -> int:
        return len(self._data)
