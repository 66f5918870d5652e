"""Site authorisation files, parsed into values. Pure: text in, rules out, errors with line numbers.

grid-mapfile: `"/DC=ch/DC=cern/OU=Users/CN=Jane Doe" atlas001` (quoted DN, then account or VO;
several accounts separated by commas: the first counts).

access file (Dynafed style): `<path prefix> <principal> <letters>`, letters from r (read), l (list),
w (write), d (delete). Principals:
- `anonymous`: everyone, also without credentials; `authenticated`: anyone with a certificate or token;
- a DN in double quotes or starting with `/XX=` (`"/DC=ch/DC=cern/CN=Jane Doe"`);
- a VOMS FQAN or token group starting with `/` (`/atlas`, `/atlas/Role=production`): matches FQANs and
  groups equal to it or below it (`/atlas` matches `/atlas/Role=production/Capability=NULL`);
- a bare name (`atlas`, `atlas001`): a VO (first FQAN component) or a grid-mapfile account.
The longest prefix that has rules decides; the identity gets the union of the letters of the rules
at that prefix whose principal matches it, nothing from shorter prefixes.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from fedd.auth.identity import Identity

LETTERS = frozenset("rlwd")
_DN_RE = re.compile(r"^/[A-Za-z][A-Za-z0-9.]*=")


class RulesError(Exception):
    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))


def parse_gridmap(text: str, name: str = "<grid-mapfile>") -> dict[str, str]:
    mapping: dict[str, str] = {}
    errors: list[str] = []
    for number, raw in enumerate(text.split("\n"), 1):  # not splitlines: it also splits at \x0c, \x85, ...
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            parts = shlex.split(line)
        except ValueError as exc:
            errors.append(f"{name}:{number}: {exc}")
            continue
        if len(parts) != 2 or not _DN_RE.match(parts[0]) or not parts[1].split(",")[0]:
            errors.append(f"{name}:{number}: expected '\"<DN>\" <account>', got {line!r}")
            continue
        mapping[parts[0]] = parts[1].split(",")[0]
    if errors:
        raise RulesError(errors)
    return mapping


def _normal_prefix(text: str) -> str:
    if not text.startswith("/") or any(s in (".", "..") for s in text.split("/")):
        raise ValueError(f"expected an absolute path prefix, got {text!r}")
    return "/" + "/".join(s for s in text.split("/") if s)


@dataclass(frozen=True)
class Rule:
    prefix: str
    principal: str
    letters: frozenset[str]
    where: str

    def matches(self, who: Identity) -> bool:
        p = self.principal
        if p == "anonymous":
            return True
        if who.anonymous:
            return False
        if p == "authenticated":
            return True
        if _DN_RE.match(p):
            return who.subject == p
        if p.startswith("/"):
            names = who.fqans + who.groups
            return any(n == p or n.startswith(p + "/") for n in names)
        return p == who.user or p in who.vos or ("/" + p) in who.groups


def parse_access(text: str, name: str = "<access file>") -> list[Rule]:
    rules: list[Rule] = []
    errors: list[str] = []
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{name}:{number}"
        try:
            parts = shlex.split(line)
        except ValueError as exc:
            errors.append(f"{where}: {exc}")
            continue
        if len(parts) != 3:
            errors.append(f"{where}: expected '<path prefix> <principal> <letters>', got {line!r}")
            continue
        prefix, principal, letters = parts
        if not principal:  # it would equal the empty account of every identity the grid-mapfile lacks
            errors.append(f"{where}: empty principal")
            continue
        try:
            prefix = _normal_prefix(prefix)
        except ValueError as exc:
            errors.append(f"{where}: {exc}")
            continue
        if not letters or not set(letters) <= LETTERS:
            errors.append(f"{where}: letters must be from 'rlwd', got {letters!r}")
            continue
        rules.append(Rule(prefix, principal, frozenset(letters), where))
    if errors:
        raise RulesError(errors)
    return rules
