"""What the workers of one host share through their run directory: small JSON files, each written
whole to a temporary name and renamed (a reader never sees half a file).

- `HostShare`: the elected worker (0) publishes its health and space results (`health.json`,
  `space.json`); the others `read` them on a 0.25 s poll (a read of a few kilobytes).
- `CounterFiles`: each worker writes its snapshot to `counters-<pid>.json` every second: its
  per-request counters, every metric family of its collectors (fedd.web.metrics) and its per-worker
  status numbers (fedd.workers.statussum). A scrape or a status read adds its own live figures to
  every other file's, as prometheus-client's multiprocess mode does: counters of workers that have
  died included (their requests were answered: a counter must not go back), gauges of the live
  workers only. When a worker ends, the supervisor adds its counters to `counters-ended.json` and
  removes its file (`fold_ended`).
- No summed counter goes back between two reads, whichever workers answer them: the worker that
  answers writes its own file first (`CounterFiles.share`, `share_counters`), so its file holds at
  least what it reports, and any later read, here or at another worker, adds that file or this
  worker's live figures, both at least as large. (Without it, a read at worker A reporting A's live
  counts and a later read at B adding A's file of up to a second before could report less:
  Prometheus takes a counter that decreases for a reset.) A scrape reports the metric families
  alone: it writes those it answers and, beside them, the status numbers this worker last wrote
  (not a fresh status, ~1-2 ms to build). That keeps the guarantee for status reads: each write's
  status numbers are fresh (taken after every earlier write's) or the previous write's, so they
  never decrease from one write to the next, and a status read writes the very numbers it answers
  before answering them; the file always holds at least what this worker ever answered. While a
  worker cannot write its file (the run directory removed, full or read-only), the guarantee does
  not hold for it: it answers with its live figures all the same, logs the outage once (and once
  when it writes again), and says so in the status (`workers.counters_file`) and in /metrics
  (`fedd_counters_file_unwritten`, `..._since_seconds`), each worker for itself.
- `workers.json`: the supervisor's list of workers (index, pid, start time, restarts) for the status.

The files are a few kilobytes, written by one process every second (a counters file also at each
scrape or status read it answers: ~1 ms with the snapshot, measured on the test machine), on the
host's run directory (tmpfs under systemd's RuntimeDirectory): writing them in the reactor thread
costs microseconds, below what a thread hand-off would.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from fedd.periodic import Periodic
from fedd.twtypes import Service
from fedd.web.metricsum import add_families, add_snapshots, snapshot_of
from fedd.workers.statussum import add_numbers, add_status, status_numbers

log = Logger(namespace="fedd.workers")
FOLLOW_INTERVAL = 0.25  # seconds: followers see a published result within this (plus the file write)
COUNTERS_INTERVAL = 1.0  # seconds between two writes of a worker's counters
WORKERS_FILE = "workers.json"
ENDED_FILE = "counters-ended.json"  # the counters of workers that have ended, added up
FOLDED_KEPT = 16  # writers of the last ended workers' files (a reader may still have seen them)
WRITER = "writer"  # a counters file's key naming the process that wrote it (`CounterFiles.writer`)


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    """The file's data, or None when it is missing or unreadable (a follower tries again next poll)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class HostShare:
    """Results one worker measures for the whole host. `leader` is the worker that measures."""

    def __init__(self, run_dir: Path, *, leader: bool) -> None:
        self.run_dir = run_dir
        self.leader = leader
        self._seen: dict[str, bytes] = {}  # name -> the content last read
        self._unshared: set[str] = set()  # names whose last publication failed (logged once per outage)

    def publish(self, name: str, data: Any) -> None:
        try:
            write_json(self.run_dir / f"{name}.json", data)
        except OSError as exc:
            if name not in self._unshared:
                self._unshared.add(name)
                log.warn("cannot share {name} with the other workers: {reason}", name=name, reason=exc)
            return
        if name in self._unshared:
            self._unshared.discard(name)
            log.info("{name} is shared with the other workers again", name=name)

    def read(self, name: str) -> Any:
        """The published data if it changed since the last read, else None. Compared by content:
        two publications within one tick of the file system's clock have the same mtime."""
        try:
            raw = (self.run_dir / f"{name}.json").read_bytes()
        except OSError:
            return None
        if self._seen.get(name) == raw:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        self._seen[name] = raw
        return data

    def follow(self, name: str, apply: Any, clock: IReactorTime) -> Periodic:
        """Call `apply(data)` with each new publication of `name` (a started loop; stop it)."""

        def poll() -> None:
            data = self.read(name)
            if data is not None:
                apply(data)

        # a malformed file is logged by the loop, which goes on
        return Periodic(clock, poll, f"applying the shared {name}").start(FOLLOW_INTERVAL, now=True)


