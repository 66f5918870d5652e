"""How a configuration key is declared: a dataclass field whose default is the key's default and whose
metadata (set by `key`, or `declare` for a field without a default) says how its text is parsed;
`keys_of` builds from the fields the table (`Key`) the reader checks a section's keys against, so a
key is named in one place only (fedd.config.schema). A field's name is its key unless the
declaration names the key (`site = ...` fills `sites`); repeatable keys collect a tuple that replaces
the default. Fields declared `secret` also take `<key>_file` and `<key>_env` (resolved by
`fedd.config.secrets`) and are kept out of repr.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from fedd.config import values as v

T = TypeVar("T")
_META = "fedd.config"


@dataclass(frozen=True)
class _Declaration:
    parse: Callable[[str], Any]
    name: str
    repeat: bool
    file: bool
    secret: bool


def declare(
    parse: Callable[[str], Any], *, name: str = "", repeat: bool = False, file: bool = False, secret: bool = False
) -> dict[str, Any]:
    """The metadata of a field that is a configuration key (for fields without a default)."""
    return {_META: _Declaration(parse, name, repeat, file, secret)}


def key(
    parse: Callable[[str], Any],
    default: T,
    *,
    name: str = "",
    repeat: bool = False,
    file: bool = False,
    secret: bool = False,
    hidden: bool = False,
) -> T:
    """A field that is a configuration key. `name`: the key, when it differs from the field (repeatable
    keys fill a plural field); `file`: a relative value is relative to the file it is written in;
    `secret`: also `<key>_file`/`<key>_env`, never in repr; `hidden`: never in repr (may hold a password)."""
    metadata = declare(parse, name=name, repeat=repeat, file=file, secret=secret)
    made: T = field(default=default, repr=not (secret or hidden), metadata=metadata)
    return made


@dataclass(frozen=True)
class Key:
    """One key of a section as the reader sees it: its parser and the field it sets."""

    parse: Callable[[str], Any]
    attr: str
    repeat: bool = False
    file: bool = False


def keys_of(cls: type) -> dict[str, Key]:
    """The keys of a section's dataclass, by the name written in the configuration."""
    table: dict[str, Key] = {}
    for f in fields(cls):
        decl = f.metadata.get(_META)
        if decl is None:
            continue
        table[decl.name or f.name] = Key(decl.parse, f.name, decl.repeat, decl.file)
        if decl.secret:
            table[f"{f.name}_file"] = Key(v.text, f"{f.name}_file", file=True)
            table[f"{f.name}_env"] = Key(v.text, f"{f.name}_env")
    return table


def secret_keys(cls: type) -> tuple[str, ...]:
    """The fields of `cls` that may also be given as `<key>_file` or `<key>_env`."""
    return tuple(f.name for f in fields(cls) if (d := f.metadata.get(_META)) is not None and d.secret)
