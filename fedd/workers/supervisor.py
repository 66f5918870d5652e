"""The supervisor: what `twistd fedd` runs with `[server] workers` above 1 (see fedd.workers).

It serves nothing itself. It owns the listening sockets, starts the workers with them, relays their
logs, starts a dead worker again (0.25 s later, doubling up to 30 s while workers keep dying within
10 s of their start), passes SIGHUP on as a numbered reload and logs `reloaded (all N workers)` once
every worker has handled it (fedd.reload), and on stop sends each worker SIGTERM and waits for all of
them (SIGKILL for any still running `stop_timeout` seconds later: its drain has a deadline of its own).

The workers' log lines are relayed by fedd.workers.relay (a warning that every worker logs about the
same outage is logged once per host).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from fedd.twtypes import Service
from fedd.workers import EX_CONFIG, FIRST_FD, WorkerRole
from fedd.workers.relay import REPEAT_WINDOW, RepeatFilter, WorkerOutput, _reformat_numbers
from fedd.workers.shared import WORKERS_FILE, fold_ended, write_json
from fedd.workers.sockets import open_listener

log = Logger(namespace="fedd.workers")
FIRST_DELAY = 0.25
MAX_DELAY = 30.0
STABLE_AFTER = 10.0  # a worker that ran this long is not crash-looping: the next restart is quick again
RELOAD_WAIT = 30.0  # seconds: a worker that has not handled a reload by then is named in a warning
# REPEAT_WINDOW, RepeatFilter and _reformat_numbers are fedd.workers.relay's, imported from here too
__all__ = ["REPEAT_WINDOW", "RepeatFilter", "Supervisor", "_reformat_numbers", "worker_command"]


# the worker runs on this interpreter with this process's flags and sys.path: under the RPM,
# fedd-twistd runs python3.11 -IS and adds fedd's private tree to sys.path itself (no PYTHONPATH)
_BOOT = (
    "import json, runpy, sys; sys.path[:] = json.loads(sys.argv.pop(1)); "
    "runpy.run_module('fedd.workers', run_name='__main__', alter_sys=True)"
)


def worker_command(argv: Sequence[str]) -> list[str]:
    """`python -m fedd.workers ARGV` on the supervisor's interpreter, flags (-I, -S) and sys.path."""
    import json
    import sys

    flags = [flag for flag, on in (("-I", sys.flags.isolated), ("-S", sys.flags.no_site)) if on]
    return [sys.executable, *flags, "-c", _BOOT, json.dumps(sys.path), *argv]


class _Worker(WorkerOutput):
    """One worker process: its pid, start and end; its output relayed into the supervisor's log."""

    def __init__(self, supervisor: Supervisor, index: int) -> None:
        super().__init__(index, supervisor.repeats, supervisor.reactor)
        self.supervisor = supervisor
        self.started = time.time()
        self.pid: int | None = None
        self.ended: Deferred[None] = Deferred()

    def processEnded(self, reason: Failure) -> None:
        self.flush()
        self.supervisor.ended(self, reason)
        self.ended.callback(None)


