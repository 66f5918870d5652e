"""ELK-friendly access log: one JSON document per request, appended to a file.

Lines go to a buffered file and are flushed every second (and at stop): a request never waits for
the disk. The file is reopened when it disappears (logrotate's `create` mode).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import Logger

from fedd.periodic import Periodic
from fedd.twtypes import Service

log = Logger(namespace="fedd.access")


class AccessLog(Service):
    name = "access-log"

    def __init__(self, path: str, clock: Any) -> None:
        self.path = path
        self.clock = clock
        self._file: IO[str] | None = None
        self._loop: Periodic | None = None
        self.errors = 0

    def open(self) -> IO[str]:
        """The log file, opened (append) on first use; `OSError` when it cannot be."""
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8", buffering=1 << 16)
        return self._file

    def write(self, record: dict[str, Any]) -> None:
        try:
            self.open().write(json.dumps(record, separators=(",", ":"), default=str) + "\n")
        except OSError as exc:
            self.errors += 1
            if self.errors == 1:
                log.error("cannot write the access log {path}: {reason}", path=self.path, reason=exc)

    def flush(self) -> None:
        if self._file is None:
            return
        try:
            self._file.flush()
            if not os.path.exists(self.path):  # rotated away: start a new file
                self._file.close()
                self._file = None
        except OSError as exc:
            log.error("cannot flush the access log {path}: {reason}", path=self.path, reason=exc)

    def startService(self) -> None:
        super().startService()
        self.open()  # a path that cannot be written is found at start
        self._loop = Periodic(self.clock, self.flush, "access log flush").start(1.0, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None


def record(request: Any, now: float, started: float | None) -> dict[str, Any]:
    """The fields of one access-log line, for a twisted.web request."""
    addr = request.getClientAddress()
    return entry(
        now=now,
        started=started,
        client=getattr(addr, "host", None),
        who=getattr(request, "fedd_identity", None),
        method=request.method,
        path=request.path,
        status=request.code,
        sent=request.sentLength,
        endpoint=getattr(request, "fedd_endpoint", None),
        locate_ms=getattr(request, "fedd_locate_ms", None),
        agent=request.getHeader(b"user-agent") or b"",
    )


def entry(
    *,
    now: float,
    started: float | None,
    client: str | None,
    who: Any,
    method: bytes,
    path: bytes,
    status: int,
    sent: int,
    endpoint: str | None,
    locate_ms: float | None,
    agent: bytes,
) -> dict[str, Any]:
    """The fields of one access-log line (also for the lean front's answers, fedd.web.lean)."""
    return {
        "time": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
        "client": client,
        "dn": (who.subject or None) if who is not None else None,
        "method": method.decode("latin-1"),
        "path": path.decode("utf-8", "replace"),
        "status": status,
        "bytes": sent,
        "endpoint": endpoint,
        "locate_ms": locate_ms,
        "duration_ms": round((now - started) * 1000.0, 3) if started is not None else None,
        "user_agent": agent.decode("latin-1"),
    }
