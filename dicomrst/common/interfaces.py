"""The contract between a retrieve and the response it feeds.

A retrieve (C-GET, C-MOVE or an S3 download) hands each instance to an `IInstanceSink`
as it arrives: ``begin`` opens a part and returns the `IInstanceConsumer` the instance's
data set is written into, fragment by fragment; the consumer's ``done`` fires once the
part is written (the C-STORE-RSP of a sub-operation waits for it).  The sink pauses
whatever feeds it (an association, an S3 download) through the producer ``attach``\\ed to
it when the HTTP client reads slower than the source sends.  The web layer's sinks
(`dicomrst.wado.sinks`, `dicomrst.wado.metadata_sink`) implement it; the retrieves in
`dicomrst.dimse` and `dicomrst.backends.s3` call it.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface

#: What an instance consumer's ``done`` fires with (C-STORE statuses, PS3.4 B.2.3): the
#: instance was written; it was not (refused, dropped, the client left).
STORE_SUCCESS = 0x0000
STORE_OUT_OF_RESOURCES = 0xA700


class IDataSetConsumer(Interface):
    """Takes one message's data set (or one object's), fragment by fragment."""

    def dataReceived(fragment: bytes) -> None:
        """The next fragment, in order."""

    def dataFinished() -> None:
        """The data set is complete."""

    def dataFailed(reason: Failure) -> None:
        """The data set will not be completed (the association or connection ended)."""


class IInstanceConsumer(IDataSetConsumer):
    """One instance's data set on its way into a response."""

    done: Deferred[int] = Attribute(
        "Fires once the part is written (or dropped) with a C-STORE status: STORE_SUCCESS "
        "written, anything else (STORE_OUT_OF_RESOURCES) not; errbacks if the instance could "
        "not be handed on."
    )


class IInstanceSink(Interface):
    """Where a retrieve's instances go: the parts of one response."""

    started: bool = Attribute(
        "True once bytes went out to the client: a failure can then only cut the response "
        "off, and a retry would send instances twice."
    )
    gone: bool = Attribute(
        "True once the client went away or the request was answered otherwise (timed out): "
        "instances that still arrive are refused."
    )
    wants_bulk_data: bool = Attribute(
        "False when only the attributes of each instance are used (metadata): a source that "
        "can read just the head of an object may hand over pixel data as a placeholder."
    )

    def begin(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> IInstanceConsumer:
        """Open a part for one arriving instance (its data set in `transfer_syntax`, no
        file meta); raise to refuse it (the source then reports that instance failed)."""

    def attach(producer: IPushProducer | None) -> None:
        """`producer` now feeds this sink: pause and resume it with the client.  None
        detaches the one attached (its operation ended: it may serve another request)."""

    def finish() -> None:
        """Every instance was written: end the response cleanly."""

    def fail(reason: str) -> None:
        """The retrieve failed after the response began: cut it off, so the client sees
        a truncated body rather than one that looks complete."""

    def abandon() -> None:
        """The request was cancelled (the client left, or it was answered with a
        timeout): nothing more is written, and instances that still arrive are refused."""
