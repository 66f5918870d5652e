"""The spool file written by every worker of a host: one batch at a time, rotated once.

With `[server] workers` every worker appends its batches to the same `[events] spool` (a consumer
such as Filebeat follows one file). Each batch is one `write` under an exclusive `flock` on the lock
file beside it, `<spool>.lock`, held around the size check, the rotation to `<spool>.1`, the write
and the fsync: two workers never both rotate (the second would replace the first one's `.1`, losing
it) and never interleave inside a batch. Not the spool itself: a rotation renames it, and a lock on
the renamed file would not exclude a writer that opens the new one.

Blocking (flock, write, fsync): called in the spool's own thread (fedd.events.sinks.SpoolSink).
"""

from __future__ import annotations

import fcntl
import os

LOCK_SUFFIX = ".lock"
ROTATED_SUFFIX = ".1"
_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
_APPEND_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC


def append_batch(path: str, max_bytes: int, bodies: list[bytes]) -> None:
    """Append one line per body to the spool at `path` and fsync it, rotating it to `<path>.1` first
    when it is larger than `max_bytes`; raises OSError (the caller's publish fails, events stay)."""
    data = b"".join(body + b"\n" for body in bodies)
    # opened for each batch: a lock file removed by hand is created again, never locked by one
    # worker under its old inode while another locks the new one
    lock = os.open(path + LOCK_SUFFIX, _LOCK_FLAGS, 0o666)  # the umask decides, as for any file fedd creates
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released by the close below
        try:
            if os.stat(path).st_size > max_bytes:
                os.replace(path, path + ROTATED_SUFFIX)
        except FileNotFoundError:
            pass
        fd = os.open(path, _APPEND_FLAGS, 0o666)
        try:
            view = memoryview(data)
            while view:  # a short write (a signal, a full disk's last bytes) continues where it stopped
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        os.close(lock)