class Supervisor(Service):
    name = "supervisor"

    def __init__(
        self,
        *,
        reactor: Any,
        count: int,
        listen: Sequence[str],
        run_dir: Path,
        argv: Sequence[str],
        stop_timeout: float,
        environ: dict[str, str] | None = None,
        instance: str = "",
    ) -> None:
        from fedd.federation import new_instance_id

        self.reactor = reactor
        self.count = count
        self.listen = tuple(listen)
        self.run_dir = run_dir
        self.argv = list(argv)  # the worker's arguments after `python -m fedd.workers`
        self.stop_timeout = stop_timeout
        self.instance = instance or new_instance_id()  # every worker's, across their restarts
        self.started = time.time()  # the host's start, every worker's (wall time, as the workers' list's)
        self.environ = dict(os.environ if environ is None else environ)
        self.sockets: list[socket.socket] = []
        self.workers: dict[int, _Worker] = {}
        self.transports: dict[int, Any] = {}
        self.restarts: dict[int, int] = {}
        self._quick_deaths: dict[int, int] = {}
        self._pending: dict[int, Any] = {}  # index -> delayed restart
        self.stopping = False
        self.exit_code = 0
        self.reloads_asked = 0
        self.reloads_done = 0
        self.repeats = RepeatFilter()

    # --- start ------------------------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        """Open the sockets (a port below 1024 needs this before twistd drops privileges)."""
        super().privilegedStartService()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.run_dir.glob("*.json"):  # counters and results of an earlier run
            stale.unlink(missing_ok=True)
        try:
            self.sockets = [open_listener(d) for d in self.listen]
        except usage.UsageError as exc:  # one line and exit status 1, as a single fedd says it
            for sock in self.sockets:
                sock.close()
            log.critical("fedd: {message}", message=str(exc))
            raise SystemExit(1) from None

    def startService(self) -> None:
        super().startService()
        if not self.sockets:
            self.sockets = [open_listener(d) for d in self.listen]
        for index in range(self.count):
            self.spawn(index)
        log.info(
            "fedd supervisor: {n} workers on {listen} (run directory {run_dir})",
            n=self.count,
            listen=", ".join(self.listen),
            run_dir=str(self.run_dir),
        )

    def spawn(self, index: int) -> None:
        self._pending.pop(index, None)
        if self.stopping:
            return
        import sys

        role = WorkerRole(
            index=index,
            count=self.count,
            run_dir=self.run_dir,
            listen=self.listen,
            instance=self.instance,
            started=self.started,
        )
        env = {k: v for k, v in self.environ.items() if not k.startswith("LISTEN_")}  # systemd's are ours
        env.update(role.environment())
        fds: dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        for position, sock in enumerate(self.sockets):
            fds[FIRST_FD + position] = sock.fileno()
        worker = _Worker(self, index)
        self.workers[index] = worker
        transport = self.reactor.spawnProcess(worker, sys.executable, worker_command(self.argv), env=env, childFDs=fds)
        self.transports[index] = transport
        worker.pid = transport.pid
        self._write_list()

    # --- a worker ended -----------------------------------------------------------------------------

    def ended(self, worker: _Worker, reason: Failure) -> None:
        index = worker.index
        if self.workers.get(index) is not worker:
            return
        del self.workers[index]
        self.transports.pop(index, None)
        if worker.pid is not None:
            try:
                fold_ended(self.run_dir, worker.pid)
            except OSError as exc:
                log.warn("cannot add up the counters of worker {index}: {reason}", index=index, reason=exc)
        code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        how = f"signal {sig}" if sig is not None else f"status {code}"
        if self.stopping:
            log.info("worker {index} stopped ({how})", index=index, how=how)
            self._write_list()
            return
        if code == EX_CONFIG and self.workers:
            # the others serve on the configuration they read: this one read the file as it is now
            # (an edit under way, or a reload that will be refused) and is tried again below, with
            # the delay of a worker that dies young; fedd stops only when no worker is left
            log.error(
                "worker {index} cannot start from the configuration as it is now (above); the other "
                "workers go on with the one they run",
                index=index,
            )
        elif code == EX_CONFIG:
            log.critical(
                "worker {index} cannot start from this configuration (above): fedd stops, exit status 1", index=index
            )
            self.exit_code = 1
            self._write_list()
            self.reactor.stop()
            return
        lived = time.time() - worker.started
        quick = self._quick_deaths[index] = self._quick_deaths.get(index, 0) + 1 if lived < STABLE_AFTER else 0
        delay = min(MAX_DELAY, FIRST_DELAY * 2**quick)
        self.restarts[index] = self.restarts.get(index, 0) + 1
        log.warn(
            "worker {index} (pid {pid}) ended ({how}) after {lived:.1f}s: starting it again in {delay:g}s",
            index=index,
            pid=worker.pid,
            how=how,
            lived=lived,
            delay=delay,
        )
        self._pending[index] = self.reactor.callLater(delay, self.spawn, index)
        self._write_list()

    # --- signals and stop ---------------------------------------------------------------------------

    def signal_all(self, signum: int) -> None:
        for transport in list(self.transports.values()):
            try:
                transport.signalProcess(signum)
            except (ProcessExitedAlready, OSError):
                pass  # it is ending: processEnded tells the rest

    def reload(self) -> Deferred[list[int]]:
        """SIGHUP: number the reload, pass it to every worker, and log once all of them handled it.
        Fires with the workers still behind after RELOAD_WAIT seconds ([] when all reloaded)."""
        from fedd.reload import ASKED_FILE, DONE_FILE, MARK, MARK_OK
        from fedd.workers.applied import AppliedMarks

        self.reloads_asked += 1
        generation = self.reloads_asked
        try:
            write_json(self.run_dir / ASKED_FILE, generation)
        except OSError as exc:
            log.warn("cannot number the reload for the workers: {reason}", reason=exc)
        log.info("reload {generation}: passing SIGHUP to {n} worker(s)", generation=generation, n=len(self.workers))
        self.signal_all(signal.SIGHUP)
        marks = AppliedMarks(self.run_dir, None, self.reactor)
        waiting = marks.wait(MARK, generation, RELOAD_WAIT)

        def done(late: list[int]) -> list[int]:
            if late:
                log.warn(
                    "reload {generation}: worker(s) {late} have not reloaded after {t:g}s",
                    generation=generation,
                    late=", ".join(map(str, late)),
                    t=RELOAD_WAIT,
                )
                return late
            if generation <= self.reloads_done:
                return late  # a later reload finished first
            self.reloads_done = generation
            try:
                write_json(self.run_dir / DONE_FILE, {"done": generation})
            except OSError as exc:
                log.warn("cannot record the reload for the status: {reason}", reason=exc)
            refused = marks.behind(MARK_OK, generation, list(self.workers))
            if refused:
                log.warn(
                    "reload {generation} refused by worker(s) {refused} (their errors above): the running "
                    "configuration stays",
                    generation=generation,
                    refused=", ".join(map(str, refused)),
                )
            else:
                log.info("reloaded (all {n} workers)", n=len(self.workers))
            return late

        return waiting.addCallback(done)

    def pids(self) -> dict[int, int]:
        return {i: w.pid for i, w in self.workers.items() if w.pid is not None}

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.stopping = True
        for call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()
        waiting = [w.ended for w in self.workers.values()]
        if not waiting:
            self._close_sockets()
            return succeed(None)
        log.info("stopping {n} worker(s): each drains its open requests", n=len(waiting))
        self.signal_all(signal.SIGTERM)
        # the workers hold the sockets as long as they accept (drain_notice); once they have all
        # stopped listening, a new connection is refused at once instead of waiting in a queue
        # nobody reads
        self._close_sockets()
        kill = self.reactor.callLater(self.stop_timeout, self._kill_rest)
        done = DeferredList(waiting, consumeErrors=True)

        def finished(_: object) -> None:
            if kill.active():
                kill.cancel()

        return done.addCallback(finished)

    def _close_sockets(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets = []

    def _kill_rest(self) -> None:
        if self.transports:
            log.warn(
                "{n} worker(s) still running after {t:g}s: killing them", n=len(self.transports), t=self.stop_timeout
            )
            self.signal_all(signal.SIGKILL)

    def _write_list(self) -> None:
        listing = [
            {
                "index": i,
                "pid": w.pid,
                "started": w.started,
                "restarts": self.restarts.get(i, 0),
            }
            for i, w in sorted(self.workers.items())
        ]
        try:
            write_json(self.run_dir / WORKERS_FILE, listing)
        except OSError as exc:
            log.warn("cannot write the list of workers: {reason}", reason=exc)
