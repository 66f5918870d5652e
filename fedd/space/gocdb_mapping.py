"""GOCDB downtimes as fedd's own: by host name, service type and severity (pure).

How a GOCDB downtime becomes fedd's (pure, `to_declared`):

- Each fedd endpoint has GOCDB host names: its `gocdb_hostname` lines, or else the host of its
  `url` (local endpoints have none). A service whose `HOSTNAME` equals one of them (case-insensitive)
  puts that endpoint in the downtime. `[gocdb] service_types`, when given, keeps only those types.
- `OUTAGE` (the service is unavailable; availability reports count only these) becomes scope
  `[gocdb] outage` (default `all`: no reads, no writes). `WARNING` (the service stays available,
  possibly degraded or at risk) becomes `[gocdb] warning`, default `none`: listed, shown on the
  status page, but no request is refused because of it. Sending readers away from a storage that
  GOCDB itself says is up would turn a warning into an outage for every file held only there
  (503s), so applying it is a site's explicit choice (`write` is the careful one).
- Start and end are GOCDB's; the DowntimeBook applies and lifts them on time, like configured ones.
  Downtimes already over are dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from fedd.config import Downtime, EndpointConfig, GocdbConfig
from fedd.space.downtime import Declared
from fedd.space.gocdb_document import MAX_REASON, GocdbDowntime, clip

ORIGIN = "gocdb"


def endpoint_hostnames(endpoint: EndpointConfig) -> tuple[str, ...]:
    """The GOCDB host names of an endpoint: its gocdb_hostname lines, else its URL's host."""
    if endpoint.gocdb_hostnames:
        return () if endpoint.gocdb_hostnames == ("none",) else endpoint.gocdb_hostnames
    try:
        host = urlsplit(endpoint.url).hostname if endpoint.url else None
    except ValueError:
        host = None
    return (host.rstrip("."),) if host else ()


@dataclass(frozen=True)
class Mapped:
    declared: tuple[Declared, ...]
    unmatched_hosts: tuple[str, ...]  # hosts of current downtimes no endpoint answers to (sorted)


def to_declared(
    downtimes: Iterable[GocdbDowntime], endpoints: Sequence[EndpointConfig], settings: GocdbConfig, now: float
) -> Mapped:
    """fedd downtimes (origin "gocdb") for GOCDB's, by host name, service type and severity."""
    by_host: dict[str, list[str]] = {}
    for ep in endpoints:
        for host in endpoint_hostnames(ep):
            by_host.setdefault(host, []).append(ep.id)
    scope = {"OUTAGE": settings.outage, "WARNING": settings.warning}
    declared: dict[str, Declared] = {}
    unmatched: set[str] = set()
    for dt in sorted(downtimes, key=lambda d: (d.start, d.id, d.hostname, d.service_type)):
        if dt.end <= now:
            continue
        if settings.service_types and dt.service_type.lower() not in settings.service_types:
            continue
        endpoint_ids = by_host.get(dt.hostname)
        if not endpoint_ids:
            unmatched.add(dt.hostname)
            continue
        reason = clip(
            f"GOCDB {dt.severity} {dt.id} ({dt.classification.lower() or 'unclassified'},"
            f" {dt.hostname} {dt.service_type}): {dt.description}".rstrip(": "),
            MAX_REASON + 100,
        )
        for eid in endpoint_ids:
            key = f"{ORIGIN}-{dt.id}-{eid}"  # one per downtime and endpoint (a host may run several types)
            if key not in declared:
                declared[key] = Declared(
                    key, eid, Downtime(dt.start, dt.end, scope[dt.severity], reason), ORIGIN, dt.portal_url
                )
    return Mapped(tuple(declared.values()), tuple(sorted(unmatched)))
