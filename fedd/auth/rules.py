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

Time bounds (embargoes, grants that expire): after the letters, `from=<time>` and/or `until=<time>`,
ISO 8601 with a timezone (`2027-01-01T00:00Z`, `2027-01-01T01:00+01:00`). A rule grants only while
`from <= now < until`; outside that window it grants nothing, but its prefix still has rules and still
decides (an embargoed prefix never falls back to a more open shorter prefix). Times without a
timezone, unparsable times, a repeated bound or `from` not before `until` are errors with file:line.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime

from fedd.auth.identity import Identity

LETTERS = frozenset("rlwd")
BOUNDS = ("from", "until")
_DN_RE = re.compile(r"^/[A-Za-z][A-Za-z0-9.]*=")
# ISO 8601 calendar date and time with a zone, extended or basic: 2027-01-01T00:00Z, 20270101T000000+0100
_TIME_RE = re.compile(
    r"[0-9]{4}(-?)[0-9]{2}\1[0-9]{2}[T ][0-9]{2}(:?[0-9]{2}(:?[0-9]{2}([.,][0-9]{1,9})?)?)?"
    r"(Z|[+-][0-9]{2}(:?[0-9]{2})?)?"
)


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


def parse_time(text: str) -> float:
    """An ISO 8601 time with a timezone as epoch seconds; ValueError for anything else."""
    try:
        if not _TIME_RE.fullmatch(text):
            raise ValueError
        when = datetime.fromisoformat(text.replace(",", "."))
    except ValueError:
        raise ValueError(f"expected an ISO 8601 time with a timezone such as 2027-01-01T00:00Z, got {text!r}") from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{text!r} has no timezone: add Z (UTC) or an offset such as +01:00")
    try:
        return when.astimezone(UTC).timestamp()
    except OverflowError:
        raise ValueError(f"{text!r} is out of range") from None


def format_time(seconds: float) -> str:
    """Epoch seconds as ISO 8601 UTC (`2027-01-01T00:00:00Z`), as the access file may write them."""
    try:
        return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return f"{seconds:.0f} s after 1970"


@dataclass(frozen=True)
class Rule:
    prefix: str
    principal: str
    letters: frozenset[str]
    where: str
    valid_from: float | None = None  # epoch seconds; the rule grants from this time on (inclusive)
    valid_until: float | None = None  # and up to this time (exclusive)

    def active(self, now: float) -> bool:
        return (self.valid_from is None or self.valid_from <= now) and (
            self.valid_until is None or now < self.valid_until
        )

    def bounds(self) -> tuple[float, ...]:
        return tuple(t for t in (self.valid_from, self.valid_until) if t is not None)

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
        if len(parts) < 3:
            errors.append(f"{where}: expected '<path prefix> <principal> <letters>', got {line!r}")
            continue
        prefix, principal, letters = parts[:3]
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
        try:
            bounds = _time_bounds(parts[3:])
        except ValueError as exc:
            errors.append(f"{where}: {exc}")
            continue
        rules.append(Rule(prefix, principal, frozenset(letters), where, bounds.get("from"), bounds.get("until")))
    if errors:
        raise RulesError(errors)
    return rules


def _time_bounds(options: list[str]) -> dict[str, float]:
    bounds: dict[str, float] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key not in BOUNDS:
            raise ValueError(f"expected from=<time> or until=<time> after the letters, got {option!r}")
        if key in bounds:
            raise ValueError(f"{key}= given twice")
        try:
            bounds[key] = parse_time(value)
        except ValueError as exc:
            raise ValueError(f"{key}=: {exc}") from None
    if "from" in bounds and "until" in bounds and bounds["from"] >= bounds["until"]:
        start, end = format_time(bounds["from"]), format_time(bounds["until"])
        raise ValueError(f"from={start} is not before until={end}: the rule would never grant")
    return bounds
