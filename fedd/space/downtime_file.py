"""`[health] downtime_file`: the run-time downtimes of a host without `[state] database` (JSON),
kept for fedd.space.downtime.DowntimeBook.

Every fedd process of the host re-reads the file when its modification time moves. A change re-reads
it and writes it whole under an `flock` of `<downtime_file>.lock` (`locked`), so two processes
changing it together lose nothing; it is written to a temporary file and renamed over, so a reader
never sees half of it. With `marks` (a worker of `[server] workers`), the file's st_mtime_ns that a
worker read or wrote last is its mark FILE_MARK (fedd.workers.applied), and the worker that changed
it waits until every other worker read at least that version (`applied`).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from fedd.config import Downtime
from fedd.workers.applied import AppliedMarks

log = Logger(namespace="fedd.downtime")
FILE_MARK = "downtime-file"  # fedd.workers.applied: the st_mtime_ns of the downtime file a worker read last
Row = tuple[str, str, Downtime]  # id, endpoint, downtime (as fedd.state.tables.SharedDowntimes gives them)


class DowntimeFile:
    def __init__(self, path: str, marks: AppliedMarks | None = None) -> None:
        self.path = path
        self.marks = marks
        self.mtime: float | None = None  # st_mtime of the file as last read or written here
        self.written = 0  # st_mtime_ns of this process's last write of the file

    def changed(self) -> bool:
        """The file is not the one last read or written here (another process wrote or removed it)."""
        try:
            mtime = os.stat(self.path).st_mtime
        except OSError:
            mtime = None
        return mtime != self.mtime

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold `<downtime_file>.lock` around a read-modify-write of the file. Its holders keep it for
        one read and one write of a small local file (as this process writes it on the reactor
        thread anyway), so waiting for it costs the reactor a few milliseconds at most."""
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def read(self) -> list[Row] | None:
        """The downtimes in the file ([] without a file); None when it cannot be read (logged: the
        caller keeps its previous list)."""
        try:
            st = os.stat(self.path)
            self.mtime = st.st_mtime
            with open(self.path, encoding="utf-8") as fh:
                raw = json.load(fh)
            rows = [
                (
                    str(item["id"]),
                    str(item["endpoint"]),
                    Downtime(float(item["start"]), float(item["end"]), str(item["scope"]), str(item["reason"])),
                )
                for item in raw
            ]
        except FileNotFoundError:
            self.mtime = None
            return []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warn(
                "cannot read downtime file {path}: {reason} (keeping the previous list)", path=self.path, reason=exc
            )
            return None
        if self.marks is not None:
            self.marks.mark(FILE_MARK, st.st_mtime_ns)
        return rows

    def write(self, rows: list[Row]) -> None:
        tmp = f"{self.path}.tmp.{os.getpid()}"
        data = [{"id": i, "endpoint": endpoint, **downtime.to_json()} for i, endpoint, downtime in rows]
        # small file, written rarely, by an admin action: a direct write is fine here
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1)
        os.replace(tmp, self.path)
        st = os.stat(self.path)
        self.mtime, self.written = st.st_mtime, st.st_mtime_ns
        if self.marks is not None:
            self.marks.mark(FILE_MARK, st.st_mtime_ns)

    def applied(self, timeout: float) -> Deferred[list[int]] | None:
        """With marks, after a write here: fires with the workers that have not read it after `timeout`
        seconds ([] once all did). None when there is nothing to wait for."""
        if self.marks is None or not self.written:
            return None
        return self.marks.wait(FILE_MARK, self.written, timeout)
