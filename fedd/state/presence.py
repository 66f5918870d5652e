"""Which workers of a host are running, so that the host's row in `hosts` goes with the last of them.

The workers of `[server] workers` share one heartbeat row (its key is the host's name, and every
worker carries the supervisor's instance id). A worker that stops while others keep serving (one
restarted, or done draining before the others) leaves the row; the last one removes it. So a host
that keeps serving never drops out of the hosts list (status, /metrics), and one that stops cleanly
leaves it at once, as a single fedd does, rather than HOSTS_SEEN_FOR heartbeats later.

Each running worker holds a shared `flock` on `<run dir>/hosts-row.lock` (the kernel drops it if the
worker dies). A stopping worker, holding an exclusive `flock` on `<run dir>/hosts-row.turn`, drops its
shared lock and asks for an exclusive one without waiting: it gets it only when no other worker
holds its own. The turn makes two workers that stop together (a drain) decide one after the other:
without it each could fail while the other still held its lock, and neither would remove the row.
Every lock here is held for a few system calls: the short waits for them are not a blocked reactor.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from twisted.logger import Logger

log = Logger(namespace="fedd.state")
LOCK_FILE = "hosts-row.lock"
TURN_FILE = "hosts-row.turn"


class HostPresence:
    def __init__(self, run_dir: Path) -> None:
        self.lock_path = run_dir / LOCK_FILE
        self.turn_path = run_dir / TURN_FILE
        self._fd: int | None = None

    def enter(self) -> None:
        """Count this worker as running (until `leave`, or its death)."""
        if self._fd is not None:
            return
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            log.warn("cannot count this worker in {path}: {reason}", path=str(self.lock_path), reason=exc)
            return
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits only for a stopping worker's few system calls
        self._fd = fd

    def leave(self) -> bool:
        """Stop counting this worker; True when no other worker of the host is running. False
        when this one was not counted (`enter` failed): the row then ages out."""
        fd, self._fd = self._fd, None
        if fd is None:
            return False
        try:
            turn = os.open(self.turn_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            os.close(fd)
            log.warn("cannot tell whether other workers run ({reason}): the host's row ages out", reason=exc)
            return False
        try:
            fcntl.flock(turn, fcntl.LOCK_EX)
            fcntl.flock(fd, fcntl.LOCK_UN)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True
        finally:
            os.close(fd)
            os.close(turn)
