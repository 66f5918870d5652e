"""Authorisation files and the decision function: tables of cases."""

from __future__ import annotations

import pytest

from fedd.auth.identity import ANONYMOUS, Identity
from fedd.auth.policy import decide
from fedd.auth.rules import RulesError, parse_access, parse_gridmap

ACCESS = """
# prefix            principal                          letters
/atlas              atlas                              rl
/atlas              "/DC=ch/DC=cern/OU=Users/CN=Jane Doe"  rlwd
/atlas/production   /atlas/Role=production             rlwd
/atlas/production   atlas                              rl
/belle/public       anonymous                          rl
/belle              /belle                             rlw
/scratch            authenticated                      rlwd
/scratch/alice      alice001                           rlwd
"""
RULES = parse_access(ACCESS, "access")
NOW = 1_800_000_000.0  # rules without times decide the same at any time
JANE = Identity("x509", "/DC=ch/DC=cern/OU=Users/CN=Jane Doe", fqans=("/atlas/Role=NULL/Capability=NULL",))
PROD = Identity("x509", "/DC=org/CN=Prod Bot", fqans=("/atlas/Role=production/Capability=NULL",))
ATLAS = Identity("x509", "/DC=org/CN=Atlas User", fqans=("/atlas",))
NOVO = Identity("x509", "/DC=org/CN=No VO")
BELLE_TOKEN = Identity("token", "sub-1", groups=("/belle",))
ALICE = Identity("x509", "/DC=org/CN=Alice", user="alice001")


@pytest.mark.parametrize(
    ("who", "letter", "path", "allowed"),
    [
        (ATLAS, "r", "/atlas/data/f", True),
        (ATLAS, "w", "/atlas/data/f", False),
        (JANE, "w", "/atlas/data/f", True),
        (JANE, "d", "/atlas/data/f", True),
        (PROD, "w", "/atlas/production/f", True),
        (ATLAS, "w", "/atlas/production/f", False),
        (ATLAS, "r", "/atlas/production/f", True),
        (JANE, "w", "/atlas/production/f", False),  # the longest prefix decides: Jane is only atlas there
        (ANONYMOUS, "r", "/belle/public/f", True),
        (ANONYMOUS, "w", "/belle/public/f", False),
        (ANONYMOUS, "r", "/belle/private/f", False),
        (BELLE_TOKEN, "w", "/belle/private/f", True),
        (BELLE_TOKEN, "d", "/belle/private/f", False),
        (ANONYMOUS, "r", "/atlas/data/f", False),
        (NOVO, "r", "/atlas/data/f", False),
        (NOVO, "d", "/scratch/x", True),
        (ANONYMOUS, "r", "/scratch/x", False),
        (ALICE, "w", "/scratch/alice/x", True),
        (NOVO, "w", "/scratch/alice/x", False),
        (ATLAS, "r", "/atlasx/f", False),  # prefixes match whole components
        (ATLAS, "r", "/other", False),
    ],
)
def test_access_rules(who: Identity, letter: str, path: str, allowed: bool) -> None:
    assert decide(who, letter, path, RULES, NOW).allowed is allowed


@pytest.mark.parametrize(
    ("scopes", "letter", "path", "allowed"),
    [
        (("storage.read:/atlas/data",), "r", "/atlas/data/f", True),
        (("storage.read:/atlas/data",), "l", "/atlas/data", True),
        (("storage.read:/atlas/data",), "r", "/atlas/database/f", False),
        (("storage.read:/atlas/data",), "w", "/atlas/data/f", False),
        (("storage.create:/atlas/data",), "w", "/atlas/data/new", True),
        (("storage.create:/atlas/data",), "d", "/atlas/data/new", False),
        (("storage.modify:/atlas",), "d", "/atlas/data/f", True),
        (("storage.read:/",), "r", "/anything", True),
        (("openid", "storage.read:/belle"), "r", "/atlas/f", False),
    ],
)
def test_token_scopes(scopes: tuple[str, ...], letter: str, path: str, allowed: bool) -> None:
    who = Identity("token", "sub", scopes=scopes, groups=("/atlas",))
    assert decide(who, letter, path, RULES, NOW).allowed is allowed


def test_reasons_are_readable() -> None:
    assert decide(JANE, "w", "/atlas/production/f", RULES, NOW).reason == (
        "write on /atlas/production not granted to /DC=ch/DC=cern/OU=Users/CN=Jane Doe"
    )
    assert decide(ATLAS, "r", "/atlas/f", RULES, NOW).reason.startswith("access:3: /atlas atlas")
    assert decide(ATLAS, "r", "/nowhere", RULES, NOW).reason == "no access rule covers /nowhere"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("/atlas atlas rx\n", "access:1: letters must be from 'rlwd'"),
        ("/atlas atlas\n", "access:1: expected '<path prefix> <principal> <letters>'"),
        ("\n\natlas atlas r\n", "access:3: expected an absolute path prefix"),
        ("/a/../b atlas r\n", "access:1: expected an absolute path prefix"),
        ('/atlas "unterminated r\n', "access:1: No closing quotation"),
        ("/atlas atlas rl extra\n", "access:1: expected from=<time> or until=<time> after the letters, got 'extra'"),
    ],
)
def test_bad_access_lines(text: str, message: str) -> None:
    with pytest.raises(RulesError) as info:
        parse_access(text, "access")
    assert message in str(info.value)


def test_gridmap() -> None:
    text = '"/DC=ch/DC=cern/OU=Users/CN=Jane Doe" atlas001,atlas002\n# comment\n"/C=DE/O=GridKa/CN=Max" belle\n'
    assert parse_gridmap(text) == {"/DC=ch/DC=cern/OU=Users/CN=Jane Doe": "atlas001", "/C=DE/O=GridKa/CN=Max": "belle"}
    with pytest.raises(RulesError, match="gm:2"):
        parse_gridmap('"/DC=a/CN=b" x\nnot-a-dn y\n', "gm")
