"""The one authorisation decision: (identity, method, path) -> allow/deny with a reason. Pure.

Tokens that carry WLCG storage scopes are decided by their scopes alone (storage.read for r/l,
storage.create or storage.modify for w, storage.modify for d; scope paths are prefixes on whole path
components, already made absolute by the token verifier). Everything else (certificates, tokens with
groups only, anonymous) is decided by the access rules: the longest prefix with rules decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedd.auth.identity import Identity
from fedd.auth.rules import Rule
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


def decide(who: Identity, letter: str, path: str, rules: Sequence[Rule]) -> Decision:
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
    granted = [r for r in at_prefix if r.matches(who) and letter in r.letters]
    if granted:
        return Decision(True, f"{granted[0].where}: {granted[0].prefix} {granted[0].principal}")
    return Decision(False, f"{word} on {at_prefix[0].prefix} not granted to {who.label()}")
