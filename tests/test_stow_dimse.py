"""STOW-RS's DIMSE side: DimseBackend.store_instance (C-STORE SCU) against real peers.

Orthanc is the well-behaved PACS: what it stored is read back over its REST API and compared,
element by element, with what was sent. DCMTK's storescp takes only Implicit VR LE, so the
gateway must convert. The pynetdicom PACS of tests/support/pacs/ (its store-* profiles)
rejects a SOP class, answers failure or warning statuses, or aborts in the middle of an
instance; its event log says what it really stored, which the outcomes must not overstate.
"""

from __future__ import annotations

import io
import os
from typing import Any

from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from dicomrst.backends.dimse import DimseBackend
from dicomrst.config import parse_config
from dicomrst.dimse import commands
from dicomrst.dimse.connection import DimseConnection
from dicomrst.dimse.store import c_store, convert_dataset, store_request
from dicomrst.errors import ServiceUnavailable
from dicomrst.stow import model
from dicomrst.stow.model import StoreOutcome, UploadedInstance
from dicomrst.ul import pdu
from dicomrst.ul.errors import AssociationAborted, AssociationTimeout
from dicomrst.ul.negotiation import AssociationRequest, ContextProposal
from tests.support import peers
from tests.support import pool as pool_fixtures
from tests.support.datasets import assert_same_dataset, part10
from tests.support.dimse_backend import CALLING, FindTestCase, global_reactor
from tests.support.gateway import Gateway, Response, pacs_aet, start_gateway, stop_gateway
from tests.support.pacs.datasets import get_instance
from tests.support.stow import (
    TEST_FILES,
    OrthancStored,
    fresh_test_file,
    multipart_body,
    uploaded,
)
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
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"

class StoreTestCase(FindTestCase):
    def store_backend(
        self,
        aet: str,
        port: int,
        *,
        size: int = 4,
        pool_timeout_ms: int = 10_000,
        stow_timeout_ms: int = 30_000,
    ) -> DimseBackend:
        config = parse_config(
            {
                "aets": [
                    {
                        "aet": aet,
                        "host": peers.LOCALHOST,
                        "port": port,
                        "pool": {"size": size, "timeout": pool_timeout_ms, "idle-timeout": 60_000},
                        "stow-rs": {"timeout": stow_timeout_ms},
                    }
                ]
            }
        )
        backend = DimseBackend(config.aets[0], CALLING, global_reactor())
        self.addCleanup(self.stop_backend_deferred, backend)
        return backend

    def stop_backend_deferred(self, backend: DimseBackend) -> Any:
        return Deferred.fromCoroutine(self.stop_backend(backend))

    async def store_all(self, backend: DimseBackend, instances: list[UploadedInstance]) -> list[StoreOutcome]:
        results = await DeferredList([backend.store_instance(i) for i in instances], consumeErrors=True)
        outcomes = []
        for ok, value in results:
            if not ok:
                value.raiseException()
            outcomes.append(value)
        return outcomes

    def stored_events(self, scp: peers.Peer) -> dict[str, dict[str, Any]]:
        return {e["sop"]: e for e in scp.events("stored")}

    def received(self, scp: peers.Peer, sop: str) -> Dataset:
        return dcmread(os.path.join(os.path.dirname(scp.log_path), "received", sop + ".dcm"))

    async def no_leaked_associations(self, scp: peers.Peer, backend: DimseBackend) -> None:
        await self.stop_backend(backend)
        await self.until(
            lambda: len(scp.events("conn_open")) == len(scp.events("conn_close")),
            "every association the PACS saw is closed",
        )


# -- Orthanc -----------------------------------------------------------------------------------


