"""Every configuration key is documented in docs/configuration.md and shown in conf/fedd.conf (issue 15).

The key list comes from the schema (`fedd.config.schema.SECTIONS`, built from the dataclass fields),
so a key added to a section fails here until it is documented in its section's table and written,
commented or not, in its section of the shipped example; a key the docs or the example name that the
schema does not have fails too. The `kinds` column of the `[endpoint ID]` table must say what
`fedd.config.endpoints` enforces.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedd.config.endpoints import KINDS, field_of, kinds_taking
from fedd.config.schema import READER_KEYS, SECTIONS
from fedd.config.values import ENDPOINT_KINDS

ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
CONF = (ROOT / "conf" / "fedd.conf").read_text(encoding="utf-8")
_KEY = re.compile(r"[a-z][a-z0-9_]*")

Where = tuple[str, str]  # (section, key)


def schema_keys() -> set[Where]:
    keys = {(section, key) for section, table in SECTIONS.items() for key in table}
    return keys | {(section, key) for section, names in READER_KEYS.items() for key in names}


def doc_rows(text: str) -> dict[Where, list[str]]:
    """The table rows of each `## [section]` part (its ### parts included) whose first cell names
    keys in backquotes: {(section, key): the row's cells}."""
    rows: dict[Where, list[str]] = {}
    section = None
    for line in text.split("\n"):
        if match := re.match(r"^## `\[([a-z]+)", line):
            section = match.group(1)
        elif line.startswith("## "):
            section = None
        elif section and line.startswith("| "):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            names = re.findall(r"`([^`]*)`", cells[0])
            if names and all(_KEY.fullmatch(n) for n in names):
                rows.update({(section, n): cells for n in names})
    return rows


def conf_lines(text: str) -> dict[Where, list[str]]:
    """`key = value` lines of the example, commented or not, by section: {(section, key): values}."""
    found: dict[Where, list[str]] = {}
    section = None
    for line in text.split("\n"):
        body = line.strip().lstrip("#;").strip()
        if match := re.fullmatch(r"\[([a-z]+)(?: [^\]]+)?\]", body):
            section = match.group(1)
        elif section and (match := re.fullmatch(r"([a-z][a-z0-9_]*)\s*=(.*)", body)):
            found.setdefault((section, match.group(1)), []).append(match.group(2).strip())
    return found


def test_the_extractors_see_what_is_written() -> None:
    """The two readers above find a key, and miss it once its row or line is gone."""
    docs = "## `[server]`\n| key | default |\n|---|---|\n| `listen` (repeatable) | x |\n| `lat`, `lon` | y |\n"
    assert set(doc_rows(docs)) == {("server", "listen"), ("server", "lat"), ("server", "lon")}
    assert ("server", "listen") not in doc_rows(docs.replace("`listen`", "listen"))
    assert ("server", "lat") not in doc_rows(docs.replace("## `[server]`", "## Format"))
    conf = "[server]\nlisten = a\n#[endpoint x]\n#kind = s3\n# Prose, not a key: x = y\n"
    assert conf_lines(conf) == {("server", "listen"): ["a"], ("endpoint", "kind"): ["s3"]}
    assert ("endpoint", "kind") not in conf_lines(conf.replace("#[endpoint x]", "#[locate]"))


def test_every_key_is_documented() -> None:
    missing = sorted(schema_keys() - set(doc_rows(DOCS)))
    assert not missing, f"keys missing from docs/configuration.md: {missing}"


def test_docs_document_no_unknown_key() -> None:
    unknown = sorted(set(doc_rows(DOCS)) - schema_keys())
    assert not unknown, f"docs/configuration.md documents keys fedd does not have: {unknown}"


def test_every_key_is_in_the_example() -> None:
    missing = sorted(schema_keys() - set(conf_lines(CONF)))
    assert not missing, f"keys missing from conf/fedd.conf (write them, commented if need be): {missing}"


def test_example_names_no_unknown_key() -> None:
    unknown = sorted(set(conf_lines(CONF)) - schema_keys())
    assert not unknown, f"conf/fedd.conf names keys fedd does not have: {unknown}"


def test_example_values_parse() -> None:
    """Commented examples are values fedd would take (the active ones are parsed in test_config)."""
    bad = []
    for (section, key), texts in conf_lines(CONF).items():
        parse = SECTIONS[section][key].parse if key in SECTIONS.get(section, {}) else None
        for text in texts:
            if parse is None or not text:
                continue
            try:
                parse(text)
            except ValueError as exc:
                bad.append(f"[{section}] {key} = {text}: {exc}")
    assert not bad


def _kinds_cell(cell: str) -> set[str]:
    if cell == "all":
        return set(ENDPOINT_KINDS)
    if cell.startswith("all but "):
        return set(ENDPOINT_KINDS) - {k.strip() for k in cell[len("all but ") :].split(",")}
    return {k.strip() for k in cell.split(",")}


def _endpoint_table() -> dict[str, list[str]]:
    """Rows of the first table of `## [endpoint ID]` (the one with the kinds column), by key."""
    part = DOCS.split("## `[endpoint ID]`", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    return {key: cells for (_, key), cells in doc_rows("## `[endpoint ID]`" + part).items()}


@pytest.mark.parametrize("key", sorted(SECTIONS["endpoint"]))
def test_endpoint_kinds_column_says_what_is_enforced(key: str) -> None:
    row = _endpoint_table().get(key)
    assert row is not None, f"{key} is missing from the [endpoint ID] table"
    attr = field_of(SECTIONS["endpoint"][key].attr)
    assert _kinds_cell(row[1]) == set(kinds_taking(attr)), (key, row[1], kinds_taking(attr))


def test_every_kind_needs_keys_it_takes() -> None:
    for kind in KINDS.values():
        assert all(kinds_taking(key) and kind.name in kinds_taking(key) for key in kind.needs), kind
