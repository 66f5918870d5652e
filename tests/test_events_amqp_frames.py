"""fedd.events.amqp_frames writes what pika writes for the same publish (pika's own encoders are the
reference); the broker's side is tests/test_events_rabbitmq.py."""

from __future__ import annotations

import math

import pika
import pytest
from pika import frame, spec

from fedd.events.amqp_frames import Publisher


def pika_bytes(channel: int, exchange: str, key: str, message_id: str, body: bytes, frame_max: int) -> bytes:
    props = pika.BasicProperties(content_type="application/json", delivery_mode=2, message_id=message_id)
    out: bytes = frame.Method(channel, spec.Basic.Publish(exchange=exchange, routing_key=key)).marshal()
    out += frame.Header(channel, len(body), props).marshal()
    step = frame_max - spec.FRAME_HEADER_SIZE - spec.FRAME_END_SIZE
    for i in range(math.ceil(len(body) / step)):  # pika's Connection._send_message cuts bodies so
        out += frame.Body(channel, body[i * step : (i + 1) * step]).marshal()
    return out


@pytest.mark.parametrize("size", [0, 1, 300, 4088, 4089, 3 * 4088 + 5])
@pytest.mark.parametrize("channel", [1, 7, 65535])
def test_publish_frames_are_pikas(size: int, channel: int) -> None:
    body = bytes(i % 251 for i in range(size))
    publisher = Publisher(channel, "fedd-ëvents", 4096)
    message_id = "0123456789abcdef0123456789abcdef"
    got = publisher.message("fedd.get.redirect", message_id, body)
    assert got == pika_bytes(channel, "fedd-ëvents", "fedd.get.redirect", message_id, body, 4096)


def test_a_batch_is_its_messages_in_order() -> None:
    publisher = Publisher(1, "fedd", 131072)
    events = [("a", "fedd.get.redirect", b'{"x":1}'), ("b", "fedd.deletion.done", b"{}")]
    expected = b"".join(pika_bytes(1, "fedd", k, i, b, 131072) for i, k, b in events)
    assert publisher.messages(events) == expected


def test_a_batch_with_empty_and_multi_frame_bodies_is_pikas() -> None:
    publisher = Publisher(9, "fedd", 4096)
    events = [(f"id{n}", "fedd.put.done" if n % 2 else "fedd.get.redirect", b"y" * n) for n in (300, 0, 4089, 1, 9000)]
    expected = b"".join(pika_bytes(9, "fedd", k, i, b, 4096) for i, k, b in events)
    assert publisher.messages(events) == expected
    with pytest.raises(ValueError):
        publisher.messages([("i" * 256, "fedd.get.redirect", b"{}")])


def test_a_name_over_255_bytes_is_refused() -> None:
    with pytest.raises(ValueError):
        Publisher(1, "x" * 256, 131072)
    with pytest.raises(ValueError):
        Publisher(1, "fedd", 131072).message("k" * 256, "id", b"")


def pika_bundle_bytes(channel: int, exchange: str, key: str, message_id: str, body: bytes, count: int) -> bytes:
    props = pika.BasicProperties(
        content_type="application/json", headers={"fedd-count": count}, delivery_mode=2, message_id=message_id
    )
    out: bytes = frame.Method(channel, spec.Basic.Publish(exchange=exchange, routing_key=key)).marshal()
    out += frame.Header(channel, len(body), props).marshal()
    step = 4096 - spec.FRAME_HEADER_SIZE - spec.FRAME_END_SIZE
    for i in range(math.ceil(len(body) / step)):
        out += frame.Body(channel, body[i * step : (i + 1) * step]).marshal()
    return out


@pytest.mark.parametrize("count", [1, 2, 100, 10_000, 2**31 - 1])
@pytest.mark.parametrize("size", [2, 300, 4088, 4089, 3 * 4088 + 5])
def test_bundle_frames_are_pikas_with_the_count_header(count: int, size: int) -> None:
    body = b"[" + bytes(48 + i % 10 for i in range(size - 2)) + b"]"
    publisher = Publisher(3, "fedd", 4096)
    got = publisher.bundle_message("fedd.get.redirect", "0123456789abcdef0123456789abcdef", body, count)
    assert got == pika_bundle_bytes(3, "fedd", "fedd.get.redirect", "0123456789abcdef0123456789abcdef", body, count)


def test_bundles_are_runs_of_one_routing_key_with_the_first_id() -> None:
    publisher = Publisher(1, "fedd", 131072)
    events = [
        ("a", "fedd.get.redirect", b'{"i":1}'),
        ("b", "fedd.get.redirect", b'{"i":2}'),
        ("c", "fedd.get.redirect", b'{"i":3}'),
        ("d", "fedd.put.done", b'{"i":4}'),
        ("e", "fedd.get.redirect", b'{"i":5}'),
    ]
    data, messages = publisher.bundles(events, 2)
    expected = [
        ("a", "fedd.get.redirect", b'[{"i":1},{"i":2}]', 2),
        ("c", "fedd.get.redirect", b'[{"i":3}]', 1),
        ("d", "fedd.put.done", b'[{"i":4}]', 1),
        ("e", "fedd.get.redirect", b'[{"i":5}]', 1),
    ]
    assert messages == 4
    assert data == b"".join(pika_bundle_bytes(1, "fedd", k, i, b, n) for i, k, b, n in expected)


def test_bundle_one_is_todays_one_envelope_per_message() -> None:
    publisher = Publisher(1, "fedd", 131072)
    events = [("a", "fedd.get.redirect", b'{"x":1}'), ("b", "fedd.get.redirect", b"{}")]
    assert publisher.bundles(events, 1) == (publisher.messages(events), 2)