class OrthancStoreTests(OrthancStored, StoreTestCase):
    async def test_every_transfer_syntax_is_stored_unchanged(self) -> None:
        orthanc = await peers.start_orthanc(self)
        backend = self.store_backend(orthanc.aet, orthanc.dicom_port)
        study = generate_uid()
        datasets = {label: fresh_test_file(name, study) for label, name in TEST_FILES.items()}
        instances = {label: uploaded(self, ds, in_memory=label == "rle") for label, ds in datasets.items()}
        outcomes = await self.store_all(backend, list(instances.values()))
        for (label, instance), outcome in zip(instances.items(), outcomes, strict=True):
            self.assertEqual(
                (outcome.sop_instance_uid, outcome.status), (instance.sop_instance_uid, 0), label
            )
            self.assertTrue(outcome.stored)
        for label, ds in datasets.items():
            got = await self.orthanc_dataset(orthanc, str(ds.SOPInstanceUID))
            # Compressed objects go on an association proposing their own syntax, which Orthanc
            # takes: they arrive unchanged. The pooled associations propose Explicit and Implicit
            # VR LE in one context per SOP class and Orthanc picks Explicit, so the Implicit VR
            # object is re-encoded, its elements and values kept.
            want_ts = EXPLICIT_VR_LE if label == "implicit" else ds.file_meta.TransferSyntaxUID
            self.assertEqual(got.file_meta.TransferSyntaxUID, want_ts, label)
            assert_same_dataset(self, got, ds, label)
        # Orthanc's own QIDO-RS finds the study's instances.
        found = await orthanc.get_json(f"/dicom-web/studies/{study}/instances")
        self.assertEqual(
            sorted(item["00080018"]["Value"][0] for item in found),
            sorted(str(ds.SOPInstanceUID) for ds in datasets.values()),
        )

    async def test_a_large_instance_streams_through_and_the_pool_is_reused(self) -> None:
        orthanc = await peers.start_orthanc(self)
        backend = self.store_backend(orthanc.aet, orthanc.dicom_port, size=2)
        # 8 MB of pixel data: many PDUs and several pauses of the TCP send buffer.
        big = get_instance(0, 0, rows=2048, columns=2048)
        small = [get_instance(1, i) for i in range(6)]
        outcomes = await self.store_all(backend, [uploaded(self, ds) for ds in [big, *small]])
        self.assertEqual([o.status for o in outcomes], [0] * 7)
        got = await self.orthanc_dataset(orthanc, str(big.SOPInstanceUID))
        assert_same_dataset(self, got, big, "big")
        # Seven instances over at most two associations, which went back to the pool.
        self.assertLessEqual(backend.pool.stats()["idle"], 2)
        self.assertEqual(backend.pool.stats()["busy"], 0)


# -- DCMTK storescp that takes Implicit VR LE only -----------------------------------------------


class StorescpStoreTests(StoreTestCase):
    async def test_instances_are_converted_to_implicit_vr(self) -> None:
        # --fork: storescp serves one association at a time otherwise, and ours stay open in the pool.
        scp = await peers.start_storescp(self, "STORESCP", ("+xi", "--fork"))
        backend = self.store_backend(scp.aet, scp.port)
        explicit = fresh_test_file(TEST_FILES["explicit"])
        jpeg = fresh_test_file(TEST_FILES["jpeg"])
        rle = fresh_test_file(TEST_FILES["rle"])
        outcomes = await self.store_all(backend, [uploaded(self, ds) for ds in (explicit, jpeg, rle)])
        self.assertEqual([o.status for o in outcomes], [0, 0, 0], [o.reason for o in outcomes])
        assert scp.output_dir is not None
        files = {}
        for name in os.listdir(scp.output_dir):
            ds = dcmread(os.path.join(scp.output_dir, name))
            files[str(ds.SOPInstanceUID)] = ds
        self.assertEqual(set(files), {str(ds.SOPInstanceUID) for ds in (explicit, jpeg, rle)})
        for ds in files.values():
            self.assertEqual(ds.file_meta.TransferSyntaxUID, IMPLICIT_VR_LE)
        # Re-encoded, every element kept.
        assert_same_dataset(self, files[str(explicit.SOPInstanceUID)], explicit, "explicit")
        # Decompressed: the pixels are what pydicom decodes from the original.
        for label, ds in (("jpeg", jpeg), ("rle", rle)):
            got = files[str(ds.SOPInstanceUID)]
            self.assertEqual(got.pixel_array.tolist(), ds.pixel_array.tolist(), label)
            self.assertEqual(got.PatientName, ds.PatientName, label)

    async def test_a_sop_class_storescp_does_not_know_fails_fast(self) -> None:
        scp = await peers.start_storescp(self, "STORESCP", ("--fork",))
        backend = self.store_backend(scp.aet, scp.port)
        private = fresh_test_file(TEST_FILES["explicit"])
        private.SOPClassUID = private.file_meta.MediaStorageSOPClassUID = "1.2.826.0.1.3680043.9999.1"
        known = fresh_test_file(TEST_FILES["explicit"])
        outcomes = await self.store_all(backend, [uploaded(self, private), uploaded(self, known)])
        self.assertEqual(
            [o.status for o in outcomes],
            [model.FAILURE_SOP_CLASS_NOT_SUPPORTED, 0],
            [o.reason for o in outcomes],
        )
        assert scp.output_dir is not None
        self.assertEqual(len(os.listdir(scp.output_dir)), 1)


