"""Errors that reach an HTTP client, each with the status it maps to.

Every error a request can end in is one of these types; `dicomrst.web` maps them to
a status and a short body in exactly one place.
"""

from __future__ import annotations


class DicomrstError(Exception):
    """Base class; ``http_status`` is the status the web layer answers with."""

    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BadRequest(DicomrstError):
    http_status = 400


class NotFound(DicomrstError):
    http_status = 404


class NotAcceptable(DicomrstError):
    http_status = 406


class Conflict(DicomrstError):
    http_status = 409


class PayloadTooLarge(DicomrstError):
    http_status = 413


class UnsupportedMediaType(DicomrstError):
    http_status = 415


class NotImplementedService(DicomrstError):
    http_status = 501


class UpstreamError(DicomrstError):
    """The PACS or object store refused, failed or went away (502)."""

    http_status = 502


class ServiceUnavailable(DicomrstError):
    """We cannot take the request now (pool exhausted, shutting down): 503."""

    http_status = 503

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamTimeout(DicomrstError):
    """The PACS or object store did not answer in time (504)."""

    http_status = 504
