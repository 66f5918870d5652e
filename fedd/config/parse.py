"""`parse_config`: the reader's sections checked together and turned into one frozen `Config`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from fedd.config.endpoints import build_endpoint
from fedd.config.reader import Reader, Section, resolve_secret
from fedd.config.schema import (
    NAMED_SECTIONS,
    SECTION_TYPES,
    STOMP_KEYS,
    AuthConfig,
    Config,
    EndpointConfig,
    EventsConfig,
    IssuerSettings,
    ServerConfig,
    secret_keys,
)


class ConfigError(Exception):
    """Every problem found in a configuration, one per line."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))


def _check_events(values: dict[str, Any], reader: Reader, errors: list[str]) -> None:
    """STOMP credentials from a file or the environment; STOMP keys only with a STOMP broker."""
    lines = {k: v for s in reader.sections if s.name == "events" for k, v in s.lines.items()}
    for name in secret_keys(EventsConfig):
        sources = [k for k in (name, f"{name}_file", f"{name}_env") if k in values]
        resolve_secret(values, name, reader.environ, lines[sources[0]] if sources else "", errors)
    stomp = values.get("broker", "").startswith("stomp")
    for key in STOMP_KEYS:
        if key in values and not stomp:
            errors.append(f"{lines[key]}: {key!r} only applies to a stomp:// or stomp+ssl:// broker")
    for key in ("ca_file", "tls_certificate", "tls_private_key"):
        if values.get(key) and not os.path.isfile(values[key]):
            errors.append(f"{lines[key]}: {key}: no such file {values[key]!r}")
    if bool(values.get("tls_certificate")) != bool(values.get("tls_private_key")):
        key = "tls_certificate" if values.get("tls_certificate") else "tls_private_key"
        errors.append(f"{lines[key]}: give both tls_certificate and tls_private_key, or neither")


def _check_confirm(groups: dict[str, dict[str, Any]], reader: Reader, kinds: dict[str, str], errors: list[str]) -> None:
    """`[confirm] notify` names S3 endpoints, and some AMQP broker carries their notifications."""
    values = groups["confirm"]
    where = next((s.where for s in reader.sections if s.name == "confirm"), "[confirm]")
    for notify in values.get("notifies", ()):
        if kinds.get(notify.endpoint) != "s3":
            errors.append(f"{where}: notify: {notify.endpoint!r} is not an [endpoint] of kind s3")
    broker = values.get("broker") or groups.get("events", {}).get("broker", "")
    if values.get("notifies") and not broker.startswith("amqp"):
        errors.append(f"{where}: notify needs an AMQP broker ([confirm] broker, or [events] broker = amqp://...)")


def _issuer(section: Section, errors: list[str]) -> IssuerSettings | None:
    if "issuer" not in section.values:
        errors.append(f"{section.where}: issuer {section.arg!r} needs 'issuer' (the tokens' iss claim)")
    elif not (section.values.get("jwks_url") or section.values.get("jwks_file")):
        errors.append(f"{section.where}: issuer {section.arg!r} needs jwks_url or jwks_file")
    else:
        return IssuerSettings(id=section.arg, **section.values)
    return None


def parse_config(
    text: str | None = None,
    *,
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Parse a configuration from `path` (or from `text`, named `<string>`); raise ConfigError."""
    reader = Reader(os.environ if environ is None else environ)
    if path is not None:
        reader.read_file(path, "command line")
    else:
        reader.read_text(text or "", "<string>")
    errors = reader.errors
    groups: dict[str, dict[str, Any]] = {}
    endpoints: list[EndpointConfig] = []
    issuers: list[IssuerSettings] = []
    for section in reader.sections:
        if section.name == "endpoint":
            if (ep := build_endpoint(section, reader.environ, errors)) is not None:
                endpoints.append(ep)
            continue
        if section.name == "issuer":
            if (issuer := _issuer(section, errors)) is not None:
                issuers.append(issuer)
            continue
        # the other sections may appear in several files; each key is still set once
        merged = groups.setdefault(section.name, {})
        for key, value in section.values.items():
            if key in merged and not isinstance(value, list):
                errors.append(f"{section.lines[key]}: {key!r} already set in another [{section.name}] section")
            elif isinstance(value, list):
                merged[key] = merged.get(key, []) + value
            else:
                merged[key] = value
    for group in groups.values():
        for key, value in list(group.items()):
            if isinstance(value, list):
                group[key] = tuple(value)
    whole = path or "<string>"
    auth_values = groups.get("auth")
    if auth_values is not None and not auth_values.get("access_file"):
        errors.append(f"{whole}: [auth] needs access_file")
    if issuers and auth_values is None:
        errors.append(f"{whole}: [issuer ...] sections need an [auth] section with access_file")
    gocdb_values = groups.get("gocdb")
    if gocdb_values is not None and not gocdb_values.get("urls"):
        errors.append(f"{whole}: [gocdb] needs url (GOCDB's get_downtime query, or file:///...)")
    if "events" in groups:
        _check_events(groups["events"], reader, errors)
    if "confirm" in groups:
        _check_confirm(groups, reader, {ep.id: ep.kind for ep in endpoints}, errors)
    if not endpoints and not errors:
        errors.append(f"{whole}: no [endpoint ...] section: nothing to federate")
    if errors:
        raise ConfigError(errors)
    sections = {
        name: cls(**groups.get(name, {}))
        for name, cls in SECTION_TYPES.items()
        if name not in NAMED_SECTIONS and name != "auth"
    }
    return Config(
        **sections,
        auth=AuthConfig(**auth_values) if auth_values is not None else None,
        issuers=tuple(issuers),
        endpoints=tuple(endpoints),
        files=tuple(reader.files),
    )


def default_config(demo_dir: str, listen: str = "tcp:8080:interface=127.0.0.1") -> Config:
    """The embedded default: one local directory served at /demo, in-process cache only."""
    return Config(
        server=ServerConfig(listen=(listen,)),
        endpoints=(
            EndpointConfig(
                id="local",
                kind="local",
                path=demo_dir,
                mappings=(("/demo", "/"),),
                write=False,
                source="embedded default",
            ),
        ),
    )
