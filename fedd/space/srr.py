"""WLCG Storage Resource Reporting: the SRR document built from the space measurements, and the
file the quota reporter writes it to."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from fedd import __version__
from fedd.config import EndpointConfig

if TYPE_CHECKING:
    from fedd.space.service import Measurement


def srr_document(
    endpoints: Sequence[EndpointConfig],
    measurement_of: Callable[[str], Measurement],
    *,
    now: float,
    stale_after: float,
    service_name: str,
    base_url: str = "",
) -> dict[str, Any]:
    """One share per endpoint (or per configured share name), one storage endpoint per endpoint."""
    shares: dict[str, dict[str, Any]] = {}
    storage_endpoints = []
    for ep in endpoints:
        m = measurement_of(ep.id)
        share = shares.setdefault(
            ep.share_name,
            {
                "name": ep.share_name,
                "totalsize": 0,
                "usedsize": 0,
                "timestamp": None,
                "vos": [],
                "path": [],
                "assignedendpoints": [],
                "stale": False,
                "endpoints": {},
            },
        )
        share["totalsize"] += (m.space.total or 0) if m.space else 0
        share["usedsize"] += m.used() or 0
        stamp = int(m.measured) if m.measured is not None else None
        if stamp is not None:
            share["timestamp"] = stamp if share["timestamp"] is None else min(share["timestamp"], stamp)
        share["stale"] = share["stale"] or m.stale(now, stale_after)
        share["vos"] = sorted(set(share["vos"]) | set(ep.vos))
        share["path"] = sorted(set(share["path"]) | {fed for fed, _ in ep.mappings})
        share["assignedendpoints"].append(ep.id)
        share["endpoints"][ep.id] = m.to_json(now, stale_after)
        storage_endpoints.append(
            {
                "name": ep.id,
                "endpointurl": ep.url or base_url,
                "interfacetype": _interface(ep),
                "assignedshares": [ep.share_name],
            }
        )
    return {
        "storageservice": {
            "name": service_name,
            "implementation": "fedd",
            "implementationversion": __version__,
            "latestupdate": int(now),
            "storageshares": list(shares.values()),
            "storageendpoints": storage_endpoints,
        }
    }


def write_json_file(path: str, data: dict[str, Any]) -> None:
    """Write `data` to `path` atomically (a temporary file renamed over it)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)


def _interface(ep: EndpointConfig) -> str:
    return {"s3": "s3", "azure": "azure", "dav": "https", "local": "posix"}.get(ep.kind, ep.kind)
