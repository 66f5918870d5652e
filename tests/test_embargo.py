"""Embargoes and grants that expire (issue 18, part 4): time bounds on access rules.

Tables for the parser and the pure decision at explicit times; the auth service on a Clock (its
decision cache never outlives a rule's time); the status page; and fedd itself, where a rule whose
`from` is a few seconds ahead opens (and another one closes) at that time with no reload.
"""

from __future__ import annotations

import http.client
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from fedd.auth.identity import ANONYMOUS, Identity
from fedd.auth.policy import children_with_rules, decide, in_force, next_change
from fedd.auth.rules import RulesError, format_time, parse_access, parse_time
from fedd.auth.service import AuthService
from fedd.web.statuspage import render_status_page
from tests.daemon import Fedd, start_fedd, wait_for
from tests.servers import free_port
from tests.test_auth_tokens import AUD, Issuer

T = 1_798_761_600.0  # 2027-01-01T00:00:00Z
T2 = T + 30 * 86400.0  # 2027-01-31T00:00:00Z

ACCESS = """
/escape                 anonymous       rl
/escape/embargoed       /escape/group   rl
/escape/embargoed       anonymous       rl   from=2027-01-01T00:00Z
/escape/grant           /escape/guest   rl   until=2027-01-01T01:00+01:00
/escape/opens           anonymous       rl   from=2027-01-01T00:00Z
/escape/window          alice           rw   from=2027-01-01T00:00:00Z until=2027-01-31T00:00:00Z
/escape/window          /escape/group   r
"""
RULES = parse_access(ACCESS, "acl")
MEMBER = Identity("token", "member", groups=("/escape/group",))
GUEST = Identity("token", "guest", groups=("/escape/guest",))
ALICE = Identity("x509", "/DC=org/CN=Alice", user="alice")


# --- the access file -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "valid_from", "valid_until"),
    [
        ("/e anonymous r from=2027-01-01T00:00Z", T, None),
        ("/e anonymous r until=2027-01-01T00:00Z", None, T),
        ("/e anonymous r from=2027-01-01T01:00+01:00", T, None),  # an offset: the same instant
        ("/e anonymous r from=2026-12-31T19:00:00-05:00", T, None),
        ("/e anonymous r from=20270101T000000Z", T, None),  # ISO 8601 basic format
        ("/e anonymous r from=2027-01-01T00:00:00.5Z", T + 0.5, None),
        ("/e anonymous r until=2027-01-31T00:00Z from=2027-01-01T00:00Z", T, T2),  # any order
        ('/e anonymous r "from=2027-01-01 00:00Z"', T, None),  # quoted, with a space instead of T
        ("/e anonymous r from=20270101T010000+0100", T, None),
        ("/e anonymous r from=2027-01-01T00:00:00,25Z", T + 0.25, None),  # ISO 8601's decimal comma
    ],
)
def test_time_bounds_parse(text: str, valid_from: float | None, valid_until: float | None) -> None:
    [rule] = parse_access(text, "acl")
    assert (rule.valid_from, rule.valid_until) == (valid_from, valid_until)
    assert rule.letters == frozenset("r") and rule.where == "acl:1"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("/e anonymous r from=2027-01-01T00:00", "has no timezone"),
        ("/e anonymous r from=2027-01-01", "expected an ISO 8601 time"),  # a date is not a time
        ("/e anonymous r from=2027-01-01T00:00:00.5", "has no timezone"),
        ('/e anonymous r "from=2027-01-01T00:00Z\x00"', "expected an ISO 8601 time"),
        ('/e anonymous r "from=2027-01-01T00:00 Z"', "expected an ISO 8601 time"),
        ("/e anonymous r from=2027-01-01T00:00:00+00:00:00.5", "expected an ISO 8601 time"),
        ("/e anonymous r until=tomorrow", "until=: expected an ISO 8601 time with a timezone"),
        ("/e anonymous r from=", "from=: expected an ISO 8601 time"),
        ("/e anonymous r from=2027-13-01T00:00Z", "expected an ISO 8601 time"),
        ("/e anonymous r from=２０２７-01-01T00:00Z", "expected an ISO 8601 time"),  # fullwidth digits
        ("/e anonymous r from=2027-01-01T00:00+24:00", "expected an ISO 8601 time"),
        ("/e anonymous r from=9999-12-31T23:59-23:59", "out of range"),
        ("/e anonymous r from=2027-01-01T00:00Z from=2027-02-01T00:00Z", "from= given twice"),
        ("/e anonymous r from=2027-01-01T00:00Z until=2027-01-01T00:00Z", "is not before until="),
        ("/e anonymous r from=2027-02-01T00:00Z until=2027-01-01T00:00Z", "is not before until="),
        ("/e anonymous r from=2027-01-01T01:00+01:00 until=2027-01-01T00:00Z", "is not before until="),
        ("/e anonymous r to=2027-01-01T00:00Z", "expected from=<time> or until=<time> after the letters"),
        ("/e anonymous r 2027-01-01T00:00Z", "expected from=<time> or until=<time> after the letters"),
        ("/e anonymous from=2027-01-01T00:00Z r", "letters must be from 'rlwd'"),
    ],
)
def test_bad_time_bounds_are_file_line_errors(line: str, message: str) -> None:
    with pytest.raises(RulesError) as caught:
        parse_access(f"# ok\n/escape anonymous rl\n{line}\n/other anonymous r until=nope\n", "acl")
    errors = caught.value.errors
    assert len(errors) == 2, errors  # every bad line reported, each once
    assert errors[0].startswith("acl:3: ") and message in errors[0], errors
    assert errors[1].startswith("acl:4: until=: expected an ISO 8601 time"), errors


