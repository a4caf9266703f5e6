"""``telemetry.metrics`` in a real gateway: ``twistd dicomrst`` in front of Orthanc (C-FIND,
C-GET, C-STORE), ``/metrics`` on its own listener on a free port, scraped over HTTP and
parsed with the client library's own parser; QIDO-RS, WADO-RS and STOW-RS requests move
the counters by what they did.

Each family is tested alone, in memory, in tests/unit/test_metrics.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from pydicom.uid import generate_uid
from twisted.trial.unittest import TestCase

from tests.support import peers
from tests.support.datasets import part10
from tests.support.gateway import INTEGRATION_TIMEOUT, Gateway, read, start_gateway
from tests.support.s3 import AET as S3_AET
from tests.support.s3 import BUCKET, s3_aet, upload
from tests.support.stow import fresh_test_file, multipart_body
from tests.support.wado import ANY_SYNTAX, get_aet, instance_path

AET = "ORTHANC"
BOUNDARY = b"metrics-stow-boundary"
STOW_TYPE = b'multipart/related; type="application/dicom"; boundary=' + BOUNDARY

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(case: TestCase, gw: Gateway, port: int) -> Samples:
    """``GET /metrics`` on the metrics listener, parsed."""
    response = await read(await gw.http.get(f"http://{peers.LOCALHOST}:{port}/metrics", timeout=10))
    case.assertEqual(response.code, 200, response.body[:300])
    case.assertTrue((response.header("Content-Type") or "").startswith("text/plain"))
    return parse(response.body.decode("utf-8"))


class MetricsTests(TestCase):
    timeout = INTEGRATION_TIMEOUT

    def moved(self, before: Samples, after: Samples, name: str, **labels: str) -> float:
        return get(after, name, **labels) - get(before, name, **labels)

    def assertMoved(
        self, before: Samples, after: Samples, expected: Mapping[tuple[str, Any], float]
    ) -> None:
        got = {key: self.moved(before, after, key[0], **dict(key[1])) for key in expected}
        self.assertEqual(got, dict(expected))

    async def test_qido_wado_stow_move_the_counters(self) -> None:
        orthanc = await peers.start_orthanc(self)
        study = generate_uid()
        stored = fresh_test_file("CT_small.dcm", study)
        data = part10(stored)
        answer = await orthanc.upload(data)
        self.assertEqual(answer.get("Status"), "Success", answer)
        metrics_port = peers.free_port()
        gw = await start_gateway(
            self,
            [get_aet(AET, orthanc.host, orthanc.dicom_port)],
            telemetry={"metrics": {"endpoint": f"tcp:{metrics_port}:interface={peers.LOCALHOST}"}},
        )
        self.assertTrue(gw.log_lines(rf"Prometheus metrics listening on .*:{metrics_port}"), gw.log_tail())
        before = await scrape(self, gw, metrics_port)
        # Process metrics, on the gateway's registry.
        self.assertGreater(get(before, "process_resident_memory_bytes"), 0)

        # QIDO-RS: one C-FIND.
        response = await gw.get(f"/aets/{AET}/studies?StudyInstanceUID={study}")
        self.assertEqual(response.code, 200, response.body[:300])
        self.assertEqual(len(response.json()), 1)
        # WADO-RS: one instance, one C-GET.
        path = instance_path(AET, study, str(stored.SeriesInstanceUID), str(stored.SOPInstanceUID))
        response = await gw.get(path, headers={"Accept": ANY_SYNTAX})
        self.assertEqual(response.code, 200, response.body[:300])
        wado_bytes = len(response.body)
        # STOW-RS: two instances, two C-STOREs.
        new = [fresh_test_file(name, generate_uid()) for name in ("CT_small.dcm", "MR_small.dcm")]
        body = multipart_body([([("Content-Type", "application/dicom")], part10(ds)) for ds in new], BOUNDARY)
        response = await gw.request(
            "POST", f"/aets/{AET}/studies", data=body,
            headers={"Content-Type": STOW_TYPE, "Accept": "application/dicom+json"},
        )
        self.assertEqual(response.code, 200, response.body[:500])
        # No route: unmatched.
        self.assertEqual((await gw.get("/no/such/route")).code, 404)

        after = await scrape(self, gw, metrics_port)
        http = "dicomrst_http_requests_total"
        dimse = "dicomrst_dimse_operations_total"
        self.assertMoved(before, after, {
            (http, (("route", "/aets/<aet>/studies"), ("method", "GET"), ("status", "200"))): 1,
            (http, (("route", "/aets/<aet>/studies/<study>/series/<series>/instances/<sop>"),
                    ("method", "GET"), ("status", "200"))): 1,
            (http, (("route", "/aets/<aet>/studies"), ("method", "POST"), ("status", "200"))): 1,
            (http, (("route", "unmatched"), ("method", "GET"), ("status", "404"))): 1,
            (dimse, (("aet", AET), ("service", "C-FIND"), ("status", "success"))): 1,
            (dimse, (("aet", AET), ("service", "C-GET"), ("status", "success"))): 1,
            (dimse, (("aet", AET), ("service", "C-STORE"), ("status", "success"))): 2,
            ("dicomrst_stow_instances_total", (("outcome", "stored"),)): 2,
            ("dicomrst_stow_instances_total", (("outcome", "failed"),)): 0,
        })
        duration = "dicomrst_http_request_duration_seconds_count"
        self.assertEqual(
            self.moved(before, after, duration, route="/aets/<aet>/studies", method="GET"), 1
        )
        self.assertEqual(
            self.moved(before, after, "dicomrst_dimse_operation_duration_seconds_count",
                       aet=AET, service="C-GET"), 1
        )
        # Bytes: the instance came in over DIMSE, the response and the upload over HTTP.
        self.assertGreater(
            self.moved(before, after, "dicomrst_received_bytes_total", service="dimse"), len(data)
        )
        self.assertGreater(
            self.moved(before, after, "dicomrst_sent_bytes_total", service="dimse"), len(body) // 2
        )
        http_sent = self.moved(before, after, "dicomrst_sent_bytes_total", service="http")
        self.assertGreaterEqual(http_sent, wado_bytes)
        http_received = self.moved(before, after, "dicomrst_received_bytes_total", service="http")
        self.assertEqual(http_received, len(body))
        # The pool, read at the scrape: its associations are idle again, none in use.
        self.assertGreaterEqual(get(after, "dicomrst_dimse_associations", aet=AET, state="idle"), 1)
        self.assertEqual(get(after, "dicomrst_dimse_associations", aet=AET, state="in_use"), 0)
        self.assertEqual(get(after, "dicomrst_dimse_pool_size", aet=AET), 16)
        # Orthanc really has the uploads.
        self.assertEqual(len(await orthanc.get_json("/instances")), 3)


class S3MetricsTests(TestCase):
    """The S3 client's connections, wrapped to count their bytes, in front of moto: a STOW-RS
    upload puts objects and a WADO-RS retrieve reads them back, through the real Agent pool."""

    timeout = INTEGRATION_TIMEOUT

    async def test_stow_and_wado_on_s3_count_its_bytes(self) -> None:
        moto = await peers.start_moto(self)
        await upload(moto, BUCKET, {})
        metrics_port = peers.free_port()
        gw = await start_gateway(
            self,
            [s3_aet(moto)],
            telemetry={"metrics": {"endpoint": f"tcp:{metrics_port}:interface={peers.LOCALHOST}"}},
        )
        before = await scrape(self, gw, metrics_port)
        study = generate_uid()
        new = [fresh_test_file(name, study) for name in ("CT_small.dcm", "MR_small.dcm")]
        objects = [part10(ds) for ds in new]
        body = multipart_body([([("Content-Type", "application/dicom")], data) for data in objects], BOUNDARY)
        response = await gw.request(
            "POST", f"/aets/{S3_AET}/studies", data=body,
            headers={"Content-Type": STOW_TYPE, "Accept": "application/dicom+json"},
        )
        self.assertEqual(response.code, 200, response.body[:500])
        response = await gw.get(f"/aets/{S3_AET}/studies/{study}", headers={"Accept": ANY_SYNTAX})
        self.assertEqual(response.code, 200, response.body[:300])
        self.assertGreater(len(response.body), sum(map(len, objects)))
        after = await scrape(self, gw, metrics_port)

        def moved(name: str, **labels: str) -> float:
            return get(after, name, **labels) - get(before, name, **labels)

        self.assertEqual(moved("dicomrst_stow_instances_total", outcome="stored"), 2)
        # What went into the bucket went out over S3's connections, and came back in.
        self.assertGreater(moved("dicomrst_sent_bytes_total", service="s3"), sum(map(len, objects)))
        self.assertGreater(moved("dicomrst_received_bytes_total", service="s3"), sum(map(len, objects)))
        # No DIMSE here.
        self.assertEqual(moved("dicomrst_sent_bytes_total", service="dimse"), 0)
        route = "/aets/<aet>/studies/<study>"
        self.assertEqual(moved("dicomrst_http_requests_total", route=route, method="GET", status="200"), 1)
