"""State writes that outlive the process: a write made of plain SQL statements (`Sql`) can be saved
to a local file when fedd stops with it still queued (the database unreachable), and is queued again,
ahead of new writes, at the next start.

The file (`[state] queue_file`, one per worker) holds one JSON object per line: `{"what": ...,
"statements": [[sql, [params...]], ...], "bumps": [table, ...]}`. It is written whole to a temporary
name and renamed, read at start and removed once its writes are queued again (a stop before they
reach the database saves them once more). A line that cannot be read is logged and skipped: the rest
still counts. Writes given as Python functions (not `Sql`) cannot be saved; their number is logged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from fedd.state.database import Cursor

log = Logger(namespace="fedd.state")
Params = tuple[str | int | float | None, ...]


@dataclass(frozen=True)
class Sql:
    """A write as statements run in order in one transaction, then `bumps` (tables whose watchers
    on every host re-read them). Callable on a cursor like any other state write."""

    statements: tuple[tuple[str, Params], ...]
    bumps: tuple[str, ...] = ()

    def __call__(self, cursor: Cursor) -> None:
        for sql, params in self.statements:
            cursor.execute(sql, params)
        for table in self.bumps:
            cursor.execute("UPDATE changes SET serial = serial + 1 WHERE name = ?", (table,))

    def to_json(self, what: str) -> dict[str, Any]:
        return {"what": what, "statements": [[s, list(p)] for s, p in self.statements], "bumps": list(self.bumps)}

    @classmethod
    def from_json(cls, data: Any) -> tuple[str, Sql]:
        if not isinstance(data, dict) or not isinstance(data.get("what"), str):
            raise ValueError("not a saved state write")
        statements = []
        for item in data.get("statements", ()):
            sql, params = item
            if not isinstance(sql, str) or not isinstance(params, list):
                raise ValueError("a statement is not [sql, [params]]")
            if not all(p is None or isinstance(p, str | int | float) for p in params):
                raise ValueError("a parameter is not a string, number or null")
            statements.append((sql, tuple(params)))
        bumps = data.get("bumps", [])
        if not isinstance(bumps, list) or not all(isinstance(b, str) for b in bumps):
            raise ValueError("bumps is not a list of table names")
        return data["what"], cls(tuple(statements), tuple(bumps))


def save(path: str, writes: Iterable[tuple[str, Sql]]) -> int:
    """Write `writes` to `path` (replacing it); returns how many were saved."""
    lines = [json.dumps(sql.to_json(what), separators=(",", ":")) for what, sql in writes]
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write("".join(line + "\n" for line in lines))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return len(lines)


def load(path: str) -> list[tuple[str, Sql]]:
    """The writes saved in `path` (none when it does not exist); unreadable lines are logged."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines: Sequence[str] = fh.read().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(Sql.from_json(json.loads(line)))
        except (ValueError, TypeError) as exc:
            log.error(
                "{path}:{line}: skipped a saved state write that cannot be read ({reason})",
                path=path,
                line=number,
                reason=exc,
            )
    return out


def restore(path: str) -> list[tuple[str, Sql]]:
    """At start: the writes the last stop saved in `path` (logged), the file removed."""
    if not path:
        return []
    saved = load(path)
    if saved:
        log.info("{n} state write(s) saved at the last stop queued again from {path}", n=len(saved), path=path)
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.error("cannot remove {path}: {reason}", path=path, reason=exc)
    return saved


def keep(path: str, queued: Sequence[tuple[str, object]], where: str) -> int:
    """At a stop with writes still queued for the database `where`: save those that are `Sql` to
    `path` (when set) and log what was saved and what is lost; returns how many were saved."""
    savable = [(what, work) for what, work in queued if isinstance(work, Sql)]
    saved = 0
    if savable and path:
        try:
            saved = save(path, savable)
        except OSError as exc:
            log.error("cannot save queued state writes to {path}: {reason}", path=path, reason=exc)
    if saved:
        log.warn(
            "{n} state write(s) not written at shutdown (database {db}) saved to {path}: written after the next start",
            n=saved,
            db=where,
            path=path,
        )
    if len(queued) > saved:
        log.warn("{n} state write(s) not written at shutdown (database {db}) and lost", n=len(queued) - saved, db=where)
    return saved
