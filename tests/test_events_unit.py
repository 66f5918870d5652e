"""Events: envelope and routing keys (pure), and the SQLite outbox's order and shedding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedd.events.model import envelope, routing_key
from fedd.events.outbox import Outbox
from tests import reactor


def test_envelope_is_hermes_shaped() -> None:
    body = json.loads(envelope("get-redirect", {"path": "/a", "n": 1}, 1700000000.25))
    assert body == {
        "event_type": "get-redirect",
        "payload": {"path": "/a", "n": 1},
        "created_at": "2023-11-14 22:13:20.250000",
    }


@pytest.mark.parametrize(
    ("prefix", "kind", "key"),
    [
        ("fedd", "transfer-done", "fedd.transfer.done"),
        ("", "get-redirect", "get.redirect"),
        ("site.x", "endpoint-offline", "site.x.endpoint.offline"),
    ],
)
def test_routing_keys(prefix: str, kind: str, key: str) -> None:
    assert routing_key(prefix, kind) == key


def rows(n: int, start: int = 0) -> list[tuple[str, bytes]]:
    return [("k", b"%d" % i) for i in range(start, start + n)]


def test_outbox_keeps_order_across_reopen(tmp_path: Path) -> None:
    box = Outbox(reactor.the_reactor(), str(tmp_path / "o.sqlite"), 100)
    assert reactor.call(box.open) == 0
    assert reactor.call(box.add, rows(5)) == (5, 0)
    reactor.call(box.close)
    again = Outbox(reactor.the_reactor(), str(tmp_path / "o.sqlite"), 100)
    assert reactor.call(again.open) == 5
    got = reactor.call(again.peek, 3)
    assert [b for _, _, b in got] == [b"0", b"1", b"2"]
    assert reactor.call(again.remove, got[-1][0]) == 2
    assert [b for _, _, b in reactor.call(again.peek, 10)] == [b"3", b"4"]
    reactor.call(again.close)


def test_outbox_drop_oldest(tmp_path: Path) -> None:
    box = Outbox(reactor.the_reactor(), str(tmp_path / "o.sqlite"), 5, "drop-oldest")
    reactor.call(box.open)
    reactor.call(box.add, rows(4))
    assert reactor.call(box.add, rows(3, 4)) == (5, 2)
    assert [b for _, _, b in reactor.call(box.peek, 10)] == [b"2", b"3", b"4", b"5", b"6"]
    assert reactor.call(box.add, rows(12, 100)) == (5, 12)  # 5 old ones + 7 of the batch
    assert [b for _, _, b in reactor.call(box.peek, 10)] == [b"107", b"108", b"109", b"110", b"111"]
    reactor.call(box.close)


def test_outbox_drop_newest(tmp_path: Path) -> None:
    box = Outbox(reactor.the_reactor(), str(tmp_path / "o.sqlite"), 5, "drop-newest")
    reactor.call(box.open)
    reactor.call(box.add, rows(4))
    assert reactor.call(box.add, rows(3, 4)) == (5, 2)
    assert [b for _, _, b in reactor.call(box.peek, 10)] == [b"0", b"1", b"2", b"3", b"4"]
    reactor.call(box.close)


def test_unknown_policy_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Outbox(reactor.the_reactor(), str(tmp_path / "o.sqlite"), 5, "drop-random")
