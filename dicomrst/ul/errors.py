"""How an association can fail.

Each error is one of the gateway's failure kinds (`dicomrst.errors`): a peer that refuses
or breaks an association is an upstream failure, one that does not answer in time an
upstream timeout.  Which HTTP status those become is not decided here.
"""

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


class ProtocolViolation(AssociationAborted):
    """The peer broke PS3.8 or PS3.7 (a malformed PDU, command set or data set): we sent
    the A-ABORT.  Not a stale association: the same request would meet the same peer."""


class ConnectionLost(AssociationError):
    """The TCP connection closed without a release or abort."""


class ConnectFailed(AssociationError):
    """No TCP connection to the peer could be made."""


class TLSFailed(ConnectFailed):
    """The TLS handshake with the peer failed: its certificate did not verify, or it
    refused ours (or our lack of one)."""


class NoAcceptableContext(AssociationError):
    """The peer accepted the association but none of the contexts we needed."""


class AssociationTimeout(UpstreamTimeout):
    """The peer did not answer within the configured time."""


class AssociationClosed(AssociationError):
    """An operation was attempted on an association that is no longer established."""
