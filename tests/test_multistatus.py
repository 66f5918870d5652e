"""The streamed multistatus reader: its fast path (regular expressions for the common shape) gives
the same entries and errors as lxml's tree (`_TreeReader`, the reader fedd had before) on a corpus
of answers in Apache, dCache, EOS and other shapes, cut into chunks of every size; and the fast
renderers of listing rows give the same text as `xml.response_xml` and the old index formula."""

from __future__ import annotations

import time
from html import escape
from typing import Any
from urllib.parse import quote

import pytest

from fedd.endpoints.base import LIST_BATCH, Entry, Stat
from fedd.endpoints.multistatus import MultistatusReader
from fedd.endpoints.multistatus_tree import _TreeReader
from fedd.errors import EndpointError
from fedd.web import xml
from fedd.web.listing import AllpropFiles, index_row

OWN = "/atlas/big"
DATE = "Mon, 30 Nov 2026 23:29:51 GMT"


def apache(names: list[str], *, allprop: bool = False) -> bytes:
    """What Apache mod_dav answers to fedd's PROPFIND (or to an allprop one)."""
    own = (
        '<D:response xmlns:lp1="DAV:" xmlns:lp2="http://apache.org/dav/props/" xmlns:g0="DAV:">\n'
        "<D:href>/atlas/big/</D:href>\n<D:propstat>\n<D:prop>\n<lp1:resourcetype><D:collection/></lp1:resourcetype>\n"
        f'<lp1:getlastmodified>{DATE}</lp1:getlastmodified>\n<lp1:getetag>W/"1d000-6618"</lp1:getetag>\n'
        "</D:prop>\n<D:status>HTTP/1.1 200 OK</D:status>\n</D:propstat>\n"
        "<D:propstat>\n<D:prop>\n<g0:getcontentlength/>\n</D:prop>\n<D:status>HTTP/1.1 404 Not Found</D:status>\n"
        "</D:propstat>\n</D:response>\n"
    )
    lock = (
        "<D:supportedlock>\n<D:lockentry>\n<D:lockscope><D:exclusive/></D:lockscope>\n"
        "<D:locktype><D:write/></D:locktype>\n</D:lockentry>\n</D:supportedlock>\n"
        if allprop
        else ""
    )
    rows = []
    for n, name in enumerate(names):
        rows.append(
            '<D:response xmlns:lp1="DAV:" xmlns:lp2="http://apache.org/dav/props/">\n'
            f"<D:href>/atlas/big/{name}</D:href>\n<D:propstat>\n<D:prop>\n<lp1:resourcetype/>\n"
            f"<lp1:getcontentlength>{n}</lp1:getcontentlength>\n<lp1:getlastmodified>{DATE}</lp1:getlastmodified>\n"
            f'<lp1:getetag>{"W/" if n % 2 else ""}"{n}-6618"</lp1:getetag>\n{lock}'
            "</D:prop>\n<D:status>HTTP/1.1 200 OK</D:status>\n</D:propstat>\n</D:response>\n"
        )
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<D:multistatus xmlns:D="DAV:" xmlns:ns0="DAV:">\n'
        + own
        + "".join(rows)
        + "</D:multistatus>\n"
    ).encode()


PLAIN = [f"f{n:03d}" for n in range(60)]
NAMES = ["file-00001.root", "sub%20dir", "a&amp;b%3cc%3e.root", "caf%C3%A9", "q&quot;uote", "x&lt;y&gt;"]

DCACHE = (
    '<?xml version="1.0" encoding="UTF-8" standalone="no"?>'
    '<d:multistatus xmlns:d="DAV:" xmlns:ns1="http://www.dcache.org/2013/webdav">'
    "<d:response><d:href>http://dcache.example:2880/atlas/big/</d:href><d:propstat><d:prop>"
    "<d:resourcetype><d:collection /></d:resourcetype></d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat>"
    "</d:response>"
    "<d:response><d:href>http://dcache.example:2880/atlas/big/f%20one</d:href><d:propstat><d:prop>"
    f'<d:getetag>"0000A-1"</d:getetag><ns1:Checksums>adler32=01</ns1:Checksums><d:getlastmodified>{DATE}'
    "</d:getlastmodified><d:getcontentlength> 42 </d:getcontentlength><d:resourcetype/></d:prop>"
    "<d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response>"
    "<d:response><d:href>https://dcache.example/atlas/big/q%3Fx%23y</d:href><d:propstat><d:prop>"
    "<d:getcontentlength>1</d:getcontentlength></d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response>"
    "<d:response><d:href>/atlas/big/dir</d:href><d:propstat><d:prop><d:resourcetype><ns1:x/><d:collection/>"
    "</d:resourcetype><d:getcontentlength>7</d:getcontentlength></d:prop><d:status>HTTP/1.1 200 OK</d:status>"
    "</d:propstat></d:response>"
    "</d:multistatus>"
).encode()