class CounterFiles:
    """Per-request counters of every worker of the host (see the module docstring). `snapshot`:
    this worker's counters as JSON data, what `share` writes; `status`: this worker's own status
    (not summed with the others'), whose per-worker numbers `share` writes beside them; `clock`
    dates an outage of this worker's file (`unwritten_since`)."""

    def __init__(
        self,
        run_dir: Path,
        pid: int,
        snapshot: Callable[[], dict[str, Any]] | None = None,
        status: Callable[[], dict[str, Any]] | None = None,
        *,
        clock: IReactorTime,
    ) -> None:
        self.run_dir = run_dir
        self.own = run_dir / f"counters-{pid}.json"
        self.snapshot = snapshot
        self.status = status
        self.clock = clock
        self.unwritten_since: float | None = None  # the first failed write of an outage going on
        self.error: str | None = None  # why the last write failed, during an outage
        self.failed_writes = 0  # since this worker started
        self._outage_failures = 0
        # names this process's file in the ended workers' list: a later worker given the same pid
        # (pid_max may be 32768) writes the same file name and still counts
        self.writer = f"{pid}-{secrets.token_hex(6)}"
        self._numbers: dict[str, Any] | None = None  # the status numbers last written (or tried)

    def write(self, snapshot: dict[str, Any]) -> None:
        write_json(self.own, {**snapshot, WRITER: self.writer})

    def share(self, status: dict[str, Any] | None = None) -> None:
        """Write this worker's counters now: before every read that reports them (a scrape, a status
        read), and every second (`CountersWriter`) so the others' reads are recent. `status`: this
        worker's own status, just built for the read that reports it (its numbers written as they
        are answered, not built a second time)."""
        if self.snapshot is None:
            return
        if status is None and self.status is not None:
            status = self.status()
        self._numbers = {"status": status_numbers(status)} if status is not None else {}
        self._write({**self.snapshot(), **self._numbers})

    def share_counters(self, counters: dict[str, Any]) -> None:
        """Write `counters` (this worker's `snapshot`, just collected for the scrape that reports
        them) with the status numbers last written: a scrape reports no status number, and those
        never go back from one write to the next (see the module docstring)."""
        if self.snapshot is None:
            return
        if self._numbers is None:  # none written yet
            self._numbers = {"status": status_numbers(self.status())} if self.status is not None else {}
        self._write({**counters, **self._numbers})

    def _write(self, data: dict[str, Any]) -> None:
        """Write `data`; an outage (every write failing) is logged when it starts and when it ends,
        not at each read or tick in between."""
        try:
            self.write(data)
        except OSError as exc:
            self.failed_writes += 1
            self._outage_failures += 1
            self.error = f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
            if self.unwritten_since is None:
                self.unwritten_since = self.clock.seconds()
                log.warn(
                    "cannot write the request counters to {path}: {reason}; until it can, a counter summed"
                    " over the workers may go back from one read to the next (logged again once it writes)",
                    path=str(self.own),
                    reason=self.error,
                )
            return
        if self.unwritten_since is not None:
            log.info(
                "request counters written to {path} again, after {seconds:.0f} s and {failures} failed writes",
                path=str(self.own),
                seconds=self.clock.seconds() - self.unwritten_since,
                failures=self._outage_failures,
            )
            self.unwritten_since, self.error, self._outage_failures = None, None, 0

    def to_json(self) -> dict[str, Any]:
        """This worker's counters file: written (the summed counters never go back), or since when not."""
        return {
            "written": self.unwritten_since is None,
            "unwritten_since": self.unwritten_since,
            "error": self.error,
            "failed_writes": self.failed_writes,
        }

    def others(self) -> list[dict[str, Any]]:
        """Every other worker's counters, those of ended workers included (`fold_ended`). The live
        files are read before the ended workers' file, so a file folded in between counts once."""
        live: dict[int, dict[str, Any]] = {}
        for path in self.run_dir.glob("counters-*.json"):
            pid = path.stem.removeprefix("counters-")
            if path != self.own and pid.isdigit() and isinstance(data := read_json(path), dict):
                live[int(pid)] = data
        ended = read_json(self.run_dir / ENDED_FILE)
        if not isinstance(ended, dict):
            return list(live.values())
        folded = {f for f in ended.get("folded", ()) if isinstance(f, int | str)}
        return [data for pid, data in live.items() if data.get(WRITER, pid) not in folded] + [ended]


