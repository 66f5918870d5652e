"""The line-oriented reader: text and files in, sections of parsed values out, every error with file:line.

The reader knows the keys (`schema.SECTIONS`) but not what they mean together: it parses each value,
rejects unknown sections and keys, repeated keys and bad section headers, follows `include =`
(`[server]`, relative to the including file, glob patterns, loops refused) and makes the values of
file keys relative to the file they are written in. It collects every error and never raises.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedd.config.schema import NAMED_SECTIONS, SECTIONS
from fedd.config.values import ID_RE


@dataclass
class Section:
    """One `[name arg]` as read: parsed values by field name (lists for repeatable keys), and the
    file:line of each field's first key (`where` is the header's)."""

    name: str
    arg: str
    where: str
    values: dict[str, Any] = field(default_factory=dict)
    lines: dict[str, str] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # field name -> the key as written


class Reader:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self.errors: list[str] = []
        self.sections: list[Section] = []
        self.files: list[str] = []
        self.environ = environ

    def read_file(self, path: str, where: str) -> None:
        real = os.path.realpath(path)
        if real in self.files:
            self.errors.append(f"{where}: {path} is included twice (include loop?)")
            return
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.errors.append(f"{where}: cannot read {path}: {exc}")
            return
        self.files.append(real)
        self.read_text(text, path)

    def read_text(self, text: str, name: str) -> None:
        current: Section | None = None
        # lines end at \n only, as in editors: str.splitlines also splits at \x0c, \x85, \u2028, ...
        for number, raw in enumerate(text.split("\n"), 1):
            where = f"{name}:{number}"
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                current = self._start_section(line, where)
                continue
            key, sep, value = line.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not key:
                self.errors.append(f"{where}: expected 'key = value' or '[section]', got {line!r}")
                continue
            if current is None:
                self.errors.append(f"{where}: {key!r} outside of any [section]")
                continue
            if current.name == "server" and key == "include":
                self._include(value, name, where)
                continue
            self._set(current, key, value, name, where)

    def _start_section(self, line: str, where: str) -> Section | None:
        if not line.endswith("]"):
            self.errors.append(f"{where}: malformed section header {line!r}")
            return None
        name, _, arg = line[1:-1].strip().partition(" ")
        arg = arg.strip()
        if name not in SECTIONS:
            self.errors.append(f"{where}: unknown section [{name}] (known: {', '.join(SECTIONS)})")
            return None
        if name in NAMED_SECTIONS:
            if not ID_RE.match(arg):
                self.errors.append(f"{where}: {name} needs an id of letters, digits, '.-_': [{line[1:-1]}]")
                return None
            for other in self.sections:
                if other.name == name and other.arg == arg:
                    self.errors.append(f"{where}: {name} {arg!r} already defined at {other.where}")
                    return None
        elif arg:
            self.errors.append(f"{where}: section [{name}] takes no argument")
            return None
        section = Section(name, arg, where)
        self.sections.append(section)
        return section

    def _include(self, pattern: str, name: str, where: str) -> None:
        base = os.path.dirname(os.path.abspath(name)) if os.path.exists(name) else os.getcwd()
        full = os.path.join(base, pattern)
        matches = sorted(glob.glob(full))
        if not matches and not glob.has_magic(full):
            self.errors.append(f"{where}: include {pattern!r}: no such file")
        for path in matches:
            self.read_file(path, where)

    def _set(self, section: Section, key: str, value: str, name: str, where: str) -> None:
        schema = SECTIONS[section.name].get(key)
        if schema is None:
            known = ", ".join(sorted(SECTIONS[section.name]))
            self.errors.append(f"{where}: unknown key {key!r} in [{section.name}] (known: {known})")
            return
        if schema.file and value and value != "builtin" and not os.path.isabs(value):
            value = os.path.join(os.path.dirname(os.path.abspath(name)), value)
        try:
            parsed = schema.parse(value)
        except ValueError as exc:
            self.errors.append(f"{where}: {key}: {exc}")
            return
        attr = schema.attr
        if schema.repeat:
            section.values.setdefault(attr, []).append(parsed)
        elif attr in section.values:
            self.errors.append(f"{where}: {key!r} repeated (first at {section.lines[attr]})")
            return
        else:
            section.values[attr] = parsed
        section.lines.setdefault(attr, where)
        section.keys.setdefault(attr, key)


def resolve_secret(
    values: dict[str, Any], name: str, environ: Mapping[str, str], where: str, errors: list[str]
) -> None:
    """`name`, `name_file` (a file's text, stripped) or `name_env` (an environment variable): the one
    given becomes values[name]."""
    sources = [k for k in (name, f"{name}_file", f"{name}_env") if k in values]
    if len(sources) > 1:
        errors.append(f"{where}: give only one of {', '.join(sources)}")
        return
    if f"{name}_file" in values:
        path = values.pop(f"{name}_file")
        try:
            values[name] = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            errors.append(f"{where}: {name}_file: cannot read {path}: {exc.strerror}")
    elif f"{name}_env" in values:
        var = values.pop(f"{name}_env")
        if var not in environ:
            errors.append(f"{where}: {name}_env: environment variable {var} is not set")
        else:
            values[name] = environ[var]