def other_prefix(doc: bytes, href: bytes) -> bytes:
    """`doc` with the response for `href` written with the prefix E for DAV: instead of D."""
    start = doc.rindex(b"<D:response", 0, doc.index(b"<D:href>" + href + b"</D:href>"))
    end = doc.index(b"</D:response>", start) + len(b"</D:response>")
    response = doc[start:end].replace(b"D:", b"E:").replace(b"<E:response", b'<E:response xmlns:E="DAV:"', 1)
    return doc[:start] + response + doc[end:]


# each: a document that must read the same through both readers (entries, or the same error)
CORPUS: dict[str, bytes] = {
    "apache": apache(NAMES),
    "apache allprop (nested properties: the tree)": apache(NAMES, allprop=True),
    "dcache, full URLs, other order": DCACHE,
    "crlf between elements": apache(NAMES).replace(b">\n<", b">\r\n<"),
    "no XML declaration, BOM": b"\xef\xbb\xbf" + apache(NAMES).split(b"\n", 1)[1],
    "latin-1 declared (the tree)": apache(["caf\xe9"]).decode().replace("utf-8", "ISO-8859-1").encode("latin-1"),
    "default namespace (the tree)": (
        b'<multistatus xmlns="DAV:"><response><href>/atlas/big/a</href><propstat><prop><getcontentlength>5'
        b"</getcontentlength></prop><status>HTTP/1.1 200 OK</status></propstat></response></multistatus>"
    ),
    "CDATA in a name (the tree)": apache(["a"]).replace(b"/atlas/big/a<", b"/atlas/big/<![CDATA[a&b]]><"),
    "comment in a name (the tree)": apache(["ab"]).replace(b"/atlas/big/ab<", b"/atlas/big/a<!-- c -->b<"),
    "character reference (the tree)": apache(["a&#x41;b"]),
    "two 200 propstats, the last wins": apache(["a"]).replace(
        b"</D:propstat>\n</D:response>\n</D:multistatus>",
        b"</D:propstat><D:propstat><D:prop><lp1:getcontentlength>99</lp1:getcontentlength><D:resourcetype>"
        b"<D:collection/></D:resourcetype></D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>\n"
        b"</D:response>\n</D:multistatus>",
    ),
    "a 403 propstat is not read": apache(["a"]).replace(
        b"HTTP/1.1 200 OK</D:status>\n</D:propstat>\n</D:response>\n</D:multistatus>",
        b"HTTP/1.1 403 Forbidden</D:status>\n</D:propstat>\n</D:response>\n</D:multistatus>",
    ),
    "a property in another namespace named like DAV's": apache(["a"]).replace(
        b"<lp1:resourcetype/>", b'<lp1:resourcetype/><x:getcontentlength xmlns:x="urn:x">9</x:getcontentlength>'
    ),
    "property of another namespace declared on the response": apache(["a"])
    .replace(b'xmlns:lp2="http://apache.org/dav/props/">', b'xmlns:lp2="urn:x">')
    .replace(b"<lp1:getcontentlength>0</lp1:getcontentlength>", b"<lp2:getcontentlength>5</lp2:getcontentlength>"),
    "lp1 bound to another namespace": apache(["a"]).replace(
        b'xmlns:lp1="DAV:" xmlns:lp2', b'xmlns:lp1="urn:y" xmlns:lp2'
    ),
    "element content where text is expected": apache(["a"]).replace(
        b'<lp1:getetag>"0-6618"</lp1:getetag>', b"<lp1:getetag><x/></lp1:getetag>"
    ),
    "a responsedescription after the responses": apache(["a"]).replace(
        b"</D:multistatus>", b"<D:responsedescription>partial</D:responsedescription></D:multistatus>"
    ),
    "a response in a response": apache(["a"]).replace(
        b"<D:href>/atlas/big/a</D:href>",
        b"<D:href>/atlas/big/a</D:href><D:response><D:href>/atlas/big/in</D:href></D:response>",
    ),
    "spaces in end tags": apache(["a"]).replace(b"</D:href>", b"</D:href  >"),
    "undeclared prefix": apache(["a"]).replace(b"<lp1:resourcetype/>", b"<zz:resourcetype/>"),
    "mismatched tags": apache(["a"]).replace(b"</lp1:getcontentlength>", b"</lp1:getetag>"),
    "control character": apache(["a\x01b"]),
    "invalid UTF-8": apache(["a"]).replace(b"/atlas/big/a", b"/atlas/big/a\xff"),
    "]]> in text": apache(["a]]>b"]),
    "not a multistatus": b'<?xml version="1.0"?><D:error xmlns:D="DAV:"><D:x/></D:error>',
    # plain names only: complete responses read a chunk at a time (`_file_block`), or one by one where
    # one of them is not a plain file's
    "apache, plain names": apache(PLAIN),
    "apache, plain and escaped names": apache([*PLAIN, "sub%20dir", "caf%C3%A9", "x%25y", "%41"]),
    "apache, plain names and one with an escaped slash": apache([*PLAIN[:9], "a%2Fb", *PLAIN[9:]]),
    "apache, plain names and one with an invalid escape": apache([*PLAIN, "%ff%zz"]),
    "apache, plain names and a subdirectory among them": apache(PLAIN).replace(
        b"<lp1:resourcetype/>\n<lp1:getcontentlength>20<",
        b"<lp1:resourcetype><D:collection/></lp1:resourcetype>\n<lp1:getcontentlength>20<",
    ),
    "apache, plain names and one of another collection": apache(PLAIN).replace(
        b"/atlas/big/f020<", b"/atlas/other/f020<"
    ),
    "apache, plain names and one deeper": apache(PLAIN).replace(b"/atlas/big/f020<", b"/atlas/big/sub/f020<"),
    "apache, plain names and the collection again": apache(PLAIN).replace(b"/atlas/big/f020<", b"/atlas/big/<"),
    "apache, plain names and one not found": apache(PLAIN).replace(
        b'"20-6618"</lp1:getetag>\n</D:prop>\n<D:status>HTTP/1.1 200 OK',
        b'"20-6618"</lp1:getetag>\n</D:prop>\n<D:status>HTTP/1.1 404 Not Found',
    ),
    "apache, plain names and one with another prefix": other_prefix(apache(PLAIN), b"/atlas/big/f020"),
    "apache, plain names and one with other declarations": apache(PLAIN).replace(
        b'<D:response xmlns:lp1="DAV:" xmlns:lp2="http://apache.org/dav/props/">\n<D:href>/atlas/big/f020</D:href>',
        b'<D:response xmlns:lp1="urn:x">\n<D:href>/atlas/big/f020</D:href>',
    ),
    "truncated": apache(NAMES)[:-40],
    "garbage after the root": apache(["a"]) + b"<x/>",
    "a comment after the root": apache(["a"]) + b"<!-- done -->\n",
    "DOCTYPE with an entity": b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY e "x">]>'
    + apache(["&e;"]).split(b"\n", 1)[1],
    "empty": b"",
    "the collection is a file": apache([]).replace(b"<lp1:resourcetype><D:collection/></lp1:resourcetype>", b""),
}