def fold_ended(run_dir: Path, pid: int) -> None:
    """A worker `pid` has ended: add its counters to the ended workers' file, then remove its own
    (a crash loop leaves one file, not one per pid). The supervisor alone calls this."""
    own = run_dir / f"counters-{pid}.json"
    counters = read_json(own)
    if not isinstance(counters, dict):
        own.unlink(missing_ok=True)
        return
    ended = read_json(run_dir / ENDED_FILE)
    ended = ended if isinstance(ended, dict) else {}
    folded = [f for f in ended.get("folded", ()) if isinstance(f, int | str)][-(FOLDED_KEPT - 1) :]
    writer = counters.get(WRITER)
    both = [ended, counters]
    families = add_families(None, [d for s in both if isinstance(d := s.get("families"), dict)])
    status = add_numbers([s.get("status") for s in both], counters_only=True)
    totals = snapshot_of(add_snapshots(both))
    done = writer if isinstance(writer, str) else pid  # a file without its writer: by pid
    write_json(run_dir / ENDED_FILE, {**totals, "families": families, "status": status, "folded": [*folded, done]})
    own.unlink(missing_ok=True)


class CountersWriter(Service):
    """Writes this worker's counters (`CounterFiles.share`) every second, and once more when it
    stops (a drained worker's last answers count)."""

    name = "counters"

    def __init__(self, files: CounterFiles, clock: IReactorTime) -> None:
        self.files = files
        self.clock = clock
        self._loop: Periodic | None = None
        self._soon: Any = None

    def write(self) -> None:
        self.files.share()

    def soon(self) -> None:
        """One more write at the reactor's next turn (several calls, one write): a number the others
        add up changed in a way a reader should not see late (a copy that ended: `tpc.active`)."""
        if self._soon is None and self.running:
            self._soon = self.clock.callLater(0, self._write_soon)

    def _write_soon(self) -> None:
        self._soon = None
        self.write()

    def startService(self) -> None:
        super().startService()
        self._loop = Periodic(self.clock, self.write, "counters write").start(COUNTERS_INTERVAL, now=True)

    def stopService(self) -> Any:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._soon is not None and self._soon.active():
            self._soon.cancel()
        self._soon = None
        self.write()


class WorkersStatus:
    """The status section of a worker: which worker answered, and all of them (the supervisor's
    list); and the per-worker numbers of the status summed over the host (`add_peers`)."""

    def __init__(self, run_dir: Path, index: int, count: int, counters: CounterFiles | None = None) -> None:
        self.run_dir = run_dir
        self.index = index
        self.count = count
        self.counters = counters

    def add_peers(self, status: dict[str, Any]) -> None:
        """Add the other workers' status numbers (their counters files) to this worker's `status`
        (computed in this reactor turn), after writing its numbers (`share`): the file holds what
        this read answers."""
        if self.counters is not None:
            self.counters.share(status)
            section = status.get("workers")
            if isinstance(section, dict):  # how that write went, not the one before
                section["counters_file"] = self.counters.to_json()
            add_status(status, [snap.get("status") for snap in self.counters.others()])

    def to_json(self) -> dict[str, Any]:
        return {
            "answered_by": {"index": self.index, "pid": os.getpid()},
            "count": self.count,
            "workers": read_json(self.run_dir / WORKERS_FILE) or [],
            **({"counters_file": self.counters.to_json()} if self.counters is not None else {}),
        }