def test_times_format_back_as_utc() -> None:
    assert format_time(T) == "2027-01-01T00:00:00Z"
    assert parse_time(format_time(T + 0.25)) == T + 0.25
    assert format_time(1e300).endswith(" s after 1970")  # never an exception on the status page


# --- the decision, at explicit times --------------------------------------------------------------

BEFORE, AT, AFTER = T - 1.0, T, T + 1.0


@pytest.mark.parametrize(
    ("who", "letter", "path", "now", "allowed"),
    [
        # the open parent, for comparison
        (ANONYMOUS, "r", "/escape/open/f", BEFORE, True),
        # private to the group until T, public from T (exactly at T, not a microsecond earlier)
        (ANONYMOUS, "r", "/escape/embargoed/f", BEFORE, False),
        (ANONYMOUS, "r", "/escape/embargoed/f", T - 1e-6, False),
        (ANONYMOUS, "r", "/escape/embargoed/f", AT, True),
        (ANONYMOUS, "l", "/escape/embargoed", AFTER, True),
        (ANONYMOUS, "w", "/escape/embargoed/f", AFTER, False),
        (MEMBER, "r", "/escape/embargoed/f", BEFORE, True),
        (MEMBER, "r", "/escape/embargoed/f", AFTER, True),
        # a grant that expires at T (until is exclusive); afterwards the prefix still decides: nobody
        # reads, although /escape is open to anonymous (no fall-back to the shorter prefix)
        (GUEST, "r", "/escape/grant/f", BEFORE, True),
        (GUEST, "r", "/escape/grant/f", T - 1e-6, True),
        (GUEST, "r", "/escape/grant/f", AT, False),
        (GUEST, "r", "/escape/grant/f", AFTER, False),
        (ANONYMOUS, "r", "/escape/grant/f", AFTER, False),
        (ANONYMOUS, "r", "/escape/grant/f", BEFORE, False),
        # a prefix whose only rule has not started: closed to everyone before, not the parent's rules
        (ANONYMOUS, "r", "/escape/opens/f", BEFORE, False),
        (MEMBER, "r", "/escape/opens/f", BEFORE, False),
        (ANONYMOUS, "r", "/escape/opens/f", AT, True),
        # a window with both bounds, beside a rule without any
        (ALICE, "w", "/escape/window/f", BEFORE, False),
        (ALICE, "w", "/escape/window/f", AT, True),
        (ALICE, "w", "/escape/window/f", T2 - 1e-3, True),
        (ALICE, "w", "/escape/window/f", T2, False),
        (ALICE, "r", "/escape/window/f", T2 + 1, False),
        (MEMBER, "r", "/escape/window/f", T2 + 1, True),
        (MEMBER, "w", "/escape/window/f", AT, False),
    ],
)
def test_decisions_at_explicit_times(who: Identity, letter: str, path: str, now: float, allowed: bool) -> None:
    assert decide(who, letter, path, RULES, now).allowed is allowed


def test_token_scopes_are_not_bounded_by_the_access_file() -> None:
    """WLCG storage scopes decide alone (the issuer's grant): the access file's times do not apply."""
    scoped = Identity("token", "rucio", scopes=("storage.read:/escape",))
    assert decide(scoped, "r", "/escape/embargoed/f", RULES, BEFORE).allowed


