"""How far each worker of the host has applied a change (fedd.workers): small marks in the run
directory, so that the worker (or the supervisor) that made a change can answer once every worker
applies it.

A worker writes `applied-<name>-<index>.json` (one number: the serial or generation it applied) when
it applied a change of `name` ("downtimes": the serial of the shared downtimes it read last;
"reload": the reload generation it applied). `wait` polls the marks of the live workers (the
supervisor's `workers.json`) every 50 ms until each has reached a value, with a deadline: a worker
that is stopped (SIGSTOP) or restarting must not hold an admin's answer for ever.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from fedd.workers.shared import WORKERS_FILE, read_json, write_json

log = Logger(namespace="fedd.workers")
POLL = 0.05  # seconds between two looks at the marks while waiting


class AppliedMarks:
    def __init__(self, run_dir: Path, index: int | None, clock: IReactorTime) -> None:
        self.run_dir = run_dir
        self.index = index  # this worker's (its own mark is not waited for); None: the supervisor
        self.clock = clock

    def _path(self, name: str, index: int) -> Path:
        return self.run_dir / f"applied-{name}-{index}.json"

    def mark(self, name: str, value: int) -> None:
        assert self.index is not None
        try:
            write_json(self._path(name, self.index), value)
        except OSError as exc:
            log.warn("cannot mark {name} {value} applied: {reason}", name=name, value=value, reason=exc)

    def value(self, name: str, index: int) -> int | None:
        data = read_json(self._path(name, index))
        return data if isinstance(data, int) else None

    def live(self) -> list[int]:
        """The indexes of the workers running now (the supervisor's list)."""
        listing = read_json(self.run_dir / WORKERS_FILE)
        if not isinstance(listing, list):
            return []
        return [w["index"] for w in listing if isinstance(w, dict) and isinstance(w.get("index"), int)]

    def behind(self, name: str, value: int, indexes: Iterable[int] | None = None) -> list[int]:
        """The live workers (this one apart) whose mark of `name` is below `value`."""
        out = []
        for index in self.live() if indexes is None else indexes:
            if index == self.index:
                continue
            seen = self.value(name, index)
            if seen is None or seen < value:
                out.append(index)
        return out

    def wait(self, name: str, value: int, timeout: float) -> Deferred[list[int]]:
        """Fires with [] once every other live worker marked `name` at `value` or beyond, or with the
        workers still behind after `timeout` seconds."""
        done: Deferred[list[int]] = Deferred()
        deadline = self.clock.seconds() + timeout

        def look() -> Any:
            late = self.behind(name, value)
            if not late or self.clock.seconds() >= deadline:
                done.callback(late)
                return
            self.clock.callLater(POLL, look)

        look()
        return done
