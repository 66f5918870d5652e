"""What an endpoint kind can do, declared as zope Interfaces (as Twisted and txacme do).

Each kind declares the capabilities it has with `@implementer`; `make_endpoint` checks with
`verifyObject` that the object really provides them, and callers ask `IWritable.providedBy(endpoint)`
instead of probing attributes. An in-memory endpoint declaring the same interfaces ships in
`fedd.testing`; tests/test_contract.py runs one suite against it and against the real servers.

| kind  | read | list | write | presign | checksum source | checksum store | space | TPC target |
|-------|------|------|-------|---------|-----------------|----------------|-------|------------|
| local | yes  | yes  |       |         |                 |                | yes   |            |
(local endpoints also provide `ILocalFiles`: fedd serves and hashes their bytes itself)
| s3    | yes  | yes  | yes   | yes     | yes             | yes            | yes   | yes        |
| azure | yes  | yes  | yes   | yes     | yes             |                | yes   | yes        |
| dav   | yes  | yes  | yes   |         | yes             |                | yes   | yes        |

Paths are endpoint paths (already mapped), absolute, normalised. Every method returning a Deferred
fails with `EndpointError` for the endpoint's fault, or `PathRefused` when the path asked is at fault
(4xx, ENOTDIR, ENAMETOOLONG): that is the client's answer, never the endpoint's health.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from fedd.config import EndpointConfig
from fedd.endpoints.base import Entry, HttpClient, Space, Stat, Valve

Reported = tuple[tuple[str, str], ...]  # (field, raw value) as the storage sent it


class IEndpoint(Interface):
    """One configured storage endpoint."""

    id: str = Attribute("The endpoint's configured id.")
    config: EndpointConfig = Attribute("Its configuration.")

    def probe() -> Deferred[None]:
        """A cheap request proving the service answers; fails with EndpointError."""


class IReadable(IEndpoint):
    """Stats names, and says where a client reads them."""

    collections_by_stat: bool = Attribute(
        "A stat also tells collections (WebDAV HEAD, stat(2)); object stores (S3, Azure) cannot tell."
    )

    def stat(path: str, via: tuple[str, ...] = ()) -> Deferred[Stat | None]:
        """The stat of a name, None when it does not exist. `via`: the fedd
        instances the client's request came through (sent on to endpoints that are fedd instances)."""

    def url_for(path: str, now: float, method: str = "GET") -> str:
        """Where to send a client doing `method` (GET, HEAD, or PUT where writable) on `path`: an
        absolute URL, or a fedd path (local endpoints: fedd serves the bytes)."""


class IListable(IEndpoint):
    """Lists collections."""

    def listdir(path: str, via: tuple[str, ...] = ()) -> Deferred[list[Entry] | None]:
        """Children of a collection; None when `path` is none."""

    def list_stream(
        path: str, emit: Callable[[list[Entry]], None], via: tuple[str, ...] = (), valve: Valve | None = None
    ) -> Deferred[bool]:
        """The children passed to `emit` in batches as they are read (bounded memory);
        True when `path` is a collection. Reading pauses while the `Valve` is closed."""


class ILocalFiles(IReadable):
    """Files on this host's file system: fedd serves and hashes their bytes itself (`url_for` is a
    path on fedd)."""

    root: str = Attribute("The real path of the served directory.")

    def resolve(path: str) -> str | None:
        """The file-system path of an endpoint path; None when it would leave what is served."""


class IWritable(IEndpoint):
    """Takes uploads (clients PUT to `url_for(path, now, "PUT")`), deletes, makes collections, renames."""

    upload_headers: dict[str, str] = Attribute("Headers a PUT to an upload URL must carry (Azure: x-ms-blob-type).")

    def prepare_put(path: str) -> Deferred[None]:
        """Make the name ready for an upload (WebDAV: the parent collections exist)."""

    def delete(path: str) -> Deferred[bool]:
        """Remove a file (or an empty collection); False when it did not exist."""

    def mkcol(path: str) -> Deferred[bool]:
        """Create a collection; False when the name already exists."""

    def move(source: str, destination: str) -> Deferred[None]:
        """Rename a file within the endpoint, replacing `destination`."""


class IPresignable(IReadable):
    """`url_for` signs: the URL lets any client GET/HEAD (and PUT where writable) without further
    credentials, for `config.presign_expiry` seconds."""


class IChecksumSource(IEndpoint):
    """Keeps checksums of what it stores and reports them, raw: the values as the storage sent them
    (`fedd.checksums.reported` parses them)."""

    def reported_checksums(path: str) -> Deferred[Reported | None]:
        """(field, raw value) pairs about the file's
        content, e.g. ("digest", "adler32=03da0195"), ("x-amz-meta-adler32", "03da0195"),
        ("content-md5", "<base64>"), ("etag", "<S3 ETag>"); None when there is no such file."""


class IChecksumStore(IEndpoint):
    """Keeps checksums fedd computed in the object's own metadata."""

    def store_checksums(path: str, values: dict[str, str], etag: str) -> Deferred[bool]:
        """Store (algorithm -> lowercase hex) if the object still has `etag`; False
        when it changed or cannot be updated in one request."""


class ISpaceSource(IEndpoint):
    """Reports how full it is."""

    def space(max_objects: int = 50_000_000) -> Deferred[Space]:
        """Used and total space (may take long: paged listings, which stop with an
        EndpointError past `max_objects`)."""


class IHttpEndpoint(IEndpoint):
    """Reached over HTTP through an `HttpClient` of its own (closed with the endpoint)."""

    http: HttpClient = Attribute("The endpoint's `HttpClient` (timeouts, body cap, its TLS settings).")


class ITPCTarget(IWritable, IHttpEndpoint):
    """Takes uploads fedd sends itself: third-party copies pushed by fedd, uploads fedd carries for
    clients that cannot follow a 307, both to `url_for(path, now, "PUT")` with `upload_headers`."""
