"""One computation of a checksum per host with `[server] workers`: the worker that starts computing
a replica's checksum claims it with a file in the run directory (`checksum-claims/<sha1>.claim`,
created exclusively, holding its pid); another worker asked for the same replica meanwhile does not
compute it again: it answers 202 (or, asked to wait, looks in the shared `[checksums] database`
every 0.25 s) until the value is there. The claim is removed once the value is stored; a claim
whose worker died is taken over."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

Key = tuple[str, str, int, str]


class JobClaims:
    def __init__(self, directory: Path, pid: int | None = None) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.pid = os.getpid() if pid is None else pid  # (tests: two "workers" in one process)

    def _path(self, key: Key) -> Path:
        return self.directory / (hashlib.sha1(repr(key).encode()).hexdigest() + ".claim")

    def claim(self, key: Key) -> bool:
        """True: this worker computes `key` (claimed now); False: a live worker does."""
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{self.pid}")
        tmp.write_text(str(self.pid))
        try:
            for _ in range(2):
                try:
                    os.link(tmp, path)  # created with its content at once, or not at all
                except FileExistsError:
                    if self.held_elsewhere(key):
                        return False
                    path.unlink(missing_ok=True)  # its worker died: taken over
                    continue
                return True
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def held_elsewhere(self, key: Key) -> bool:
        """Another live worker computes `key` now."""
        try:
            pid = int(self._path(key).read_text() or "0")
        except (OSError, ValueError):
            return False
        if pid in (0, self.pid):
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def release(self, key: Key) -> None:
        path = self._path(key)
        try:
            if int(path.read_text() or "0") == self.pid:
                path.unlink(missing_ok=True)
        except (OSError, ValueError):
            pass
