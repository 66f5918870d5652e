"""Endpoint kinds as the configuration sees them: which keys each kind needs and which it takes.

Every kind takes the keys of `COMMON` (what placement, ranking, space reporting and downtimes read
for any endpoint); beyond those, a kind takes only the keys its implementation in `fedd.endpoints`
reads. A key of another kind is an error naming its file:line and the endpoint's kind: it would be
ignored, and an operator who wrote `bucket` on a dav endpoint means something fedd would not do.
Names are `EndpointConfig` fields; a secret's `_file`/`_env` forms count as the secret.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedd.config.reader import Section, resolve_secret
from fedd.config.schema import SECTIONS, EndpointConfig, secret_keys


@dataclass(frozen=True)
class EndpointKind:
    name: str
    needs: tuple[str, ...]  # given and not empty
    takes: frozenset[str]  # beyond COMMON


COMMON = frozenset(
    {
        "kind",
        "mappings",
        "lat",
        "lon",
        "read",
        "list",
        "write",
        "timeout",  # also the listing idle limit of local endpoints
        "weight",
        "min_free",
        "space_source",
        "share",
        "vos",
        "downtimes",
        "gocdb_hostnames",
    }
)
# what fedd's HTTP client for the endpoint reads, and a capacity for storage that may report none
# (a local endpoint's statvfs always has one)
_HTTP = frozenset({"url", "verify_tls", "ca_file", "quota"})

KINDS: Mapping[str, EndpointKind] = {
    "s3": EndpointKind(
        "s3",
        needs=("url", "bucket", "access_key", "secret_key"),
        takes=_HTTP | {"bucket", "region", "access_key", "secret_key", "presign_expiry", "tpc"},
    ),
    "dav": EndpointKind("dav", needs=("url",), takes=_HTTP | {"health_path", "tpc"}),
    "local": EndpointKind("local", needs=("path",), takes=frozenset({"path"})),
    "azure": EndpointKind(
        "azure",
        needs=("url", "account", "container", "account_key"),
        takes=_HTTP | {"account", "container", "account_key", "presign_expiry"},
    ),
}

SECRETS = secret_keys(EndpointConfig)


def kinds_taking(attr: str) -> tuple[str, ...]:
    """The kinds an endpoint key (field name) applies to."""
    return tuple(k.name for k in KINDS.values() if attr in COMMON or attr in k.takes)


def field_of(attr: str) -> str:
    """The field a key sets: a secret's `_file`/`_env` forms set the secret."""
    for secret in SECRETS:
        if attr in (f"{secret}_file", f"{secret}_env"):
            return secret
    return attr


def check_kind_keys(section: Section, kind: str, errors: list[str]) -> None:
    """An error, at its own line, for every key of `section` that `kind` does not take."""
    spec = KINDS[kind]
    for attr in section.values:
        owner = field_of(attr)
        if owner in COMMON or owner in spec.takes:
            continue
        written = section.keys.get(attr, attr)
        errors.append(
            f"{section.lines[attr]}: endpoint {section.arg!r} (kind {kind}): {written!r} "
            f"only applies to kind {' or '.join(kinds_taking(owner))}"
        )


def build_endpoint(section: Section, environ: Mapping[str, str], errors: list[str]) -> EndpointConfig | None:
    """The EndpointConfig of one `[endpoint ID]`, or None with the reasons appended to `errors`."""
    values: dict[str, Any] = dict(section.values)
    where = section.where
    before = len(errors)
    kind = values.get("kind")
    if kind is None:
        errors.append(f"{where}: endpoint {section.arg!r} has no 'kind'")
        return None
    check_kind_keys(section, kind, errors)
    for name in SECRETS:
        if name in KINDS[kind].takes:  # another kind's key file is not read, only named as an error
            resolve_secret(values, name, environ, where, errors)
    for key in KINDS[kind].needs:
        if not values.get(key):
            errors.append(f"{where}: endpoint {section.arg!r} (kind {kind}) needs {key!r}")
    if ("lat" in values) != ("lon" in values):
        errors.append(f"{where}: endpoint {section.arg!r}: give both lat and lon, or neither")
    if kind == "local" and values.get("write"):
        errors.append(
            f"{where}: endpoint {section.arg!r}: local endpoints are read-only (write = yes needs s3, dav or azure)"
        )
    if kind == "local" and values.get("path") and not os.path.isdir(values["path"]):
        errors.append(f"{where}: endpoint {section.arg!r}: path {values['path']!r} is not a directory")
    if kind == "azure" and values.get("account_key"):
        try:
            base64.b64decode(values["account_key"], validate=True)
        except ValueError:
            errors.append(f"{where}: endpoint {section.arg!r}: account_key is not base64 (copy it from the portal)")
    if "mappings" not in values:
        values["mappings"] = [("/", "/")]
    feds = [m[0] for m in values["mappings"]]
    if len(set(feds)) != len(feds):
        errors.append(f"{where}: endpoint {section.arg!r}: a federation prefix is mapped twice")
    if "none" in values.get("gocdb_hostnames", ()) and len(values["gocdb_hostnames"]) > 1:
        errors.append(f"{where}: endpoint {section.arg!r}: gocdb_hostname = none cannot go with other names")
    if len(errors) > before:
        return None
    for declared in SECTIONS["endpoint"].values():
        if declared.repeat and declared.attr in values:
            values[declared.attr] = tuple(values[declared.attr])
    return EndpointConfig(id=section.arg, source=where, **values)
