"""The one authorisation decision: (identity, method, path) -> allow/deny with a reason. Pure.

Tokens that carry WLCG storage scopes are decided by their scopes alone (storage.read for r/l,
storage.create or storage.modify for w, storage.modify for d; scope paths are prefixes on whole path
components, already made absolute by the token verifier). Everything else (certificates, tokens with
groups only, anonymous) is decided by the access rules: the longest prefix with rules decides.

Time: every decision takes `now` (the reactor's clock). A time-bounded rule grants only inside its
window, but its prefix decides whatever the time: when all its rules are outside their windows the
prefix grants nothing and never falls back to a shorter one, so an embargo cannot leak before its
time. Decisions change only at the rules' times (`next_change`), so a cache of decisions is valid
until then. A listing names a child that has rules of its own only to identities that may read or
list it (`children_with_rules`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedd.auth.identity import Identity
from fedd.auth.rules import Rule, format_time
from fedd.namespace import is_under

METHOD_LETTER = {
    b"GET": "r",
    b"HEAD": "r",
    b"PROPFIND": "l",
    b"PUT": "w",
    b"MKCOL": "w",
    b"MOVE": "w",
    b"COPY": "w",
    b"DELETE": "d",
}
LETTER_WORD = {"r": "read", "l": "list", "w": "write", "d": "delete"}
SCOPES_FOR = {
    "r": ("storage.read", "storage.stage"),
    "l": ("storage.read", "storage.stage"),
    "w": ("storage.create", "storage.modify"),
    "d": ("storage.modify",),
}


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


def storage_scopes(who: Identity) -> list[tuple[str, str]]:
    out = []
    for scope in who.scopes:
        name, sep, path = scope.partition(":")
        if sep and name.startswith("storage."):
            out.append((name, path))
    return out


def decide(who: Identity, letter: str, path: str, rules: Sequence[Rule], now: float) -> Decision:
    word = LETTER_WORD[letter]
    scoped = storage_scopes(who) if who.kind == "token" else []
    if scoped or who.storage_scoped:
        for name, prefix in scoped:
            if name in SCOPES_FOR[letter] and is_under(path, prefix):
                return Decision(True, f"token scope {name}:{prefix}")
        return Decision(False, f"no token scope allows {word} on {path}")
    matching = [r for r in rules if is_under(path, r.prefix)]
    if not matching:
        return Decision(False, f"no access rule covers {path}")
    longest = max(len(r.prefix) for r in matching)
    at_prefix = [r for r in matching if len(r.prefix) == longest]
    theirs = [r for r in at_prefix if letter in r.letters and r.matches(who)]
    granted = [r for r in theirs if r.active(now)]
    if granted:
        return Decision(True, f"{granted[0].where}: {granted[0].prefix} {granted[0].principal}")
    reason = f"{word} on {at_prefix[0].prefix} not granted to {who.label()}"
    # their own grant outside its window: say when it opens or when it ended (nobody else's times)
    opens = [r.valid_from for r in theirs if r.valid_from is not None and r.valid_from > now]
    if opens:
        return Decision(False, f"{reason} before {format_time(min(opens))}")
    ended = [r.valid_until for r in theirs if r.valid_until is not None and r.valid_until <= now]
    if ended:
        return Decision(False, f"{reason} since {format_time(max(ended))}")
    return Decision(False, reason)


def children_with_rules(path: str, rules: Sequence[Rule]) -> frozenset[str]:
    """Names of the children of `path` (a normalised prefix) that are a rule's prefix. Every other
    child is decided by the same rules as `path` itself, so a listing allowed on `path` may show it."""
    base = "" if path == "/" else path
    names = set()
    for r in rules:
        if r.prefix.startswith(base + "/") and "/" not in r.prefix[len(base) + 1 :]:
            names.add(r.prefix[len(base) + 1 :])
    return frozenset(n for n in names if n)


def next_change(rules: Sequence[Rule], now: float) -> float | None:
    """The first time after `now` at which a rule starts or stops granting (None: never)."""
    return min((t for r in rules for t in r.bounds() if t > now), default=None)


def in_force(rules: Sequence[Rule], now: float) -> list[tuple[Rule, str]]:
    """The time bounds that matter at `now`: rules that will start (`pending`) and rules granting now
    that will stop (`expiring`), by the time of their next change. Ended rules are left out."""
    out: list[tuple[float, Rule, str]] = []
    for r in rules:
        if r.valid_from is not None and r.valid_from > now:
            out.append((r.valid_from, r, "pending"))
        elif r.valid_until is not None and r.valid_until > now:
            out.append((r.valid_until, r, "expiring"))
    out.sort(key=lambda item: (item[0], item[1].where))
    return [(r, state) for _, r, state in out]
