"""Uploads waiting to be confirmed, and the rules that decide their outcome. Pure: times are given.

Rules, in order:
1. An upload is confirmed when its object is seen with the announced size (any size when none was
   announced). When it replaced an existing file (`overwrite`), only an object modified at or after
   the redirect counts (less `SKEW`: clocks of fedd and the storage differ a little).
2. A notification from the storage (RGW) is final: the wrong size fails the upload at once. A look
   (stat) is not: a storage may show a file still being written, so the wrong size is only noted
   and fails the upload at the deadline, as does no object at all.
3. Looks back off: `poll_initial`, then times `poll_factor`, never more than `poll_max` apart, and
   the last look is at the deadline. On an endpoint that sends notifications looking starts late
   (`poll_max`), as a fallback for a lost notification.
4. The table is bounded (`max_pending`): a new upload over the bound is not taken (the caller counts
   it). A second PUT of the same name replaces the first one's entry (the older one is returned).
   It keeps its uploads in the order of their redirects, so the oldest are found without a search.
5. An upload's outcome event has an id of its own (`outcome_id`: from its endpoint, endpoint path
   and the redirect's time, all kept in the pending file): an outcome published again after a
   restart (decided just before a crash, its row not deleted yet) carries the same id.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import chain, islice
from typing import Any

SKEW = 2.0  # seconds an object's mtime may be before the redirect and still count

Key = tuple[str, str]  # (endpoint id, endpoint path)


@dataclass(slots=True)
class Upload:
    path: str  # federation path
    endpoint: str
    endpoint_path: str
    size: int | None  # announced; None: not announced
    started: float  # when fedd answered the PUT
    overwrite: bool = False
    notified: bool = False  # the endpoint sends notifications
    looks: int = 0
    due: float = 0.0
    seen_size: int | None = None  # the last size a look found that was not the announced one
    last_error: str = ""

    @property
    def key(self) -> Key:
        return (self.endpoint, self.endpoint_path)

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "path": self.path,
            "endpoint": self.endpoint,
            "bytes": self.size,
            "age": round(now - self.started, 3),
            "looks": self.looks,
            "seen_size": self.seen_size,
            "error": self.last_error or None,
        }


def outcome_id(upload: Upload) -> str:
    """The id of `upload`'s put-done or put-failed event: 32 hex digits, like fedd.events.model's
    EventIds, the same in every process and run that publishes it (the redirect's time as its exact
    float: the pending file keeps it as a REAL, bit for bit)."""
    text = f"{upload.endpoint}\n{upload.endpoint_path}\n{upload.started!r}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Timing:
    deadline: float
    poll_initial: float
    poll_factor: float
    poll_max: float

    def first_look(self, upload: Upload) -> float:
        wait = self.poll_max if upload.notified else self.poll_initial
        return min(upload.started + wait, upload.started + self.deadline)

    def next_look(self, upload: Upload, now: float) -> float:
        wait = min(self.poll_max, self.poll_initial * self.poll_factor ** max(upload.looks, 0))
        return min(now + wait, upload.started + self.deadline)

    def expired(self, upload: Upload, now: float) -> bool:
        return now >= upload.started + self.deadline


@dataclass(frozen=True)
class Verdict:
    outcome: str  # "landed", "wait", "failed"
    reason: str = ""
    size: int | None = None


WAIT = Verdict("wait")


def judge_look(
    upload: Upload, size: int | None, mtime: float | None, exists: bool, now: float, timing: Timing
) -> Verdict:
    """What one look at the target (`exists`, its size and mtime) means for `upload` at `now`."""
    if exists and _fresh(upload, mtime):
        if upload.size is None or size == upload.size:
            return Verdict("landed", size=size)
        upload.seen_size = size
    if not timing.expired(upload, now):
        return WAIT
    waited = f"{timing.deadline:g}s"
    if upload.seen_size is not None:
        return Verdict("failed", f"size mismatch: announced {upload.size}, found {upload.seen_size} after {waited}")
    if exists and not _fresh(upload, mtime):
        return Verdict("failed", f"deadline passed: the file was not replaced within {waited}")
    return Verdict("failed", f"deadline passed: no object after {waited}")


def judge_notification(upload: Upload, size: int | None, event_time: float | None) -> Verdict:
    """What a storage's notification of the object (created, with `size`) means for `upload`."""
    if event_time is not None and event_time < upload.started - SKEW:
        return WAIT  # an older write's notification, late
    if upload.size is not None and size is not None and size != upload.size:
        return Verdict("failed", f"size mismatch: announced {upload.size}, stored {size}")
    return Verdict("landed", size=size if size is not None else upload.size)