@pytest.mark.parametrize(
    ("who", "path", "now", "reason"),
    [
        (
            ANONYMOUS,
            "/escape/embargoed/f",
            BEFORE,
            "read on /escape/embargoed not granted to anonymous before 2027-01-01T00:00:00Z",
        ),
        (
            GUEST,
            "/escape/grant/f",
            AFTER,
            "read on /escape/grant not granted to guest since 2027-01-01T00:00:00Z",
        ),
        # somebody else's time stays private
        (ANONYMOUS, "/escape/grant/f", BEFORE, "read on /escape/grant not granted to anonymous"),
    ],
)
def test_refusals_say_when_their_own_grant_starts_or_ended(who: Identity, path: str, now: float, reason: str) -> None:
    decision = decide(who, "r", path, RULES, now)
    assert not decision.allowed and decision.reason == reason


@pytest.mark.parametrize(
    ("now", "change"),
    [(0.0, T), (BEFORE, T), (AT, T2), (T2 - 1, T2), (T2, None), (T2 + 1e9, None)],
)
def test_next_change(now: float, change: float | None) -> None:
    assert next_change(RULES, now) == change


def test_embargoes_in_force() -> None:
    def table(now: float) -> list[tuple[str, str]]:
        return [(r.prefix + " " + r.principal, state) for r, state in in_force(RULES, now)]

    assert table(BEFORE) == [
        ("/escape/embargoed anonymous", "pending"),
        ("/escape/grant /escape/guest", "expiring"),
        ("/escape/opens anonymous", "pending"),
        ("/escape/window alice", "pending"),
    ]
    assert table(AT) == [("/escape/window alice", "expiring")]  # the others are in effect for good
    assert table(T2) == []


@pytest.mark.parametrize(
    ("path", "names"),
    [
        ("/escape", {"embargoed", "grant", "opens", "window"}),
        ("/", {"escape"}),
        ("/escape/embargoed", set()),
        ("/other", set()),
    ],
)
def test_children_with_rules(path: str, names: set[str]) -> None:
    assert children_with_rules(path, RULES) == names


# --- the auth service on a Clock -------------------------------------------------------------------


@pytest.fixture
def service(tmp_path: Path) -> AuthService:
    access = tmp_path / "access"
    access.write_text(ACCESS)
    clock = Clock()
    clock.advance(BEFORE - 10)
    return AuthService(clock=clock, access_file=str(access), reload_interval=3600)


def test_cached_decisions_end_at_the_rules_time(service: AuthService) -> None:
    clock = service.clock
    reloads = service.reloads
    for _ in range(3):  # decided and cached before T
        assert not service.decide(ANONYMOUS, "r", "/escape/embargoed/f").allowed
        assert service.decide(GUEST, "r", "/escape/grant/f").allowed
    clock.advance(T - clock.seconds() - 1e-3)
    assert not service.decide(ANONYMOUS, "r", "/escape/embargoed/f").allowed
    clock.advance(1e-3)  # exactly T
    assert clock.seconds() == T
    assert service.decide(ANONYMOUS, "r", "/escape/embargoed/f").allowed
    assert not service.decide(GUEST, "r", "/escape/grant/f").allowed
    assert service.reloads == reloads  # no reload: the same rules, decided at another time
    clock.advance(T2 - T)
    assert not service.decide(ALICE, "w", "/escape/window/f").allowed
    assert service.decide(MEMBER, "r", "/escape/window/f").allowed


def test_listings_leave_out_children_the_identity_may_not_see(service: AuthService) -> None:
    names = ["embargoed", "grant", "open", "opens", "window"]

    def shown(who: Identity, path: str = "/escape") -> list[str]:
        keep = service.listing_filter(who, path)
        return names if keep is None else [n for n in names if keep(n)]

    assert shown(ANONYMOUS) == ["open"]
    assert shown(MEMBER) == ["embargoed", "open", "window"]
    assert shown(GUEST) == ["grant", "open"]
    assert service.listing_filter(ANONYMOUS, "/escape/embargoed") is None  # nothing below has rules
    keep = service.listing_filter(ANONYMOUS, "/escape/")  # the same with a trailing slash
    assert keep is not None and not keep("embargoed")
    service.clock.advance(T - service.clock.seconds())
    assert shown(ANONYMOUS) == ["embargoed", "open", "opens"]
    assert shown(GUEST) == ["embargoed", "open", "opens"]


