"""The supervisor's relay of its workers' logs (fedd.workers.supervisor).

A worker writes its log as Twisted's JSON events on its stdout (fedd.tap). Each line is republished
in the supervisor's log as the worker logged it, its system `worker-N` followed by what a single
fedd shows between brackets, its numbers formatted with their spec again; a line that is not JSON
(stderr, a traceback before logging began) is logged as it comes, at info level. A line that grows
past MAX_LINE bytes without a newline is relayed as it is so far.

A warning, error or critical line that another worker logged with the same text (namespace and
rendered message) within the last `REPEAT_WINDOW` seconds is relayed once, the first worker's: every
worker meets the same broker refusing its login or the same bad configuration, and the log names an
outage once per host, not once per worker. A line repeated by the same worker is a new occurrence
and goes through; info lines are never held back (`RepeatFilter`).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, LogLevel, eventFromJSON, formatEvent, globalLogPublisher

log = Logger(namespace="fedd.workers")
MAX_LINE = 1 << 20
REPEAT_WINDOW = 60.0  # seconds: the same warning from another worker within this is not logged again
_HELD_LEVELS = frozenset({LogLevel.warn, LogLevel.error, LogLevel.critical})


def _reformat_numbers(event: dict[str, Any]) -> None:
    """Twisted's JSON log events keep each field's text as str(value), its format spec left out
    ("{timeout:g}" of 10.0 comes back as "10.0"): format the numbers again with their spec, so a
    worker's line reads as a single fedd's would."""
    flat = event.get("log_flattened")
    if not isinstance(flat, dict):
        return
    for key, value in list(flat.items()):
        name, sep, spec = key.partition("!:")
        if sep and spec and isinstance(value, int | float) and not isinstance(value, bool):
            try:
                flat[f"{name}!s:{spec}"] = format(value, spec)
            except ValueError:
                pass


def _own_system(event: dict[str, Any]) -> str:
    """What a single fedd's text log shows between brackets: the event's system, else its namespace
    and level (`fedd.events#error`), so a worker's line keeps them after its `worker-N`."""
    system = event.get("log_system")
    if isinstance(system, str) and system not in ("", "-"):
        return system
    level = event.get("log_level")
    return f"{event.get('log_namespace', '-')}#{getattr(level, 'name', '-')}"


class RepeatFilter:
    """Which relayed lines to log: a warning, error or critical text (namespace and rendered message)
    another worker logged within `window` seconds is held back. O(1) per line: the texts seen, in the
    order they were last logged, are pruned from the oldest on each call."""

    def __init__(self, window: float = REPEAT_WINDOW) -> None:
        self.window = window
        self.held = 0  # lines held back since the start
        self._recent: dict[tuple[str, str], tuple[int, float]] = {}  # text -> (worker, when logged)

    def admit(self, worker: int, namespace: str, text: str, now: float) -> bool:
        recent = self._recent
        while recent:  # insertion order is time order: entries are re-inserted when logged again
            oldest = next(iter(recent))
            if now - recent[oldest][1] < self.window:
                break
            del recent[oldest]
        key = (namespace, text)
        seen = recent.get(key)
        if seen is not None and seen[0] != worker:
            self.held += 1
            return False
        recent.pop(key, None)
        recent[key] = (worker, now)
        return True

    def admit_event(self, worker: int, event: dict[str, Any], now: float) -> bool:
        if event.get("log_level") not in _HELD_LEVELS:
            return True
        text = formatEvent(event)
        return self.admit(worker, str(event.get("log_namespace", "")), text, now)


class WorkerOutput(ProcessProtocol):
    """Worker `index`'s stdout and stderr, relayed line by line into this process's log; what is left
    without a newline when the worker ends goes with `flush`."""

    def __init__(self, index: int, repeats: RepeatFilter, clock: IReactorTime) -> None:
        self.index = index
        self.repeats = repeats  # the supervisor's, over all its workers
        self.clock = clock
        self._buffers = {1: b"", 2: b""}

    def childDataReceived(self, fd: int, data: bytes) -> None:
        buffered = self._buffers.get(fd, b"") + data
        *lines, rest = buffered.split(b"\n")
        if len(rest) > MAX_LINE:
            lines.append(rest)
            rest = b""
        self._buffers[fd] = rest
        for line in lines:
            self.relay(fd, line)

    def relay(self, fd: int, line: bytes) -> None:
        text = line.lstrip(b"\x1e").decode("utf-8", "replace").rstrip()
        if not text:
            return
        system = f"worker-{self.index}"
        if fd == 1:
            try:
                event = eventFromJSON(text)
            except ValueError:
                event = None
            if isinstance(event, dict):
                _reformat_numbers(event)
                if not self.repeats.admit_event(self.index, event, self.clock.seconds()):
                    return
                event["log_system"] = f"{system} {_own_system(event)}"
                event["fedd_worker"] = self.index
                globalLogPublisher(event)
                return
        log.info("{line}", line=text, log_system=system, fedd_worker=self.index)

    def flush(self) -> None:
        for fd, rest in self._buffers.items():
            if rest:
                self.relay(fd, rest)