# -- the pynetdicom PACS -----------------------------------------------------------------------


SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MPEG2_MAIN_PROFILE = "1.2.840.10008.1.2.4.100"


class PynetdicomStoreTests(StoreTestCase):
    """The pynetdicom PACS's store profile: statuses, refusals, conversion, aborts, stalls."""

    async def test_each_instance_gets_the_pacs_status(self) -> None:
        ok, out_of_resources, cannot_understand, coerced = (get_instance(0, i) for i in range(4))
        statuses = {
            str(out_of_resources.SOPInstanceUID): 0xA700,
            str(cannot_understand.SOPInstanceUID): 0xC000,
            str(coerced.SOPInstanceUID): 0xB000,
        }
        scp = await peers.start_pynetdicom_scp(
            self, "store", aet="PYSTORE", statuses=statuses, unsupported=[SECONDARY_CAPTURE]
        )
        backend = self.store_backend(scp.aet, scp.port)
        unsupported = fresh_test_file("SC_rgb_jpeg_dcmtk.dcm")  # Secondary Capture, which this PACS refuses
        # The same SOP class decompressed to Explicit VR LE, so it goes on a pooled association,
        # where the PACS refused the SOP class's context.
        unsupported_explicit = fresh_test_file("SC_rgb_jpeg_dcmtk.dcm")
        unsupported_explicit.decompress(generate_instance_uid=False)
        datasets = [ok, out_of_resources, cannot_understand, coerced, unsupported, unsupported_explicit]
        outcomes = await self.store_all(backend, [uploaded(self, ds) for ds in datasets])
        self.assertEqual(
            [(o.sop_instance_uid, o.status) for o in outcomes],
            [
                (str(ok.SOPInstanceUID), model.SUCCESS),
                (str(out_of_resources.SOPInstanceUID), 0xA700),
                (str(cannot_understand.SOPInstanceUID), 0xC000),
                (str(coerced.SOPInstanceUID), model.WARNING_COERCION),
                (str(unsupported.SOPInstanceUID), model.FAILURE_SOP_CLASS_NOT_SUPPORTED),
                (str(unsupported_explicit.SOPInstanceUID), model.FAILURE_SOP_CLASS_NOT_SUPPORTED),
            ],
        )
        self.assertEqual([o.stored for o in outcomes], [True, False, False, True, False, False])
        self.assertIn("0xA700", outcomes[1].reason)
        # What the PACS says it did agrees: the refused SOP class never reached it.
        seen = self.stored_events(scp)
        self.assertEqual(
            {sop: e["status"] for sop, e in seen.items()},
            {str(ds.SOPInstanceUID): statuses.get(str(ds.SOPInstanceUID), 0) for ds in datasets[:4]},
        )
        assert_same_dataset(self, self.received(scp, str(ok.SOPInstanceUID)), ok, "ok")
        await self.no_leaked_associations(scp, backend)

    async def test_implicit_only_pacs_gets_converted_instances(self) -> None:
        scp = await peers.start_pynetdicom_scp(
            self, "store", aet="PYIMPL", transfer_syntaxes=[IMPLICIT_VR_LE]
        )
        backend = self.store_backend(scp.aet, scp.port)
        ct = get_instance(0, 0)
        jpeg = fresh_test_file(TEST_FILES["jpeg"])
        jpeg2000 = fresh_test_file(TEST_FILES["jpeg2000"])
        # Labelled MPEG-2 video, a syntax pydicom has no decoder for (whatever codecs are installed).
        lossless = fresh_test_file(TEST_FILES["jpeg"])
        lossless.file_meta.TransferSyntaxUID = MPEG2_MAIN_PROFILE
        big_endian = fresh_test_file("MR_small_bigendian.dcm")  # Explicit VR Big Endian: re-encoded
        sent = (ct, jpeg, jpeg2000, lossless, big_endian)
        outcomes = await self.store_all(backend, [uploaded(self, ds) for ds in sent])
        self.assertEqual(
            [o.status for o in outcomes],
            [0, 0, 0, model.FAILURE_TRANSFER_SYNTAX_NOT_SUPPORTED, 0],
            [o.reason for o in outcomes],
        )
        self.assertIn(MPEG2_MAIN_PROFILE, outcomes[3].reason)
        seen = self.stored_events(scp)
        self.assertEqual(set(seen), {str(ds.SOPInstanceUID) for ds in (ct, jpeg, jpeg2000, big_endian)})
        self.assertEqual({e["transfer_syntax"] for e in seen.values()}, {IMPLICIT_VR_LE})
        assert_same_dataset(self, self.received(scp, str(ct.SOPInstanceUID)), ct, "ct")
        got = self.received(scp, str(big_endian.SOPInstanceUID))
        self.assertEqual(got.PatientName, big_endian.PatientName)
        self.assertEqual(got.ImagePositionPatient, big_endian.ImagePositionPatient)
        for label, ds in (("jpeg", jpeg), ("jpeg2000", jpeg2000), ("big endian", big_endian)):
            got = self.received(scp, str(ds.SOPInstanceUID))
            self.assertEqual(got.pixel_array.tolist(), ds.pixel_array.tolist(), label)
        await self.no_leaked_associations(scp, backend)

    async def test_abort_in_the_middle_of_an_instance_fails_only_that_one(self) -> None:
        scp = await peers.start_pynetdicom_scp(self, "store", aet="PYABORT", abort_after_bytes=500_000)
        backend = self.store_backend(scp.aet, scp.port, size=1)
        big = get_instance(0, 0, rows=1024, columns=1024)  # 2 MB of pixel data
        before, after = get_instance(1, 0), get_instance(1, 1)
        outcomes = []
        for ds in (before, big, after):
            outcomes.append(await backend.store_instance(uploaded(self, ds)))
        self.assertEqual([o.status for o in outcomes], [0, model.FAILURE_PROCESSING, 0])
        self.assertIn("abort", outcomes[1].reason)
        self.assertEqual(len(scp.events("abort_sent")), 1)
        self.assertEqual(
            set(self.stored_events(scp)), {str(before.SOPInstanceUID), str(after.SOPInstanceUID)}
        )
        await self.no_leaked_associations(scp, backend)

    async def test_a_pacs_taking_one_association_at_a_time_gets_every_instance(self) -> None:
        # It rejects a second association ("local limit exceeded", transient): the pool
        # waits for the one it holds instead of failing those instances.
        scp = await peers.start_pynetdicom_scp(self, "store", aet="PYONE", max_associations=1)
        backend = self.store_backend(scp.aet, scp.port, size=4)
        cts = [get_instance(0, i) for i in range(8)]
        outcomes = await self.store_all(backend, [uploaded(self, ds) for ds in cts])
        self.assertEqual([o.status for o in outcomes], [0] * 8, [o.reason for o in outcomes])
        self.assertEqual(set(self.stored_events(scp)), {str(ds.SOPInstanceUID) for ds in cts})

    async def test_associations_for_other_contexts_share_the_pool_size(self) -> None:
        scp = await peers.start_pynetdicom_scp(
            self, "store", aet="PYMIX", transfer_syntaxes=[EXPLICIT_VR_LE, IMPLICIT_VR_LE, JPEG_BASELINE]
        )
        backend = self.store_backend(scp.aet, scp.port, size=1)
        pool: Any = backend.pool
        # How many associations exist (open, opening, being released) each time one is opened.
        counts: list[int] = []
        opener = pool._open

        async def counting_open(key: Any = None) -> Any:
            counts.append(pool._count() + 1)
            return await opener(key)

        pool._open = counting_open
        jpegs = [fresh_test_file(TEST_FILES["jpeg"]) for _ in range(3)]
        cts = [get_instance(0, i) for i in range(3)]
        mixed = [ds for pair in zip(jpegs, cts, strict=True) for ds in pair]
        outcomes = await self.store_all(backend, [uploaded(self, ds) for ds in mixed])
        self.assertEqual([o.status for o in outcomes], [0] * 6, [o.reason for o in outcomes])
        seen = self.stored_events(scp)
        self.assertEqual(
            [seen[str(ds.SOPInstanceUID)]["transfer_syntax"] for ds in mixed],
            [JPEG_BASELINE, EXPLICIT_VR_LE] * 3,
        )
        # Each kind's association was released (confirmed by the PACS) before the other's was
        # opened: never more than one, and one per change of kind.
        self.assertEqual(counts, [1] * 6)
        self.assertEqual(len(await self.peer_event(scp, "released", 5)), 5)
        await self.no_leaked_associations(scp, backend)

    async def test_a_pacs_that_never_answers_times_out_that_instance(self) -> None:
        stalled, fine = get_instance(0, 0), get_instance(0, 1)
        scp = await peers.start_pynetdicom_scp(
            self, "store", aet="PYSTALL", stall=[str(stalled.SOPInstanceUID)]
        )
        backend = self.store_backend(scp.aet, scp.port, stow_timeout_ms=1000)
        outcomes = await self.store_all(backend, [uploaded(self, stalled), uploaded(self, fine)])
        self.assertEqual([o.status for o in outcomes], [model.FAILURE_PROCESSING, 0])
        self.assertIn("no progress on C-STORE", outcomes[0].reason)
        await self.peer_event(scp, "stall_ended")
        self.assertEqual(set(self.stored_events(scp)), {str(fine.SOPInstanceUID)})
        # The stalled association was aborted, not returned to the pool; the next store works.
        again = await backend.store_instance(uploaded(self, get_instance(0, 2)))
        self.assertEqual(again.status, 0)
        await self.no_leaked_associations(scp, backend)

    async def test_unreachable_pacs_is_service_unavailable(self) -> None:
        port = peers.free_port()
        backend = self.store_backend("NOBODY", port, pool_timeout_ms=2000)
        with self.assertRaises(ServiceUnavailable):
            await backend.store_instance(uploaded(self, get_instance(0, 0)))


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
        from dicomrst.backends.dimse import POOL_CONTEXTS

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


