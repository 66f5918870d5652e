"""Live reconfiguration (`systemctl reload fedd` = SIGHUP): validate the new file, then apply it in place.

The new configuration is parsed and checked completely first; a file with errors is refused (each
error logged with file:line) and the running one keeps serving. A good one is applied without
dropping connections or caches:

- endpoints added, removed or changed (URL, keys, mappings, weights, read/list/write, quotas,
  minimum free space, downtimes, ...): unchanged endpoints keep their objects (connection pools,
  signed-URL caches, health history); changed ones get new objects and the old ones are closed after
  a grace period, so requests already using them finish;
- `[write]`, `[locate]` timings and TTLs, `[health]` thresholds and interval, `[space]` reporting
  and interval (the health poller and the space reporter restart their loops on a new interval),
  `[checksums]` limits and workers, configured downtimes; `[auth]` files are re-read at once;
- cached locate answers stay; answers that said "not found" are dropped when the set of endpoints
  or their mappings changed, since a new endpoint may hold the file.

Listen addresses, TLS files, memcached servers, the events broker, the GeoIP database and the
checksum database need a restart: a change to them is logged, listed in the status
(`reload.needs_restart`) and ignored until then.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger

from fedd.config import Config, ConfigError, parse_config
from fedd.endpoints import close_endpoint, make_endpoint
from fedd.health.state import EndpointHealth
from fedd.namespace import Namespace
from fedd.space.service import Measurement

log = Logger(namespace="fedd.reload")
CLOSE_GRACE = 120.0  # seconds an old endpoint object lives on for requests that still use it
RESTART_SECTIONS = ("server", "events", "geo")


class Reloader:
    def __init__(self, top: Any, config: Config, path: str | None, reactor: Any) -> None:
        self.top = top
        self.config = config
        self.path = path
        self.reactor = reactor
        self.reloads = 0
        self.refused = 0
        self.last_error: str | None = None
        self.needs_restart: list[str] = []  # what the running configuration differs in until a restart

    def reload(self) -> bool:
        """Parse and apply the configuration file; False (and nothing changed) when it has errors."""
        if self.path is None:
            log.warn("reload asked, but fedd runs on its embedded default: nothing to reload")
            return False
        try:
            new = parse_config(path=self.path)
        except ConfigError as exc:
            self.refused += 1
            self.last_error = f"{len(exc.errors)} error(s): " + "; ".join(exc.errors)
            log.error(
                "reload refused: {path} has {n} error(s), the running configuration stays:\n  {errors}",
                path=self.path,
                n=len(exc.errors),
                errors="\n  ".join(exc.errors),
            )
            return False
        except Exception as exc:  # an unreadable file or a bug must not take the daemon down
            self.refused += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.failure("reload refused: cannot read {path}", path=self.path)
            return False
        self.apply(new)
        return True

    def apply(self, new: Config) -> None:
        old = self.config
        # what needs a restart keeps its running value
        pending = [f"[{name}]" for name in RESTART_SECTIONS if getattr(new, name) != getattr(old, name)]
        if new.locate.memcached != old.locate.memcached or new.locate.lru_entries != old.locate.lru_entries:
            pending.append("[locate] memcached, lru_entries")
        if (new.auth is None) != (old.auth is None) or new.issuers != old.issuers:
            pending.append("[auth] added or removed, [issuer] sections")
        if new.checksums.database != old.checksums.database:
            pending.append("[checksums] database")
        for what in pending:
            log.warn("reload: changes to {what} need a restart; they are not applied now", what=what)
        locate = replace(new.locate, memcached=old.locate.memcached, lru_entries=old.locate.lru_entries)
        applied = replace(
            new,
            server=old.server,
            events=old.events,
            geo=old.geo,
            locate=locate,
            auth=old.auth if (new.auth is None) != (old.auth is None) else new.auth,
            issuers=old.issuers,
            checksums=replace(new.checksums, database=old.checksums.database),
        )
        changed_endpoints = self._apply_endpoints(old, applied)
        fed = self.top.federation
        fed.health.config = applied.health
        for state in fed.health.states.values():
            state.failures_to_offline = applied.health.failures_to_offline
            state.successes_to_online = applied.health.successes_to_online
        resource = self.top.resource
        if resource.writer is not None:
            resource.writer.config = applied.write
        space = self.top.space
        space.config, space.settings = applied, applied.space
        intervals = self._apply_intervals(old, applied)
        checksums = self.top.resource.checksums
        if checksums is not None:
            checksums.reconfigure(applied.checksums)
        self.top.downtimes.replace_configured({ep.id: ep.downtimes for ep in applied.endpoints})
        auth = getattr(self.top, "auth", None)
        if auth is not None:
            try:
                auth.reload()
            except Exception:
                log.failure("reload: re-reading the access rules failed; the previous rules stay")
        fed.health.version += 1  # cached redirect plans and rankings are recomputed
        self.config = applied
        self.reloads += 1
        self.last_error = None
        self.needs_restart = pending  # `old` holds the running values, so this is all the file differs in
        log.info(
            "reloaded {path}: {n} endpoint(s){changes}{intervals}",
            path=self.path,
            n=len(applied.endpoints),
            changes=f" ({changed_endpoints})" if changed_endpoints else ", endpoints unchanged",
            intervals=f"; {intervals}" if intervals else "",
        )

    def _apply_intervals(self, old: Config, new: Config) -> str:
        """Restart the periodic loops whose interval changed; what changed, for the log."""
        done = []
        if new.health.interval != old.health.interval:
            self.top.getServiceNamed("health").set_interval(new.health.interval)
            done.append(f"[health] interval {old.health.interval:g}s -> {new.health.interval:g}s")
        if new.space.interval != old.space.interval:
            self.top.space.set_interval(new.space.interval)
            done.append(f"[space] interval {old.space.interval:g}s -> {new.space.interval:g}s")
        return ", ".join(done)

    def _apply_endpoints(self, old: Config, new: Config) -> str:
        fed = self.top.federation
        endpoints = fed.endpoints  # the one dict shared by locator, health poller, space reporter, closer
        before = {ep.id: ep for ep in old.endpoints}
        after = {ep.id: ep for ep in new.endpoints}
        added = [eid for eid in after if eid not in before]
        removed = [eid for eid in before if eid not in after]
        changed = [eid for eid in after if eid in before and after[eid] != before[eid]]
        retired = []
        for eid in removed + changed:
            retired.append(endpoints.pop(eid))
        for eid in added + changed:
            endpoints[eid] = make_endpoint(
                after[eid], reactor=self.reactor, presign_reuse=new.locate.presign_reuse, instance=fed.instance
            )
        for endpoint in retired:
            self.reactor.callLater(CLOSE_GRACE, lambda e=endpoint: ensureDeferred(close_endpoint(e)))
        # keep this order: the dict above first, then everything keyed by endpoint id
        health = fed.health
        for eid in removed:
            health.states.pop(eid, None)
            self.top.space.measurements.pop(eid, None)
        for eid in added:
            health.states[eid] = EndpointHealth(eid, new.health.failures_to_offline, new.health.successes_to_online)
            self.top.space.measurements[eid] = Measurement()
        namespace = Namespace((ep.id, f, e) for ep in new.endpoints for f, e in ep.mappings)
        mappings_changed = [(ep.id, ep.mappings) for ep in old.endpoints] != [
            (ep.id, ep.mappings) for ep in new.endpoints
        ]
        fed.reconfigure(new, namespace, added + changed, removed)
        self.top.resource.refresh_local()
        if added or removed or mappings_changed:
            dropped = fed.locator.local.drop_negative()
            fed.locator.generation += 1
            log.info("reload: dropped {n} cached 'not found' answers (the endpoints changed)", n=dropped)
        parts = []
        for word, ids in (("added", added), ("removed", removed), ("changed", changed)):
            if ids:
                parts.append(f"{word} {', '.join(sorted(ids))}")
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "reloads": self.reloads,
            "refused": self.refused,
            "last_error": self.last_error,
            "needs_restart": list(self.needs_restart),
        }
