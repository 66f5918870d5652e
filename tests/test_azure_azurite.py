"""The Azure Blob endpoint against Microsoft's emulator Azurite (which checks SharedKey and SAS signatures):
signed HEAD/List Blobs, SAS redirects, writes, space; then fedd itself over Ceph RGW + Apache + Azurite."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest

from fedd.checksums.reported import known_checksums
from fedd.config import ConfigError, EndpointConfig, parse_config
from fedd.endpoints import make_endpoint
from fedd.endpoints.azure import API_VERSION, AzureEndpoint
from fedd.errors import EndpointError, PathRefused
from tests import reactor
from tests.daemon import Fedd, start_fedd, wait_for
from tests.servers import AZURITE_KEY, ceph_endpoint, dav_endpoint, endpoint_block, free_port, start_azurite

CONTAINER = "fedd-azure-tests"
ODD = "data/with space & ü %41+.txt"  # a space, unicode, a '%' that must not be decoded twice, a '+'
FILES = {
    "data/file.txt": b"hello from azurite\n",
    "data/sub/inner.txt": b"x",
    ODD: b"odd name",
    **{f"paged/f{i:02d}": b"p" * i for i in range(7)},
}


def endpoint(azurite: Any, **kw: Any) -> AzureEndpoint:
    config = EndpointConfig(
        id="azure",
        kind="azure",
        url=azurite.url,
        account=azurite.account,
        container=kw.pop("container", CONTAINER),
        account_key=kw.pop("account_key", azurite.key),
        timeout=5.0,
        **kw,
    )
    ep = make_endpoint(config, reactor=reactor.the_reactor())
    assert isinstance(ep, AzureEndpoint)
    return ep


def signed(
    ep: AzureEndpoint, method: str, url: str, query: dict[str, str] | None = None, body: bytes | None = None
) -> tuple[int, Any]:
    """One SharedKey-signed request with urllib (another HTTP client than fedd's): (status, headers)."""
    query = query or {}
    extra = {"x-ms-blob-type": "BlockBlob", "Content-Type": "application/octet-stream"} if method == "PUT" else {}
    headers = ep.signed_headers(method, url, query, time.time(), extra, len(body or b""))
    full = f"{url}?{urlencode(sorted(query.items()), quote_via=quote)}" if query else url
    data = (body or b"") if method == "PUT" else None
    request = urllib.request.Request(full, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            r.read()
            return r.status, r.headers
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code, exc.headers


def create_container(ep: AzureEndpoint, files: dict[str, bytes]) -> None:
    status, _ = signed(ep, "PUT", ep.blob_url("").rstrip("/"), {"restype": "container"})
    assert status in (201, 409), status  # 409: it exists (a rerun in the same session)
    for name, body in files.items():
        status, _ = signed(ep, "PUT", ep.blob_url(name), body=body)
        assert status == 201, (name, status)


@pytest.fixture(scope="module")
def container(azurite: Any) -> str:
    create_container(endpoint(azurite), FILES)
    return CONTAINER


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=60)


def status_of(url: str, *args: str) -> int:
    out = curl("-o", "/dev/null", "-w", "%{http_code}", *args, url)
    return int(out.stdout)


# --- signing: known answers -------------------------------------------------------------------------


def _hmac(text: str) -> str:
    return base64.b64encode(hmac.new(base64.b64decode(AZURITE_KEY), text.encode(), hashlib.sha256).digest()).decode()


def test_sharedkey_string_to_sign_uses_the_encoded_path_and_decoded_query() -> None:
    ep = AzureEndpoint(
        EndpointConfig(
            id="a",
            kind="azure",
            url="http://h:1/devstoreaccount1",
            account="devstoreaccount1",
            container="cont",
            account_key=AZURITE_KEY,
        ),
        None,  # type: ignore[arg-type]  # signing needs no client
        clock=reactor.the_reactor(),
    )
    url = ep.blob_url("/a b%c/ü")
    assert url == "http://h:1/devstoreaccount1/cont/a%20b%25c/%C3%BC"
    headers = ep.signed_headers("HEAD", url, {}, 1700000000.0)
    assert headers["x-ms-date"] == "Tue, 14 Nov 2023 22:13:20 GMT" and headers["x-ms-version"] == API_VERSION
    text = (
        "HEAD" + "\n" * 12 + "x-ms-date:Tue, 14 Nov 2023 22:13:20 GMT\nx-ms-version:2021-08-06\n"
        "/devstoreaccount1/devstoreaccount1/cont/a%20b%25c/%C3%BC"
    )
    assert headers["Authorization"] == f"SharedKey devstoreaccount1:{_hmac(text)}"
    query = {"restype": "container", "comp": "list", "prefix": "a b/", "maxresults": "5000"}
    listing = ep.signed_headers("GET", "http://h:1/devstoreaccount1/cont", query, 1700000000.0)
    text = (
        "GET" + "\n" * 12 + "x-ms-date:Tue, 14 Nov 2023 22:13:20 GMT\nx-ms-version:2021-08-06\n"
        "/devstoreaccount1/devstoreaccount1/cont\ncomp:list\nmaxresults:5000\nprefix:a b/\nrestype:container"
    )
    assert listing["Authorization"] == f"SharedKey devstoreaccount1:{_hmac(text)}"
    sas = ep.sas("/a b%c/ü", "r", 1700000000.0, 600)
    # sp st se resource si sip spr sv sr snapshot-time ses rscc rscd rsce rscl rsct
    fields = ["r", "2023-11-14T22:08:20Z", "2023-11-14T22:23:20Z", "/blob/devstoreaccount1/cont/a b%c/ü", "", ""]
    text = "\n".join([*fields, "https,http", "2021-08-06", "b", "", "", "", "", "", "", ""])
    assert sas.endswith("&sig=" + quote(_hmac(text), safe=""))


# --- in-process against Azurite -------------------------------------------------------------------


def test_stat_file_missing_directory_and_odd_names(azurite: Any, container: str) -> None:
    ep = endpoint(azurite)
    stat = reactor.call(ep.stat, "/data/file.txt")
    assert stat.size == 19 and not stat.is_dir and stat.mtime and stat.etag
    assert abs(stat.mtime - time.time()) < 3600
    assert reactor.call(ep.stat, "/data/nope") is None
    assert reactor.call(ep.stat, "/" + ODD).size == 8
    assert reactor.call(ep.stat, "/data") is None  # a prefix: directories come from listings, as on S3
    assert reactor.call(ep.stat, "/").is_dir


def test_listdir_with_prefixes_markers_and_paging(azurite: Any, container: str, monkeypatch: Any) -> None:
    ep = endpoint(azurite)
    entries = {e.name: e.stat for e in reactor.call(ep.listdir, "/data")}
    assert set(entries) == {"file.txt", "sub", ODD.split("/")[1]}
    assert entries["sub"].is_dir and entries["file.txt"].size == 19 and entries[ODD.split("/")[1]].size == 8
    assert entries["file.txt"].mtime == reactor.call(ep.stat, "/data/file.txt").mtime
    assert reactor.call(ep.listdir, "/data/file.txt") is None
    assert reactor.call(ep.listdir, "/nothing") is None
    assert {"data", "paged"} <= {e.name for e in reactor.call(ep.listdir, "/")}
    monkeypatch.setattr("fedd.endpoints.azure.PAGE_SIZE", 3)
    paged = reactor.call(ep.listdir, "/paged")
    assert [(e.name, e.stat.size) for e in paged] == [(f"f{i:02d}", i) for i in range(7)]


def test_sas_url_downloads_the_exact_bytes_and_azurite_refuses_tampering(azurite: Any, container: str) -> None:
    ep = endpoint(azurite)
    url = ep.url_for("/data/file.txt", time.time())
    assert url.startswith(azurite.url + f"/{CONTAINER}/data/file.txt?") and "sp=r" in url
    assert "spr=https%2Chttp" in url  # an http:// endpoint (Azurite); https-only for real Azure
    out = curl("-f", url)
    assert out.returncode == 0, out.stderr
    assert out.stdout == FILES["data/file.txt"]
    odd = curl("-f", ep.url_for("/" + ODD, time.time()))
    assert odd.returncode == 0 and odd.stdout == b"odd name"
    sig = url.index("sig=") + 4
    tampered = url[:sig] + ("A" if url[sig] != "A" else "B") + url[sig + 1 :]
    assert status_of(tampered) == 403
    other_blob = ep.url_for("/data/sub/inner.txt", time.time()).split("?")[0] + "?" + url.split("?")[1]
    assert status_of(other_blob) == 403  # a SAS names its blob


def test_expired_sas_is_refused_by_azurite(azurite: Any, container: str) -> None:
    ep = endpoint(azurite)
    expired = ep.sas("/data/file.txt", "r", time.time() - 3600, expiry=60)  # ended 59 minutes ago
    assert status_of(expired) == 403
    assert status_of(ep.sas("/data/file.txt", "r", time.time(), expiry=60)) == 200


def test_write_sas_uploads_with_curl_and_permissions_are_enforced(azurite: Any, container: str, tmp_path: Path) -> None:
    ep = endpoint(azurite)
    payload = os.urandom(100_000)
    (tmp_path / "up.bin").write_bytes(payload)
    put = ep.url_for("/uploads/new file ü.bin", time.time(), "PUT")
    assert "sp=cw" in put
    code = status_of(put, "-T", str(tmp_path / "up.bin"), "-H", "x-ms-blob-type: BlockBlob")
    assert code == 201
    assert reactor.call(ep.stat, "/uploads/new file ü.bin").size == len(payload)
    assert curl("-f", ep.url_for("/uploads/new file ü.bin", time.time())).stdout == payload
    read = ep.url_for("/uploads/other.bin", time.time(), "GET")
    assert status_of(read, "-T", str(tmp_path / "up.bin"), "-H", "x-ms-blob-type: BlockBlob") == 403
    assert reactor.call(ep.stat, "/uploads/other.bin") is None
    assert status_of(put) == 403  # the write SAS cannot read
    assert status_of(put, "-I") == 403


def test_sas_urls_are_reused_for_part_of_their_validity(azurite: Any, container: str) -> None:
    ep = endpoint(azurite, presign_expiry=100)
    now = time.time()
    first = ep.url_for("/data/file.txt", now)
    assert ep.url_for("/data/file.txt", now + 49, "HEAD") is first  # GET and HEAD share the read SAS
    assert ep.url_for("/data/file.txt", now + 51) != first
    assert ep.url_for("/data/file.txt", now, "PUT") != first
    assert status_of(first, "-I") == 200


def test_wrong_key_and_missing_container_are_clear_endpoint_errors(azurite: Any, container: str) -> None:
    wrong = base64.b64encode(b"not the account key, but base64").decode()
    bad = endpoint(azurite, account_key=wrong)
    calls: list[tuple[Callable[..., Any], tuple[str, ...]]] = [(bad.listdir, ("/data",)), (bad.probe, ())]
    for call, args in calls:
        with pytest.raises(EndpointError, match=r"access denied.*check the account key"):
            reactor.call(call, *args)
    with pytest.raises(PathRefused, match="HTTP 403") as refusal:  # a HEAD's 403: suspect, the probe decides
        reactor.call(bad.stat, "/data/file.txt")
    assert refusal.value.suspect
    assert status_of(bad.url_for("/data/file.txt", time.time())) == 403  # Azurite checks the SAS key too
    missing = endpoint(azurite, container="no-such-container")
    calls = [(missing.stat, ("/x",)), (missing.listdir, ("/",)), (missing.probe, ()), (missing.space, ())]
    for call, args in calls:
        with pytest.raises(EndpointError, match="container 'no-such-container' does not exist"):
            reactor.call(call, *args)
    assert reactor.call(endpoint(azurite).probe) is None


def test_account_key_that_is_not_base64_is_a_config_error() -> None:
    text = (
        "[endpoint az]\nkind = azure\nurl = http://127.0.0.1:1/devstoreaccount1\naccount = devstoreaccount1\n"
        "container = c01\naccount_key = this is not base64!\n"
    )
    with pytest.raises(ConfigError, match="account_key is not base64"):
        parse_config(text)


def test_content_md5_is_what_azure_keeps(azurite: Any, container: str) -> None:
    ep = endpoint(azurite)
    expected = base64.b64encode(hashlib.md5(FILES["data/file.txt"]).digest()).decode()
    assert reactor.call(ep.reported_checksums, "/data/file.txt") == (("content-md5", expected),)
    odd = base64.b64encode(hashlib.md5(b"odd name").digest()).decode()
    assert reactor.call(ep.reported_checksums, "/" + ODD) == (("content-md5", odd),)
    assert reactor.call(ep.reported_checksums, "/data/nope") is None
    stat = reactor.call(ep.stat, "/data/file.txt")  # the locate answer carries it too, read as hex
    assert stat.reported == (("content-md5", expected),)
    assert known_checksums(stat) == {"md5": hashlib.md5(FILES["data/file.txt"]).hexdigest()}


def test_delete_mkcol_move(azurite: Any, container: str) -> None:
    ep = endpoint(azurite)
    create_container(ep, {"w/a.txt": b"aaa", "w/keep/k": b"k", "w/odd % ü.txt": b"odd"})
    assert reactor.call(ep.mkcol, "/w/newdir") is True
    assert reactor.call(ep.mkcol, "/w/newdir") is False  # the marker exists
    assert reactor.call(ep.mkcol, "/w/keep") is False  # a prefix with blobs under it
    assert reactor.call(ep.mkcol, "/w/a.txt") is False  # a blob of that name
    assert reactor.call(ep.listdir, "/w/newdir") == []  # the marker makes an empty directory
    listing = {e.name: e.stat for e in reactor.call(ep.listdir, "/w")}
    assert listing["newdir"].is_dir and listing["keep"].is_dir and listing["a.txt"].size == 3
    assert reactor.call(ep.stat, "/w/newdir") is None
    assert reactor.call(ep.move, "/w/a.txt", "/w/newdir/moved ü.txt") is None
    assert reactor.call(ep.stat, "/w/a.txt") is None
    assert reactor.call(ep.stat, "/w/newdir/moved ü.txt").size == 3
    assert curl("-f", ep.url_for("/w/newdir/moved ü.txt", time.time())).stdout == b"aaa"
    assert reactor.call(ep.move, "/w/odd % ü.txt", "/w/odd2 % ü.txt") is None
    assert reactor.call(ep.stat, "/w/odd2 % ü.txt").size == 3
    with pytest.raises(EndpointError, match="source disappeared"):
        reactor.call(ep.move, "/w/a.txt", "/w/again.txt")
    assert reactor.call(ep.delete, "/w/newdir/moved ü.txt") is True
    assert reactor.call(ep.delete, "/w/newdir/moved ü.txt") is False
    assert reactor.call(ep.delete, "/w/newdir") is True  # its marker blob
    assert reactor.call(ep.listdir, "/w/newdir") is None
    assert reactor.call(ep.delete, "/w/never") is False


def test_space_is_the_sum_of_blob_sizes_page_by_page(azurite: Any, monkeypatch: Any) -> None:
    ep = endpoint(azurite, container="fedd-azure-space", quota=10**6)
    sizes = [0, 1, 10, 100, 1000, 4096, 7, 33]
    create_container(ep, {f"s/{i}/blob{i}.bin": os.urandom(n) for i, n in enumerate(sizes)})
    assert reactor.call(ep.mkcol, "/s/emptydir") is True  # a marker: neither bytes nor a file
    monkeypatch.setattr("fedd.endpoints.azure.PAGE_SIZE", 3)
    space = reactor.call(ep.space)
    assert (space.used, space.files, space.total, space.source) == (sum(sizes), len(sizes), 10**6, "listing")
    assert space.free == 10**6 - sum(sizes)
    with pytest.raises(EndpointError, match="more than 5 blobs"):
        reactor.call(ep.space, 5)


def test_stopped_azurite_is_a_connection_error(tmp_path: Path) -> None:
    emulator = start_azurite(tmp_path)
    ep = endpoint(emulator)
    emulator.stop()
    calls: list[tuple[Callable[..., Any], tuple[str, ...]]] = [(ep.stat, ("/x",)), (ep.probe, ())]
    for call, args in calls:
        with pytest.raises(EndpointError, match="cannot connect"):
            reactor.call(call, *args)


# --- fedd over Ceph RGW (S3), Apache mod_dav and Azurite ------------------------------------------

MIXED = "fedd-mixed"
BOTH = b"replicated on three kinds of storage\n" * 500
BIG = os.urandom(300_000)


@pytest.fixture(scope="module")
def mixed(azurite: Any, ceph: Any, s3client: Any, dav1: Any) -> dict[str, Any]:
    s3client.create_bucket(Bucket=MIXED)
    s3client.put_object(Bucket=MIXED, Key="mixed/data/both.bin", Body=BOTH)
    s3client.put_object(Bucket=MIXED, Key="mixed/data/s3only.txt", Body=b"only on ceph\n")
    dav_dir = Path(dav1.docroot) / "mixed" / "data"
    dav_dir.mkdir(parents=True, exist_ok=True)
    (dav_dir / "both.bin").write_bytes(BOTH)
    (dav_dir / "davonly.txt").write_bytes(b"only on apache\n")
    subprocess.run(["chown", "-R", "www-data:www-data", str(Path(dav1.docroot) / "mixed")], check=True)
    create_container(
        endpoint(azurite, container=MIXED),
        {"mixed/data/both.bin": BOTH, "mixed/data/azonly.txt": b"only on azure\n", "mixed/azure/big.bin": BIG},
    )
    return {}


EAGER = "interval = 0.5\ntimeout = 1\nfailures_to_offline = 1\nsuccesses_to_online = 1"
RELAXED = "interval = 5\ntimeout = 5\nfailures_to_offline = 3\nsuccesses_to_online = 1"


def mixed_config(port: int, ceph: Any, dav1: Any, azurite: Any, health: str = RELAXED) -> str:
    mixed = "/mixed /mixed"
    azure = {"url": azurite.url, "account": azurite.account, "container": MIXED, "account_key": azurite.key}
    return f"""
[server]
listen = tcp:{port}:interface=127.0.0.1
[locate]
wait_budget = 3
[health]
{health}
{ceph_endpoint(ceph, MIXED, map=mixed, secret_from_env=False)}{dav_endpoint(dav1, map=mixed)}\
{endpoint_block("azure", "azure", mixed, **azure)}"""


@pytest.fixture(scope="module")
def fed(
    mixed: dict[str, Any], ceph: Any, dav1: Any, azurite: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fedd]:
    port = free_port()
    f = start_fedd(tmp_path_factory.mktemp("mixed-fed"), mixed_config(port, ceph, dav1, azurite), port)
    yield f
    f.stop()


def request(fed: Fedd, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", fed.port, timeout=15)
    conn.request(method, path, headers=headers or {})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, r, body


def azure_state(f: Fedd) -> str:
    return str(f.status()["endpoints"]["azure"]["health"]["state"])


def metalink_urls(fed: Fedd, path: str, count: int) -> list[str]:
    """The metalink's URLs once `count` replicas have answered (the first, cold answer may come earlier)."""

    def urls() -> list[str]:
        status, _, body = request(fed, "GET", path + "?metalink")
        assert status == 200
        return [
            part.split(">", 1)[1].split("</url>")[0].replace("&amp;", "&") for part in body.decode().split("<url ")[1:]
        ]

    found: list[str] = wait_for(urls, 15, f"a metalink of {path} with {count} URLs", until=lambda u: len(u) >= count)
    return found


def test_mixed_federation_redirects_lists_every_replica_and_merges_listings(
    fed: Fedd, ceph: Any, dav1: Any, azurite: Any
) -> None:
    urls = metalink_urls(fed, "/mixed/data/both.bin", 3)
    assert len(urls) == 3
    azure_url = next(u for u in urls if u.startswith(azurite.url + f"/{MIXED}/mixed/data/both.bin?"))
    assert "sig=" in azure_url and "sp=r" in azure_url
    assert any(u.startswith(ceph.url) and "X-Amz-Signature=" in u for u in urls)
    assert dav1.url + "/mixed/data/both.bin" in urls
    for url in urls:  # every replica the metalink names gives the bytes
        out = curl("-f", url)
        assert out.returncode == 0 and out.stdout == BOTH, url
    status, r, _ = request(fed, "GET", "/mixed/data/both.bin")
    location = r.getheader("Location") or ""
    assert status == 302 and any(location.startswith(base) for base in (ceph.url, dav1.url, azurite.url))
    assert (r.getheader("Link") or "").count("rel=duplicate") == 2
    assert curl("-fL", fed.url + "/mixed/data/both.bin").stdout == BOTH
    status, _, body = request(fed, "PROPFIND", "/mixed/data", {"Depth": "1"})
    text = body.decode()
    assert status == 207 and text.count("<D:href>/mixed/data/both.bin</D:href>") == 1
    for name, size in [("both.bin", len(BOTH)), ("s3only.txt", 13), ("davonly.txt", 15), ("azonly.txt", 14)]:
        response = text.split(f"<D:href>/mixed/data/{name}</D:href>")[1].split("</D:response>")[0]
        assert f"<D:getcontentlength>{size}</D:getcontentlength>" in response, name


def test_azure_only_file_through_fedd_with_curl(fed: Fedd, azurite: Any) -> None:
    status, r, _ = request(fed, "GET", "/mixed/data/azonly.txt")
    assert status == 302 and (r.getheader("Location") or "").startswith(azurite.url)
    assert curl("-fL", fed.url + "/mixed/data/azonly.txt").stdout == b"only on azure\n"
    status, r, _ = request(fed, "HEAD", "/mixed/data/azonly.txt")
    assert status == 200 and r.getheader("Content-Length") == "14"


def test_davix_gfal_and_aria2c_read_an_azure_only_file(fed: Fedd, tmp_path: Path) -> None:
    url = fed.url + "/mixed/azure/big.bin"
    out = subprocess.run(["davix-get", url], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == BIG
    # aria2c asks for a metalink (Accept) and follows it to the SAS URL; when it does not ask, the 302
    subprocess.run(["aria2c", "-q", "--follow-metalink=mem", "-d", str(tmp_path / "ml"), url], check=True, timeout=60)
    assert (tmp_path / "ml" / "big.bin").read_bytes() == BIG
    plain = ["aria2c", "-q", "--header=Accept: */*", "-d", str(tmp_path), "-o", "plain.bin", url]
    subprocess.run(plain, check=True, timeout=60)
    assert (tmp_path / "plain.bin").read_bytes() == BIG
    if shutil.which("gfal-copy") is None:
        pytest.fail("gfal-copy is not installed: tests/run.sh installs gfal2-util-scripts")
    target = tmp_path / "gfal.bin"
    copy = subprocess.run(["gfal-copy", "-f", url, f"file://{target}"], capture_output=True, timeout=120, text=True)
    assert copy.returncode == 0, copy.stderr
    assert target.read_bytes() == BIG


def test_azurite_stopped_mid_test_goes_offline_and_reads_go_elsewhere(
    mixed: dict[str, Any], ceph: Any, dav1: Any, tmp_path: Path
) -> None:
    emulator = start_azurite(tmp_path / "azurite")  # our own: the session's emulator stays up
    create_container(endpoint(emulator, container=MIXED), {"mixed/data/both.bin": BOTH})
    port = free_port()
    f = start_fedd(tmp_path / "fed", mixed_config(port, ceph, dav1, emulator, health=EAGER), port)
    try:
        wait_for(lambda: azure_state(f), 15, "the poller to see Azurite online", until="online".__eq__)
        assert len(metalink_urls(f, "/mixed/data/both.bin", 3)) == 3
        emulator.kill()
        wait_for(lambda: azure_state(f), 15, "the poller to mark the stopped Azurite offline", until="offline".__eq__)
        # with workers, the one that answers may take worker 0's probe result up to 0.25 s later
        wait_for(
            lambda: f.status()["endpoints"]["azure"]["health"],
            5,
            "the status to name the failed probe",
            until=lambda h: h["state"] == "offline" and "cannot connect" in h["last_error"],
        )
        for _i in range(5):
            status, r, _ = request(f, "GET", "/mixed/data/both.bin")
            location = r.getheader("Location") or ""
            assert status == 302 and not location.startswith(emulator.url), location
        urls = metalink_urls(f, "/mixed/data/both.bin", 2)
        assert len(urls) == 2 and not any(u.startswith(emulator.url) for u in urls)
        assert curl("-fL", f.url + "/mixed/data/both.bin").stdout == BOTH
        assert f.proc.poll() is None
    finally:
        f.stop()
        emulator.stop()


def test_writes_through_fedd_to_azure(azurite: Any, tmp_path: Path) -> None:
    create_container(endpoint(azurite, container="fedd-azure-writes"), {})
    port = free_port()
    conf = f"""
[server]
listen = tcp:{port}:interface=127.0.0.1
[endpoint azure]
kind = azure
url = {azurite.url}
account = {azurite.account}
container = fedd-azure-writes
account_key = {azurite.key}
write = yes
"""
    f = start_fedd(tmp_path / "fed", conf, port)
    try:
        payload = os.urandom(50_000)
        (tmp_path / "up.bin").write_bytes(payload)
        target = f.url + "/dir/up%20%C3%BC.bin"
        # the documented upload: follow the 307 to the write SAS, with the blob type Azure requires
        assert status_of(target, "-L", "-T", str(tmp_path / "up.bin"), "-H", "x-ms-blob-type: BlockBlob") == 201
        assert curl("-fL", target).stdout == payload
        assert status_of(f.url + "/dir/other.bin", "-L", "-T", str(tmp_path / "up.bin")) == 400  # no blob type
        assert status_of(f.url + "/newcol", "-X", "MKCOL") == 201
        assert status_of(f.url + "/newcol", "-X", "MKCOL") == 405
        moved = f.url + "/newcol/moved.bin"
        assert status_of(target, "-X", "MOVE", "-H", f"Destination: {moved}") in (201, 204)
        assert curl("-fL", moved).stdout == payload
        status, _, body = request(f, "PROPFIND", "/newcol", {"Depth": "1"})
        assert status == 207 and "<D:getcontentlength>50000</D:getcontentlength>" in body.decode()
        assert status_of(moved, "-X", "DELETE") == 204
        assert status_of(moved, "-X", "DELETE") == 404
    finally:
        f.stop()
