"""What can go wrong with a request, as exception types every layer may raise.

These name the *kind* of failure (the client's request is bad, the PACS or object store
failed or did not answer, we cannot take the request now); they carry no HTTP status.
`dicomrst.web.errors` maps each kind to a status in exactly one place.
"""

from __future__ import annotations


class DicomrstError(Exception):
    """Base class: a failure whose message may be shown to the client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BadRequest(DicomrstError):
    """The request is malformed (a parameter, a UID, the body)."""


class NotFound(DicomrstError):
    """The AET, study, series or instance does not exist."""


class NotAcceptable(DicomrstError):
    """Nothing the client accepts can be produced."""


class RangeNotSatisfiable(DicomrstError):
    """None of the byte ranges asked for lies within the representation of `length` bytes."""

    def __init__(self, message: str, length: int) -> None:
        super().__init__(message)
        self.length = length


class Conflict(DicomrstError):
    """None of the instances of an upload could be stored."""


class PayloadTooLarge(DicomrstError):
    """The request body is larger than ``max-upload-size``."""


class UnsupportedMediaType(DicomrstError):
    """The request body is of a media type we do not take."""


class NotImplementedService(DicomrstError):
    """The service is not available on this kind of AET."""


class UpstreamError(DicomrstError):
    """The PACS or object store refused, failed or went away."""


class ServiceUnavailable(DicomrstError):
    """We cannot take the request now (pool exhausted, shutting down)."""

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamTimeout(DicomrstError):
    """The PACS or object store did not answer in time."""


class Unauthorized(DicomrstError):
    """The request carries no credentials where some are needed, or credentials that
    identify no one.  `challenges` are the ways the client may authenticate (RFC 9110
    §11.6.1), each a ``WWW-Authenticate`` value such as ``Basic realm="dicomrst"``."""

    def __init__(self, message: str, challenges: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.challenges = challenges


class Forbidden(DicomrstError):
    """The caller is known but may not do this (``aets[].access``).  `challenges` as for
    `Unauthorized` (RFC 6750's ``insufficient_scope`` for a bearer token)."""

    def __init__(self, message: str, challenges: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.challenges = challenges