def test_status_shows_embargoes_and_the_next_change(service: AuthService) -> None:
    status = service.to_json()
    assert status["next_change"] == T
    first = status["embargoes"][0]
    assert first == {
        "rule": "acl:4".replace("acl", service.access_file),
        "prefix": "/escape/embargoed",
        "principal": "anonymous",
        "letters": "rl",
        "from": T,
        "until": None,
        "from_iso": "2027-01-01T00:00:00Z",
        "until_iso": None,
        "state": "pending",
    }
    assert [e["state"] for e in status["embargoes"]] == ["pending", "expiring", "pending", "pending"]
    service.clock.advance(T2 - service.clock.seconds())
    assert service.to_json()["embargoes"] == [] and service.to_json()["next_change"] is None


def test_sighup_reload_rereads_the_access_file(service: AuthService) -> None:
    """fedd/reload.py calls auth.reload() on SIGHUP; the method was missing (an AttributeError logged
    as 're-reading the access rules failed' on every reload)."""
    Path(service.access_file).write_text("/escape anonymous r until=2027-01-01T00:00Z\n")
    service.reload()
    assert len(service.rules) == 1 and service.to_json()["next_change"] == T


def test_status_page_section() -> None:
    status = {
        "fedd": {"now": BEFORE},
        "auth": {
            "next_change": T,
            "embargoes": [
                {"prefix": "/escape/<b>", "principal": "anonymous", "letters": "rl", "from": T, "until": None,
                 "state": "pending", "rule": "acl:3"},
                {"prefix": "/escape/grant", "principal": "/escape/guest", "letters": "r", "from": None,
                 "until": T, "state": "expiring", "rule": "acl:4"},
            ],
        },
    }  # fmt: skip
    page = render_status_page(status).decode()
    section = page[page.index("<h2>Access embargoes</h2>") :]
    section = section[: section.index("<h2>", 5)]
    assert "next change <span" in section and "in 1 s" in section
    assert "/escape/&lt;b&gt;" in section and "<b>" not in section
    assert section.count("<tr>") == 3 and ">starts<" in section and ">ends<" in section
    empty = render_status_page({"fedd": {"now": T}, "auth": {"embargoes": [], "next_change": None}}).decode()
    assert "no time-bounded rules in force" in empty
    assert "Access embargoes" not in render_status_page({"fedd": {"now": T}}).decode()  # no [auth]


# --- fedd itself -----------------------------------------------------------------------------------


