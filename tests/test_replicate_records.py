"""Replication's shared records (fedd.replicate.records) against both real engines, an SQLite file
and PostgreSQL, with two hosts on one database: read counts add up across hosts and leave the window
bucket by bucket; a copy is claimed by one host only; a copy's row goes from copying to done or
failed, is read back with its fields, is touched by reads and is forgotten."""

from __future__ import annotations

from fedd.replicate.records import COPYING, DONE, FAILED, Records
from tests.reactor import call
from tests.test_state import database_url, make_store, started  # noqa: F401  (database_url: a fixture)


def test_counts_add_up_over_hosts_and_old_buckets_leave(database_url: str) -> None:  # noqa: F811
    a, b = started(make_store(database_url, "a")), started(make_store(database_url, "b"))
    try:
        ra, rb = Records(a), Records(b)
        call(lambda: ra.add_counts({("r1", "/a/f"): 2, ("r2", "/a/f"): 1}, 100, 89, 1.0))
        call(lambda: rb.add_counts({("r1", "/a/f"): 3}, 100, 89, 1.0))
        call(lambda: rb.add_counts({("r1", "/a/g"): 5}, 101, 90, 2.0))
        assert call(lambda: ra.totals(89)) == {("r1", "/a/f"): 5, ("r2", "/a/f"): 1, ("r1", "/a/g"): 5}
        assert call(lambda: ra.totals(101)) == {("r1", "/a/g"): 5}  # bucket 100 is outside this window
        call(lambda: ra.add_counts({("r1", "/a/h"): 1}, 113, 102, 3.0))  # the writer drops old buckets
        assert call(lambda: rb.totals(0)) == {("r1", "/a/h"): 1}
    finally:
        call(a.stopService)
        call(b.stopService)


def test_one_host_wins_a_claim_and_the_row_records_the_outcome(database_url: str) -> None:  # noqa: F811
    a, b = started(make_store(database_url, "a")), started(make_store(database_url, "b"))
    try:
        ra, rb = Records(a), Records(b)
        assert call(lambda: ra.claim("/a/f", "dav", "ceph", 100, "r1", 10.0)) is True
        assert call(lambda: rb.claim("/a/f", "dav", "ceph", 100, "r1", 10.5)) is False
        assert call(lambda: rb.claim("/a/f", "other", "ceph", 100, "r1", 10.5)) is True  # another target
        [first, second] = call(rb.all)
        assert (first.endpoint, first.state, first.host) == ("dav", COPYING, "a") and second.host == "b"
        call(lambda: ra.finish("/a/f", "dav", DONE, 100, "0000abcd", "", 20.0))
        call(lambda: rb.finish("/a/f", "other", FAILED, 0, "", "checksum mismatch", 21.0))
        call(lambda: ra.touch({("/a/f", "dav"): 3, ("/a/f", "other"): 1}, 30.0))
        done, failed = call(ra.all)
        assert (done.state, done.bytes, done.adler32, done.created, done.last_read) == (
            DONE,
            100,
            "0000abcd",
            20.0,
            30.0,
        )
        assert (failed.state, failed.reason, failed.last_read) == (FAILED, "checksum mismatch", 21.0)  # not read
        call(lambda: ra.forget("/a/f", "other"))
        assert [r.endpoint for r in call(rb.all)] == ["dav"]
    finally:
        call(a.stopService)
        call(b.stopService)
