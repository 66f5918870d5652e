"""Prebuilt events (issue 14): a get-redirect's envelope encoded once per plan and filled in per
redirect (fedd.events.model.template/render), journalled as the bytes the sink gets, replayed as
the same bytes after a kill; the lean front's redirects through a real EventsService."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from fedd.auth.identity import Identity
from fedd.config import EventsConfig
from fedd.events.journal import LENGTH, Journal, decode, encode, read_segments
from fedd.events.model import created_at, envelope, json_value, render, template
from fedd.events.outbox import encode_all
from fedd.events.service import EventsService
from tests.test_events_unit import FakeSink, journal_lines
from tests.test_lean import GET, Front

PAYLOAD: dict[str, Any] = {
    "path": '/atlas/a "quoted"\\ é\u2028',
    "method": "GET",
    "client": "2001:db8::1",
    "client_country": None,
    "client_dn": None,
    "endpoint": "ceph",
    "url": "https://s3.example/b/a",
    "candidates": 3,
    "locate_ms": 0.0,
}


@pytest.mark.parametrize(
    ("varying", "values"),
    [
        ((), {}),
        (("client_dn",), {"client_dn": '/DC=ch/CN=Jöe "x"'}),
        (("client_dn", "locate_ms"), {"client_dn": None, "locate_ms": 12.345}),
        (("client_dn", "locate_ms"), {"client_dn": "/CN=a", "locate_ms": 0.0}),
        (("path", "client_dn", "candidates"), {"path": "/x", "client_dn": None, "candidates": 1}),
    ],
)
@pytest.mark.parametrize("at", [1700000000.25, 1700000000.999999, 1.0, 1700000001.000001])
def test_a_rendered_template_is_byte_for_byte_the_envelope(
    varying: tuple[str, ...], values: dict[str, Any], at: float
) -> None:
    t = template("get-redirect", PAYLOAD, varying)
    got = render(t, "00ff", tuple(json_value(values[name]) for name in varying), at)
    assert got == envelope("00ff", "get-redirect", {**PAYLOAD, **values}, at)


def test_the_journal_reads_back_envelopes_as_they_are_beside_older_records(tmp_path: Path) -> None:
    body = envelope("e1", "get-redirect", PAYLOAD, 1700000000.123457)
    old = ("m1", "deletion-done", {"path": "/b"}, 2.0)
    record = LENGTH.pack(len(body), zlib.crc32(body)) + body
    assert decode(record + encode(old) + record[:-2]) == ([("e1", "get-redirect", body), old], 1)  # last one torn
    journal = Journal(str(tmp_path / "outbox"), Clock())
    journal.append_record(body)
    journal.append(old)
    [(segment, _)] = journal.mark()
    raws, bad = read_segments([segment.path])
    events, unencodable = encode_all(raws, "fedd")
    assert bad == unencodable == 0
    assert events == [("e1", "fedd.get.redirect", body), ("m1", "fedd.deletion.done", envelope(*old))]
    journal.close(everything_stored=True)


def test_emit_template_journals_the_sinks_bytes_and_a_killed_run_sends_the_same(tmp_path: Path) -> None:
    clock, sink = Clock(), FakeSink()
    clock.advance(1700000000.5)
    config = EventsConfig(spool=str(tmp_path / "spool.jsonl"), flush_interval=0.05)
    events = EventsService(config, clock=clock, outbox=None, sink=sink)
    events.startService()
    t = template("get-redirect", PAYLOAD, ("client_dn", "locate_ms"))
    events.emit_template(t, (b'"/CN=a"', b"0.0"))
    assert len(journal_lines(tmp_path)) == 1 and sink.written == []  # on disk before it returns
    clock.advance(0.05)
    [(event_id, key, body)] = sink.written
    assert key == "fedd.get.redirect"
    assert body == envelope(event_id, "get-redirect", {**PAYLOAD, "client_dn": "/CN=a"}, 1700000000.5)
    clock.advance(0.123456)
    at = clock.seconds()
    events.emit_template(t, (b"null", b"1.5"))
    [(killed_id, _, killed_body)] = events._batch
    events.journal.close(everything_stored=False)  # killed before the flush
    again_sink = FakeSink()
    again = EventsService(config, clock=Clock(), outbox=None, sink=again_sink)
    again.startService()
    assert again_sink.written == [(killed_id, "fedd.get.redirect", killed_body)]  # same id, same time, same bytes
    assert json.loads(killed_body)["created_at"] == created_at(at)
    again.stopService()
    events.running = False


def test_a_disabled_type_emits_nothing_from_a_template(tmp_path: Path) -> None:
    config = EventsConfig(spool=str(tmp_path / "spool.jsonl"), types=("put-redirect",))
    events = EventsService(config, clock=Clock(), outbox=None, sink=FakeSink())
    events.emit_template(template("get-redirect", PAYLOAD, ()), ())
    assert events.emitted == 0 and journal_lines(tmp_path) == []


def test_lean_redirects_publish_the_payload_the_full_front_did(tmp_path: Path) -> None:
    front = Front()
    sink = FakeSink()
    config = EventsConfig(spool=str(tmp_path / "spool.jsonl"), flush_interval=0.05)
    events = EventsService(config, clock=front.reactor, outbox=None, sink=sink)
    front.site.resource.reads.events = events
    events.startService()
    front.warm()  # the full front: its plan, its event
    protocol, _ = front.connect()
    protocol.dataReceived(GET + GET)  # the lean front: two more
    assert front.site.hot_answers == 2
    reads = front.site.resource.reads
    plan = next(iter(reads._plans.values()))
    who = Identity(subject="/CN=x")
    reads.announce(plan, path=b"/atlas/f", method=b"GET", client="127.0.0.1", who=who, locate_ms=2.5)
    front.reactor.advance(0.05)
    docs = [json.loads(body) for _, _, body in sink.written]
    expected = {
        "path": "/atlas/f",
        "method": "GET",
        "client": "127.0.0.1",
        "client_country": None,
        "client_dn": None,
        "endpoint": "a",
        "url": "http://a.example/f",
        "candidates": 1,
        "locate_ms": 0.0,
    }
    assert [{**d["payload"], "locate_ms": 0.0} for d in docs[:3]] == [expected] * 3  # the first one located
    assert docs[3]["payload"] == {**expected, "client_dn": "/CN=x", "locate_ms": 2.5}  # same plan, another DN
    assert len({d["id"] for d in docs}) == 4 and events.emitted == 4
    events.running = False
