"""WADO-RS over C-MOVE, end to end: the gateway as a process, real peers.

The gateway runs as ``twistd dicomrst`` with ``wado-rs.retrieve: move`` and its own STORE-SCP
listener (``server.dimse[0]``, AE title `LISTENER_AET`) as the only receiver. The C-MOVE sources
are Orthanc, which must know that listener as a modality (so its port is chosen before Orthanc
starts), and the pynetdicom PACS of tests/support/pacs/ (its move-* profiles, which send the
instances `pacs.datasets.get_instance` builds to the destination their `destinations` option
names, and log from their side what the sub-operations got back).

The Orthanc tests that test_wado_pacs.py (instances) and test_wado_metadata.py (metadata) run
over C-GET run here again over C-MOVE: their mixins (`tests.support.wado.OrthancRetrieveTests`,
`tests.support.metadata.OrthancMetadataTests`) get a `start` that configures C-MOVE. Every part
of every response is parsed as a Part-10 object and compared, element by element and pixel data
included, with the original.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.client import ResponseFailed

from dicomrst.wado.metadata import instance_metadata_json
from tests.support import metadata, peers, wado
from tests.support.datasets import EXPLICIT_VR_LE, IMPLICIT_VR_LE, assert_same_dataset, part10
from tests.support.gateway import LISTENER_AET, OUR_AET, Gateway, eventually, start_gateway
from tests.support.pacs.datasets import (
    CT_IMAGE_STORAGE,
    get_instance,
    get_series_uid,
    get_sop_uid,
    get_study_uid,
)
from tests.support.wado import (
    ANY_SYNTAX,
    Part,
    RawClient,
    Stored,
    fresh,
    generated,
    instance_path,
    parse_http,
    parse_multipart,
    read_partial,
    read_then_leave,
    upload_all,
)
from tests.support.wado_move import (
    MOVE_PACS_AET,
    ORTHANC_AET,
    move_aet,
    start_move_gateway,
    start_orthanc_for_move,
)

RLE_LOSSLESS = "1.2.840.10008.1.2.5"
JPEG_2000 = "1.2.840.10008.1.2.4.91"


def expect_generated(series: Sequence[int], instances: int) -> list[tuple[str, str, str]]:
    return [(get_study_uid(), get_series_uid(s), get_sop_uid(s, i)) for s in series for i in range(instances)]


def sop_of_part(part: Part) -> str:
    return part.location.rsplit("/", 1)[-1]


# -- Orthanc -----------------------------------------------------------------------------------


class OrthancMoveTests(wado.OrthancRetrieveTests, wado.RetrieveTestCase):
    """The Orthanc tests of test_wado_pacs.py (levels, transfer-syntax=*, errors,
    dicomweb-client), over C-MOVE; plus compressed pass-through and concurrency."""

    async def start(self) -> tuple[peers.Orthanc, Gateway, dict[str, list[Stored]]]:
        orthanc, listener_port = await start_orthanc_for_move(self)
        data = wado.orthanc_data()
        await upload_all(self, orthanc, data)
        gw = await start_move_gateway(self, orthanc, listener_port)
        return orthanc, gw, data

    async def test_compressed_pass_through(self) -> None:
        """With `uncompressed: false`, `transfer-syntax=*` gives a compressed original in its
        stored syntax, byte for byte; the default (Explicit VR LE) gives RLE and JPEG 2000 decompressed."""
        orthanc, listener_port = await start_orthanc_for_move(self)
        rle = fresh(dcmread(get_testdata_file("MR_small_RLE.dcm")), "rle")
        j2k = fresh(dcmread(get_testdata_file("JPEG2000.dcm")), "j2k")
        self.assertEqual((rle.stored_ts, j2k.stored_ts), (RLE_LOSSLESS, JPEG_2000))
        ct = fresh(dcmread(get_testdata_file("CT_small.dcm")), "ct")
        await upload_all(self, orthanc, {"all": [rle, j2k, ct]})
        gw = await start_move_gateway(self, orthanc, listener_port, uncompressed=False)

        for item in (rle, j2k, ct):
            response = await gw.get(instance_path(ORTHANC_AET, item.study), headers={"Accept": ANY_SYNTAX})
            self.assertEqual(response.code, 200, f"{item.label}: {response.body[:300]!r}\n{gw.log_tail()}")
            body = parse_multipart(response.header("Content-Type"), response.body)
            self.assertTrue(body.closed)
            self.assertEqual([sop_of_part(p) for p in body.parts], [item.sop])
            part = body.parts[0]
            self.assertEqual(
                part.headers.get("Content-Type"), f"application/dicom; transfer-syntax={item.stored_ts}"
            )
            ds = part.dataset()
            self.assertEqual(ds.file_meta.TransferSyntaxUID, item.stored_ts, item.label)
            assert_same_dataset(self, ds, item.dataset(), item.label)

        # RLE Lossless is decoded by pydicom alone: an Explicit VR LE request decompresses it.
        response = await gw.get(instance_path(ORTHANC_AET, rle.study))
        parts = self.assert_multipart(gw, response, ORTHANC_AET, self.expect([rle]))
        got, original = parts[0].dataset(), rle.dataset()
        self.assertEqual(got.PixelData, original.pixel_array.tobytes())
        for ds in (got, original):
            del ds.PixelData
        assert_same_dataset(self, got, original, "rle decompressed")

        # JPEG 2000 too: the plain install brings its decoder (and here, Pillow's would do).
        response = await gw.get(instance_path(ORTHANC_AET, j2k.study))
        parts = self.assert_multipart(gw, response, ORTHANC_AET, self.expect([j2k]))
        self.assertEqual(parts[0].dataset().PixelData, j2k.dataset().pixel_array.tobytes())

    async def test_eight_concurrent_series(self) -> None:
        await self.eight_concurrent_series("concurrent")

    async def test_eight_series_sequential_mode(self) -> None:
        await self.eight_concurrent_series("sequential")

    async def eight_concurrent_series(self, mode: str) -> None:
        """Eight series of one study retrieved at once: each response has exactly its own."""
        orthanc, listener_port = await start_orthanc_for_move(self)
        study = generate_uid()
        items: list[Stored] = []
        for s in range(8):
            series = generate_uid()
            for i in range(3):
                items.append(fresh(get_instance(s, i, 64, 64), f"gen{s}.{i}", study, series))
        await upload_all(self, orthanc, {"items": items})
        gw = await start_move_gateway(self, orthanc, listener_port, mode=mode)
        by_series: dict[str, list[Stored]] = {}
        for item in items:
            by_series.setdefault(item.series, []).append(item)

        responses = await gatherResults(
            [
                Deferred.fromCoroutine(gw.get(instance_path(ORTHANC_AET, study, series), timeout=60))
                for series in by_series
            ]
        )
        for series, response in zip(by_series, responses, strict=True):
            group = by_series[series]
            parts = self.assert_multipart(gw, response, ORTHANC_AET, self.expect(group))
            self.assert_originals(parts, group)


class MoveMetadataTests(metadata.OrthancMetadataTests, TestCase):
    """The tests of test_wado_metadata.py over C-MOVE: metadata equals Orthanc's own
    `/metadata` apart from bulk data; media types, errors, dicomweb-client."""

    async def start(self) -> tuple[peers.Orthanc, Gateway, dict[str, list[Stored]]]:
        orthanc, listener_port = await start_orthanc_for_move(self)
        data = metadata.metadata_data()
        await upload_all(self, orthanc, data)
        gw = await start_move_gateway(self, orthanc, listener_port)
        return orthanc, gw, data

    async def test_implicit_vr_like_its_explicit_twin(self) -> None:
        """Sub-operations in Implicit VR LE (the move-implicit PACS proposes nothing else) give
        exactly the metadata of their Explicit VR LE twins."""
        listener_port = peers.free_port()
        scp = await peers.start_pynetdicom_scp(
            self,
            "move-implicit",
            aet=MOVE_PACS_AET,
            series=2,
            instances=2,
            destinations={LISTENER_AET: [peers.LOCALHOST, listener_port]},
        )
        gw = await start_gateway(
            self, [move_aet(MOVE_PACS_AET, scp.host, scp.port)], dimse_port=listener_port
        )
        items = generated(series=2, instances=2)
        response = await gw.get(instance_path(MOVE_PACS_AET, get_study_uid()) + "/metadata")
        objects = self.assert_objects(gw, response, items, aet=MOVE_PACS_AET)
        accepted = scp.events("sub_accepted")[0]["accepted_contexts"]
        self.assertEqual([cx["transfer_syntax"] for cx in accepted], [IMPLICIT_VR_LE])
        for obj in objects:
            item = next(item for item in items if item.sop == metadata.sop_of(obj))
            base = metadata.bulk_base(gw, item, MOVE_PACS_AET)
            twin = instance_metadata_json(metadata.encoded(item.dataset()), EXPLICIT_VR_LE, base)
            self.assertEqual(obj, json.loads(twin), item.label)
        self.assertEqual([e["status"] for e in scp.events("store_rsp")], [0] * 4)
        self.assert_clean_log(gw)


# -- the pynetdicom PACS -----------------------------------------------------------------------


class PacsMoveTests(wado.RetrieveTestCase):
    """The pynetdicom PACS of tests/support/pacs/: the move-* profiles."""

    async def start(
        self,
        profile: str,
        wado_timeout_ms: int = 20_000,
        pool_size: int | None = None,
        mode: str = "concurrent",
        senders: list[dict[str, str]] | None = None,
        **options: Any,
    ) -> tuple[peers.Peer, Gateway]:
        listener_port = peers.free_port()
        options.setdefault("destinations", {LISTENER_AET: [peers.LOCALHOST, listener_port]})
        scp = await peers.start_pynetdicom_scp(self, profile, aet=MOVE_PACS_AET, **options)
        gw = await start_gateway(
            self,
            [move_aet(MOVE_PACS_AET, scp.host, scp.port, wado_timeout_ms, pool_size, mode, senders)],
            dimse_port=listener_port,
        )
        return scp, gw

    def assert_generated(self, parts: list[Part], rows: int = 16, columns: int = 16) -> None:
        for part in parts:
            ds = part.dataset()
            s, i = (int(n) - 1 for n in ds.SOPInstanceUID.rsplit(".", 2)[-2:])
            assert_same_dataset(self, ds, get_instance(s, i, rows, columns), ds.SOPInstanceUID)

    async def until(self, check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
        self.assertTrue(await eventually(check, timeout), f"not within {timeout} s: {what}")

    async def retrieve_all(
        self, gw: Gateway, series: Sequence[int], instances: int, rows: int = 16, columns: int = 16
    ) -> list[Part]:
        response = await gw.get(instance_path(MOVE_PACS_AET, get_study_uid()))
        parts = self.assert_multipart(gw, response, MOVE_PACS_AET, expect_generated(series, instances))
        self.assert_generated(parts, rows, columns)
        return parts

    async def assert_cut_off(self, gw: Gateway, path: str, parts: int) -> list[Part]:
        """A 200 whose body ends after `parts` parts without its close delimiter."""
        partial = await read_partial(gw, path)
        self.assertEqual(partial.code, 200, f"{partial.body[:300]!r}\n{gw.log_tail()}")
        self.assertIsInstance(partial.error, ResponseFailed, f"{partial.error!r}\n{gw.log_tail()}")
        body = parse_multipart(partial.content_type, partial.body)
        self.assertFalse(body.closed)
        self.assertEqual(len(body.parts), parts, gw.log_tail())
        self.assert_generated(body.parts)
        return body.parts

    async def assert_sub_associations_closed(self, scp: peers.Peer) -> None:
        """Every sub-operation association the PACS opened to our listener has ended."""
        await self.until(
            lambda: len(scp.events("sub_close")) == len(scp.events("sub_open")) > 0,
            f"the sub-operation associations to close: {scp.events('sub_open')} {scp.events('sub_close')}",
        )

    async def test_move_levels(self) -> None:
        scp, gw = await self.start("move", series=2, instances=3)
        study = get_study_uid()
        await self.retrieve_all(gw, [0, 1], 3)
        response = await gw.get(instance_path(MOVE_PACS_AET, study, get_series_uid(1)))
        self.assert_generated(self.assert_multipart(gw, response, MOVE_PACS_AET, expect_generated([1], 3)))
        response = await gw.get(instance_path(MOVE_PACS_AET, study, get_series_uid(0), get_sop_uid(0, 2)))
        expected = [(study, get_series_uid(0), get_sop_uid(0, 2))]
        self.assert_generated(self.assert_multipart(gw, response, MOVE_PACS_AET, expected))

        moves = scp.events("c_move")
        self.assertEqual(
            [(e["level"], e["study"], e["series"], e["sop"], e["destination"], e["matches"]) for e in moves],
            [
                ("STUDY", study, "", "", LISTENER_AET, 6),
                ("SERIES", study, get_series_uid(1), "", LISTENER_AET, 3),
                ("IMAGE", study, get_series_uid(0), get_sop_uid(0, 2), LISTENER_AET, 1),
            ],
        )
        # The C-MOVEs went on one pooled association, as our AE title.
        self.assertEqual(len({e["assoc"] for e in moves}), 1)
        self.assertEqual({e["calling_aet"] for e in scp.events("requested")}, {OUR_AET})
        # Each sub-operation named its C-MOVE and was answered Success after it arrived.
        message_ids = [e["message_id"] for e in moves]
        stores = scp.events("store_rq")
        self.assertEqual(len(stores), 10)
        self.assertEqual({e["originator_aet"] for e in stores}, {OUR_AET})
        self.assertTrue({e["originator_id"] for e in stores} <= set(message_ids))
        self.assertEqual([e["status"] for e in scp.events("store_rsp")], [0] * 10)
        for e in scp.events("sub_requested"):
            self.assertEqual(e["called_aet"], LISTENER_AET)
        accepted = scp.events("sub_accepted")[0]["accepted_contexts"]
        self.assertEqual(
            [(cx["abstract_syntax"], cx["transfer_syntax"]) for cx in accepted],
            [(CT_IMAGE_STORAGE, EXPLICIT_VR_LE)],
        )
        self.assertEqual([e["status"] for e in scp.events("move_rsp") if e["status"] != 0xFF00], [0, 0, 0])
        await self.assert_sub_associations_closed(scp)

    async def test_no_move_originator(self) -> None:
        """Sub-operations without Move Originator AE Title / Message ID are matched by UIDs."""
        scp, gw = await self.start("move-no-originator", series=2, instances=3)
        await self.retrieve_all(gw, [0, 1], 3)
        response = await gw.get(instance_path(MOVE_PACS_AET, get_study_uid(), get_series_uid(0)))
        self.assert_generated(self.assert_multipart(gw, response, MOVE_PACS_AET, expect_generated([0], 3)))
        stores = scp.events("store_rq")
        self.assertEqual(len(stores), 9)
        self.assertEqual({(e["originator_aet"], e["originator_id"]) for e in stores}, {(None, None)})
        self.assertEqual([e["status"] for e in scp.events("store_rsp")], [0] * 9)

    async def test_other_calling_aet(self) -> None:
        """The sub-operations come from another calling AE title than the PACS's own, which
        ``wado-rs.senders`` names; without it they are refused."""
        scp, gw = await self.start("move-other-aet", calling_aet="PYSTORE", series=1, instances=3)
        response = await gw.get(instance_path(MOVE_PACS_AET, get_study_uid()))
        self.assertEqual(response.code, 502, f"{response.body!r}\n{gw.log_tail()}")
        self.assertTrue(gw.log_lines(r"refused C-STORE .* from PYSTORE at 127\.0\.0\.1:\d+ "), gw.log_tail())
        self.assertEqual({e["status"] for e in scp.events("store_rsp")}, {0x0124})
        scp, gw = await self.start(
            "move-other-aet", calling_aet="PYSTORE", series=1, instances=3, senders=[{"aet": "PYSTORE"}]
        )
        await self.retrieve_all(gw, [0], 3)
        self.assertEqual({e["calling_aet"] for e in scp.events("sub_requested")}, {"PYSTORE"})
        self.assertEqual([e["status"] for e in scp.events("store_rsp")], [0] * 3)

    async def test_implicit_sub_operations(self) -> None:
        """The PACS proposes only Implicit VR LE: the parts go out in Explicit VR LE."""
        scp, gw = await self.start("move-implicit", series=1, instances=3, rows=64, columns=48)
        await self.retrieve_all(gw, [0], 3, 64, 48)
        accepted = scp.events("sub_accepted")[0]["accepted_contexts"]
        self.assertEqual([cx["transfer_syntax"] for cx in accepted], [IMPLICIT_VR_LE])
        self.assertEqual([e["status"] for e in scp.events("store_rsp")], [0, 0, 0])

    async def test_warning(self) -> None:
        """One sub-operation fails (B000, one failed): the good instances, a clean end."""
        scp, gw = await self.start("move-warning", instances=3)
        await self.retrieve_all(gw, [0], 3)
        await self.until(lambda: bool(scp.events("move_done")), "the C-MOVE's end")
        final = scp.events("move_rsp")[-1]
        self.assertEqual((final["status"], final["failed"], final["completed"]), (0xB000, 1, 3), final)
        self.assertEqual(len(scp.events("store_unsendable")), 1)

    async def test_fail_before_any_instance(self) -> None:
        """A702 or C000 before the first instance is a 502; the next request works."""
        for status in (0xA702, 0xC000):
            scp, gw = await self.start("move-fail", instances=3, ok_before=0, status=status)
            response = await gw.get(instance_path(MOVE_PACS_AET, get_study_uid()))
            self.assertEqual(response.code, 502, f"{response.body!r}\n{gw.log_tail()}")
            self.assertIn(f"{status:04X}", response.json()["error"])
            self.assertEqual([e["status"] for e in scp.events("move_rsp")], [status])
            await self.retrieve_all(gw, [0], 3)

    async def test_fail_after_first_instance(self) -> None:
        """A702 after one instance: the body is cut off, never closed; the next request works."""
        scp, gw = await self.start("move-fail", instances=3, ok_before=1, status=0xA702)
        path = instance_path(MOVE_PACS_AET, get_study_uid())
        parts = await self.assert_cut_off(gw, path, 1)
        self.assert_parts(parts, MOVE_PACS_AET, expect_generated([0], 1))
        self.assertEqual(scp.events("move_rsp")[-1]["status"], 0xA702)
        self.assertEqual([e["status"] for e in scp.events("store_rsp")], [0])
        await self.retrieve_all(gw, [0], 3)

    async def test_unknown_destination(self) -> None:
        """The PACS does not know our listener (A801): 502, and nothing was sent."""
        scp, gw = await self.start("move", instances=3, destinations={})
        response = await gw.get(instance_path(MOVE_PACS_AET, get_study_uid()))
        self.assertEqual(response.code, 502, f"{response.body!r}\n{gw.log_tail()}")
        self.assertIn("A801", response.json()["error"])
        self.assertEqual([e["status"] for e in scp.events("move_rsp")], [0xA801])
        self.assertFalse(scp.events("sub_open"))

    async def test_late_final_response(self) -> None:
        """The final C-MOVE-RSP comes 1.5 s after the last C-STORE (whose association is
        released first): the body closes only after it, with every instance."""
        scp, gw = await self.start("move-late-final", instances=3, final_delay=1.5)
        await self.retrieve_all(gw, [0], 3)
        # Wall clocks of this process and the PACS's agree (same machine).
        done = time.time()
        final = [e for e in scp.events("move_rsp") if e["status"] != 0xFF00]
        self.assertEqual([e["status"] for e in final], [0])
        self.assertGreaterEqual(done, final[0]["t"])
        self.assertLess(scp.events("sub_released")[0]["t"], final[0]["t"])

    async def test_abort(self) -> None:
        """The PACS aborts both associations after one instance: a cut-off body; the next
        request gets a new association."""
        scp, gw = await self.start("move-abort", instances=3, ok_before=1)
        path = instance_path(MOVE_PACS_AET, get_study_uid())
        await self.assert_cut_off(gw, path, 1)
        self.assertEqual(len(scp.events("abort_sent")), 1)
        await self.retrieve_all(gw, [0], 3)
        moves = scp.events("c_move")
        self.assertEqual(len(moves), 2)
        self.assertNotEqual(moves[0]["assoc"], moves[1]["assoc"])

    async def test_abort_before_any_instance(self) -> None:
        _, gw = await self.start("move-abort", instances=3, ok_before=0)
        response = await gw.get(instance_path(MOVE_PACS_AET, get_study_uid()))
        self.assertEqual(response.code, 502, f"{response.body!r}\n{gw.log_tail()}")
        self.assertIn("error", response.json())
        await self.retrieve_all(gw, [0], 3)

    async def test_stall_is_504(self) -> None:
        scp, gw = await self.start("move-stall", wado_timeout_ms=1500, instances=2)
        path = instance_path(MOVE_PACS_AET, get_study_uid())
        response = await gw.get(path)
        self.assertEqual(response.code, 504, f"{response.body!r}\n{gw.log_tail()}")
        self.assertIn("error", response.json())
        self.assertEqual(len(scp.events("stalling")), 1)
        # The gateway let go of the association: the PACS sees it end.
        await self.until(lambda: bool(scp.events("stall_ended")), "the stall to end")
        await self.retrieve_all(gw, [0], 2)

    async def test_stall_after_first_instance(self) -> None:
        """Silence after one instance: the body is cut off after the timeout."""
        scp, gw = await self.start("move-stall", wado_timeout_ms=1500, instances=3, ok_before=1)
        await self.assert_cut_off(gw, instance_path(MOVE_PACS_AET, get_study_uid()), 1)
        await self.until(lambda: bool(scp.events("stall_ended")), "the stall to end")
        await self.assert_sub_associations_closed(scp)
        await self.retrieve_all(gw, [0], 3)

    async def test_store_for_no_retrieve_is_refused(self) -> None:
        """storescu sends an instance to the listener while nothing is retrieved: refused."""
        _, gw = await self.start("move", instances=1)
        directory = peers._temp_dir(self, "storescu")
        path = os.path.join(directory, "stray.dcm")
        with open(path, "wb") as f:
            f.write(part10(get_instance(0, 0)))
        result = await peers.run_tool(
            self,
            [
                "storescu",
                "-v",
                "-aet",
                "STRAY",
                "-aec",
                LISTENER_AET,
                peers.LOCALHOST,
                str(gw.dimse_port),
                path,
            ],
        )
        output = result.stdout + result.stderr
        # DCMTK prints the status it got and exits non-zero when the store failed.
        self.assertIn("Received Store Response", output, result.describe())
        self.assertNotRegex(output, r"Received Store Response \(Success\)", result.describe())
        self.assertNotEqual(result.returncode, 0, result.describe())
        # The gateway is still fine.
        await self.retrieve_all(gw, [0], 1)

    async def test_store_of_another_series_during_a_retrieve_is_refused(self) -> None:
        """While a series is retrieved from a PACS that omits the Move Originator fields, an
        instance of another series arrives from the PACS's own AE title: it matches no retrieve
        and is refused; the retrieve gets exactly its own instances."""
        scp, gw = await self.start("move-no-originator", series=2, instances=3, delay=1.0)
        stray = os.path.join(peers._temp_dir(self, "storescu"), "stray.dcm")
        with open(stray, "wb") as f:
            f.write(part10(get_instance(1, 0)))
        path = instance_path(MOVE_PACS_AET, get_study_uid(), get_series_uid(0))
        pending = Deferred.fromCoroutine(gw.get(path, timeout=60))
        await self.until(lambda: bool(scp.events("store_done")), "the first sub-operation")
        argv = ["storescu", "-v", "-aet", MOVE_PACS_AET, "-aec", LISTENER_AET]
        result = await peers.run_tool(self, [*argv, peers.LOCALHOST, str(gw.dimse_port), stray])
        self.assertEqual(len(scp.events("move_done")), 0, "the retrieve ended before the stray C-STORE")
        output = result.stdout + result.stderr
        self.assertIn("Received Store Response", output, result.describe())
        self.assertNotRegex(output, r"Received Store Response \(Success\)", result.describe())
        self.assertNotEqual(result.returncode, 0, result.describe())
        response = await pending
        parts = self.assert_multipart(gw, response, MOVE_PACS_AET, expect_generated([0], 3))
        self.assert_generated(parts)
        self.assertEqual([e["status"] for e in scp.events("store_rsp")], [0] * 3)

    async def eight_series(self, profile: str, mode: str) -> peers.Peer:
        scp, gw = await self.start(profile, mode=mode, series=8, instances=3, delay=0.05)
        study = get_study_uid()
        responses = await gatherResults(
            [
                Deferred.fromCoroutine(
                    gw.get(instance_path(MOVE_PACS_AET, study, get_series_uid(s)), timeout=60)
                )
                for s in range(8)
            ]
        )
        for s, response in enumerate(responses):
            parts = self.assert_multipart(gw, response, MOVE_PACS_AET, expect_generated([s], 3))
            self.assert_generated(parts)
        self.assertEqual([e["status"] for e in scp.events("store_rsp")], [0] * 24)
        return scp

    async def test_eight_concurrent_series_with_originator(self) -> None:
        scp = await self.eight_series("move", "concurrent")
        self.assertGreater(max(e["max"] for e in scp.events("assoc_count")), 1, "the C-MOVEs did not overlap")

    async def test_eight_concurrent_series_without_originator(self) -> None:
        scp = await self.eight_series("move-no-originator", "concurrent")
        self.assertGreater(max(e["max"] for e in scp.events("assoc_count")), 1, "the C-MOVEs did not overlap")

    async def test_eight_series_sequential_mode(self) -> None:
        """`mode: sequential`: one C-MOVE at a time (each begins after the last one ended)."""
        scp = await self.eight_series("move-no-originator", "sequential")
        events = [e for e in scp.events() if e["event"] in ("c_move", "move_done")]
        self.assertEqual([e["event"] for e in events], ["c_move", "move_done"] * 8, events)

    async def test_client_disconnect_cancels_and_frees_the_association(self) -> None:
        """The client goes away mid-stream: C-CANCEL reaches the PACS, the C-MOVE ends, the
        sub-operation association closes, and the C-MOVE association goes back to the pool
        (with a pool of one, the next request runs on it)."""
        instances, rows, columns = 40, 512, 1024
        scp, gw = await self.start("move", pool_size=1, instances=instances, rows=rows, columns=columns)
        path = instance_path(MOVE_PACS_AET, get_study_uid())

        received, stores = await deferToThread(
            read_then_leave, gw.http_port, path, lambda: len(scp.events("store_done"))
        )
        self.assertGreaterEqual(received, 200_000)
        self.assertLess(stores, instances // 2)
        await self.until(lambda: bool(scp.events("c_cancel")), "a C-CANCEL at the PACS")
        ended = lambda: [e for e in scp.events("move_rsp") if e["status"] != 0xFF00]  # noqa: E731
        await self.until(lambda: bool(ended()), "the final C-MOVE-RSP")
        self.assertEqual(ended()[0]["status"], 0xFE00, scp.events("move_rsp"))
        self.assertLess(len(scp.events("store_done")), instances)
        await self.assert_sub_associations_closed(scp)
        self.assertFalse(scp.events("sub_aborted"))
        # The instance in flight when the client left was refused, not acknowledged.
        first_sub = scp.events("sub_open")[0]["sub"]
        statuses = [e["status"] for e in scp.events("store_rsp") if e["sub"] == first_sub]
        self.assertNotEqual(statuses[-1], 0, statuses)
        await self.until(
            lambda: bool(gw.log_lines(r"GET \S+ 200 \d+B .* disconnected")), "the access log line"
        )

        await self.retrieve_all(gw, [0], instances, rows, columns)
        moves = scp.events("c_move")
        self.assertEqual(len({e["assoc"] for e in moves}), 1, "the association was not reused")
        self.assertLessEqual(max(e["max"] for e in scp.events("assoc_count")), 1)
        self.assertFalse(scp.events("aborted"))
        await self.assert_sub_associations_closed(scp)

    async def test_slow_client_pauses_the_sub_operations(self) -> None:
        """A client reading ~80 KB/s from a 40 MB study: the C-STORE sub-operations go only as
        fast as it reads (the listener's association is paused)."""
        instances, rows, columns = 40, 512, 1024
        scp, gw = await self.start("move", instances=instances, rows=rows, columns=columns)
        path = instance_path(MOVE_PACS_AET, get_study_uid())
        pid = gw.child.pid
        baseline = wado.rss_mb(pid)

        def sample(seconds: float, received: int) -> wado.Sample:
            return wado.Sample(seconds, received, len(scp.events("store_done")), wado.rss_mb(pid))

        def run() -> tuple[list[wado.Sample], bytes]:
            client = RawClient(gw.http_port, path)
            try:
                samples = client.slowly(5.0, sample)
                return samples, client.rest()
            finally:
                client.close()

        samples, raw = await deferToThread(run)
        trace = "\n".join(
            f"{s.seconds:5.2f} s {s.received:9d} B {s.stores:3d} stores {s.rss_mb:6.1f} MB" for s in samples
        )
        slow = [s for s in samples if s.seconds >= 2.0]
        self.assertTrue(slow, trace)
        self.assertLess(slow[-1].stores, instances // 2, trace)
        self.assertLessEqual(slow[-1].stores - slow[0].stores, 2, trace)
        self.assertLess(max(s.rss_mb for s in samples) - baseline, 20, f"baseline {baseline:.1f} MB\n{trace}")

        status, headers, body, complete = parse_http(raw)
        self.assertEqual(status, 200)
        self.assertTrue(complete)
        multipart = parse_multipart(headers.get("content-type"), body)
        self.assertTrue(multipart.closed)
        self.assert_parts(multipart.parts, MOVE_PACS_AET, expect_generated([0], instances))
        self.assert_generated([multipart.parts[0], multipart.parts[-1]], rows, columns)
