"""Event envelope, ids and routing keys. Pure.

Every message is Hermes' envelope plus an id: `{"id": ..., "event_type": ..., "payload": {...},
"created_at": "YYYY-MM-DD HH:MM:SS.ffffff"}` (UTC). The id is also the AMQP `message_id`: delivery
is at least once, and a consumer drops a message whose id it has seen. The AMQP routing key is
`<prefix>.<event type with '-' -> '.'>`, so `get-redirect` is published as `fedd.get.redirect` and
consumers bind `fedd.get.#` or `#`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

Event = tuple[str, str, bytes]  # (id, routing key, envelope): what the outbox and sinks carry
Raw = tuple[str, str, dict[str, Any], float]  # (id, event type, payload, time): what emit() journals

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


def envelope(event_id: str, event_type: str, payload: dict[str, Any], now: float) -> bytes:
    doc = {"id": event_id, "event_type": event_type, "payload": payload, "created_at": created_at(now)}
    return _encode(doc).encode()


def encode(raw: Raw, prefix: str) -> Event:
    """Raises TypeError/ValueError for a payload JSON cannot carry (a bug in the emitting code)."""
    event_id, event_type, payload, at = raw
    return event_id, routing_key(prefix, event_type), envelope(event_id, event_type, payload, at)


class EventIds:
    """Unique event ids without a system call per event: 16 hex digits drawn once per process start
    (`seed`, 64 random bits) followed by a 16-hex-digit counter, 32 hex digits in all."""

    def __init__(self, seed: int) -> None:
        self._prefix = f"{seed & _ID_MASK:016x}"
        self._count = 0

    def __call__(self) -> str:
        self._count += 1
        return f"{self._prefix}{self._count:016x}"


_ID_MASK = 2**64 - 1


def file_fields(path: str) -> dict[str, Any]:
    """The Rucio-style naming of a federation path in event payloads: path, scope (its first
    component), name (its last)."""
    return {"path": path, "scope": path.strip("/").split("/", 1)[0] or None, "name": path.rsplit("/", 1)[-1]}


def routing_key(prefix: str, event_type: str) -> str:
    key = event_type.replace("-", ".")
    return f"{prefix}.{key}" if prefix else key
