"""Each HTTP endpoint kind in process: `make_endpoint(..., http_client=StubTreq(resource))` over a small
twisted.web resource that answers what the test scripts and records what it was asked. No sockets,
no real time (a `Clock`): what is signed and sent, how each answer is read, timeouts, size caps."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web import server
from zope.interface.exceptions import Invalid

from fedd.checksums.reported import known_checksums, parse_reported, worth_storing
from fedd.config import EndpointConfig
from fedd.endpoints import close_endpoint, make_endpoint
from fedd.endpoints.base import Entry, HttpClient, Stat
from fedd.endpoints.s3 import S3Endpoint
from fedd.errors import EndpointError, PathRefused
from fedd.twtypes import Resource
from tests.servers import AZURITE_KEY

DATA = b"sixteen bytes!!\n"
MD5 = hashlib.md5(DATA).hexdigest()


@dataclass
class Seen:
    method: str
    path: str  # as sent, percent-encoded
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


Answer = tuple[int, dict[str, str], bytes]


class Scripted(Resource):
    """Answers each request with `answer(seen)`; None: the answer never comes."""

    isLeaf = True

    def __init__(self, answer: Callable[[Seen], Answer | None]) -> None:
        super().__init__()
        self.answer = answer
        self.seen: list[Seen] = []

    def render(self, request: server.Request) -> bytes | int:
        url = urlsplit(request.uri.decode("latin-1"))
        headers = {k.decode().lower(): v[-1].decode("latin-1") for k, v in request.requestHeaders.getAllRawHeaders()}
        body = request.content.read() if request.content is not None else b""
        seen = Seen(request.method.decode(), url.path, parse_qs(url.query), headers, body)
        self.seen.append(seen)
        answer = self.answer(seen)
        if answer is None:
            return server.NOT_DONE_YET
        code, out, data = answer
        request.setResponseCode(code)
        for name, value in out.items():
            request.setHeader(name, value)
        return data  # for HEAD, twisted.web sends its length as Content-Length and no body


def result(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "no answer yet"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def build(kind: str, answer: Callable[[Seen], Answer | None], **config: Any) -> tuple[Any, Scripted, Clock]:
    clock = Clock()
    clock.advance(1_700_000_000)
    served = Scripted(answer)
    defaults: dict[str, Any] = {
        "s3": {"url": "http://s3.test", "bucket": "bkt", "access_key": "AK", "secret_key": "SK"},
        "azure": {"url": "http://az.test/acct", "account": "acct", "container": "ctr", "account_key": AZURITE_KEY},
        "dav": {"url": "http://dav.test/base"},
    }[kind]
    cfg = EndpointConfig(id=kind, kind=kind, timeout=5.0, **{**defaults, **config})
    ep = make_endpoint(cfg, reactor=clock, http_client=StubTreq(served), instance="fedd-here")
    return ep, served, clock


# --- S3 -------------------------------------------------------------------------------------------


def test_s3_stat_is_a_signed_head_and_reports_raw_fields() -> None:
    meta = {"ETag": f'"{MD5}"', "x-amz-meta-adler32": "3da0195", "Last-Modified": "Tue, 14 Nov 2023 22:13:20 GMT"}
    ep, served, _ = build("s3", lambda seen: (200, meta, DATA))
    stat = result(ep.stat("/data/a b.txt"))
    (head,) = served.seen
    assert head.method == "HEAD" and head.path == "/bkt/data/a%20b.txt"
    assert head.headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AK/")
    assert stat.size == len(DATA) and stat.etag == MD5 and stat.mtime == 1_700_000_000.0
    assert ("x-amz-meta-adler32", "3da0195") in stat.reported  # raw: the leading zero is still missing
    assert known_checksums(stat) == {"md5": MD5, "adler32": "03da0195"}  # read on the checksum side


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (404, None),
        (400, PathRefused),
        (414, PathRefused),
        (403, PathRefused),
        (500, EndpointError),
        (503, EndpointError),
    ],
)
def test_s3_stat_answers(code: int, outcome: Any) -> None:
    ep, _, _ = build("s3", lambda seen: (code, {}, b""))
    if outcome is None:
        assert result(ep.stat("/f")) is None
    else:
        with pytest.raises(outcome) as caught:
            result(ep.stat("/f"))
        assert type(caught.value) is outcome  # a refusal is not also an endpoint fault, nor the reverse


def _page(keys: list[str], token: str = "") -> bytes:
    contents = "".join(
        f"<Contents><Key>{k}</Key><Size>1</Size><ETag>&quot;e&quot;</ETag>"
        f"<LastModified>2023-11-14T22:13:20.000Z</LastModified></Contents>"
        for k in keys
    )
    more = f"<IsTruncated>true</IsTruncated><NextContinuationToken>{token}</NextContinuationToken>" if token else ""
    return (
        f'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{contents}'
        f"<CommonPrefixes><Prefix>d/sub/</Prefix></CommonPrefixes>{more}</ListBucketResult>"
    ).encode()


def test_s3_listing_is_streamed_page_by_page() -> None:
    def answer(seen: Seen) -> Answer:
        if "continuation-token" in seen.query:
            return 200, {}, _page(["d/c"])
        return 200, {}, _page(["d/", "d/a", "d/b"], token="next one")

    ep, served, _ = build("s3", answer)
    batches: list[list[Entry]] = []
    assert result(ep.list_stream("/d", batches.append)) is True
    assert [[e.name for e in b] for b in batches] == [["a", "b", "sub"], ["c", "sub"]]
    assert served.seen[1].query["continuation-token"] == ["next one"] and served.seen[1].query["prefix"] == ["d/"]


def test_s3_store_checksums_copies_the_object_onto_itself_if_unchanged() -> None:
    def answer(seen: Seen) -> Answer:
        if seen.method == "HEAD":
            return 200, {"ETag": '"abc-2"', "x-amz-meta-owner": "atlas", "Content-Type": "text/plain"}, DATA
        return (412, {}, b"") if seen.headers.get("x-amz-meta-adler32") == "00000000" else (200, {}, b"<ok/>")

    ep, served, _ = build("s3", answer)
    assert result(ep.store_checksums("/f", {"adler32": "0badf00d"}, "abc-2")) is True
    put = served.seen[1]
    assert put.method == "PUT" and put.headers["x-amz-copy-source"] == "/bkt/f"
    assert put.headers["x-amz-copy-source-if-match"] == '"abc-2"'
    assert put.headers["x-amz-metadata-directive"] == "REPLACE"
    assert put.headers["x-amz-meta-adler32"] == "0badf00d" and put.headers["x-amz-meta-owner"] == "atlas"
    assert result(ep.store_checksums("/f", {"adler32": "00000000"}, "abc-2")) is False  # 412: changed meanwhile
    assert result(ep.store_checksums("/f", {"adler32": "0badf00d"}, "other")) is False  # not the object hashed
    assert len(served.seen) == 5  # the last one stopped after its HEAD


def test_the_checksum_side_leaves_out_an_md5_a_one_part_etag_already_is() -> None:
    assert worth_storing({"md5": MD5, "adler32": "0badf00d"}, MD5) == {"adler32": "0badf00d"}
    assert worth_storing({"md5": MD5}, "abc-2") == {"md5": MD5}


# --- Azure ----------------------------------------------------------------------------------------


def test_azure_stat_is_signed_and_reports_content_md5_raw() -> None:
    b64 = "QUJDREVGR0hJSktMTU5PUA=="  # 16 bytes
    ep, served, _ = build("azure", lambda seen: (200, {"Content-MD5": b64, "ETag": '"0x8"'}, DATA))
    stat = result(ep.stat("/d/f.txt"))
    (head,) = served.seen
    assert head.path == "/acct/ctr/d/f.txt"
    assert head.headers["authorization"].startswith("SharedKey acct:") and head.headers["x-ms-version"]
    assert stat.reported == (("content-md5", b64),) and stat.etag == "0x8"
    assert known_checksums(stat) == {"md5": b"ABCDEFGHIJKLMNOP".hex()}
    assert result(ep.reported_checksums("/d/f.txt")) == (("content-md5", b64),)


def test_azure_folder_marker_is_no_file_and_delete_falls_back_to_it() -> None:
    def answer(seen: Seen) -> Answer:
        if seen.method == "HEAD":
            return 200, {"x-ms-meta-hdi_isfolder": "true"}, b""
        return (202, {}, b"") if seen.path.endswith("/dir/") else (404, {"x-ms-error-code": "BlobNotFound"}, b"")

    ep, served, _ = build("azure", answer)
    assert result(ep.stat("/dir")) is None
    assert result(ep.delete("/dir")) is True
    assert [(s.method, s.path) for s in served.seen[1:]] == [("DELETE", "/acct/ctr/dir"), ("DELETE", "/acct/ctr/dir/")]


def test_azure_upload_url_is_a_write_sas_and_uploads_say_block_blob() -> None:
    ep, _, clock = build("azure", lambda seen: (201, {}, b""))
    query = parse_qs(urlsplit(ep.url_for("/new.bin", clock.seconds(), "PUT")).query)
    assert query["sp"] == ["cw"] and query["sr"] == ["b"] and query["sig"]
    assert ep.upload_headers == {"x-ms-blob-type": "BlockBlob"}


# --- WebDAV ---------------------------------------------------------------------------------------


def test_dav_stat_asks_for_a_digest_and_names_the_chain() -> None:
    digest = "adler32=3da0195, md5=" + "QUJDREVGR0hJSktMTU5PUA=="
    ep, served, _ = build("dav", lambda seen: (200, {"Digest": digest, "ETag": 'W/"x"'}, DATA))
    stat = result(ep.stat("/f", via=("fedd-client",)))
    (head,) = served.seen
    assert head.path == "/base/f" and head.headers["want-digest"] == "adler32, md5;q=0.5"
    assert head.headers["via"] == "1.1 fedd-client, 1.1 fedd-here"
    assert stat.reported == (("digest", digest),) and stat.etag == "W/x"
    assert parse_reported(stat.reported) == {"adler32": "03da0195", "md5": b"ABCDEFGHIJKLMNOP".hex()}


def test_dav_stat_asks_again_without_digest_when_the_server_is_computing_one() -> None:
    ep, served, _ = build("dav", lambda seen: (202, {}, b"") if "want-digest" in seen.headers else (200, {}, DATA))
    assert result(ep.stat("/f")).size == len(DATA)
    assert ["want-digest" in s.headers for s in served.seen] == [True, False]


MULTISTATUS = b"""<?xml version="1.0"?><D:multistatus xmlns:D="DAV:">
<D:response><D:href>/base/d/</D:href><D:propstat><D:prop><D:resourcetype><D:collection/></D:resourcetype>
</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>
<D:response><D:href>/base/d/f%20g</D:href><D:propstat><D:prop><D:resourcetype/><D:getcontentlength>5
</D:getcontentlength></D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>
<D:response><D:href>/base/d/s/</D:href><D:propstat><D:prop><D:resourcetype><D:collection/></D:resourcetype>
</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>
</D:multistatus>"""


def test_dav_listing_follows_the_slash_redirect_once() -> None:
    def answer(seen: Seen) -> Answer:
        if not seen.path.endswith("/"):
            return 301, {"Location": "http://dav.test/base/d/"}, b""
        return 207, {"Content-Type": "application/xml"}, MULTISTATUS

    for listing in ("listdir", "list_stream"):
        ep, served, _ = build("dav", answer)
        batches: list[list[Entry]] = []
        if listing == "listdir":
            batches.append(result(ep.listdir("/d")))
        else:
            assert result(ep.list_stream("/d", batches.append)) is True
        entries = {e.name: e.stat for b in batches for e in b}
        assert entries == {"f g": Stat(size=5), "s": Stat(is_dir=True)}
        assert [(s.method, s.path, s.headers["depth"]) for s in served.seen] == [
            ("PROPFIND", "/base/d", "1"),
            ("PROPFIND", "/base/d/", "1"),
        ]


def test_dav_prepare_put_makes_the_missing_parents() -> None:
    made: set[str] = {"/base/"}

    def answer(seen: Seen) -> Answer:
        parent = seen.path.rstrip("/").rpartition("/")[0] + "/"
        if parent not in made:
            return 409, {}, b""
        made.add(seen.path)
        return 201, {}, b""

    ep, served, _ = build("dav", answer)
    assert result(ep.prepare_put("/a/b/file")) is None
    assert [s.path for s in served.seen] == ["/base/a/b/", "/base/a/", "/base/a/b/"]
    assert {"/base/a/", "/base/a/b/"} <= made


def test_dav_space_is_rfc4331_and_its_absence_an_endpoint_error() -> None:
    body = (
        b'<D:multistatus xmlns:D="DAV:"><D:response><D:href>/base/</D:href><D:propstat><D:prop>'
        b"<D:quota-used-bytes>100</D:quota-used-bytes><D:quota-available-bytes>900</D:quota-available-bytes>"
        b"</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response></D:multistatus>"
    )
    ep, served, _ = build("dav", lambda seen: (207, {}, body))
    space = result(ep.space())
    assert (space.used, space.total, space.available, space.source) == (100, 1000, 900, "rfc4331")
    assert served.seen[0].headers["depth"] == "0"
    bare, _, _ = build("dav", lambda seen: (207, {}, body.replace(b"quota-", b"x-")))
    with pytest.raises(EndpointError, match="RFC 4331"):
        result(bare.space())


# --- the HTTP client and the capability check ----------------------------------------------------


def test_a_silent_endpoint_times_out_on_the_clock() -> None:
    ep, _, clock = build("dav", lambda seen: None)
    d = ep.stat("/f")
    clock.advance(4.9)
    assert not d.called
    clock.advance(0.2)
    with pytest.raises(EndpointError, match="HEAD timed out after 5s"):
        result(d)


def test_an_answer_larger_than_the_cap_is_an_endpoint_error() -> None:
    served = Scripted(lambda seen: (200, {}, b"x" * 2000))
    http = HttpClient(Clock(), endpoint="big", timeout=5.0, max_body=1000, client=StubTreq(served))
    with pytest.raises(EndpointError, match="larger than 1000 bytes"):
        result(http.request("GET", "http://big.test/f"))
    assert result(http.request("GET", "http://big.test/f", timeout=1.0, read_body=False)).code == 200
    assert result(http.close()) is None  # an injected client is its owner's to close


def test_make_endpoint_refuses_a_kind_that_lacks_a_declared_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    ep, _, _ = build("s3", lambda seen: (200, {}, b""))
    assert isinstance(ep, S3Endpoint)
    result(Deferred.fromCoroutine(close_endpoint(ep)))
    monkeypatch.delattr(S3Endpoint, "store_checksums")
    with pytest.raises(Invalid, match="store_checksums"):
        build("s3", lambda seen: (200, {}, b""))


# --- reading what endpoints report ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("reported", "parsed"),
    [
        ((("digest", "adler32=3da0195"),), {"adler32": "03da0195"}),
        ((("digest", "md5=QUJDREVGR0hJSktMTU5PUA==, sha-256=nope"),), {"md5": b"ABCDEFGHIJKLMNOP".hex()}),
        ((("x-amz-meta-adler32", "0x03DA0195"), ("etag", f'"{MD5}"')), {"adler32": "03da0195", "md5": MD5}),
        ((("etag", '"abc-2"'),), {}),  # a multipart upload's ETag is no MD5
        ((("content-md5", "short"),), {}),
        ((("x-amz-meta-owner", "atlas"), ("x-amz-meta-sha256", "zz")), {}),
        ((("etag", f'"{MD5}"'), ("digest", f"md5={'A' * 22}==")), {"md5": "0" * 32}),  # a checksum field wins
    ],
)
def test_parse_reported(reported: tuple[tuple[str, str], ...], parsed: dict[str, str]) -> None:
    assert parse_reported(reported) == parsed


def test_stat_json_keeps_the_reported_fields() -> None:
    stat = Stat(size=3, mtime=1.5, etag="e", reported=(("digest", f"adler32={zlib.adler32(b'abc'):08x}"),))
    back = Stat.from_json(stat.to_json())
    assert back == stat and known_checksums(back) == {"adler32": f"{zlib.adler32(b'abc'):08x}"}
    assert Stat.from_json([1, None, False, "e"]) == Stat(size=1, etag="e")  # entries cached before
