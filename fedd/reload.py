"""Live reconfiguration (`systemctl reload fedd` = SIGHUP): validate the new file, then hand it to
every long-lived service.

The new configuration is parsed and checked completely first; a file with errors is refused (each
error logged with file:line) and the running one keeps serving. A good one is given, in dependency
order, to each service's `reconfigure(new)`, which applies what it can and returns what needs a
restart. `build_service` lists the services; what they do:

- the endpoint fleet swaps the objects of added and changed endpoints (unchanged ones keep their
  connection pools, signed-URL caches and health history; retired ones are closed after a grace
  period, so requests already using them finish);
- the federation takes the new mappings, weights and `[locate]` timings; cached "not found" answers
  are dropped when the endpoints or their mappings changed, since a new endpoint may hold the file;
- health thresholds and `[health] interval`, `[space]` and its interval (the loops restart on a new
  interval), `[write]`, `[checksums]` limits and workers, configured downtimes, `[auth]` files (re-read
  at once); cached redirect plans and rankings are recomputed.

Listen addresses, TLS files, memcached servers, the events broker, the GeoIP database and the
checksum database are read once at start (`FixedAtStart` and the checksum service say so): a change
to them is logged, listed in the status (`reload.needs_restart`) and ignored until a restart.

With `[server] workers` > 1 the supervisor numbers each SIGHUP it passes on (a generation, written
to `reload-asked.json` in the run directory before the signal); each worker marks the generation
it handled (fedd.workers.applied, `reload`), and a worker started later marks the one it read at
its start. Once every live worker has marked it, the supervisor logs `reloaded (all N workers)`
and writes `reload.json`; any worker's status then shows the reload as of the last generation
every worker applied (`reload.host`), so it answers the same whichever worker is asked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from fedd.config import Config, ConfigError, parse_config

log = Logger(namespace="fedd.reload")

Reconfigure = Callable[[Config], list[str]]  # apply what can be applied; return what needs a restart
ASKED_FILE = "reload-asked.json"  # in the run directory: the last reload generation the supervisor passed on
DONE_FILE = "reload.json"  # the last generation every worker applied (the supervisor writes it)
MARK = "reload"  # fedd.workers.applied: the generation a worker handled
MARK_OK = "reload-ok"  # ... and the last one it applied (not refused)


def asked_generation(run_dir: Path) -> int:
    """The last reload generation the supervisor passed on (0: none yet)."""
    from fedd.workers.shared import read_json

    value = read_json(run_dir / ASKED_FILE)
    return value if isinstance(value, int) else 0


class ReloadStatus:
    """What the status page shows of reloads (kept apart from the `Reloader`, which needs the
    services that show it)."""

    def __init__(self, path: str | None, run_dir: Path | None = None) -> None:
        self.path = path
        self.run_dir = run_dir  # a worker's: the status shows what every worker applied
        self.reloads = 0
        self.refused = 0
        self.last_error: str | None = None
        self.needs_restart: list[str] = []  # what the file differs in from the running values
        self.generation = asked_generation(run_dir) if run_dir is not None else 0
        self._history: dict[int, dict[str, Any]] = {self.generation: self._own()}  # generation -> what it left

    def _own(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "reloads": self.reloads,
            "refused": self.refused,
            "last_error": self.last_error,
            "needs_restart": list(self.needs_restart),
        }

    def handled(self, generation: int) -> None:
        """A worker handled the supervisor's reload `generation`: keep what it left for the status."""
        self.generation = generation
        self._history[generation] = self._own()
        for old in sorted(self._history)[:-8]:
            del self._history[old]

    def to_json(self) -> dict[str, Any]:
        if self.run_dir is None:
            return self._own()
        from fedd.workers.shared import read_json

        host = read_json(self.run_dir / DONE_FILE)
        done = host.get("done", 0) if isinstance(host, dict) else 0
        asked = asked_generation(self.run_dir)
        # as of the last generation every worker applied (this worker may be ahead of the others)
        known = [g for g in self._history if g <= done]
        data = dict(self._history[max(known)] if known else self._own())
        data["host"] = {"asked": asked, "applied_by_all": done, "this_worker": self.generation}
        return data


class FixedAtStart:
    """The settings read once at start: a reload that changes them is told to restart."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def reconfigure(self, new: Config) -> list[str]:
        old = self.config
        pending = [f"[{name}]" for name in ("server", "events", "geo") if getattr(new, name) != getattr(old, name)]
        if new.locate.memcached != old.locate.memcached or new.locate.lru_entries != old.locate.lru_entries:
            pending.append("[locate] memcached, lru_entries")
        if (new.auth is None) != (old.auth is None) or new.issuers != old.issuers:
            pending.append("[auth] added or removed, [issuer] sections")
        if new.replicate.enabled != old.replicate.enabled:
            pending.append("[replicate] enabled")
        return pending


class Reloader:
    def __init__(
        self,
        path: str | None,
        targets: Sequence[Reconfigure],
        status: ReloadStatus,
        marks: Any = None,
    ) -> None:
        self.path = path
        self.targets = list(targets)
        self.status = status
        self.marks = marks  # a worker's fedd.workers.applied.AppliedMarks: the generations it handled
        if marks is not None:
            marks.mark(MARK_OK, status.generation)  # a worker (re)started: it read the file as it is now
            marks.mark(MARK, status.generation)

    def reload(self) -> bool:
        """Parse and apply the configuration file; False (and nothing changed) when it has errors.
        A worker marks the supervisor's generation it handled, either way."""
        if self.status.run_dir is None:
            return self._reload()
        generation = asked_generation(self.status.run_dir)  # read before the file: it is at least this new
        ok = False
        try:
            ok = self._reload()
            return ok
        finally:
            self.status.handled(generation)
            if self.marks is not None:
                if ok:
                    self.marks.mark(MARK_OK, generation)
                self.marks.mark(MARK, generation)  # last: the supervisor reads the outcome once it sees this

    def _reload(self) -> bool:
        if self.path is None:
            log.warn("reload asked, but fedd runs on its embedded default: nothing to reload")
            return False
        try:
            new = parse_config(path=self.path)
        except ConfigError as exc:
            self._refused(f"{len(exc.errors)} error(s): " + "; ".join(exc.errors))
            log.error(
                "reload refused: {path} has {n} error(s), the running configuration stays:\n  {errors}",
                path=self.path,
                n=len(exc.errors),
                errors="\n  ".join(exc.errors),
            )
            return False
        except Exception as exc:  # an unreadable file or a bug must not take the daemon down
            self._refused(f"{type(exc).__name__}: {exc}")
            log.failure("reload refused: cannot read {path}", path=self.path)
            return False
        self.apply(new)
        return True

    def _refused(self, why: str) -> None:
        self.status.refused += 1
        self.status.last_error = why

    def apply(self, new: Config) -> None:
        pending: list[str] = []
        for reconfigure in self.targets:
            try:
                pending += reconfigure(new)
            except Exception:  # one service's bug must not leave the others unconfigured
                log.failure("reload: applying the new configuration failed in {target}", target=reconfigure)
        for what in pending:
            log.warn("reload: changes to {what} need a restart; they are not applied now", what=what)
        self.status.reloads += 1
        self.status.last_error = None
        self.status.needs_restart = pending
        log.info("reloaded {path}: {n} endpoint(s)", path=self.path, n=len(new.endpoints))