def _fresh(upload: Upload, mtime: float | None) -> bool:
    return not upload.overwrite or mtime is None or mtime >= upload.started - SKEW


@dataclass
class Table:
    """Pending uploads by (endpoint, endpoint path), with a heap of when each is looked at next.

    Kept in the order of their redirects (`oldest` reads the first few, a status read or a stop
    with 100k pending sorted them all): those taken since start in the order taken, their
    redirects' order (a second PUT of a name deletes the first one's entry before adding its own:
    assigned in place it would keep the first one's position), and those taken over from the
    previous run (`earlier`: handed over in the order of their redirects, during this run's own)
    apart, merged when read. OrderedDicts: a plain dict's iteration steps over the holes its
    deletions (mostly of the oldest) leave at its front. A wall clock stepped back only shows
    uploads in the order taken."""

    limit: int
    _by_key: OrderedDict[Key, Upload] = field(default_factory=OrderedDict)  # taken since start
    _earlier: OrderedDict[Key, Upload] = field(default_factory=OrderedDict)  # the previous run's
    _heap: list[tuple[float, int, Key]] = field(default_factory=list)
    _seq: int = 0

    def __len__(self) -> int:
        return len(self._by_key) + len(self._earlier)

    def __contains__(self, key: Key) -> bool:
        return key in self._by_key or key in self._earlier

    def add(self, upload: Upload, due: float, *, earlier: bool = False) -> tuple[bool, Upload | None]:
        """(taken, the entry it replaced); not taken when the table is full. `earlier`: taken over
        from the previous run (in the order of their redirects)."""
        old = self.pop(upload.key)  # before the new entry goes in: it goes last
        if old is None and len(self) >= self.limit:
            return False, None
        (self._earlier if earlier else self._by_key)[upload.key] = upload
        self.schedule(upload, due)
        return True, old

    def schedule(self, upload: Upload, due: float) -> None:
        upload.due = due
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, upload.key))
        if len(self._heap) > 4 * len(self) + 64:  # stale heap entries (replaced, resolved)
            pending = chain(self._earlier.items(), self._by_key.items())
            live = [(u.due, k) for k, u in pending if u.due != float("inf")]
            self._heap = [(due, i, k) for i, (due, k) in enumerate(live)]
            self._seq = len(live)
            heapq.heapify(self._heap)

    def get(self, key: Key) -> Upload | None:
        upload = self._by_key.get(key)
        if upload is None and self._earlier:
            upload = self._earlier.get(key)
        return upload

    def pop(self, key: Key) -> Upload | None:
        upload = self._by_key.pop(key, None)
        if upload is None and self._earlier:
            upload = self._earlier.pop(key, None)
        return upload

    def due(self, now: float, limit: int) -> list[Upload]:
        """Up to `limit` uploads whose look is due (taken off the heap: `schedule` puts them back)."""
        out: list[Upload] = []
        while self._heap and len(out) < limit and self._heap[0][0] <= now:
            due, _, key = heapq.heappop(self._heap)
            upload = self.get(key)
            if upload is not None and upload.due == due:
                out.append(upload)
                upload.due = float("inf")  # being looked at: not due again until rescheduled
        return out

    def next_due(self) -> float | None:
        while self._heap:
            due, _, key = self._heap[0]
            upload = self.get(key)
            if upload is not None and upload.due == due:
                return due
            heapq.heappop(self._heap)
        return None

    def oldest(self, n: int) -> list[Upload]:
        """The `n` uploads pending longest, oldest first (reads n of each part)."""
        merged = heapq.merge(self._earlier.values(), self._by_key.values(), key=_started)
        return list(islice(merged, n))

    def uploads(self) -> list[Upload]:
        return self.oldest(len(self))


def _started(upload: Upload) -> float:
    return upload.started
