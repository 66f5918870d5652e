"""S3 endpoints (Ceph RGW, MinIO, AWS): signed HEAD/ListObjectsV2 over treq, SigV4 presigned redirects.

Signing is pure computation with botocore's signers; every request goes through the non-blocking
`HttpClient`. Path-style addressing (`<url>/<bucket>/<key>`), so endpoints need no wildcard DNS.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from urllib.parse import quote, urlencode

from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from fedd.config import EndpointConfig
from fedd.endpoints.base import (
    Entry,
    HttpClient,
    HttpResponse,
    Space,
    Stat,
    UrlCache,
    Valve,
    deferred,
    parse_http_date,
    parse_int,
    parse_xml,
    refused,
)
from fedd.endpoints.interfaces import (
    IChecksumSource,
    IChecksumStore,
    IListable,
    IPresignable,
    ISpaceSource,
    ITPCTarget,
    Reported,
)
from fedd.errors import EndpointError

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
MAX_LIST_ENTRIES = 1_000_000
PAGE_SIZE = 1000  # ListObjectsV2 max-keys


_KEPT_HEADERS = ("content-type", "content-encoding", "content-disposition", "content-language", "cache-control")


def _iso_to_epoch(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _reported(response: HttpResponse) -> Reported:
    """What a HEAD tells about the content, raw: the ETag (a one-part upload's is its MD5) and the
    `x-amz-meta-*` values (dynafed-storagestats and fedd write `x-amz-meta-adler32`)."""
    found = [("etag", response.header("ETag") or "")]
    for name, values in response.headers.getAllRawHeaders():
        key = name.decode("latin-1").lower()
        if key.startswith("x-amz-meta-") and values:
            found.append((key, values[-1].decode("latin-1")))
    return tuple(sorted(found))


@implementer(IPresignable, IListable, ITPCTarget, IChecksumSource, IChecksumStore, ISpaceSource)
class S3Endpoint:
    collections_by_stat = False
    upload_headers: dict[str, str] = {}

    def __init__(self, config: EndpointConfig, http: HttpClient, *, presign_reuse: float = 0.5) -> None:
        self.id = config.id
        self.config = config
        self.http = http
        self._credentials = Credentials(config.access_key, config.secret_key)
        self._base = f"{config.url}/{quote(config.bucket, safe='')}"
        self._urls = UrlCache()
        self._reuse = config.presign_expiry * presign_reuse
        self.log = Logger(namespace=f"fedd.endpoints.s3.{config.id}")

    # --- signing: pure ------------------------------------------------------------------------

    def object_url(self, path: str) -> str:
        return f"{self._base}/{quote(path.lstrip('/'), safe='/~')}"

    def _signed_headers(self, method: str, url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        request = AWSRequest(method=method, url=url, data=b"", headers=extra or {})
        S3SigV4Auth(self._credentials, "s3", self.config.region).add_auth(request)
        return {k: v for k, v in request.headers.items() if isinstance(v, str)}

    def presign(self, method: str, path: str, expires: int | None = None) -> str:
        request = AWSRequest(method=method, url=self.object_url(path))
        signer = S3SigV4QueryAuth(
            self._credentials, "s3", self.config.region, expires=expires or self.config.presign_expiry
        )
        signer.add_auth(request)
        return str(request.url)

    def url_for(self, path: str, now: float, method: str = "GET") -> str:
        # SigV4 signs the method too: a HEAD needs its own URL (gfal2/davix stat with HEAD)
        key = f"{method} {path}"
        url = self._urls.get(key, now)
        if url is None:
            url = self.presign(method, path)
            self._urls.put(key, url, now + self._reuse)
        return url

    # --- requests -----------------------------------------------------------------------------

    def _send(
        self, method: str, url: str, extra: dict[str, str] | None = None, *, timeout: float | None = None
    ) -> Deferred[HttpResponse]:
        body = b"" if method == "PUT" else None
        return self.http.request(method, url, self._signed_headers(method, url, extra), body, timeout=timeout)

    def _check(self, response: HttpResponse, what: str) -> None:
        if response.code >= 500:
            raise EndpointError(self.id, f"{what}: HTTP {response.code}")
        if response.code in (401, 403):
            raise EndpointError(self.id, f"{what}: access denied (HTTP {response.code}): check the keys")

    @deferred
    async def stat(self, path: str, via: tuple[str, ...] = ()) -> Stat | None:
        if path == "/":
            return Stat(is_dir=True)
        response = await self._send("HEAD", self.object_url(path))
        if response.code == 404:
            return None
        refusal = refused(self.id, response.code, "HEAD")  # e.g. 400/414 for a name RGW will not take
        if refusal is not None:
            raise refusal
        self._check(response, "HEAD")
        if response.code != 200:
            raise EndpointError(self.id, f"HEAD: unexpected HTTP {response.code}")
        size = parse_int(response.header("Content-Length"))
        if size is None:
            raise EndpointError(self.id, "HEAD: no Content-Length in answer")
        etag = (response.header("ETag") or "").strip('"')
        return Stat(
            size=size,
            mtime=parse_http_date(response.header("Last-Modified")),
            etag=etag,
            reported=_reported(response),
        )

    @deferred
    async def store_checksums(self, path: str, values: dict[str, str], etag: str) -> bool:
        """Keep computed checksums in the object's own metadata (`x-amz-meta-adler32`, ...): a copy onto
        itself that replaces the metadata, only if the object is still the one hashed (its ETag).
        True when stored; False when the object changed or is too large for a single copy (5 GB)."""
        head = await self._send("HEAD", self.object_url(path))
        self._check(head, "HEAD before metadata update")
        size = parse_int(head.header("Content-Length")) or 0
        if head.code != 200 or (head.header("ETag") or "").strip('"') != etag or size > 5 * 10**9:
            return False
        headers = {
            "x-amz-copy-source": quote(f"/{self.config.bucket}/{path.lstrip('/')}", safe="/~"),
            "x-amz-copy-source-if-match": f'"{etag}"',
            "x-amz-metadata-directive": "REPLACE",
        }
        for name, raw in head.headers.getAllRawHeaders():
            key = name.decode("latin-1").lower()
            if key.startswith("x-amz-meta-") or key in _KEPT_HEADERS:
                headers[key] = raw[-1].decode("latin-1")
        for algorithm, value in values.items():
            headers[f"x-amz-meta-{algorithm}"] = value
        response = await self._send("PUT", self.object_url(path), headers)
        self._check(response, "metadata update")
        if response.code == 412:
            return False
        if response.code != 200 or b"<Error>" in response.body[:512]:
            raise EndpointError(self.id, f"metadata update: unexpected HTTP {response.code}")
        return True

    @deferred
    async def reported_checksums(self, path: str) -> Reported | None:
        """The ETag and `x-amz-meta-*` values of a HEAD, raw; None when there is no such object."""
        response = await self._send("HEAD", self.object_url(path))
        if response.code == 404:
            return None
        refusal = refused(self.id, response.code, "HEAD")
        if refusal is not None:
            raise refusal
        self._check(response, "HEAD")
        if response.code != 200:
            raise EndpointError(self.id, f"HEAD: unexpected HTTP {response.code}")
        return _reported(response)

    @deferred
    async def listdir(self, path: str, via: tuple[str, ...] = ()) -> list[Entry] | None:
        entries: list[Entry] = []
        return entries if await self.list_stream(path, entries.extend) else None

    @deferred
    async def list_stream(
        self, path: str, emit: Callable[[list[Entry]], None], via: tuple[str, ...] = (), valve: Valve | None = None
    ) -> bool:
        """Each ListObjectsV2 page handed on as it comes (one page in memory at a time)."""
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        count = 0
        marker_seen = False
        token: str | None = None
        while True:
            query: dict[str, str] = {"list-type": "2", "delimiter": "/", "max-keys": str(PAGE_SIZE)}
            if prefix:
                query["prefix"] = prefix
            if token:
                query["continuation-token"] = token
            page: list[Entry] = []
            token, page_marker = self._parse_page(await self._list_page(query), prefix, page)
            marker_seen = marker_seen or page_marker
            count += len(page)
            if count > MAX_LIST_ENTRIES:
                raise EndpointError(self.id, f"listing of {path} exceeds {MAX_LIST_ENTRIES} entries")
            if page:
                emit(page)
            if not token:
                break
            if valve is not None:
                await valve.wait()  # the next page when the reader took this one
        return bool(count or marker_seen or not prefix)

    async def _list_page(self, query: dict[str, str]) -> bytes:
        """One ListObjectsV2 page (the XML body); a missing bucket or refusal is an EndpointError."""
        url = f"{self._base}?{urlencode(sorted(query.items()), quote_via=quote)}"
        response = await self._send("GET", url)
        if response.code == 404:
            raise EndpointError(self.id, f"bucket {self.config.bucket!r} does not exist")
        self._check(response, "ListObjectsV2")
        if response.code != 200:
            raise EndpointError(self.id, f"ListObjectsV2: unexpected HTTP {response.code}")
        return response.body

    def _parse_page(self, body: bytes, prefix: str, entries: list[Entry]) -> tuple[str | None, bool]:
        root = parse_xml(body, self.id, "ListObjectsV2")
        if root.tag != f"{_NS}ListBucketResult":
            raise EndpointError(self.id, f"ListObjectsV2: unexpected answer <{root.tag}>")
        marker = False
        for item in root.iter(f"{_NS}Contents"):
            key = item.findtext(f"{_NS}Key") or ""
            if key == prefix:
                marker = True
                continue
            name = key[len(prefix) :]
            if not name or "/" in name:
                continue
            entries.append(
                Entry(
                    name,
                    Stat(
                        size=parse_int(item.findtext(f"{_NS}Size")),
                        mtime=_iso_to_epoch(item.findtext(f"{_NS}LastModified")),
                        etag=(item.findtext(f"{_NS}ETag") or "").strip('"'),
                    ),
                )
            )
        for common in root.iter(f"{_NS}CommonPrefixes"):
            name = (common.findtext(f"{_NS}Prefix") or "")[len(prefix) :].rstrip("/")
            if name and "/" not in name:
                entries.append(Entry(name, Stat(is_dir=True)))
        truncated = (root.findtext(f"{_NS}IsTruncated") or "").lower() == "true"
        token = root.findtext(f"{_NS}NextContinuationToken") if truncated else None
        if truncated and not token:
            raise EndpointError(self.id, "ListObjectsV2: truncated page without continuation token")
        return token, marker

    # --- writes and space ---------------------------------------------------------------------

    def prepare_put(self, path: str) -> Deferred[None]:
        return succeed(None)  # keys need no parents

    @deferred
    async def delete(self, path: str) -> bool:
        # S3 answers 204 whether or not the key existed: ask first, so 404 can be told apart
        if await self.stat(path) is None:
            marker = await self._send("HEAD", self.object_url(path.rstrip("/") + "/"))
            if marker.code != 200:
                return False
            path = path.rstrip("/") + "/"
        response = await self._send("DELETE", self.object_url(path))
        self._check(response, "DELETE")
        if response.code not in (200, 204):
            raise EndpointError(self.id, f"DELETE: unexpected HTTP {response.code}")
        return True

    @deferred
    async def mkcol(self, path: str) -> bool:
        if await self.stat(path) is not None or await self._has_prefix(path):
            return False
        # a zero-byte "dir/" marker, as the S3 consoles and rclone make them
        response = await self._send("PUT", self.object_url(path.rstrip("/") + "/"))
        self._check(response, "PUT directory marker")
        if response.code != 200:
            raise EndpointError(self.id, f"PUT directory marker: unexpected HTTP {response.code}")
        return True

    async def _has_prefix(self, path: str) -> bool:
        query = {"list-type": "2", "max-keys": "1", "prefix": path.strip("/") + "/"}
        url = f"{self._base}?{urlencode(sorted(query.items()), quote_via=quote)}"
        response = await self._send("GET", url)
        self._check(response, "ListObjectsV2")
        if response.code != 200:
            raise EndpointError(self.id, f"ListObjectsV2: unexpected HTTP {response.code}")
        root = parse_xml(response.body, self.id, "ListObjectsV2")
        return root.find(f"{_NS}Contents") is not None

    @deferred
    async def move(self, source: str, destination: str) -> None:
        # S3 has no rename: server-side copy, then delete the source
        copy_source = quote(f"/{self.config.bucket}/{source.lstrip('/')}", safe="/~")
        response = await self._send("PUT", self.object_url(destination), {"x-amz-copy-source": copy_source})
        self._check(response, "copy")
        if response.code == 404:
            raise EndpointError(self.id, "copy: the source disappeared")
        if response.code != 200 or b"<Error>" in response.body[:512]:
            raise EndpointError(self.id, f"copy: unexpected HTTP {response.code}")
        deleted = await self._send("DELETE", self.object_url(source))
        self._check(deleted, "DELETE after copy")

    @deferred
    async def space(self, max_objects: int = 50_000_000) -> Space:
        if self.config.space_source == "ceph-admin":
            return await self._ceph_admin_space()
        return await self._listing_space(max_objects)

    async def _listing_space(self, max_objects: int) -> Space:
        """Sum of object sizes, page by page: one page (1000 keys) in memory at a time."""
        used = files = 0
        token: str | None = None
        while True:
            query: dict[str, str] = {"list-type": "2", "max-keys": str(PAGE_SIZE)}
            if token:
                query["continuation-token"] = token
            body = await self._list_page(query)
            root = parse_xml(body, self.id, "ListObjectsV2")
            for size in root.iter(f"{_NS}Size"):
                used += parse_int(size.text) or 0
                files += 1
            truncated = (root.findtext(f"{_NS}IsTruncated") or "").lower() == "true"
            token = root.findtext(f"{_NS}NextContinuationToken") if truncated else None
            del root, body
            if files > max_objects:
                raise EndpointError(self.id, f"space: bucket holds more than {max_objects} objects")
            if not token:
                break
        return Space(used=used, total=self.config.quota, files=files, source="listing")

    async def _ceph_admin_space(self) -> Space:
        """Ceph RGW admin ops API (what dynafed-storagestats' ceph-admin method reads): needs the keys'
        user to have the `buckets=read` capability."""
        query = {"bucket": self.config.bucket, "stats": "true"}
        url = f"{self.config.url}/admin/bucket?{urlencode(sorted(query.items()), quote_via=quote)}"
        response = await self._send("GET", url)
        self._check(response, "admin bucket stats")
        if response.code != 200:
            raise EndpointError(self.id, f"admin bucket stats: unexpected HTTP {response.code}")
        try:
            data = json.loads(response.body)
            usage = data.get("usage", {}).get("rgw.main", {})
            used = int(usage.get("size_actual", usage.get("size", 0)))
            files = int(usage.get("num_objects", 0))
            quota = data.get("bucket_quota") or {}
            max_size = int(quota.get("max_size", -1)) if quota.get("enabled") else -1
        except (ValueError, TypeError, AttributeError) as exc:
            raise EndpointError(self.id, f"admin bucket stats: unreadable answer ({exc})") from None
        total = self.config.quota if self.config.quota is not None else (max_size if max_size > 0 else None)
        return Space(used=used, total=total, files=files, source="ceph-admin")

    def probe(self) -> Deferred[None]:
        return self._send("HEAD", self._base).addCallback(self._probe_result)

    def _probe_result(self, response: HttpResponse) -> None:
        if response.code >= 500:
            raise EndpointError(self.id, f"probe: HTTP {response.code}")
        if response.code in (401, 403):
            raise EndpointError(self.id, f"probe: access denied (HTTP {response.code}): check the keys")
        if response.code == 404:
            raise EndpointError(self.id, f"probe: bucket {self.config.bucket!r} does not exist")
