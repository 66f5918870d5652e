"""The journal: an event is on disk before the answer that caused it is sent.

`append` writes each event as one line to the current segment file with a single `os.write`. Once
write() returned, the bytes are in the kernel's page cache: they survive the process being killed
(SIGKILL, the OOM killer, a crash). They are not fsync'ed: a power loss can lose the last seconds
(docs/events.md). Every `flush_interval` the service rotates to a new segment, stores the old
segment's events in the outbox (or the spool), and only then removes the segment. At start, the
segments a killed process left behind are replayed before anything else; events stored just before
the kill are stored again under the same id (at least once, never lost).

A segment is locked (`flock`) for as long as its writer holds it, so a second fedd process sharing
the outbox never takes a segment that is still being written: only dead processes' segments are
leftovers.

A line is `<id> TAB <routing key> TAB <envelope> LF`; the envelope is JSON without raw newlines.
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass
from typing import Any

from fedd.events.model import Event

SUFFIX = ".journal."
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC


@dataclass(frozen=True)
class Segment:
    path: str
    fd: int  # open and flock'ed by this process until removed


def encode(event: Event) -> bytes:
    event_id, key, body = event
    return b"%s\t%s\t%s\n" % (event_id.encode(), key.encode(), body)


def decode(data: bytes) -> tuple[list[Event], int]:
    """The events of a segment, and how many lines were unreadable (a write cut short by a full disk)."""
    events: list[Event] = []
    bad = 0
    lines = data.split(b"\n")
    if lines[-1]:  # no newline at the end: a torn last write
        bad += 1
    for line in lines[:-1]:
        parts = line.split(b"\t", 2)
        if len(parts) != 3 or not parts[0] or not parts[2].startswith(b"{") or not parts[2].endswith(b"}"):
            bad += 1
            continue
        events.append((parts[0].decode("ascii", "replace"), parts[1].decode("utf-8", "replace"), parts[2]))
    return events, bad


def read_segments(paths: list[str]) -> tuple[list[Event], int]:
    """Blocking: call it from a worker thread."""
    events: list[Event] = []
    bad = 0
    for path in paths:
        with open(path, "rb") as f:
            got, torn = decode(f.read())
        events += got
        bad += torn
    return events, bad


class Journal:
    """Segments `<base>.journal.<microseconds>-<pid>`, named in the order they were opened."""

    def __init__(self, base: str, clock: Any) -> None:
        self.base = base
        self.clock = clock
        self._fd: int | None = None
        self._path = ""
        self._last = 0

    def append(self, event: Event) -> None:
        """One write() of one line; raises OSError (a full disk) for the caller to count."""
        fd = self._fd if self._fd is not None else self._open()
        line = encode(event)
        if os.write(fd, line) != len(line):
            raise OSError(errno.ENOSPC, "short write to the event journal")

    def _open(self) -> int:
        while True:
            self._last = max(int(self.clock.seconds() * 1_000_000), self._last + 1)
            path = f"{self.base}{SUFFIX}{self._last:016d}-{os.getpid()}"
            try:
                fd = os.open(path, _FLAGS, 0o600)
            except FileExistsError:
                continue
            if _lock(fd) and os.fstat(fd).st_nlink:  # not taken (and removed) by a replaying process meanwhile
                self._fd, self._path = fd, path
                return fd
            os.close(fd)

    def rotate(self) -> Segment | None:
        """Close the current segment for appends (it stays locked); the next append opens a new one."""
        if self._fd is None:
            return None
        segment = Segment(self._path, self._fd)
        self._fd, self._path = None, ""
        return segment

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
            if path == self._path:
                continue
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
        """The segment's events are stored: delete it (before unlocking it, so nobody replays it)."""
        try:
            os.unlink(segment.path)
        finally:
            os.close(segment.fd)

    @staticmethod
    def release(segment: Segment) -> None:
        """Keep the file for the next start, unlock it."""
        os.close(segment.fd)

    def close(self) -> None:
        segment = self.rotate()
        if segment is not None:
            os.close(segment.fd)  # anything still in it is replayed at the next start


def _lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
