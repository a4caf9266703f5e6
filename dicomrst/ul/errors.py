"""How an association can fail, as errors the web layer already knows how to answer."""

from __future__ import annotations

from dicomrst.errors import UpstreamError, UpstreamTimeout


class AssociationError(UpstreamError):
    """The association ended or could not be set up."""


class AssociationRejected(AssociationError):
    def __init__(self, result: int, source: int, reason: int, text: str) -> None:
        super().__init__(f"association rejected ({text})")
        self.result = result
        self.source = source
        self.reason = reason


class AssociationAborted(AssociationError):
    def __init__(self, message: str, source: int | None = None, reason: int | None = None) -> None:
        super().__init__(message)
        self.source = source
        self.reason = reason


class ConnectionLost(AssociationError):
    """The TCP connection closed without a release or abort."""


class ConnectFailed(AssociationError):
    """No TCP connection to the peer could be made."""


class NoAcceptableContext(AssociationError):
    """The peer accepted the association but none of the contexts we needed."""


class AssociationTimeout(UpstreamTimeout):
    """The peer did not answer within the configured time."""


class AssociationClosed(AssociationError):
    """An operation was attempted on an association that is no longer established."""
