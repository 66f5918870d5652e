"""Configuration: text in, frozen values out.

The format is INI-like and line-oriented so that every error can name its file and line::

    [server]
    listen = tcp:8080:interface=127.0.0.1
    include = /etc/fedd/conf.d/*.conf

    [endpoint cern-s3]
    kind = s3
    url = https://s3.cern.ch
    bucket = atlas
    map = /atlas /rucio/atlas

`parse_config` collects *all* errors and raises one `ConfigError`; nothing here does network I/O.
Unknown sections and keys are errors. Keys marked repeatable may appear several times.

- `values`: the value parsers (sizes, durations, ranges, URLs, brokers, downtimes), pure functions;
- `schema`: the frozen dataclasses, one per section, each key declared once as a field;
- `keys`: how a field declares its key (`key`), and the table of keys built from the fields;
- `reader`: the line-oriented reader (include=, file:line errors, unknown keys);
- `endpoints`: which keys each endpoint kind needs and takes, and the `EndpointConfig` it builds;
- `parse`: `parse_config`, the sections checked together.
"""

from fedd.config.parse import ConfigError, default_config, parse_config
from fedd.config.schema import (
    SECTIONS,
    AuthConfig,
    ChecksumsConfig,
    Config,
    EndpointConfig,
    EventsConfig,
    GeoConfig,
    GocdbConfig,
    HealthConfig,
    IssuerSettings,
    LocateConfig,
    ServerConfig,
    SpaceConfig,
    TpcConfig,
    WriteConfig,
)
from fedd.config.values import DOWNTIME_SCOPES, ENDPOINT_KINDS, ID_RE, SPACE_SOURCES, Downtime, SiteRange

__all__ = [
    "DOWNTIME_SCOPES",
    "ENDPOINT_KINDS",
    "ID_RE",
    "SECTIONS",
    "SPACE_SOURCES",
    "AuthConfig",
    "ChecksumsConfig",
    "Config",
    "ConfigError",
    "Downtime",
    "EndpointConfig",
    "EventsConfig",
    "GeoConfig",
    "GocdbConfig",
    "HealthConfig",
    "IssuerSettings",
    "LocateConfig",
    "ServerConfig",
    "SiteRange",
    "SpaceConfig",
    "TpcConfig",
    "WriteConfig",
    "default_config",
    "parse_config",
]