# -- through the gateway's STOW-RS routes (twistd, real HTTP) ----------------------------------

HTTP_BOUNDARY = b"h4-stow-boundary"
HTTP_CONTENT_TYPE = b'multipart/related; type="application/dicom"; boundary=' + HTTP_BOUNDARY
DICOM_PART = [("Content-Type", "application/dicom")]


def stow_body(datasets: list[Dataset]) -> bytes:
    return multipart_body([(DICOM_PART, part10(ds)) for ds in datasets], HTTP_BOUNDARY)


def us_value(value: int) -> dict[str, Any]:
    return {"vr": "US", "Value": [value]}


class GatewayStowTests(StoreTestCase):
    """The same PACS behaviours as seen by a STOW-RS client of ``twistd dicomrst``."""

    async def gateway_for(self, scp: peers.Peer, **pool: Any) -> Gateway:
        aet = {"aet": scp.aet, "host": scp.host, "port": scp.port, "pool": {"timeout": 3000, **pool}}
        aet["stow-rs"] = {"timeout": 5000}
        return await start_gateway(self, [aet], http={"max-upload-size": 50_000_000})

    async def post(self, gateway: Gateway, aet: str, datasets: list[Dataset]) -> Response:
        return await gateway.request(
            "POST",
            f"/aets/{aet}/studies",
            data=stow_body(datasets),
            headers={"Content-Type": HTTP_CONTENT_TYPE, "Accept": "application/dicom+json"},
            timeout=60,
        )

    def failures(self, body: dict[str, Any]) -> dict[str, int]:
        return {
            item["00081155"]["Value"][0]: item["00081197"]["Value"][0]
            for item in body.get("00081198", {}).get("Value", [])
        }

    def referenced(self, body: dict[str, Any]) -> dict[str, int | None]:
        return {
            item["00081155"]["Value"][0]: item.get("00081196", {}).get("Value", [None])[0]
            for item in body.get("00081199", {}).get("Value", [])
        }

    async def pacs_closed_everything(self, scp: peers.Peer) -> None:
        await self.until(
            lambda: len(scp.events("conn_open")) == len(scp.events("conn_close")),
            "every association the PACS saw is closed",
        )

    async def test_http_statuses_follow_the_pacs(self) -> None:
        ok, full, coerced = (get_instance(0, i) for i in range(3))
        statuses = {str(full.SOPInstanceUID): 0xA700, str(coerced.SOPInstanceUID): 0xB000}
        scp = await peers.start_pynetdicom_scp(
            self, "store", aet="PYHTTP", statuses=statuses, unsupported=[SECONDARY_CAPTURE]
        )
        gateway = await self.gateway_for(scp)
        refused = fresh_test_file(TEST_FILES["jpeg"])  # Secondary Capture, which this PACS does not take
        response = await self.post(gateway, scp.aet, [ok, full, coerced, refused])
        self.assertEqual(response.code, 202, response.body)
        body = response.json()
        self.assertEqual(
            self.failures(body),
            {
                str(full.SOPInstanceUID): 0xA700,
                str(refused.SOPInstanceUID): model.FAILURE_SOP_CLASS_NOT_SUPPORTED,
            },
        )
        self.assertEqual(
            self.referenced(body), {str(ok.SOPInstanceUID): None, str(coerced.SOPInstanceUID): 0xB000}
        )
        # Reported stored = stored by the PACS (with a success or warning status).
        seen = self.stored_events(scp)
        self.assertEqual(
            {sop for sop, e in seen.items() if e["status"] in (0, 0xB000)}, set(self.referenced(body))
        )
        # The gateway and its pool still serve.
        response = await self.post(gateway, scp.aet, [get_instance(1, 0)])
        self.assertEqual(response.code, 200, response.body)
        await stop_gateway(self, gateway)
        await self.pacs_closed_everything(scp)

    async def test_all_failed_is_409(self) -> None:
        datasets = [get_instance(0, i) for i in range(3)]
        statuses = {str(ds.SOPInstanceUID): 0xC000 for ds in datasets}
        scp = await peers.start_pynetdicom_scp(self, "store", aet="PY409", statuses=statuses)
        gateway = await self.gateway_for(scp)
        response = await self.post(gateway, scp.aet, datasets)
        self.assertEqual(response.code, 409, response.body)
        self.assertEqual(self.failures(response.json()), statuses)
        self.assertNotIn("00081199", response.json())
        await stop_gateway(self, gateway)
        await self.pacs_closed_everything(scp)

    async def test_abort_mid_upload_then_the_next_request_works(self) -> None:
        scp = await peers.start_pynetdicom_scp(self, "store", aet="PYHABORT", abort_after_bytes=500_000)
        gateway = await self.gateway_for(scp, size=2)
        big = get_instance(0, 0, rows=1024, columns=1024)
        small = [get_instance(1, i) for i in range(3)]
        response = await self.post(gateway, scp.aet, [small[0], big, small[1]])
        self.assertEqual(response.code, 202, response.body)
        body = response.json()
        self.assertEqual(self.failures(body), {str(big.SOPInstanceUID): model.FAILURE_PROCESSING})
        self.assertEqual(
            set(self.referenced(body)), {str(small[0].SOPInstanceUID), str(small[1].SOPInstanceUID)}
        )
        self.assertNotIn(str(big.SOPInstanceUID), self.stored_events(scp))
        response = await self.post(gateway, scp.aet, [small[2]])
        self.assertEqual(response.code, 200, response.body)
        await stop_gateway(self, gateway)
        await self.pacs_closed_everything(scp)

    async def test_no_pacs_is_503(self) -> None:
        port = peers.free_port()
        gateway = await start_gateway(
            self, [{"aet": "NOBODY", "host": peers.LOCALHOST, "port": port, "pool": {"timeout": 2000}}]
        )
        response = await self.post(gateway, "NOBODY", [get_instance(0, 0), get_instance(0, 1)])
        self.assertEqual(response.code, 503, response.body)


