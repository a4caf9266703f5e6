"""STOW-RS's DIMSE side in memory: the C-STORE SCU on an in-memory association, the
conversions between transfer syntaxes, and the pool's associations for other contexts.

The same against Orthanc, DCMTK's storescp and the pynetdicom PACS is
tests/integration/test_stow_dimse_peers.py.
"""

from __future__ import annotations

import io
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from dicomrst.backends.pacs.store import store_request
from dicomrst.common.transcode import convert_dataset
from dicomrst.dimse import commands
from dicomrst.dimse.connection import DimseConnection
from dicomrst.dimse.store import c_store
from dicomrst.ul import pdu
from dicomrst.ul.errors import AssociationAborted, AssociationTimeout
from dicomrst.ul.negotiation import AssociationRequest, ContextProposal
from tests.support.datasets import part10
from tests.support.pool import CALLED, CALLING, PoolTestCase
from tests.support.stow import TEST_FILES, fresh_test_file, uploaded
from tests.support.ul import (
    ARTIM,
    CT_IMAGE_STORAGE,
    TICK,
    Tracing,
    ULTestCase,
    abort_pdu,
    aborts,
    accept_bytes,
    command_bytes,
    messages_written,
    pdata,
    pdvs_written,
    policy,
    split_pdus,
)

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


# -- the C-STORE SCU on an in-memory association -----------------------------------------------


class PausingTransport(StringTransport):
    """A send buffer that is "full" after every write: the registered producer is paused each time."""

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None and self.streaming:
            self.producer.pauseProducing()

    def writeSequence(self, seq: Any) -> None:
        self.write(b"".join(seq))


def store_rsp(status: int, message_id: int = 1, **fields: object) -> bytes:
    return pdata(
        (
            1,
            3,
            command_bytes(
                commands.C_STORE_RSP,
                MessageIDBeingRespondedTo=message_id,
                Status=status,
                AffectedSOPClassUID=CT_IMAGE_STORAGE,
                AffectedSOPInstanceUID="1.2.3",
                **fields,
            ),
        )
    )


class StoreScuTests(ULTestCase):
    TIMEOUT = 5.0

    def start(
        self, data: bytes, chunk: int = 1000
    ) -> tuple[Tracing, PausingTransport, Deferred[Any], io.BytesIO]:
        request = AssociationRequest("SCU", "SCP", (ContextProposal(CT_IMAGE_STORAGE),), max_pdu=16384)
        connection = DimseConnection(self.clock)
        proto = Tracing(self.clock, connection, request=request, artim_timeout=ARTIM)
        transport = PausingTransport()
        proto.makeConnection(transport)
        acceptor_policy = policy(contexts=(ContextProposal(CT_IMAGE_STORAGE),), max_pdu=4096)
        proto.dataReceived(accept_bytes(transport.value(), acceptor_policy))
        transport.clear()
        context = proto.contexts[1]
        source = io.BytesIO(data)
        d = Deferred.fromCoroutine(
            c_store(
                connection,
                self.clock,
                context,
                CT_IMAGE_STORAGE,
                "1.2.3",
                source,
                aet="SCP",
                timeout=self.TIMEOUT,
                chunk=chunk,
            )
        )
        return proto, transport, d, source

    def test_data_set_goes_out_piece_by_piece_as_the_transport_takes_it(self) -> None:
        data = bytes(range(256)) * 20  # 5120 bytes: six pieces of 1000, the last of 120
        proto, transport, d, source = self.start(data)
        # The command and the first piece, then the full buffer paused us.
        self.assertEqual(len(messages_written(transport.value())), 0)
        data_pdvs = [p for p in pdvs_written(transport.value()) if not p.is_command]
        self.assertEqual(b"".join(p.fragment for p in data_pdvs), data[:1000])
        for _ in range(5):
            transport.producer.resumeProducing()
        ((_, rq, sent),) = messages_written(transport.value())
        self.assertEqual(sent, data)
        self.assertEqual(int(rq.CommandField), commands.C_STORE_RQ)
        self.assertEqual(str(rq.AffectedSOPInstanceUID), "1.2.3")
        self.assertEqual(int(rq.Priority), commands.PRIORITY_MEDIUM)
        # No PDU beyond the peer's 4096 bytes; the producer is gone and the file closed.
        self.assertTrue(all(len(body) <= 4096 for _, body in split_pdus(transport.value())))
        self.assertIsNone(transport.producer)
        self.assertTrue(source.closed)
        self.assertNoResult(d)
        proto.dataReceived(store_rsp(0xB000, ErrorComment="coerced"))
        self.assertEqual(self.successResultOf(d), (0xB000, "coerced"))
        self.assertTrue(proto.established)
        self.assertNoTraceback()

    def test_no_progress_for_the_timeout_aborts(self) -> None:
        proto, transport, d, source = self.start(bytes(4000))
        # Paused by the transport, which never drains: the silence counts from the last piece.
        self.clock.advance(self.TIMEOUT - TICK)
        self.assertNoResult(d)
        self.clock.advance(TICK)
        error = self.failureResultOf(d, AssociationTimeout).value
        self.assertIn("1000 bytes sent", str(error))
        self.assertEqual(aborts(transport.value()), [(pdu.SOURCE_SERVICE_USER, 0)])
        self.assertTrue(source.closed)
        self.lose(proto)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_silence_after_the_data_set_times_out(self) -> None:
        proto, transport, d, source = self.start(bytes(1000))
        self.assertIsNone(transport.producer)
        self.assertTrue(source.closed)
        self.clock.advance(self.TIMEOUT)
        self.failureResultOf(d, AssociationTimeout)
        self.lose(proto)

    def test_peer_abort_in_the_middle_of_the_data_set(self) -> None:
        proto, transport, d, source = self.start(bytes(4000))
        transport.clear()
        proto.dataReceived(abort_pdu(pdu.SOURCE_SERVICE_USER, 0))
        self.assertEqual(transport.value(), b"")
        self.failureResultOf(d, AssociationAborted)
        self.assertTrue(source.closed)
        self.lose(proto)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_early_failure_response_stops_sending_and_aborts(self) -> None:
        proto, transport, d, source = self.start(bytes(4000))
        proto.dataReceived(store_rsp(0xA700))
        self.assertEqual(self.successResultOf(d), (0xA700, ""))
        # The message cannot be finished without the rest of it: the association goes.
        self.assertEqual(aborts(transport.value()), [(pdu.SOURCE_SERVICE_USER, 0)])
        self.assertTrue(source.closed)
        self.lose(proto)


