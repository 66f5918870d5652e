"""Event envelope, ids and routing keys. Pure.

Every message is Hermes' envelope plus an id: `{"id": ..., "event_type": ..., "payload": {...},
"created_at": "YYYY-MM-DD HH:MM:SS.ffffff"}` (UTC). The id is also the AMQP `message_id`: delivery
is at least once, and a consumer drops a message whose id it has seen. The AMQP routing key is
`<prefix>.<event type with '-' -> '.'>`, so `get-redirect` is published as `fedd.get.redirect` and
consumers bind `fedd.get.#` or `#`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

Event = tuple[str, str, bytes]  # (id, routing key, envelope): what the outbox and sinks carry
Raw = tuple[str, str, dict[str, Any], float]  # (id, event type, payload, time): an older journal's record
Journaled = tuple[str, str, bytes]  # (id, event type, envelope): a journal record read back

# every type fedd publishes (docs/events.md describes each with its fields)
EVENT_TYPES = (
    "get-redirect",
    "put-redirect",
    "put-done",
    "put-failed",
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
    "replica-created",
    "replica-evicted",
    "replica-failed",
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


def json_value(value: Any) -> bytes:
    """One JSON value as the envelope writes it (for a template's varying fields)."""
    return _encode(value).encode()


_SLOT = "\x00fedd-slot-{}\x00"  # a string no payload holds: where a varying field goes


@dataclass(frozen=True)
class Template:
    """An event whose envelope is encoded once: fixed text around its varying parts. `render` puts in
    the id, the JSON values of the varying fields (in the order given to `template`) and the time;
    the result is byte for byte what `envelope` writes for the same event."""

    event_type: str
    parts: tuple[bytes, ...]  # before the id, between the id and each value, before the time, the end


def template(event_type: str, payload: dict[str, Any], varying: tuple[str, ...]) -> Template:
    """`payload` with its `varying` keys in place (any value: only their positions count)."""
    marks = [_encode(_SLOT.format(i)) for i in range(len(varying) + 2)]
    doc = dict(payload)
    for i, name in enumerate(varying):
        doc[name] = _SLOT.format(i + 1)
    last = _SLOT.format(len(varying) + 1)
    text = _encode({"id": _SLOT.format(0), "event_type": event_type, "payload": doc, "created_at": last})
    parts: list[bytes] = []
    for mark in marks:
        before, found, text = text.partition(mark)
        if not found:
            raise ValueError(f"{event_type} template: payload changed the slots")
        parts.append(before.encode())
    parts.append(text.encode())
    parts[1] = b'"' + parts[1]  # the id and the time are plain strings: their quotes are fixed text
    parts[0] += b'"'
    parts[-2] += b'"'
    parts[-1] = b'"' + parts[-1]
    return Template(event_type, tuple(parts))


_DIGITS3 = tuple(b"%03d" % i for i in range(1000))
_THOUSANDTHS = tuple(b".%03d" % i for i in range(1000))
_stamp: list[Any] = [None, b""]  # the last whole second and its text: a second has thousands of events


def render(t: Template, event_id: str, values: tuple[bytes, ...], now: float) -> bytes:
    """The envelope of one event of template `t` (values already JSON, see `json_value`)."""
    whole = int(now)
    if whole != _stamp[0]:
        _stamp[0], _stamp[1] = whole, _second(whole).encode()
    micros = int((now - whole) * 1_000_000)  # as created_at() writes it, from two tables (a third of "%06d")
    micros_text = _THOUSANDTHS[micros // 1000] + _DIGITS3[micros % 1000]
    p = t.parts
    if len(values) == 2:  # get-redirect's: no loop
        return b"".join((p[0], event_id.encode(), p[1], values[0], p[2], values[1], p[3], _stamp[1], micros_text, p[4]))
    out = [p[0], event_id.encode(), p[1]]
    for value, part in zip(values, p[2:-1], strict=True):
        out += (value, part)
    out += (_stamp[1], micros_text, p[-1])
    return b"".join(out)


def encode(raw: Raw | Journaled, prefix: str) -> Event:
    """Raises TypeError/ValueError for a payload JSON cannot carry (a bug in the emitting code)."""
    if len(raw) == 3:  # an envelope already
        event_id, event_type, body = raw
        return event_id, routing_key(prefix, event_type), body
    event_id, event_type, payload, at = raw
    return event_id, routing_key(prefix, event_type), envelope(event_id, event_type, payload, at)


class EventIds:
    """Unique event ids without a system call per event: 16 hex digits drawn once per process start
    (`seed`, 64 random bits) followed by a 16-hex-digit counter (1, 2, ...), 32 hex digits in all.
    The counter's first 14 digits are formatted once per 256 ids, the last two come from a table:
    an id is a string concatenation (0.1 us, a third of formatting it whole)."""

    def __init__(self, seed: int) -> None:
        self._prefix = f"{seed & _ID_MASK:016x}"
        self._high = 0  # the counter without its last two digits
        self._head = self._prefix + "0" * 14
        self._lows: Iterator[str] = iter(_LOW[1:])  # the counter starts at 1

    def __call__(self) -> str:
        for low in self._lows:
            return self._head + low
        self._high += 1
        self._head = f"{self._prefix}{self._high:014x}"
        self._lows = iter(_LOW)
        return self._head + next(self._lows)


_ID_MASK = 2**64 - 1
_LOW = tuple(f"{i:02x}" for i in range(256))


def file_fields(path: str) -> dict[str, Any]:
    """The Rucio-style naming of a federation path in event payloads: path, scope (its first
    component), name (its last)."""
    return {"path": path, "scope": path.strip("/").split("/", 1)[0] or None, "name": path.rsplit("/", 1)[-1]}


def routing_key(prefix: str, event_type: str) -> str:
    key = event_type.replace("-", ".")
    return f"{prefix}.{key}" if prefix else key
