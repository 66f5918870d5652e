"""Event envelope and routing keys. Pure.

Every message is Hermes' envelope: `{"event_type": ..., "payload": {...}, "created_at": "YYYY-MM-DD
HH:MM:SS.ffffff"}` (UTC). The AMQP routing key is `<prefix>.<event type with '-' -> '.'>`, so
`get-redirect` is published as `fedd.get.redirect` and consumers bind `fedd.get.#` or `#`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

# every type fedd publishes (docs/events.md describes each with its fields)
EVENT_TYPES = (
    "get-redirect",
    "put-redirect",
    "deletion-done",
    "deletion-failed",
    "endpoint-offline",
    "endpoint-online",
    "quota-report",
    "events-dropped",
)


def created_at(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def envelope(event_type: str, payload: dict[str, Any], now: float) -> bytes:
    return json.dumps(
        {"event_type": event_type, "payload": payload, "created_at": created_at(now)},
        separators=(",", ":"),
        sort_keys=True,
        default=str,
    ).encode()


def routing_key(prefix: str, event_type: str) -> str:
    key = event_type.replace("-", ".")
    return f"{prefix}.{key}" if prefix else key
