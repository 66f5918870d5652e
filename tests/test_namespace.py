"""Path normalisation (no escape from a prefix, ever) and prefix mapping."""

from __future__ import annotations

import pytest

from fedd.errors import BadRequest
from fedd.namespace import Namespace, Target, normalise_path


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        (b"/", "/"),
        (b"/atlas", "/atlas"),
        (b"/atlas/", "/atlas"),
        (b"//atlas///data//f", "/atlas/data/f"),
        (b"/atlas/a%20b", "/atlas/a b"),
        (b"/atlas/%C3%A9t%C3%A9", "/atlas/\u00e9t\u00e9"),
        (b"/atlas/...", "/atlas/..."),
        (b"/atlas/.hidden", "/atlas/.hidden"),
        (b"/atlas/a%25b", "/atlas/a%b"),
        (b"/atlas/" + b"n" * 255, "/atlas/" + "n" * 255),
        (b"/a" * 2047, "/a" * 2047),
    ],
)
def test_normalise_accepts(raw: bytes, clean: str) -> None:
    assert normalise_path(raw) == clean


@pytest.mark.parametrize(
    "raw",
    [
        b"/atlas/../etc/passwd",
        b"/atlas/%2e%2e/etc/passwd",
        b"/atlas/%2E%2E/etc/passwd",
        b"/atlas/.%2e/x",
        b"/atlas/./x",
        b"/..",
        b"/atlas/a%2fb",
        b"/atlas/a%2Fb/../../x",
        b"/atlas/a%5cb",
        b"/atlas/a%00b",
        b"/atlas/a%0ab",
        b"/atlas/%ff",
        b"atlas/x",
        b"/atlas/" + b"n" * 256,  # ENAMETOOLONG on a local endpoint, 400/414 on object stores
        b"/atlas/" + b"%C3%A9" * 128,  # 256 bytes once decoded
        b"/atlas" + b"/d" * 2100,  # over PATH_MAX (4096 bytes)
        b"/atlas/" + b"%41" * 5000,
        b"/atlas/a%7fb",
        b"/atlas/a\x01b",
    ],
)
def test_normalise_refuses(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        normalise_path(raw)


def test_targets_longest_prefix_per_endpoint() -> None:
    ns = Namespace(
        [
            ("s3", "/atlas", "/rucio/atlas"),
            ("s3", "/atlas/scratch", "/scratch"),
            ("dav", "/", "/pnfs"),
            ("other", "/belle", "/"),
        ]
    )
    assert ns.targets("/atlas/data/f") == [Target("s3", "/rucio/atlas/data/f"), Target("dav", "/pnfs/atlas/data/f")]
    assert ns.targets("/atlas/scratch/x") == [Target("s3", "/scratch/x"), Target("dav", "/pnfs/atlas/scratch/x")]
    assert ns.targets("/atlas") == [Target("s3", "/rucio/atlas"), Target("dav", "/pnfs/atlas")]
    assert ns.targets("/atlasx/f") == [Target("dav", "/pnfs/atlasx/f")]
    assert ns.targets("/belle") == [Target("other", "/"), Target("dav", "/pnfs/belle")]
    assert ns.targets("/belle/a") == [Target("other", "/a"), Target("dav", "/pnfs/belle/a")]


def test_virtual_children_and_inverse() -> None:
    ns = Namespace([("a", "/atlas/data", "/"), ("b", "/belle", "/b")])
    assert ns.virtual_children("/") == {"atlas", "belle"}
    assert ns.virtual_children("/atlas") == {"data"}
    assert ns.virtual_children("/atlas/data") == set()
    assert ns.to_federation("a", "/x/y") == "/atlas/data/x/y"
    assert ns.to_federation("b", "/b/c") == "/belle/c"
    assert ns.to_federation("b", "/bc") is None
