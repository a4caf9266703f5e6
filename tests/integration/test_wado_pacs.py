"""WADO-RS instance retrieves over C-GET, end to end: the gateway as a process, real peers.

The gateway runs as ``twistd dicomrst`` (tests/support/gateway.py) with ``wado-rs.retrieve:
get`` against Orthanc (pydicom's test files and a generated study, each given fresh UIDs) and
against the pynetdicom PACS of tests/support/pacs/ (its get-* profiles, which serve generated
instances that `pacs.datasets.get_instance` rebuilds here for comparison). Every part of every
response is parsed as a Part-10 object and its data set compared, element by element and pixel
data included, with the original.

Backpressure and disconnects use a raw socket in a thread, so the client can read slowly, stop
reading, or vanish, while the PACS's event log shows how far the C-STORE sub-operations got.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import reactor as _global_reactor
from twisted.internet.threads import deferToThread
from twisted.web.client import ResponseFailed

from tests.support import peers
from tests.support.datasets import EXPLICIT_VR_LE, IMPLICIT_VR_LE, assert_same_dataset
from tests.support.gateway import Gateway, eventually, start_gateway
from tests.support.pacs.datasets import get_instance, get_series_uid, get_sop_uid, get_study_uid
from tests.support.wado import (
    PACS_AET,
    OrthancRetrieveTests,
    Part,
    RawClient,
    RetrieveTestCase,
    Sample,
    Stored,
    get_aet,
    instance_path,
    orthanc_data,
    parse_http,
    parse_multipart,
    read_partial,
    read_then_leave,
    rss_mb,
)

reactor: Any = _global_reactor


class OrthancTests(OrthancRetrieveTests, RetrieveTestCase):
    """C-GET from Orthanc 1.10 (its C-GET SCP sends on our association with our SCP role); the
    tests are `tests.support.wado.OrthancRetrieveTests`, run over C-MOVE too."""

    async def start(self) -> tuple[peers.Orthanc, Gateway, dict[str, list[Stored]]]:
        orthanc = await peers.start_orthanc(self)
        data = orthanc_data()
        for group in data.values():
            for item in group:
                answer = await orthanc.upload(item.data)
                self.assertEqual(answer.get("Status"), "Success", answer)
        gw = await start_gateway(self, [get_aet("ORTHANC", orthanc.host, orthanc.dicom_port)])
        return orthanc, gw, data


class PacsTests(RetrieveTestCase):
    """The pynetdicom PACS of tests/support/pacs/: the get-* profiles."""

    async def start(
        self, profile: str, wado_timeout_ms: int = 20_000, pool_size: int | None = None, **options: Any
    ) -> tuple[peers.Peer, Gateway]:
        scp = await peers.start_pynetdicom_scp(self, profile, aet=PACS_AET, **options)
        gw = await start_gateway(self, [get_aet(PACS_AET, scp.host, scp.port, wado_timeout_ms, pool_size)])
        return scp, gw

    def expect(self, series: Sequence[int], instances: int) -> list[tuple[str, str, str]]:
        return [
            (get_study_uid(), get_series_uid(s), get_sop_uid(s, i)) for s in series for i in range(instances)
        ]

    def assert_generated(self, parts: list[Part], rows: int = 16, columns: int = 16) -> None:
        for part in parts:
            ds = part.dataset()
            s, i = (int(n) - 1 for n in ds.SOPInstanceUID.rsplit(".", 2)[-2:])
            assert_same_dataset(self, ds, get_instance(s, i, rows, columns), ds.SOPInstanceUID)

    async def until(self, check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
        self.assertTrue(await eventually(check, timeout), f"not within {timeout} s: {what}")

    async def test_get_levels(self) -> None:
        scp, gw = await self.start("get", series=2, instances=3)
        study = get_study_uid()
        response = await gw.get(instance_path(PACS_AET, study))
        self.assert_generated(self.assert_multipart(gw, response, PACS_AET, self.expect([0, 1], 3)))
        response = await gw.get(instance_path(PACS_AET, study, get_series_uid(1)))
        self.assert_generated(self.assert_multipart(gw, response, PACS_AET, self.expect([1], 3)))
        response = await gw.get(instance_path(PACS_AET, study, get_series_uid(0), get_sop_uid(0, 2)))
        parts = self.assert_multipart(gw, response, PACS_AET, [(study, get_series_uid(0), get_sop_uid(0, 2))])
        self.assert_generated(parts)

        gets = scp.events("c_get")
        self.assertEqual(
            [(e["level"], e["study"], e["series"], e["sop"], e["matches"]) for e in gets],
            [
                ("STUDY", study, "", "", 6),
                ("SERIES", study, get_series_uid(1), "", 3),
                ("IMAGE", study, get_series_uid(0), get_sop_uid(0, 2), 1),
            ],
        )
        # Every sub-operation was answered Success, all on one pooled association.
        self.assertEqual([e["status"] for e in scp.events("store_rsp")], [0] * 10)
        self.assertEqual({e["assoc"] for e in gets}, {1})
        # Our storage contexts went with the SCP role; Explicit VR LE was accepted for CT.
        accepted = scp.events("accepted")[0]["accepted_contexts"]
        ct = [cx for cx in accepted if cx["abstract_syntax"] == "1.2.840.10008.5.1.4.1.1.2"]
        self.assertEqual([cx["transfer_syntax"] for cx in ct], [EXPLICIT_VR_LE])

    async def test_get_warning(self) -> None:
        """One sub-operation fails (B000, one failed): the good instances, a clean end."""
        scp, gw = await self.start("get-warning", instances=3)
        response = await gw.get(instance_path(PACS_AET, get_study_uid()))
        self.assert_generated(self.assert_multipart(gw, response, PACS_AET, self.expect([0], 3)))
        await self.until(lambda: bool(scp.events("get_done")), "the C-GET's end")
        final = scp.events("get_rsp")[-1]
        self.assertEqual((final["status"], final["failed"], final["completed"]), (0xB000, 1, 3), final)
        self.assertEqual(len(scp.events("store_unsendable")), 1)

    async def test_get_fail_after_first_instance(self) -> None:
        """C000 after one instance: the body is cut off, never closed; the next request works."""
        scp, gw = await self.start("get-fail", instances=3, ok_before=1)
        path = instance_path(PACS_AET, get_study_uid())
        partial = await read_partial(gw, path)
        self.assertEqual(partial.code, 200)
        self.assertIsInstance(partial.error, ResponseFailed, f"{partial.error!r}\n{gw.log_tail()}")
        body = parse_multipart(partial.content_type, partial.body)
        self.assertFalse(body.closed)
        self.assertEqual(len(body.parts), 1)
        self.assert_parts(body.parts, PACS_AET, self.expect([0], 1))
        self.assert_generated(body.parts)
        self.assertEqual(scp.events("get_rsp")[-1]["status"], 0xC000)
        # One warning line with the sub-operation counts (and no traceback: see cleanup).
        pattern = r"failed after 1 instance\(s\).*0xC000.* received, 2 failed; response cut off"
        await self.until(lambda: bool(gw.log_lines(pattern)), "the log line")

        response = await gw.get(path)
        self.assert_generated(self.assert_multipart(gw, response, PACS_AET, self.expect([0], 3)))

    async def test_get_fail_before_any_instance(self) -> None:
        """A failure before the first instance is a 502, not an empty multipart."""
        scp, gw = await self.start("get-fail", instances=3, ok_before=0)
        response = await gw.get(instance_path(PACS_AET, get_study_uid()))
        self.assertEqual(response.code, 502, f"{response.body!r}\n{gw.log_tail()}")
        self.assertIn("C000", response.json()["error"])
        self.assertEqual([e["status"] for e in scp.events("get_rsp")], [0xC000])
        response = await gw.get(instance_path(PACS_AET, get_study_uid()))
        self.assert_multipart(gw, response, PACS_AET, self.expect([0], 3))

    async def test_get_implicit(self) -> None:
        """The PACS accepts only Implicit VR LE for storage: the parts go out in Explicit VR LE."""
        scp, gw = await self.start("get-implicit", series=1, instances=3, rows=64, columns=48)
        response = await gw.get(instance_path(PACS_AET, get_study_uid()))
        parts = self.assert_multipart(gw, response, PACS_AET, self.expect([0], 3))
        self.assert_generated(parts, 64, 48)
        accepted = scp.events("accepted")[0]["accepted_contexts"]
        ct = [cx for cx in accepted if cx["abstract_syntax"] == "1.2.840.10008.5.1.4.1.1.2"]
        self.assertEqual([cx["transfer_syntax"] for cx in ct], [IMPLICIT_VR_LE])
        self.assertEqual([e["status"] for e in scp.events("store_rsp")], [0, 0, 0])

    async def test_get_abort(self) -> None:
        """A-ABORT after one instance: a cut-off body; the next request gets a new association."""
        scp, gw = await self.start("get-abort", instances=3, ok_before=1)
        path = instance_path(PACS_AET, get_study_uid())
        partial = await read_partial(gw, path)
        self.assertEqual(partial.code, 200)
        self.assertIsInstance(partial.error, ResponseFailed, f"{partial.error!r}\n{gw.log_tail()}")
        body = parse_multipart(partial.content_type, partial.body)
        self.assertFalse(body.closed)
        self.assertEqual(len(body.parts), 1)
        self.assert_generated(body.parts)
        self.assertEqual(len(scp.events("abort_sent")), 1)

        response = await gw.get(path)
        self.assert_generated(self.assert_multipart(gw, response, PACS_AET, self.expect([0], 3)))
        self.assertEqual([e["assoc"] for e in scp.events("c_get")], [1, 2])

    async def test_get_abort_inside_first_instance_on_reused_association(self) -> None:
        """The PACS aborts in the middle of the first instance, on an association reused from the
        pool. A part smaller than the sink's hold (1 MiB) is written only once whole, so nothing
        of the response is out: the answer is an error status, not a cut-off 200.  The
        instance reached the sink, so the retrieve is not retried on a new association either.
        (A part cut off after its header went out: tests.unit.test_wado_sink.)"""
        scp, gw = await self.start(
            "get-abort", instances=2, rows=512, columns=512, healthy=1, ok_before=0, partial=True
        )
        path = instance_path(PACS_AET, get_study_uid())
        response = await gw.get(path)
        self.assert_generated(self.assert_multipart(gw, response, PACS_AET, self.expect([0], 2)), 512, 512)

        partial = await read_partial(gw, path)
        self.assertEqual(partial.code, 502, f"{partial.body[:300]!r}\n{gw.log_tail()}")
        self.assertIn(b"aborted by peer", partial.body)
        self.assertIsNone(partial.error, f"{partial.error!r}\n{gw.log_tail()}")
        self.assertEqual(len(scp.events("partial_sent")), 1)
        self.assertEqual([e["assoc"] for e in scp.events("c_get")], [1, 1])

        response = await gw.get(path)
        self.assert_multipart(gw, response, PACS_AET, self.expect([0], 2))

    async def test_get_stall_is_504(self) -> None:
        scp, gw = await self.start("get-stall", wado_timeout_ms=1500, instances=2)
        path = instance_path(PACS_AET, get_study_uid())
        started = reactor.seconds()
        response = await gw.get(path)
        elapsed = reactor.seconds() - started
        self.assertEqual(response.code, 504, f"{response.body!r}\n{gw.log_tail()}")
        self.assertIn("error", response.json())
        self.assertGreaterEqual(elapsed, 1.4)
        self.assertLess(elapsed, 1.5 + 5.0, gw.log_tail())
        self.assertEqual(len(scp.events("stalling")), 1)
        # The gateway let go of the association: the PACS sees it end.
        await self.until(lambda: bool(scp.events("stall_ended")), "the stall to end")

        response = await gw.get(path)
        self.assert_multipart(gw, response, PACS_AET, self.expect([0], 2))

    async def test_slow_client_pauses_the_association(self) -> None:
        """A client reading ~80 KB/s from a 40 MB study: the C-STORE sub-operations go only as
        fast as it reads (the association is paused), and the gateway does not hold the study."""
        instances, rows, columns = 40, 512, 1024  # 1 MiB of pixel data each
        scp, gw = await self.start("get", instances=instances, rows=rows, columns=columns)
        path = instance_path(PACS_AET, get_study_uid())
        pid = gw.child.pid
        baseline = rss_mb(pid)

        def sample(seconds: float, received: int) -> Sample:
            return Sample(seconds, received, len(scp.events("store_done")), rss_mb(pid))

        def run() -> tuple[list[Sample], bytes]:
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
        # From 2 s on the pipes are full: the PACS sends only what the client reads.
        slow = [s for s in samples if s.seconds >= 2.0]
        self.assertTrue(slow, trace)
        # Buffers on the way (socket buffers, one instance in the gateway) hold a few
        # instances; without backpressure all 40 would be gone in well under a second.
        self.assertLess(slow[-1].stores, instances // 2, trace)
        self.assertLessEqual(slow[-1].stores - slow[0].stores, 2, trace)
        self.assertLess(max(s.rss_mb for s in samples) - baseline, 20, f"baseline {baseline:.1f} MB\n{trace}")

        status, headers, body, complete = parse_http(raw)
        self.assertEqual(status, 200)
        self.assertTrue(complete)
        multipart = parse_multipart(headers.get("content-type"), body)
        self.assertTrue(multipart.closed)
        self.assert_parts(multipart.parts, PACS_AET, self.expect([0], instances))
        self.assert_generated([multipart.parts[0], multipart.parts[-1]], rows, columns)
        self.assertEqual(len(scp.events("store_done")), instances)

    async def test_client_disconnect_cancels_and_frees_the_association(self) -> None:
        """The client goes away mid-stream: C-CANCEL reaches the PACS, the C-GET ends, and the
        association goes back to the pool: with a pool of one, the next request waits for it
        and runs on it (a leaked association would make it wait in vain, then 503)."""
        instances, rows, columns = 40, 512, 1024
        scp, gw = await self.start("get", pool_size=1, instances=instances, rows=rows, columns=columns)
        path = instance_path(PACS_AET, get_study_uid())

        received, stores = await deferToThread(
            read_then_leave, gw.http_port, path, lambda: len(scp.events("store_done"))
        )
        self.assertGreaterEqual(received, 200_000)
        self.assertLess(stores, instances // 2)
        await self.until(lambda: bool(scp.events("c_cancel")), "a C-CANCEL at the PACS")
        ended = lambda: [e for e in scp.events("get_rsp") if e["status"] != 0xFF00]  # noqa: E731
        await self.until(lambda: bool(ended()), "the final C-GET-RSP")
        self.assertEqual(ended()[0]["status"], 0xFE00, scp.events("get_rsp"))
        self.assertLess(len(scp.events("store_done")), instances)
        # Instances that arrived after the client left were refused, not acknowledged.
        statuses = [e["status"] for e in scp.events("store_rsp")]
        self.assertNotEqual(statuses[-1], 0, statuses)
        await self.until(
            lambda: bool(gw.log_lines(r"GET \S+ 200 \d+B .* disconnected")), "the access log line"
        )

        response = await gw.get(path)
        self.assert_multipart(gw, response, PACS_AET, self.expect([0], instances))
        gets = scp.events("c_get")
        self.assertEqual([e["assoc"] for e in gets], [1, 1], "the association was not reused")
        self.assertLessEqual(max(e["max"] for e in scp.events("assoc_count")), 1)
        self.assertFalse(scp.events("aborted"))