def read(doc: bytes, size: int, *, tree: bool) -> tuple[Any, ...]:
    got: list[Entry] = []
    reader = MultistatusReader("ep", OWN, got.extend)
    if tree:
        reader._tree = _TreeReader("ep", reader._take)  # what fedd had before: lxml all along
    try:
        for start in range(0, len(doc), size):
            reader.feed(doc[start : start + size])
        is_collection = reader.close()
    except EndpointError:
        return ("error",)
    return (is_collection, got)


def fast(doc: bytes) -> bool:
    """Whether the expressions read all of `doc` (lxml never asked)."""
    reader = MultistatusReader("ep", OWN, lambda entries: None)
    reader.feed(doc)
    reader.close()
    return reader._tree is None


@pytest.mark.parametrize("name", sorted(CORPUS))
@pytest.mark.parametrize("size", [1, 7, 64, 1000, 1 << 20])
def test_fast_path_reads_like_the_tree(name: str, size: int) -> None:
    doc = CORPUS[name]
    assert read(doc, size, tree=False) == read(doc, 1 << 20, tree=True)


def test_corpus_reads_what_it_says() -> None:
    """The corpus is not all errors: the common shapes give their entries, escaped names decoded."""
    is_dir, entries = read(CORPUS["apache"], 1 << 20, tree=False)
    assert is_dir is True
    assert [e.name for e in entries] == ["file-00001.root", "sub dir", "a&b<c>.root", "café", 'q"uote', "x<y>"]
    assert entries[1].stat == Stat(size=1, mtime=1796081391.0, is_dir=False, etag="W/1-6618")
    is_dir, entries = read(CORPUS["dcache, full URLs, other order"], 1 << 20, tree=False)
    assert entries == [
        Entry("f one", Stat(size=42, mtime=1796081391.0, etag="0000A-1")),
        Entry("q?x#y", Stat(size=1)),
        Entry("dir", Stat(size=None, is_dir=True)),
    ]
    assert read(CORPUS["the collection is a file"], 1 << 20, tree=False) == (False, [])
    for name in ("apache", "dcache, full URLs, other order", "crlf between elements", "no XML declaration, BOM"):
        assert fast(CORPUS[name]), name
    for name in ("two 200 propstats, the last wins", "a 403 propstat is not read", "lp1 bound to another namespace"):
        assert fast(CORPUS[name]), name
    for name in (
        "apache allprop (nested properties: the tree)",
        "CDATA in a name (the tree)",
        "a response in a response",
    ):
        assert not fast(CORPUS[name]), name
    assert read(CORPUS["mismatched tags"], 7, tree=False) == ("error",)
    assert read(CORPUS["a response in a response"], 7, tree=False)[1][0].name == "in"


