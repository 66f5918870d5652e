"""`[server] workers = N`: one supervisor process, N worker processes sharing its listening sockets.

- The supervisor (`fedd.workers.supervisor`, what `twistd fedd` runs when N > 1) opens each
  `[server] listen` socket itself, or takes the ones systemd passed, and starts N workers
  (`python -m fedd.workers`), handing them the sockets as file descriptors 3, 4, ... in listen order.
  Every worker accepts on the same sockets (one kernel accept queue per socket: a worker that dies
  loses no waiting connection). A worker that exits is started again, after a delay that doubles
  while it keeps dying young. SIGHUP is passed on (each worker reloads), SIGTERM makes every worker
  drain as a single fedd does, and the supervisor exits when the last one has.
- Workers log JSON lines on their stdout; the supervisor republishes each event in its own log with
  `log_system` set to `worker-N` and the event's own (`worker-1 fedd.events#error`), so `twistd
  --logger` or the journal see one log; a warning another worker logged just before is logged once.
- Events: each worker has its own outbox (`WorkerRole.own_files`); all of them append to the one
  `[events] spool` (fedd.events.spoolfile locks each batch).
- A run directory (systemd's `$RUNTIME_DIRECTORY`, else a temporary directory) holds what the workers
  share on this host (`fedd.workers.shared`): each worker's per-request counters (any worker's
  `/metrics` adds them all up), the health and space results of the elected worker (worker 0 probes
  and measures, the others read its results within a second), and the supervisor's list of workers
  for the status page.
- One instance id for the whole fedd: the supervisor makes it and passes it to every worker
  (`FEDD_WORKER_INSTANCE`), so `Via: 1.1 fedd-<id>` names the host's fedd and a request that comes
  back through another worker of it is recognised as a loop. Its start time too
  (`FEDD_WORKER_STARTED`): the host's heartbeat row says when the host started, not when its last
  restarted worker did.
- What one worker learns at run time, all apply: run-time downtimes and upload reservations in an
  implicit SQLite state in the run directory when `[state] database` is unset (fedd.builders),
  GOCDB read by worker 0 and followed by the others, write times of paths (`fedd.workers.stamps`),
  and marks of what each worker applied (`fedd.workers.applied`), so a downtime change or a reload
  is answered or logged done once every worker applies it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from fedd.config import EventsConfig

ENV_INDEX = "FEDD_WORKER_INDEX"
ENV_COUNT = "FEDD_WORKER_COUNT"
ENV_RUN_DIR = "FEDD_WORKER_RUN_DIR"
ENV_LISTEN = "FEDD_WORKER_LISTEN"  # the listen descriptions, one per line, in fd order
ENV_INSTANCE = "FEDD_WORKER_INSTANCE"  # the host fedd's instance id (Via), the same for every worker
ENV_STARTED = "FEDD_WORKER_STARTED"  # when the host's fedd (its supervisor) started, in Unix seconds
FIRST_FD = 3  # the first inherited listening socket (as in systemd socket passing)
EX_CONFIG = 78  # a worker that cannot be built from the configuration: the supervisor gives up


def cores() -> int:
    """`workers = auto`: the cores this process may run on (its CPU affinity, e.g. under a cgroup cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class WorkerRole:
    """What one worker process knows of its place: its index, how many there are, where they share."""

    index: int
    count: int
    run_dir: Path
    listen: tuple[str, ...]  # listen descriptions; the socket of listen[i] is fd FIRST_FD + i
    instance: str = ""  # the supervisor's instance id: loops through any worker are one fedd's
    started: float | None = None  # the supervisor's start: the host's (None: an older supervisor's worker)

    @property
    def leader(self) -> bool:
        """Worker 0 probes endpoints and measures space for the host (a restarted worker 0 takes over)."""
        return self.index == 0

    def fd(self, position: int) -> int:
        return FIRST_FD + position

    def environment(self) -> dict[str, str]:
        return {
            ENV_INDEX: str(self.index),
            ENV_COUNT: str(self.count),
            ENV_RUN_DIR: str(self.run_dir),
            ENV_LISTEN: "\n".join(self.listen),
            ENV_INSTANCE: self.instance,
            **({ENV_STARTED: repr(self.started)} if self.started is not None else {}),
        }

    def own_files(self, events: EventsConfig) -> EventsConfig:
        """The events settings with this worker's own outbox (and so its own journal beside it): an
        outbox is read and emptied by one process only. Worker 0 keeps the configured name (a switch
        from one process to workers keeps its outbox); worker N uses `<name>.worker-N<ext>`. The spool
        is the host's one file, appended under a lock (fedd.events.spoolfile); without a broker the
        journals are `<spool>.journal.*`, each segment named with its writer's pid and locked by it."""
        if self.index == 0:
            return events
        return replace(events, outbox=self.own_path(events.outbox))

    def own_path(self, path: str) -> str:
        """This worker's own copy of a per-process file: `path` for worker 0, else `<name>.worker-N<ext>`."""
        if self.index == 0:
            return path
        p = Path(path)
        return str(p.with_name(f"{p.stem}.worker-{self.index}{p.suffix}"))

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> WorkerRole:
        try:
            return cls(
                index=int(env[ENV_INDEX]),
                count=int(env[ENV_COUNT]),
                run_dir=Path(env[ENV_RUN_DIR]),
                listen=tuple(env[ENV_LISTEN].split("\n")),
                instance=env.get(ENV_INSTANCE, ""),
                started=float(env[ENV_STARTED]) if ENV_STARTED in env else None,
            )
        except (KeyError, ValueError) as exc:
            raise SystemExit(f"fedd worker: started without its supervisor's environment ({exc})") from None
