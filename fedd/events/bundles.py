"""Bundles: several events in one broker message (`[events] bundle`). Pure.

A broker spends most of its CPU per message, not per byte: RabbitMQ spends 50-90 us on each
persistent, confirmed message to a durable queue, several times what fedd spends on the redirect
that caused it (docs/events.md, "What an event costs"). With `bundle = N` (N > 1) consecutive events
of a publish batch that share a routing key travel as one message whose body is a JSON array of
their envelopes, in order: only runs of one routing key are bundled, so the order of all events
holds across messages. A bundle holds at most N events and at most MAX_BYTES of body (an envelope
larger than that travels alone, still as an array of one). Every message of a sink with N > 1 is
an array, so a consumer needs no guessing; the count is also in a `fedd-count` header, and the
message's id (AMQP `message_id`, STOMP `fedd-id`) is its first event's. Every envelope keeps its own
`id`: a bundle re-sent after a lost confirm has the same events with the same ids.
"""

from __future__ import annotations

from fedd.events.model import Event

MAX_BYTES = 1 << 20  # a bundle's body: far below RabbitMQ's message and STOMP brokers' frame limits
COUNT_HEADER = "fedd-count"

Bundle = tuple[str, str, bytes, int]  # (its first event's id, routing key, JSON array body, events)


def bundle(events: list[Event], size: int, max_bytes: int = MAX_BYTES) -> list[Bundle]:
    """`events` as bundles of up to `size` consecutive events of one routing key, in order."""
    out: list[Bundle] = []
    if not events:
        return out
    first_id, key, body = events[0]
    bodies = [body]
    room = max_bytes - 2 - len(body)  # the brackets, then a comma before each further envelope
    for event_id, event_key, body in events[1:]:
        room -= len(body) + 1
        if event_key != key or len(bodies) >= size or room < 0:
            out.append((first_id, key, b"[" + b",".join(bodies) + b"]", len(bodies)))
            first_id, key, bodies = event_id, event_key, []
            room = max_bytes - 2 - len(body)
        bodies.append(body)
    out.append((first_id, key, b"[" + b",".join(bodies) + b"]", len(bodies)))
    return out