def test_big_listing_in_batches_with_bounded_buffer() -> None:
    names = [f"f{n:06d}" for n in range(20_000)]
    doc = apache(names)
    batches: list[list[Entry]] = []
    reader = MultistatusReader("ep", OWN, batches.append)
    for start in range(0, len(doc), 65536):
        reader.feed(doc[start : start + 65536])
        assert len(reader._text) < 65536 + 1024  # one chunk and a partial response at most
    assert reader.close() is True
    assert [e.name for b in batches for e in b] == names
    assert max(len(b) for b in batches) <= 1000


def test_plain_files_read_a_chunk_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Apache's answer of plain names: the complete responses of each chunk read at once, in the
    same batches; the entry limit still stops the listing at the entry that passes it."""
    names = [f"f{n:06d}" for n in range(2_000)]
    doc = apache(names)
    one_by_one: list[int] = []
    slow = MultistatusReader._files_one_by_one

    def counted(self: MultistatusReader, *args: Any) -> int:
        one_by_one.append(1)
        return slow(self, *args)

    monkeypatch.setattr(MultistatusReader, "_files_one_by_one", counted)
    batches: list[list[Entry]] = []
    reader = MultistatusReader("ep", OWN, batches.append)
    for start in range(0, len(doc), 65536):
        reader.feed(doc[start : start + 65536])
    assert reader.close() is True
    assert [e.name for b in batches for e in b] == names
    assert [len(b) for b in batches] == [LIST_BATCH] * (2_000 // LIST_BATCH)
    assert batches[0][1] == Entry("f000001", Stat(size=1, mtime=1796081391.0, etag="W/1-6618"))
    assert not one_by_one and reader._tree is None

    monkeypatch.setattr("fedd.endpoints.multistatus.MAX_LIST_ENTRIES", 1_234)
    batches.clear()
    reader = MultistatusReader("ep", OWN, batches.append)
    with pytest.raises(EndpointError, match="exceeds 1234 entries"):
        for start in range(0, len(doc), 65536):
            reader.feed(doc[start : start + 65536])
    assert [e.name for b in batches for e in b] == names[: 1_234 // LIST_BATCH * LIST_BATCH]


@pytest.mark.parametrize(
    "hostile",
    [
        b"<D:response>" + b" " * 3_000_000,
        b"<D:response><D:href>/a</D:href><D:propstat><D:prop>" + b"<a:b>" + b"\n" * 3_000_000,
        b"<D:response><D:href>/a</D:href><D:propstat><D:prop>" + b"<a:b/> " * 300_000 + b"</D:response>",
        b"<D:response><D:href>" + b"&amp;" * 500_000 + b"</D:response>",
    ],
)
def test_hostile_shapes_take_linear_time(hostile: bytes) -> None:
    doc = apache([]).replace(b"</D:multistatus>\n", b"") + hostile
    start = time.process_time()
    assert read(doc, 16384, tree=False) == ("error",)
    assert time.process_time() - start < 5.0  # seconds; quadratic re-scanning took minutes


STATS = [
    Stat(size=0, mtime=1796081391.0, etag="0-6618"),
    Stat(size=12345678901, mtime=None, etag=""),
    Stat(size=5, mtime=0.0, etag="W/a&b<c>"),
    Stat(size=None, mtime=1.5, etag='x"y'),
]
ROW_NAMES = ["plain-name_1.root", "with space", "a&b<c>'\"", "café", "100%", "~tilde", "semi;colon", "#hash?q"]


@pytest.mark.parametrize("base", ["/atlas/big", "/", "/a b/c&d"])
def test_allprop_rows_match_response_xml(base: str) -> None:
    render = AllpropFiles(base.rstrip("/"))
    for name in ROW_NAMES:
        for stat in STATS:
            path = f"{base.rstrip('/')}/{name}"
            assert render(name, stat) == xml.response_xml(path, stat, "allprop", (), None)


@pytest.mark.parametrize("base", ["/atlas/big", "", "/a b/c&d\"'"])
def test_index_rows_match_the_old_formula(base: str) -> None:
    prefix = quote(base + "/")
    for name in ROW_NAMES:
        for is_dir in (False, True):
            entry = Entry(name, Stat(size=None if is_dir else 1, is_dir=is_dir))
            old = (
                f'<li><a href="{escape(quote(base + "/" + name))}{"/" if is_dir else ""}">'
                f"{escape(name)}{'/' if is_dir else ''}</a></li>"
            )
            assert index_row(prefix, entry) == old
