"""Reading a Dynafed (UGR) configuration as UGR does: values, lists and INCLUDEd files, with file:line.

UGR's format: `key: value` lines, `#` comments, `key[]: value` appends to a list, `${VAR}` in a value
is taken from the environment (by the translator), `INCLUDE /dir` (or `INCLUDE: /dir`) reads every
`*.conf` in the directory, sorted, after the including file; a repeated key keeps its last value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Entry:
    key: str  # without the `[]` of a list key
    value: str
    where: str
    listed: bool = False

    @property
    def name(self) -> str:
        return self.key + "[]" if self.listed else self.key


@dataclass(frozen=True)
class Remark:
    where: str
    text: str


@dataclass
class UgrConfig:
    values: dict[str, Entry] = field(default_factory=dict)
    arrays: dict[str, list[Entry]] = field(default_factory=dict)
    remarks: list[Remark] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # real paths, in reading order
    names: list[str] = field(default_factory=list)  # the same, as named in remarks


class UgrReadError(Exception):
    """The UGR configuration cannot be read at all."""


def read_ugr(path: str) -> UgrConfig:
    """Read a UGR configuration file and what it INCLUDEs, as UGR does (see the module docstring)."""
    ugr = UgrConfig()
    try:
        _read_file(ugr, path)
    except OSError as exc:
        raise UgrReadError(f"cannot read {path}: {exc.strerror}") from None
    return ugr


def _read_file(ugr: UgrConfig, path: str) -> None:
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    ugr.files.append(os.path.realpath(path))
    ugr.names.append(path)
    includes: list[tuple[str, str]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        where = f"{path}:{number}"
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line[:7].lower() == "include" and (len(line) == 7 or line[7] in " \t:"):
            includes.append((line[7:].lstrip(" \t:").strip(), where))
            continue
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or not key or " " in key:
            ugr.remarks.append(Remark(where, f"malformed line (expected 'key: value'), ignored: {line!r}"))
            continue
        entry = Entry(key.removesuffix("[]"), value, where, key.endswith("[]"))
        if key.endswith("[]"):
            ugr.arrays.setdefault(entry.key, []).append(entry)
        else:
            ugr.values[entry.key] = entry
    for directory, where in includes:
        if not directory.startswith("/"):
            ugr.remarks.append(Remark(where, f"INCLUDE {directory!r}: not an absolute path, ignored (as Dynafed does)"))
            continue
        try:
            names = sorted(n for n in os.listdir(directory) if n.endswith(".conf") and not n.startswith("."))
        except OSError as exc:
            ugr.remarks.append(Remark(where, f"INCLUDE {directory}: {exc.strerror}; nothing included"))
            continue
        for name in names:
            full = os.path.join(directory, name)
            if os.path.realpath(full) in ugr.files:
                ugr.remarks.append(Remark(where, f"INCLUDE {directory}: {full} read already (include loop?)"))
            elif os.path.isfile(full):
                _read_file(ugr, full)