def request(fed: Fedd, method: str, path: str, token: str | None = None, **headers: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", fed.port, timeout=10)
    try:
        if token:
            headers["Authorization"] = f"Bearer {token}"
        conn.request(method, path, headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    i = Issuer()
    yield i
    i.stop()


@pytest.fixture
def fed(issuer: Issuer, tmp_path: Path) -> Iterator[Fedd]:
    for d in ("open", "embargoed", "grant"):
        (tmp_path / "data" / d).mkdir(parents=True)
        (tmp_path / "data" / d / "f").write_text(d)
    (tmp_path / "access").write_text("/.well-known/fedd/status anonymous r\n/escape anonymous rl\n")
    port = free_port()
    conf = f"""[server]
listen = tcp:{port}:interface=127.0.0.1
[auth]
access_file = {tmp_path / "access"}
reload_interval = 0.2
token_audience = {AUD}
jwks_min_refresh = 0
[issuer test]
issuer = {issuer.iss}
jwks_url = {issuer.url}/jwks.json
[endpoint l]
kind = local
path = {tmp_path / "data"}
map = /escape /
"""
    f = start_fedd(tmp_path / "run", conf, port)
    yield f
    f.stop()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def _listed(body: bytes) -> set[str]:
    return set(re.findall(r"/escape/(\w+)", body.decode()))


def test_embargo_opens_and_grant_ends_at_their_time_without_reload(fed: Fedd, issuer: Issuer) -> None:
    # the rules are written once fedd runs, so that their time is a few seconds after start-up
    boundary = time.time() + 5.0
    (Path(fed.config).parent.parent / "access").write_text(
        "/.well-known/fedd/status anonymous r\n"
        "/escape            anonymous       rl\n"
        "/escape/embargoed  /escape/group   rl\n"
        f"/escape/embargoed  anonymous       rl   from={_iso(boundary)}\n"
        f"/escape/grant      /escape/guest   rl   until={_iso(boundary)}\n"
    )

    def auth_by_worker() -> dict[Any, dict[str, Any]]:
        """Each worker's auth section (with [server] workers every worker reloads the file itself)."""
        seen: dict[Any, dict[str, Any]] = {}
        for _ in range(12):
            status = fed.status()
            workers = status.get("workers") or {}
            seen[(workers.get("answered_by") or {}).get("index")] = status["auth"]
            if len(seen) >= max(1, int(workers.get("count") or 1)):
                break
        return seen

    def every_has_the_rules() -> dict[Any, dict[str, Any]] | None:
        seen = auth_by_worker()
        return seen if all(a["rules"] == 5 for a in seen.values()) else None

    every = wait_for(every_has_the_rules, 10, "new rules in every worker")
    reloads = {index: a["reloads"] for index, a in every.items()}
    auth = next(iter(every.values()))
    assert auth["next_change"] == pytest.approx(boundary, abs=1e-5)
    assert [(e["prefix"], e["state"]) for e in auth["embargoes"]] == [
        ("/escape/embargoed", "pending"),
        ("/escape/grant", "expiring"),
    ]
    member = issuer.token("openid", groups=["/escape/group"])
    guest = issuer.token("openid", groups=["/escape/guest"])

    # before: private to the group, the grant holds; listings name only what one may see
    assert request(fed, "GET", "/escape/embargoed/f")[0] == 401
    assert request(fed, "GET", "/escape/embargoed/f?metalink")[0] == 401
    assert request(fed, "GET", "/escape/embargoed/f", Accept="application/metalink4+xml")[0] == 401
    assert request(fed, "GET", "/escape/embargoed/f", member)[0] == 302
    assert request(fed, "GET", "/.well-known/fedd/local/l/embargoed/f")[0] == 401  # the bytes behind it too
    assert request(fed, "GET", "/escape/grant/f", guest)[0] == 302
    assert request(fed, "GET", "/escape/grant/f")[0] == 401  # no fall-back to the open /escape
    status, body = request(fed, "PROPFIND", "/escape", Depth="1")
    assert status == 207 and _listed(body) == {"open"}
    status, body = request(fed, "GET", "/escape/")
    assert status == 200 and _listed(body) == {"open"}
    assert _listed(request(fed, "PROPFIND", "/escape", member, Depth="1")[1]) == {"open", "embargoed"}
    assert _listed(request(fed, "PROPFIND", "/escape", guest, Depth="1")[1]) == {"open", "grant"}
    assert time.time() < boundary, "the checks before the boundary took too long to mean anything"

    # across the boundary: every answer received before it is the old one, every request sent after
    # it gets the new one (also while a redirect plan for the grant, 1 s, is still cached)
    seen: list[tuple[float, float, int, int]] = []

    def probe() -> bool:
        sent = time.time()
        anonymous = request(fed, "GET", "/escape/embargoed/f")[0]
        granted = request(fed, "GET", "/escape/grant/f", guest)[0]
        seen.append((sent, time.time(), anonymous, granted))
        return sent > boundary + 1.5

    wait_for(probe, timeout=20, what="the boundary to pass")
    for sent, received, anonymous, granted in seen:
        if received < boundary:
            assert (anonymous, granted) == (401, 302), (sent - boundary, anonymous, granted)
        if sent >= boundary:
            assert (anonymous, granted) == (302, 403), (sent - boundary, anonymous, granted)
    assert any(received < boundary for _, received, _, _ in seen) and any(s >= boundary for s, _, _, _ in seen)

    # after: public, the grant gone; listings and metalink follow
    status, body = request(fed, "GET", "/escape/embargoed/f?metalink")
    assert status == 200 and b"<metalink" in body and b"/.well-known/fedd/local/l/embargoed/f</url>" in body
    assert request(fed, "GET", "/.well-known/fedd/local/l/embargoed/f") == (200, b"embargoed")
    assert _listed(request(fed, "PROPFIND", "/escape", Depth="1")[1]) == {"open", "embargoed"}
    assert _listed(request(fed, "GET", "/escape")[1]) == {"open", "embargoed"}
    assert _listed(request(fed, "PROPFIND", "/escape", guest, Depth="1")[1]) == {"open", "embargoed"}
    for index, auth in auth_by_worker().items():
        assert auth["embargoes"] == [] and auth["next_change"] is None
        assert auth["reloads"] == reloads.get(index, auth["reloads"]) and auth["reload_errors"] == 0  # no reload did it
    log = fed.log_text()
    assert "Traceback" not in log and "Unhandled" not in log
    assert "denied GET /escape/embargoed/f to anonymous" in log
