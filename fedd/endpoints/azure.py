"""Azure Blob Storage endpoints (and Azurite): SharedKey-signed HEAD/List Blobs over treq, service SAS redirects.

Signing is pure computation (HMAC-SHA256 with the base64-decoded account key); every request goes through the
non-blocking `HttpClient`. `url` is the blob service URL: `https://ACCOUNT.blob.core.windows.net`, or for
Azurite the path-style `http://127.0.0.1:10000/devstoreaccount1`; blobs are `<url>/<container>/<name>`.
Directories are prefixes, as on S3; MKCOL writes a zero-length `dir/` marker blob with `hdi_isfolder=true`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from fedd.config import EndpointConfig
from fedd.endpoints.azure_xml import FOLDER_META, blob_name, parse_blob_page
from fedd.endpoints.base import (
    Entry,
    HttpClient,
    HttpResponse,
    Space,
    Stat,
    UrlCache,
    Valve,
    deferred,
    emit_listing,
    parse_http_date,
    parse_int,
    parse_xml,
    refused,
)
from fedd.endpoints.interfaces import IChecksumSource, IListable, IPresignable, ISpaceSource, ITPCTarget, Reported
from fedd.errors import EndpointError

API_VERSION = "2021-08-06"  # x-ms-version of fedd's own requests and `sv` of its SAS tokens
PAGE_SIZE = 5000  # List Blobs maxresults (the service's maximum)
MAX_LIST_ENTRIES = 1_000_000
MAX_SPACE_OBJECTS = 50_000_000
CLOCK_SKEW = 300  # a SAS starts this many seconds before `now`
COPY_SAS_SECONDS = 3600  # validity of the read SAS a Copy Blob's source carries
COPY_WAIT = 300.0  # longest wait for a pending Copy Blob
COPY_POLL = 0.5
_PERMISSIONS = {"GET": "r", "HEAD": "r", "PUT": "cw"}


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _sign(key: bytes, text: str) -> str:
    return base64.b64encode(hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()).decode("ascii")


@implementer(IPresignable, IListable, ITPCTarget, IChecksumSource, ISpaceSource)
class AzureEndpoint:
    collections_by_stat = False

    upload_headers = {"x-ms-blob-type": "BlockBlob"}  # what a PUT to a SAS URL must carry

    def __init__(
        self, config: EndpointConfig, http: HttpClient, *, clock: IReactorTime, presign_reuse: float = 0.5
    ) -> None:
        self.id = config.id
        self.config = config
        self.http = http
        self._clock = clock
        self._key = base64.b64decode(config.account_key)
        self._base = f"{config.url}/{quote(config.container, safe='')}"
        self._base_path = urlsplit(self._base).path  # "/container", or "/devstoreaccount1/container" on Azurite
        self._protocols = "https" if config.url.startswith("https:") else "https,http"
        self._urls = UrlCache()
        self._reuse = config.presign_expiry * presign_reuse
        self.log = Logger(namespace=f"fedd.endpoints.azure.{config.id}")

    # --- signing: pure ------------------------------------------------------------------------

    def blob_url(self, path: str) -> str:
        return f"{self._base}/{quote(path.lstrip('/'), safe='/~')}"

    def signed_headers(
        self,
        method: str,
        url: str,
        query: dict[str, str],
        now: float,
        extra: dict[str, str] | None = None,
        content_length: int = 0,
    ) -> dict[str, str]:
        """SharedKey authorisation (Blob service, version 2009-09-19 and later): `url` without its query,
        `query` the decoded parameters that will be sent."""
        headers = {"x-ms-date": formatdate(now, usegmt=True), "x-ms-version": API_VERSION, **(extra or {})}
        lower = {k.lower(): v for k, v in headers.items()}
        standard = [
            lower.get(name, "")
            for name in ("content-encoding", "content-language", "content-length", "content-md5", "content-type")
        ]
        standard[2] = str(content_length) if content_length else ""  # "" for 0 since version 2015-02-21
        standard += [lower.get(name, "") for name in ("date", "if-modified-since", "if-match", "if-none-match")]
        standard += [lower.get(name, "") for name in ("if-unmodified-since", "range")]
        canonical_headers = "".join(
            f"{name}:{' '.join(value.split())}\n" for name, value in sorted(lower.items()) if name.startswith("x-ms-")
        )
        resource = f"/{self.config.account}{urlsplit(url).path}"  # the encoded path as sent
        for name in sorted({k.lower() for k in query}):
            values = sorted(v for k, v in query.items() if k.lower() == name)
            resource += f"\n{name}:{','.join(values)}"
        text = "\n".join([method, *standard]) + "\n" + canonical_headers + resource
        headers["Authorization"] = f"SharedKey {self.config.account}:{_sign(self._key, text)}"
        return headers

    def sas(self, path: str, permissions: str, now: float, expiry: int | None = None) -> str:
        """A service SAS URL for one blob (string-to-sign of version 2020-12-06 and later)."""
        start, end = _iso(now - CLOCK_SKEW), _iso(now + (expiry or self.config.presign_expiry))
        resource = f"/blob/{self.config.account}/{self.config.container}/{path.lstrip('/')}"
        # sp st se resource si sip spr sv sr snapshot-time ses rscc rscd rsce rscl rsct
        fields = [permissions, start, end, resource, "", "", self._protocols, API_VERSION, "b", "", ""]
        text = "\n".join(fields + [""] * 5)
        query = {
            "sv": API_VERSION,
            "spr": self._protocols,
            "st": start,
            "se": end,
            "sr": "b",
            "sp": permissions,
            "sig": _sign(self._key, text),
        }
        return f"{self.blob_url(path)}?{urlencode(query, quote_via=quote)}"

    def url_for(self, path: str, now: float, method: str = "GET") -> str:
        permissions = _PERMISSIONS.get(method.upper(), "r")
        key = f"{permissions} {path}"  # a SAS does not sign the method: GET and HEAD share the read URL
        url = self._urls.get(key, now)
        if url is None:
            url = self.sas(path, permissions, now)
            self._urls.put(key, url, now + self._reuse)
        return url

    # --- requests -----------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        url: str,
        query: dict[str, str] | None = None,
        extra: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> Deferred[HttpResponse]:
        query = query or {}
        if body is None and method == "PUT":
            body = b""
        headers = self.signed_headers(method, url, query, self._clock.seconds(), extra, len(body or b""))
        full = f"{url}?{urlencode(sorted(query.items()), quote_via=quote)}" if query else url
        return self.http.request(method, full, headers, body)

    def _check(self, response: HttpResponse, what: str) -> None:
        if response.code >= 500:
            raise EndpointError(self.id, f"{what}: HTTP {response.code}")
        if response.code in (401, 403):
            code = response.header("x-ms-error-code") or f"HTTP {response.code}"
            raise EndpointError(self.id, f"{what}: access denied ({code}): check the account key")
        if response.code == 404 and response.header("x-ms-error-code") == "ContainerNotFound":
            raise EndpointError(self.id, f"{what}: container {self.config.container!r} does not exist")

    def _unexpected(self, response: HttpResponse, what: str) -> EndpointError:
        code = response.header("x-ms-error-code")
        return EndpointError(self.id, f"{what}: unexpected HTTP {response.code}{f' ({code})' if code else ''}")

    async def _head(self, path: str, *, refuse: bool = False) -> HttpResponse | None:
        """A blob's properties; None when there is no such blob. `refuse`: a 4xx other than 404 is
        the path's refusal (PathRefused), not the endpoint's fault."""
        response = await self._send("HEAD", self.blob_url(path))
        refusal = refused(self.id, response.code, "HEAD") if refuse and response.code != 404 else None
        if refusal is not None:
            raise refusal
        self._check(response, "HEAD")
        if response.code == 404:
            return None
        if response.code != 200:
            raise self._unexpected(response, "HEAD")
        return response

    @deferred
    async def stat(self, path: str, via: tuple[str, ...] = ()) -> Stat | None:
        if path.strip("/") == "":
            return Stat(is_dir=True)
        response = await self._head(path, refuse=True)
        if response is None or (response.header(f"x-ms-meta-{FOLDER_META}") or "").lower() == "true":
            return None  # no blob, or a folder marker: directories are answered by listings
        size = parse_int(response.header("Content-Length"))
        if size is None:
            raise EndpointError(self.id, "HEAD: no Content-Length in answer")
        md5 = response.header("Content-MD5")
        return Stat(
            size=size,
            mtime=parse_http_date(response.header("Last-Modified")),
            etag=(response.header("ETag") or "").strip('"'),
            reported=(("content-md5", md5),) if md5 else (),
        )

    @deferred
    async def reported_checksums(self, path: str) -> Reported | None:
        """The blob's Content-MD5 property (base64, as Azure keeps it); None when there is no such blob."""
        response = await self._head(path)
        if response is None:
            return None
        md5 = response.header("Content-MD5")
        return (("content-md5", md5),) if md5 else ()

    # --- listings -----------------------------------------------------------------------------

    async def _list_page(self, prefix: str, marker: str, *, delimiter: bool, size: int) -> Any:
        query = {"restype": "container", "comp": "list", "maxresults": str(size)}
        if delimiter:
            query.update(delimiter="/", include="metadata")
        if prefix:
            query["prefix"] = prefix
        if marker:
            query["marker"] = marker
        response = await self._send("GET", self._base, query)
        self._check(response, "List Blobs")
        if response.code == 404:
            raise EndpointError(self.id, f"container {self.config.container!r} does not exist")
        if response.code != 200:
            raise self._unexpected(response, "List Blobs")
        root = parse_xml(response.body, self.id, "List Blobs")
        if root.tag != "EnumerationResults":
            raise EndpointError(self.id, f"List Blobs: unexpected answer <{root.tag}>")
        return root

    def list_stream(
        self, path: str, emit: Callable[[list[Entry]], None], via: tuple[str, ...] = (), valve: Valve | None = None
    ) -> Deferred[bool]:
        return emit_listing(self.listdir(path), emit)

    @deferred
    async def listdir(self, path: str, via: tuple[str, ...] = ()) -> list[Entry] | None:
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        entries: dict[str, Entry] = {}
        marker_seen = False
        marker = ""
        while True:
            root = await self._list_page(prefix, marker, delimiter=True, size=PAGE_SIZE)
            marker_seen = parse_blob_page(root, prefix, entries) or marker_seen
            marker = root.findtext("NextMarker") or ""
            del root
            if len(entries) > MAX_LIST_ENTRIES:
                raise EndpointError(self.id, f"listing of {path} exceeds {MAX_LIST_ENTRIES} entries")
            if not marker:
                break
        if not entries and not marker_seen and prefix:
            return None
        return [entries[name] for name in sorted(entries)]

    # --- writes and space ---------------------------------------------------------------------

    def prepare_put(self, path: str) -> Deferred[None]:
        return succeed(None)  # names need no parents in Blob storage

    @deferred
    async def delete(self, path: str) -> bool:
        for name in (path, path.rstrip("/") + "/"):  # the blob, else a directory's marker blob
            response = await self._send("DELETE", self.blob_url(name), extra={"x-ms-delete-snapshots": "include"})
            self._check(response, "DELETE")
            if response.code in (200, 202):
                return True
            if response.code != 404:
                raise self._unexpected(response, "DELETE")
        return False

    @deferred
    async def mkcol(self, path: str) -> bool:
        if await self._head(path) is not None or await self._has_prefix(path):
            return False
        extra = {"x-ms-blob-type": "BlockBlob", f"x-ms-meta-{FOLDER_META}": "true"}
        response = await self._send("PUT", self.blob_url(path.rstrip("/") + "/"), extra=extra)
        self._check(response, "PUT directory marker")
        if response.code != 201:
            raise self._unexpected(response, "PUT directory marker")
        return True

    async def _has_prefix(self, path: str) -> bool:
        root = await self._list_page(path.strip("/") + "/", "", delimiter=False, size=1)
        blobs = root.find("Blobs")
        return blobs is not None and blobs.find("Blob") is not None

    @deferred
    async def move(self, source: str, destination: str) -> None:
        # no rename in Blob storage: Copy Blob (the source read through a short SAS), then delete the source
        copy_source = self.sas(source, "r", self._clock.seconds(), COPY_SAS_SECONDS)
        response = await self._send("PUT", self.blob_url(destination), extra={"x-ms-copy-source": copy_source})
        if response.code == 404:
            raise EndpointError(self.id, "copy: the source disappeared")
        self._check(response, "Copy Blob")
        if response.code not in (201, 202):
            raise self._unexpected(response, "Copy Blob")
        status = response.header("x-ms-copy-status") or "success"
        waited = 0.0
        while status == "pending":
            if waited >= COPY_WAIT:
                raise EndpointError(self.id, f"copy: still pending after {COPY_WAIT:g}s")
            await deferLater(self._clock, COPY_POLL, lambda: None)
            waited += COPY_POLL
            head = await self._head(destination)
            status = (head.header("x-ms-copy-status") if head is not None else None) or "failed"
        if status != "success":
            raise EndpointError(self.id, f"copy: {status}")
        deleted = await self._send("DELETE", self.blob_url(source), extra={"x-ms-delete-snapshots": "include"})
        self._check(deleted, "DELETE after copy")
        if deleted.code not in (200, 202, 404):
            raise self._unexpected(deleted, "DELETE after copy")

    @deferred
    async def space(self, max_objects: int = MAX_SPACE_OBJECTS) -> Space:
        """Sum of blob sizes over the whole container, page by page: one page in memory at a time."""
        used = files = 0
        marker = ""
        while True:
            root = await self._list_page("", marker, delimiter=False, size=PAGE_SIZE)
            blobs = root.find("Blobs")
            for blob in blobs.iterfind("Blob") if blobs is not None else ():
                size = parse_int(blob.findtext("Properties/Content-Length")) or 0
                used += size
                if size or not blob_name(blob).endswith("/"):  # directory markers are not files
                    files += 1
            marker = root.findtext("NextMarker") or ""
            del root, blobs
            if files > max_objects:
                raise EndpointError(self.id, f"space: container holds more than {max_objects} blobs")
            if not marker:
                break
        return Space(used=used, total=self.config.quota, files=files, source="listing")

    def probe(self) -> Deferred[None]:
        return self._send("HEAD", self._base, {"restype": "container"}).addCallback(self._probe_result)

    def _probe_result(self, response: HttpResponse) -> None:
        if response.code >= 500:
            raise EndpointError(self.id, f"probe: HTTP {response.code}")
        if response.code in (401, 403):
            raise EndpointError(self.id, f"probe: access denied (HTTP {response.code}): check the account key")
        if response.code == 404:
            raise EndpointError(self.id, f"probe: container {self.config.container!r} does not exist")
        if response.code != 200:
            raise self._unexpected(response, "probe")
