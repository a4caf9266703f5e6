# -*- test-case-name: tests.unit.test_storage_scp -*-
"""A listener with ``store-to``: the Storage SCP of an archive AET (LOCAL or S3), so a
modality or ``storescu`` can push into it.

Each C-STORE-RQ's data set goes, fragment by fragment as it comes off the association,
into the consumer the archive opens for it (`OpenInstance`: the backend's
``IInstanceIntake.receive``, given from the composition in ``tap.py``, since this layer
sits below the backends).  The C-STORE-RSP is sent only when that consumer's ``done``
fires, which the archive does once the instance is durable (file and index row), with
the status it decided; the peer sends its next instance only then.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.python.failure import Failure

from dicomrst.common.interfaces import IDataSetConsumer, IInstanceConsumer
from dicomrst.dimse.connection import DimseConnection, IncomingMessage
from dicomrst.dimse.retrieval import StoreReply
from dicomrst.logs import logger

log = logger("dicomrst.store")

#: Opens one arriving instance in the archive: (SOP Class UID, SOP Instance UID, transfer
#: syntax, calling AE title) → the consumer of its data set; raises to refuse it.
OpenInstance = Callable[[str, str, str, str], IInstanceConsumer]

#: PS3.4 B.2.3: the archive could not take the instance for a reason of its own.
PROCESSING_FAILURE = 0x0110
#: PS3.4 B.2.3: Error, Cannot Understand (the instance was refused as it is).
CANNOT_UNDERSTAND = 0xC000


class ArchiveStoreSCP:
    """The C-STORE-RQ handler of a listener whose instances go into archive `target`."""

    def __init__(self, aet: str, target: str, open_instance: OpenInstance) -> None:
        self.aet = aet
        self.target = target
        self.open_instance = open_instance

    def request_received(
        self, connection: DimseConnection, message: IncomingMessage
    ) -> IDataSetConsumer | None:
        association = connection.association
        assert association is not None
        transfer_syntax = association.contexts[message.context_id].transfer_syntax
        reply = StoreReply(connection, message)
        calling = association.calling_aet
        try:
            consumer = self.open_instance(reply.sop_class, reply.sop_instance, transfer_syntax, calling)
        except Exception as e:
            log.warn(
                "{aet}: refused C-STORE of {uid} from {calling} into {target}: {why}",
                aet=self.aet,
                uid=reply.sop_instance,
                calling=calling,
                target=self.target,
                why=str(e),
            )
            reply.send(CANNOT_UNDERSTAND)
            return None  # the data set is read and dropped

        def gone() -> bool:
            # Ended, or ending: `ended` is set before consumers hear of it.
            return connection.ended is not None or connection.is_ended

        def answered(status: int) -> None:
            if gone():
                return  # nobody to answer
            if status != 0:
                log.warn(
                    "{aet}: C-STORE of {uid} from {calling} into {target} answered 0x{status:04X}",
                    aet=self.aet,
                    uid=reply.sop_instance,
                    calling=calling,
                    target=self.target,
                    status=status,
                )
            reply.send(status)

        def failed(reason: Failure) -> None:
            if gone():
                return  # the association ended mid data set: nobody to answer
            log.failure("{aet}: storing {uid} failed", reason, aet=self.aet, uid=reply.sop_instance)
            reply.send(PROCESSING_FAILURE)

        consumer.done.addCallbacks(answered, failed)
        return consumer
