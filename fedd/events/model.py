"""Event envelope and routing keys. Pure.

Every message is Hermes' envelope: `{"event_type": ..., "payload": {...}, "created_at": "YYYY-MM-DD
HH:MM:SS.ffffff"}` (UTC). The AMQP routing key is `<prefix>.<event type with '-' -> '.'>`, so
`get-redirect` is published as `fedd.get.redirect` and consumers bind `fedd.get.#` or `#`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

# every type fedd publishes (docs/events.md describes each with its fields)
EVENT_TYPES = (
    "get-redirect",
    "put-redirect",
    "deletion-done",
    "deletion-failed",
    "transfer-done",
    "transfer-failed",
    "endpoint-offline",
    "endpoint-online",
    "quota-report",
    "checksum-done",
    "checksum-mismatch",
    "events-dropped",
)


@lru_cache(maxsize=4)
def _second(whole: int) -> str:
    return datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%d %H:%M:%S")


def created_at(now: float) -> str:
    whole = int(now)
    return f"{_second(whole)}.{int((now - whole) * 1_000_000):06d}"


_encode = json.JSONEncoder(separators=(",", ":"), default=str).encode


def envelope(event_type: str, payload: dict[str, Any], now: float) -> bytes:
    return _encode({"event_type": event_type, "payload": payload, "created_at": created_at(now)}).encode()


def file_fields(path: str) -> dict[str, Any]:
    """The Rucio-style naming of a federation path in event payloads: path, scope (its first
    component), name (its last)."""
    return {"path": path, "scope": path.strip("/").split("/", 1)[0] or None, "name": path.rsplit("/", 1)[-1]}


def routing_key(prefix: str, event_type: str) -> str:
    key = event_type.replace("-", ".")
    return f"{prefix}.{key}" if prefix else key
