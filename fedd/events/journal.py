"""The journal: an event is on disk before the answer that caused it is sent.

`append` copies each event as one line into the current segment, a file mapped shared into memory.
Once copied, the bytes are in the kernel's page cache: they survive the process being killed
(SIGKILL, the OOM killer, a crash). They are not fsync'ed: a power loss can lose the last seconds
(docs/events.md). Every `flush_interval` the service takes a `mark` (how far the journal is
written), stores the events up to it in the outbox (or the spool), and then records the mark as
stored: in the segment's header, or by deleting a segment stored to its end. At start, what the
segments of a dead process hold past their header is replayed before anything else; events stored
just before the kill are stored again under the same id (at least once, never lost).

A segment stored to its end is kept as the spare (its header saying so: a replay finds nothing in
it) and becomes the next segment: zeroed where it was written, renamed, and written again. A new
segment costs ~4 ms of CPU (allocating, mapping and faulting in 4 MiB), a spare's reuse ~0.2 ms;
at 10,000 events a segment that was a third of a microsecond per event, on one unlucky request.

A segment is locked (`flock`) for as long as its writer holds it, so a second fedd process sharing
the outbox never takes a segment that is still being written: only dead processes' segments are
leftovers.

Layout: 8 bytes, the offset up to which the events are stored (little-endian; 0 = none), then one
record per event: its length and CRC-32 (4 bytes each) and either the event's JSON envelope, what
the sink is sent (`append_record`: the web front's get-redirect events, rendered from a template
encoded once per redirect plan, fedd.events.model.render), or the `marshal` of (id, event type,
payload, time) (`append`), then zeros up to the segment's size. A JSON record starts with `{`, a
marshalled tuple never does.
"""

from __future__ import annotations

import errno
import fcntl
import json
import marshal
import mmap
import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from fedd.events.model import Journaled, Raw

SUFFIX = ".journal."
SEGMENT_BYTES = 4 << 20  # about 10,000 events: opening a segment costs a few ms, once per this many
HEADER = struct.Struct("<Q")
LENGTH = struct.Struct("<II")  # a record's length and CRC-32: a copy cut off by the kill is told apart
MARSHAL_VERSION = 4
RETRY_SECONDS = 1.0
_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


@dataclass(eq=False)
class Segment:
    path: str
    fd: int  # open and flock'ed by this process until removed or released
    map: mmap.mmap | None = field(default=None, repr=False)
    full: int = 0  # once another segment took over: where this one's lines end
    stored_to: int = 0  # the events up to here are stored


Mark = list[tuple[Segment, int]]  # each segment written since the previous mark, and how far


def encode(raw: Raw) -> bytes:
    """A record; ValueError for a payload neither marshal nor JSON can carry."""
    try:
        data = marshal.dumps(raw, MARSHAL_VERSION)
    except ValueError:  # a type marshal does not know (JSON writes it with str()): store what JSON will say
        event_id, event_type, payload, at = raw
        plain = json.loads(json.dumps(payload, default=str))
        data = marshal.dumps((event_id, event_type, plain, at), MARSHAL_VERSION)
    return LENGTH.pack(len(data), zlib.crc32(data)) + data


def decode(data: bytes) -> tuple[list[Raw | Journaled], int]:
    """The events of a segment's unstored part, and how many records were unreadable (a torn last one)."""
    events: list[Raw | Journaled] = []
    bad = 0
    pos = 0
    while pos + LENGTH.size <= len(data):
        n, crc = LENGTH.unpack_from(data, pos)
        if n == 0:  # the unwritten rest
            break
        record = data[pos + LENGTH.size : pos + LENGTH.size + n]
        pos += LENGTH.size + n
        try:
            if zlib.crc32(record) != crc:
                raise ValueError("torn record")
            if record[:1] == b"{":  # an envelope already: stored as it is (same id, same bytes)
                doc = json.loads(record)
                event_id, event_type = doc["id"], doc["event_type"]
                if isinstance(event_id, str) and isinstance(event_type, str):
                    events.append((event_id, event_type, record))
                else:
                    bad += 1
                continue
            raw = marshal.loads(record)
            event_id, event_type, payload, at = raw
            ok = isinstance(event_id, str) and isinstance(event_type, str) and isinstance(payload, dict)
        except (ValueError, EOFError, TypeError, KeyError):  # cut off by the kill
            ok = False
        if ok and isinstance(at, int | float):
            events.append((event_id, event_type, payload, float(at)))
        else:
            bad += 1
    return events, bad


