"""Domain exceptions. `fedd.web.errors` maps each of them to one HTTP status, in one place."""

from __future__ import annotations


class FeddError(Exception):
    """Base class: the message is short and safe to show to a client."""

    status = 500


class BadRequest(FeddError):
    status = 400


class NotFound(FeddError):
    status = 404
    # endpoints whose "no" also says the name is no collection (WebDAV, local): not listed after
    not_collections: frozenset[str] = frozenset()


class Unauthorized(FeddError):
    status = 401


class Forbidden(FeddError):
    status = 403


class MethodNotAllowed(FeddError):
    status = 405


class Conflict(FeddError):
    status = 409


class PreconditionFailed(FeddError):
    """`Overwrite: F` (RFC 4918) or an existing file without overwrite permission."""

    status = 412


class PayloadTooLarge(FeddError):
    status = 413


class UnsupportedMediaType(FeddError):
    """A body in a media type the resource does not take (e.g. admin calls that are not JSON)."""

    status = 415


class InsufficientStorage(FeddError):
    """No writable endpoint can take the upload (RFC 4918 507)."""

    status = 507


class BadGateway(FeddError):
    """An endpoint failed an operation fedd forwarded to it."""

    status = 502


class PartialFailure(FeddError):
    """An operation that succeeded on some endpoints and failed on others: reported, not hidden."""

    status = 502

    def __init__(self, message: str, outcome: object = None) -> None:
        super().__init__(message)
        self.outcome = outcome


class NoReplicaAvailable(FeddError):
    """Replicas may exist, but no endpoint that could serve them answered in time or is online.

    Never a 404: to Rucio and FTS "not found" means "file lost". `retry_after`: seconds for the
    `Retry-After` header (when the next health check may have brought an endpoint back)."""

    status = 503
    not_collections: frozenset[str] = frozenset()  # as for NotFound

    def __init__(self, message: str, retry_after: int = 30, unreachable: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.unreachable = unreachable


class LoopDetected(FeddError):
    """A request that already went through this fedd instance (RFC 5842 508): a federation loop."""

    status = 508


class EndpointError(Exception):
    """An endpoint failed to answer usefully (timeout, 5xx, garbage). Counts against its health."""

    def __init__(self, endpoint: str, reason: str) -> None:
        self.endpoint = endpoint
        self.reason = reason
        super().__init__(f"{endpoint}: {reason}")


class ClientGone(Exception):
    """The client went away (or was answered) before its whole upload arrived: a carried upload to
    an endpoint is aborted, and that is no fault of the endpoint."""


class PathRefused(Exception):
    """An endpoint refused a request because of the path asked (4xx, ENOTDIR, ENAMETOOLONG, EINVAL):
    the request's fault, never the endpoint's. Counts as "no such name here" and leaves its health
    untouched. `suspect`: the refusal could also mean a broken endpoint (401/403: revoked keys), so
    the health poller should look at it early (the probe, not the request, decides)."""

    def __init__(self, endpoint: str, reason: str, *, suspect: bool = False) -> None:
        self.endpoint = endpoint
        self.reason = reason
        self.suspect = suspect
        super().__init__(f"{endpoint}: {reason}")


def describe(failure: object) -> str:
    """A short reason for a Failure: the EndpointError's own reason, else 'Type: message'."""
    value = getattr(failure, "value", failure)
    if isinstance(value, EndpointError | PathRefused):
        return value.reason
    return f"{type(value).__name__}: {value}"