class ConversionTests(TestCase):
    def test_explicit_to_implicit_and_back(self) -> None:
        ds = fresh_test_file(TEST_FILES["explicit"])
        data = part10(ds)
        instance = uploaded(self, ds, in_memory=True)
        dataset = data[instance.dataset_offset :]
        implicit = convert_dataset(dataset, EXPLICIT_VR_LE, IMPLICIT_VR_LE)
        back = convert_dataset(implicit, IMPLICIT_VR_LE, EXPLICIT_VR_LE)
        self.assertEqual(back, dataset)

    def test_request_for_an_instance(self) -> None:
        from dicomrst.backends.pacs import POOL_CONTEXTS

        class FakePool:
            request = AssociationRequest("A", "B", POOL_CONTEXTS)

        pool: Any = FakePool()
        self.assertIsNone(store_request(pool, CT_IMAGE_STORAGE, IMPLICIT_VR_LE))
        special = store_request(pool, CT_IMAGE_STORAGE, JPEG_BASELINE)
        assert special is not None
        self.assertEqual(
            [(cx.abstract_syntax, cx.transfer_syntaxes) for cx in special.contexts],
            [(CT_IMAGE_STORAGE, (JPEG_BASELINE,)), (CT_IMAGE_STORAGE, (EXPLICIT_VR_LE, IMPLICIT_VR_LE))],
        )
        self.assertEqual(special, store_request(pool, CT_IMAGE_STORAGE, JPEG_BASELINE))
        unknown = store_request(pool, "1.2.3.4", IMPLICIT_VR_LE)
        assert unknown is not None
        self.assertEqual(
            [cx.transfer_syntaxes for cx in unknown.contexts], [(IMPLICIT_VR_LE, EXPLICIT_VR_LE)]
        )


# -- the pool's associations for other contexts ------------------------------------------------

OTHER_REQUEST = AssociationRequest(
    CALLING,
    CALLED,
    (
        ContextProposal(CT_IMAGE_STORAGE, (JPEG_BASELINE,)),
        ContextProposal(CT_IMAGE_STORAGE, (EXPLICIT_VR_LE, IMPLICIT_VR_LE)),
    ),
)


class KeyedPoolTests(PoolTestCase):
    """AssociationPool.acquire(request): associations keyed by what they propose, one `size`."""

    def acquire_other(self, pool: Any) -> Deferred[Any]:
        return Deferred.fromCoroutine(pool.acquire(OTHER_REQUEST))

    def test_an_association_for_other_contexts_serves_only_its_kind(self) -> None:
        pool = self.make_pool(size=2)
        d = self.acquire_other(pool)
        self.connect()
        other = self.successResultOf(d)
        self.assertEqual(other.request, OTHER_REQUEST)
        # It proposed only what was asked for.
        self.assertEqual(
            {cx.abstract_syntax for cx in other.connection.association.contexts.values()}, {CT_IMAGE_STORAGE}
        )
        pool.release(other)
        common = self.acquire(pool)
        self.assertEqual(self.pending_connects(), 1)  # the idle one is not for it
        self.connect()
        self.assertIsNone(self.successResultOf(common).request)
        again = self.successResultOf(self.acquire_other(pool))
        self.assertIs(again.connection, other.connection)
        self.assertTrue(again.reused)

    def test_a_full_pool_releases_an_idle_association_of_another_kind(self) -> None:
        pool = self.make_pool(size=1)
        self.idle_one(pool)
        d = self.acquire_other(pool)
        # The idle one is being released: it holds its slot until the PACS confirms.
        self.assertStats(pool, releasing=1)
        self.assertEqual(self.pending_connects(), 0)
        self.flush()
        self.assertEqual(self.pending_connects(), 1)
        self.connect()
        self.assertEqual(self.successResultOf(d).request, OTHER_REQUEST)
        self.assertStats(pool, busy=1)

    def test_release_goes_to_a_waiter_of_its_kind_else_makes_room(self) -> None:
        pool = self.make_pool(size=1)
        (lease,) = self.opened(pool, 1)
        other = self.acquire_other(pool)
        common = self.acquire(pool)
        pool.release(lease)
        # The common waiter came second but takes the common association.
        self.assertIs(self.successResultOf(common).connection, lease.connection)
        self.assertNoResult(other)
        pool.release(lease)
        self.assertStats(pool, releasing=1)
        self.flush()
        self.connect()
        self.assertEqual(self.successResultOf(other).request, OTHER_REQUEST)
        self.assertTrue(lease.connection.is_ended)