def read_segments(paths: list[str]) -> tuple[list[Raw | Journaled], int]:
    """The unstored events of segment files. Blocking: call it from a worker thread."""
    events: list[Raw | Journaled] = []
    bad = 0
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        if len(data) < HEADER.size:
            continue
        stored = HEADER.unpack_from(data)[0] or HEADER.size
        got, torn = decode(data[stored:])
        events += got
        bad += torn
    return events, bad


class Journal:
    """Segments `<base>.journal.<microseconds>-<pid>`, named in the order they were opened.

    A segment is a file of SEGMENT_BYTES, allocated at creation (`posix_fallocate`: a full disk is
    an OSError then, never a SIGBUS later) and mapped into memory: an append is a copy into the page
    cache, no system call and no page fault (every page is dirtied when the segment opens). That
    matters on the hot path: a write() would release the GIL, and getting it back from the outbox's
    busy SQLite thread costs far more than the write.
    """

    def __init__(self, base: str, clock: Any) -> None:
        self.base = base
        self.clock = clock
        self._current: Segment | None = None
        self._pos = 0
        self._marked = 0  # how far the current segment was handed out by mark()
        self._full: list[Segment] = []  # taken over since the last mark
        self._last = 0
        self._failed_at: float | None = None  # a segment could not be opened (a full disk): retry a second later
        self._map: mmap.mmap | None = None  # the current segment's, and its size (0: none)
        self._room = 0
        self._spare: Segment | None = None  # stored to its end, still mapped: the next segment

    def append(self, raw: Raw) -> None:
        """Copy one record into the mapped segment; raises OSError (a full disk) for the caller to count,
        ValueError for a payload that cannot be stored."""
        self._write(encode(raw))

    def append_record(self, body: bytes) -> None:
        """Copy one event's JSON envelope into the mapped segment; raises OSError (a full disk)."""
        line = LENGTH.pack(len(body), zlib.crc32(body)) + body
        end = self._pos + len(line)
        if end <= self._room:  # the current segment has room: a copy (once per redirect)
            self._map[self._pos : end] = line  # type: ignore[index]  # _room is 0 without a map
            self._pos = end
        else:
            self._write(line)

    def _write(self, line: bytes) -> None:
        current = self._current
        end = self._pos + len(line)
        if current is None or current.map is None or end > len(current.map):
            current = self._next(len(line))
            end = HEADER.size + len(line)
        assert current.map is not None
        current.map[self._pos : end] = line
        self._pos = end

    def _next(self, need: int) -> Segment:
        now = self.clock.seconds()
        if self._failed_at is not None and now - self._failed_at < RETRY_SECONDS:
            raise OSError(errno.ENOSPC, "no journal segment (opening one failed less than a second ago)")
        try:
            segment = self._open(need)
        except OSError:
            self._failed_at = now
            raise
        self._failed_at = None
        return segment

    def _name(self) -> str:
        """A new segment's name: later than every earlier one of this process (replay order)."""
        self._last = max(int(self.clock.seconds() * 1_000_000), self._last + 1)
        return f"{self.base}{SUFFIX}{self._last:016d}-{os.getpid()}"

    def _open(self, need: int) -> Segment:
        spare, self._spare = self._spare, None
        segment = None
        if spare is not None:
            if HEADER.size + need <= SEGMENT_BYTES:
                segment = self._reuse(spare)
            else:
                Journal.remove(spare)
        if segment is None:
            segment = self._create(max(SEGMENT_BYTES, HEADER.size + need))
        old = self._current
        if old is not None:
            old.full = self._pos
            if self._pos > self._marked:
                self._full.append(old)  # its last lines go with the next mark
            elif old.stored_to >= old.full:
                self._retire(old)
            # else: everything in it was handed out, and it goes when that mark is stored
        self._current, self._pos, self._marked = segment, HEADER.size, HEADER.size
        assert segment.map is not None
        self._map, self._room = segment.map, len(segment.map)
        return segment

    def _create(self, size: int) -> Segment:
        while True:
            path = self._name()
            try:
                fd = os.open(path, _FLAGS, 0o600)
            except FileExistsError:
                continue
            if _lock(fd) and os.fstat(fd).st_nlink:  # not taken (and removed) by a replaying process meanwhile
                break
            os.close(fd)
        segment = Segment(path, fd)
        try:
            os.posix_fallocate(fd, 0, size)
            segment.map = mmap.mmap(fd, size)
            # dirty every page now, in one go: a page fault every few requests (ext4's page_mkwrite)
            # cost ~7% of the redirect throughput, measured
            segment.map[:] = bytes(size)
        except OSError:
            Journal.remove(segment)
            raise
        return segment

    def _retire(self, segment: Segment) -> None:
        """A segment stored to its end: the spare (if there is none and it has the usual size), or deleted."""
        if self._spare is not None or segment.map is None or len(segment.map) != SEGMENT_BYTES:
            Journal.remove(segment)
            return
        HEADER.pack_into(segment.map, 0, segment.full)  # a replay after a kill finds nothing past it
        self._spare = segment

    def _reuse(self, spare: Segment) -> Segment | None:
        """The spare as a new segment: its records zeroed, then its header (a kill in between leaves
        a segment with nothing to replay), then a new name; None if the file system refuses."""
        assert spare.map is not None
        spare.map[HEADER.size : spare.full] = bytes(spare.full - HEADER.size)
        HEADER.pack_into(spare.map, 0, 0)
        try:
            while True:
                path = self._name()
                try:
                    os.link(spare.path, path)  # not rename: that would replace a file of that name
                except FileExistsError:
                    continue
                break
            os.unlink(spare.path)
        except OSError:
            Journal.remove(spare)
            return None
        segment = Segment(path, spare.fd, spare.map)
        spare.fd, spare.map, spare.full = -1, None, 0  # a stale reference does nothing (stored(), release())
        return segment

    def mark(self) -> Mark:
        """How far the journal is written, segment by segment, since the previous mark."""
        mark: Mark = [(segment, segment.full) for segment in self._full]
        self._full = []
        if self._current is not None and self._pos > self._marked:
            mark.append((self._current, self._pos))
            self._marked = self._pos
        return mark

    def stored(self, mark: Mark) -> None:
        """The events up to `mark` are in the outbox: record it, and delete segments stored to their end."""
        for segment, end in mark:
            segment.stored_to = max(segment.stored_to, end)
            if segment.full and end >= segment.full:
                self._retire(segment)
            elif segment.map is not None:
                HEADER.pack_into(segment.map, 0, end)

    def leftovers(self) -> list[Segment]:
        """Segments of processes that are gone, oldest first, locked for this process."""
        directory, prefix = os.path.split(self.base + SUFFIX)
        found: list[Segment] = []
        try:
            names = sorted(n for n in os.listdir(directory or ".") if n.startswith(prefix))
        except FileNotFoundError:
            return found
        for name in names:
            path = os.path.join(directory, name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            if _lock(fd) and os.fstat(fd).st_nlink:  # a segment still written (ours included) stays locked
                found.append(Segment(path, fd))
            else:
                os.close(fd)
        return found

    @staticmethod
    def remove(segment: Segment) -> None:
        """Delete a segment (before unlocking it, so nobody replays it)."""
        if segment.fd < 0:  # released already, or reused under another name
            return
        try:
            os.unlink(segment.path)
        finally:
            Journal.release(segment)

    @staticmethod
    def release(segment: Segment) -> None:
        """Unmap and unlock; the file stays for the next start."""
        if segment.map is not None:
            segment.map.close()  # the pages stay in the page cache: the file holds them
            segment.map = None
        if segment.fd >= 0:  # -1: reused as another segment (Journal._reuse)
            os.close(segment.fd)
            segment.fd = -1

    def close(self, everything_stored: bool) -> None:
        """Let go of the segments: deleted when `everything_stored`, else left for the next start."""
        segments = [*self._full, *([self._current] if self._current is not None else [])]
        self._full, self._current = [], None
        self._map, self._room = None, 0
        if self._spare is not None:  # stored to its end: nothing in it to keep
            Journal.remove(self._spare)
            self._spare = None
        for segment in segments:
            if everything_stored:
                Journal.remove(segment)
            else:
                Journal.release(segment)


def _lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
