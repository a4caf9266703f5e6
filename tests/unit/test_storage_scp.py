"""A listener with ``store-to`` over a StringTransport: each C-STORE's data set goes to the
archive's consumer fragment by fragment, the C-STORE-RSP waits for the archive's ``done``
and carries its status; refusals, lost associations, and ``allowed-callers``."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from dicomrst.common.uids import EXPLICIT_VR_LE
from dicomrst.dimse import commands
from dicomrst.dimse.contexts import listener_policy
from dicomrst.dimse.storage_scp import CANNOT_UNDERSTAND, PROCESSING_FAILURE, ArchiveStoreSCP
from dicomrst.ul import pdu
from dicomrst.ul.negotiation import (
    REASON_CALLING_AE_NOT_RECOGNIZED,
    AssociationRequest,
    ContextProposal,
    Rejection,
)
from tests.support.ul import (
    CT_IMAGE_STORAGE,
    ULTestCase,
    associate_rq,
    command_bytes,
    messages_written,
    pdata,
)

SOP = "1.2.3.4.5"


class Opened:
    """The archive's consumer of one instance; the test fires `done`."""

    def __init__(self, args: tuple[str, ...]) -> None:
        self.args = args
        self.fragments: list[bytes] = []
        self.finished = False
        self.failed: Failure | None = None
        self.done: Deferred[int] = Deferred()

    def dataReceived(self, fragment: bytes) -> None:
        self.fragments.append(fragment)

    def dataFinished(self) -> None:
        self.finished = True

    def dataFailed(self, reason: Failure) -> None:
        self.failed = reason
        self.done.errback(reason)


class ArchiveStoreSCPTests(ULTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.opened: list[Opened] = []
        self.refuse: Exception | None = None
        scp = ArchiveStoreSCP("IN", "ARCHIVE", self.open)
        contexts = (ContextProposal(CT_IMAGE_STORAGE, (EXPLICIT_VR_LE,)),)
        request = AssociationRequest("MODALITY", "IN", contexts)
        self.proto, self.transport, self.connection = self.established_acceptor(
            request, listener_policy("IN", True, 16384), {commands.C_STORE_RQ: scp}
        )

    def open(self, *args: str) -> Any:
        if self.refuse is not None:
            raise self.refuse
        opened = Opened(args)
        self.opened.append(opened)
        return opened

    def send_store(self, data: bytes, *, last: bool = True) -> None:
        rq = command_bytes(
            commands.C_STORE_RQ,
            MessageID=7,
            AffectedSOPClassUID=CT_IMAGE_STORAGE,
            AffectedSOPInstanceUID=SOP,
            Priority=0,
            CommandDataSetType=0x0000,
        )
        self.proto.dataReceived(pdata((1, 0x03, rq)))
        half = len(data) // 2
        self.proto.dataReceived(pdata((1, 0x00, data[:half])))
        if last:
            self.proto.dataReceived(pdata((1, 0x02, data[half:])))

    def responses(self) -> list[int]:
        return [cmd.Status for _, cmd, _ in messages_written(self.transport.value())
                if cmd.CommandField == commands.C_STORE_RSP]

    def test_answered_only_when_the_archive_says_stored(self) -> None:
        self.send_store(b"\x08\x00\x18\x00UI\x02\x00" + b"1\x00")
        [opened] = self.opened
        self.assertEqual(opened.args, (CT_IMAGE_STORAGE, SOP, EXPLICIT_VR_LE, "MODALITY"))
        self.assertEqual(len(opened.fragments), 2)
        self.assertTrue(opened.finished)
        self.assertEqual(self.responses(), [])  # durable first
        opened.done.callback(0xA770)
        self.assertEqual(self.responses(), [0xA770])

    def test_refused_at_once_and_the_data_set_dropped(self) -> None:
        self.refuse = ValueError("bad UID")
        self.send_store(b"\x00" * 16)
        self.assertEqual(self.responses(), [CANNOT_UNDERSTAND])
        self.assertEqual(self.proto.state, "Sta6")

    def test_archive_failure_is_a_processing_failure(self) -> None:
        self.send_store(b"\x00" * 16)
        self.opened[0].done.errback(Failure(RuntimeError("disk on fire")))
        self.assertEqual(self.responses(), [PROCESSING_FAILURE])
        self.flushLoggedErrors(RuntimeError)

    def test_association_lost_mid_data_set(self) -> None:
        self.send_store(b"\x00" * 16, last=False)
        self.transport.clear()
        self.lose(self.proto)
        [opened] = self.opened
        self.assertIsNotNone(opened.failed)
        self.assertFalse(opened.finished)
        self.assertEqual(self.transport.value(), b"")  # nothing answered
        self.assertIsNone(self.successResultOf(opened.done))  # and nothing raised trying to
        self.assertNoTraceback()


class AllowedCallersTests(ULTestCase):
    def test_only_the_allowed_callers_associate(self) -> None:
        policy = listener_policy("IN", True, 16384, frozenset({"CT1"}))
        contexts = (ContextProposal(CT_IMAGE_STORAGE, (EXPLICIT_VR_LE,)),)
        stranger = AssociationRequest("STRANGER", "IN", contexts).to_primitive()
        decision = policy.decide(stranger)
        self.assertIsInstance(decision, Rejection)
        assert isinstance(decision, Rejection)
        self.assertEqual(decision.reason, REASON_CALLING_AE_NOT_RECOGNIZED)
        known = AssociationRequest("CT1", "IN", contexts).to_primitive()
        self.assertNotIsInstance(policy.decide(known), Rejection)
        # On the wire: an A-ASSOCIATE-RJ.
        proto, transport, _ = self.acceptor(policy)
        proto.dataReceived(associate_rq(AssociationRequest("STRANGER", "IN", contexts)))
        self.assertEqual(transport.value()[0], pdu.ASSOCIATE_RJ)