class DicomwebClientStowTests(OrthancStored, StoreTestCase):
    async def test_dicomweb_client_store_instances(self) -> None:
        orthanc = await peers.start_orthanc(self)
        gateway = await start_gateway(self, [pacs_aet(orthanc.aet, orthanc.host, orthanc.dicom_port)])
        study = generate_uid()
        datasets = [fresh_test_file(name, study) for name in TEST_FILES.values()]

        def store() -> Dataset:
            client = DICOMwebClient(url=f"{gateway.url}/aets/{orthanc.aet}")
            return client.store_instances(datasets)

        result = await deferToThread(store)
        referenced = [str(item.ReferencedSOPInstanceUID) for item in result.ReferencedSOPSequence]
        self.assertEqual(referenced, [str(ds.SOPInstanceUID) for ds in datasets])
        self.assertNotIn("FailedSOPSequence", result)
        for ds in datasets:
            got = await self.orthanc_dataset(orthanc, str(ds.SOPInstanceUID))
            assert_same_dataset(self, got, ds, str(ds.SOPInstanceUID))


# -- the pool's associations for other contexts ------------------------------------------------

OTHER_REQUEST = AssociationRequest(
    pool_fixtures.CALLING,
    pool_fixtures.CALLED,
    (
        ContextProposal(CT_IMAGE_STORAGE, (JPEG_BASELINE,)),
        ContextProposal(CT_IMAGE_STORAGE, (EXPLICIT_VR_LE, IMPLICIT_VR_LE)),
    ),
)


class KeyedPoolTests(pool_fixtures.PoolTestCase):
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
