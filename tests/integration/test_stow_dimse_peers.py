"""STOW-RS's DIMSE side: DimseBackend.store_instance (C-STORE SCU) against real peers.

Orthanc is the well-behaved PACS: what it stored is read back over its REST API and compared,
element by element, with what was sent. DCMTK's storescp takes only Implicit VR LE, so the
gateway must convert. The pynetdicom PACS of tests/support/pacs/ (its store-* profiles)
rejects a SOP class, answers failure or warning statuses, or aborts in the middle of an
instance; its event log says what it really stored, which the outcomes must not overstate.

The C-STORE SCU on an in-memory association, the conversions and the pool's associations for
other contexts are tested in tests/unit/test_stow_dimse.py.
"""

from __future__ import annotations

import os
from typing import Any

from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.threads import deferToThread

from dicomrst.backends import values as model
from dicomrst.backends.pacs import DimseBackend
from dicomrst.backends.values import StoreOutcome, UploadedInstance
from dicomrst.config import parse_config
from dicomrst.errors import ServiceUnavailable
from tests.support import peers
from tests.support.datasets import assert_same_dataset, part10
from tests.support.dimse_backend import CALLING, FindTestCase, global_reactor
from tests.support.gateway import Gateway, Response, pacs_aet, start_gateway, stop_gateway
from tests.support.pacs.datasets import get_instance
from tests.support.stow import TEST_FILES, OrthancStored, fresh_test_file, multipart_body, uploaded

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
