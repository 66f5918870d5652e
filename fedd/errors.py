"""Domain exceptions. `fedd.web.errors` maps each of them to one HTTP status, in one place."""

from __future__ import annotations


class FeddError(Exception):
    """Base class: the message is short and safe to show to a client."""

    status = 500


class BadRequest(FeddError):
    status = 400


class NotFound(FeddError):
    status = 404


class Unauthorized(FeddError):
    status = 401


class Forbidden(FeddError):
    status = 403


class MethodNotAllowed(FeddError):
    status = 405


class PayloadTooLarge(FeddError):
    status = 413


class NoReplicaAvailable(FeddError):
    """Replicas may exist, but no endpoint that could serve them answered in time or is online."""

    status = 503


class EndpointError(Exception):
    """An endpoint failed to answer usefully (timeout, 5xx, garbage). Counts against its health."""

    def __init__(self, endpoint: str, reason: str) -> None:
        self.endpoint = endpoint
        self.reason = reason
        super().__init__(f"{endpoint}: {reason}")


def describe(failure: object) -> str:
    """A short reason for a Failure: the EndpointError's own reason, else 'Type: message'."""
    value = getattr(failure, "value", failure)
    if isinstance(value, EndpointError):
        return value.reason
    return f"{type(value).__name__}: {value}"
