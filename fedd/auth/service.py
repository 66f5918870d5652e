"""The `auth` service: who is asking (token, certificate, nobody) and whether they may.

Rules (access file, grid-mapfile) are re-read when their files change, every `reload_interval`;
a file with errors is refused with every error and line logged, and the rules in force stay.

Decisions are taken at the clock's time of each request (time-bounded rules change effect at their
exact time, with no reload) and cached only until the rules' next change.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from fedd.auth.identity import ANONYMOUS, Identity
from fedd.auth.policy import Decision, children_with_rules, decide, in_force, next_change
from fedd.auth.rules import Rule, RulesError, format_time, parse_access, parse_gridmap
from fedd.auth.tls import GridContextFactory
from fedd.auth.tokens import TokenError, TokenVerifier
from fedd.auth.x509id import identity_from_chain
from fedd.config import Config
from fedd.periodic import Periodic
from fedd.twtypes import Service

log = Logger(namespace="fedd.auth")
CACHE_ENTRIES = 65536


class Unauthenticated(Exception):
    """Credentials were presented and refused (bad token, ...): 401 with this reason."""


class AuthService(Service):
    name = "auth"

    def __init__(
        self,
        *,
        clock: Any,
        access_file: str,
        gridmap_file: str = "",
        verifier: TokenVerifier | None = None,
        reload_interval: float = 60.0,
        tls: GridContextFactory | None = None,
        vomsdir: str = "",
        limited_proxies: str = "read-only",
        ca_reload_interval: float = 3600.0,
    ) -> None:
        self.tls = tls
        self.vomsdir = vomsdir
        self.limited_proxies = limited_proxies
        self.ca_reload_interval = ca_reload_interval
        self._ca_loop: Periodic | None = None
        self.clock = clock
        self.access_file = access_file
        self.gridmap_file = gridmap_file
        self.verifier = verifier
        self.reload_interval = reload_interval
        self.rules: list[Rule] = []
        self.gridmap: dict[str, str] = {}
        self._mtimes: dict[str, float | None] = {}
        self._tokens: OrderedDict[bytes, tuple[float, Identity]] = OrderedDict()
        self._decisions: dict[tuple[Identity, str, str], Decision] = {}
        self._decided_until: float | None = None  # the cached decisions hold until this time (None: ever)
        self._loop: Periodic | None = None
        self.reloads = self.reload_errors = 0
        self.load(initial=True)

    # --- rules ----------------------------------------------------------------------------------

    def _changed(self, path: str) -> bool:
        try:
            mtime: float | None = os.stat(path).st_mtime_ns
        except OSError:
            mtime = None
        if self._mtimes.get(path, -1) == mtime:
            return False
        self._mtimes[path] = mtime
        return True

    def load(self, *, initial: bool = False) -> None:
        """(Re)read the rule files that changed. At start an error is fatal; later it is logged."""
        access_changed = self._changed(self.access_file)
        gridmap_changed = bool(self.gridmap_file) and self._changed(self.gridmap_file)
        if not (access_changed or gridmap_changed or initial):
            return
        try:
            with open(self.access_file, encoding="utf-8") as f:
                rules = parse_access(f.read(), self.access_file)
            gridmap = self.gridmap
            if self.gridmap_file:
                with open(self.gridmap_file, encoding="utf-8") as f:
                    gridmap = parse_gridmap(f.read(), self.gridmap_file)
        except (OSError, UnicodeDecodeError, RulesError) as exc:
            errors = exc.errors if isinstance(exc, RulesError) else [str(exc)]
            if initial:
                raise
            self.reload_errors += 1
            self._mtimes.clear()  # try again next time even if the file is not touched
            log.error(
                "authorisation files not reloaded, the previous rules stay in force:\n  {errors}",
                errors="\n  ".join(errors),
            )
            return
        self.rules, self.gridmap = rules, gridmap
        self._decisions.clear()
        self._decided_until = next_change(rules, self.clock.seconds())
        self._tokens.clear()
        self.reloads += 1
        if not initial:
            log.info("authorisation rules reloaded: {n} rules, {m} grid-mapfile entries", n=len(rules), m=len(gridmap))

    def reload(self) -> None:
        """Re-read the rule files that changed now (SIGHUP) instead of at the next interval."""
        self.load()

    def reconfigure(self, new: Config) -> list[str]:
        """A reload re-reads the rule files at once; on errors the previous rules stay. (Adding or
        removing `[auth]` itself, or issuers, needs a restart: `fedd.reload.FixedAtStart` says so.)"""
        try:
            self.load()
        except Exception:
            log.failure("reload: re-reading the access rules failed; the previous rules stay")
        return []

    def startService(self) -> None:
        super().startService()
        self._loop = Periodic(self.clock, self.load, "rule reload").start(self.reload_interval, now=False)
        if self.tls is not None:
            ca_reload = Periodic(self.clock, self.tls.reload, "CA reload")
            self._ca_loop = ca_reload.start(self.ca_reload_interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        for loop in (self._loop, self._ca_loop):
            if loop is not None and loop.running:
                loop.stop()

    # --- identities and decisions ---------------------------------------------------------------

    def with_account(self, who: Identity) -> Identity:
        user = self.gridmap.get(who.subject, "")
        if not user:
            return who
        return replace(who, user=user)

    def from_token(self, authorization: bytes) -> Deferred[Identity]:
        """Identity of an `Authorization: Bearer` header; fails with Unauthenticated."""
        if self.verifier is None:
            raise Unauthenticated("bearer tokens are not accepted here (no [issuer] configured)")
        token = authorization[7:].strip()
        key = hashlib.sha256(token).digest()
        hit = self._tokens.get(key)
        now = self.clock.seconds()
        if hit is not None and hit[0] > now:
            return succeed(hit[1])
        d = self.verifier.verify(token.decode("ascii", "replace"))

        def ok(who: Identity) -> Identity:
            who = self.with_account(who)
            # re-verified at least every minute, and never used past its expiry
            self._tokens[key] = (min(now + 60.0, who.expires or now), who)
            if len(self._tokens) > CACHE_ENTRIES:
                self._tokens.popitem(last=False)
            return who

        def bad(failure: Any) -> Any:
            if failure.check(TokenError):
                raise Unauthenticated(str(failure.value))
            return failure

        return d.addCallbacks(ok, bad)

    def from_certificate(self, chain: list[x509.Certificate]) -> Identity:
        """Identity of a TLS client chain already verified in the handshake (one per connection)."""
        assert self.tls is not None
        now = datetime.fromtimestamp(self.clock.seconds(), UTC)
        return self.with_account(identity_from_chain(chain, vomsdir=self.vomsdir, cas=self.tls.cas, now=now))

    def decide(self, who: Identity, letter: str, path: str) -> Decision:
        if who.limited_proxy and (
            self.limited_proxies == "deny" or (self.limited_proxies == "read-only" and letter in "wd")
        ):
            return Decision(False, f"limited proxies may not do this (limited_proxies = {self.limited_proxies})")
        now = self.clock.seconds()
        if self._decided_until is not None and now >= self._decided_until:
            # a rule started or stopped granting: no decision taken before may be reused
            self._decisions.clear()
            self._decided_until = next_change(self.rules, now)
        key = (who, letter, path)
        hit = self._decisions.get(key)
        if hit is None:
            hit = decide(who, letter, path, self.rules, now)
            if len(self._decisions) >= CACHE_ENTRIES:
                self._decisions.clear()
            self._decisions[key] = hit
        return hit

    def listing_filter(self, who: Identity, path: str) -> Callable[[str], bool] | None:
        """For a listing of `path` that `who` was allowed: which child names it may show (None: all).
        A child with rules of its own is shown only if `who` may read or list it now; the others
        are decided by the same rules as `path`, which allowed the listing."""
        base = "/" + "/".join(s for s in path.split("/") if s)
        guarded = children_with_rules(base, self.rules)
        if not guarded:
            return None
        parent = base.rstrip("/")

        def shown(name: str) -> bool:
            if name not in guarded:
                return True
            child = f"{parent}/{name}"
            return self.decide(who, "r", child).allowed or self.decide(who, "l", child).allowed

        return shown

    def embargoes(self) -> dict[str, Any]:
        """The time bounds in force now and the next time a decision changes (status JSON)."""
        now = self.clock.seconds()
        rules = [
            {
                "rule": r.where,
                "prefix": r.prefix,
                "principal": r.principal,
                "letters": "".join(sorted(r.letters, key="rlwd".index)),
                "from": r.valid_from,
                "until": r.valid_until,
                "from_iso": format_time(r.valid_from) if r.valid_from is not None else None,
                "until_iso": format_time(r.valid_until) if r.valid_until is not None else None,
                "state": state,
            }
            for r, state in in_force(self.rules, now)
        ]
        change = next_change(self.rules, now)
        return {"embargoes": rules, "next_change": change}

    def to_json(self) -> dict[str, Any]:
        return {
            **self.embargoes(),
            "access_file": self.access_file,
            "gridmap_file": self.gridmap_file or None,
            "rules": len(self.rules),
            "gridmap_entries": len(self.gridmap),
            "reloads": self.reloads,
            "reload_errors": self.reload_errors,
            "token_issuers": sorted(self.verifier.issuers) if self.verifier else [],
        }


ANONYMOUS_IDENTITY = ANONYMOUS
