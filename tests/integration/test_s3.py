"""The S3 backend against moto's S3 server (a subprocess on loopback), end to end and direct.

moto runs with signature checks on (`peers.Moto.enable_auth`) except in the anonymous test,
where a public-read bucket is read without credentials. Data is uploaded and checked with
boto3 (in a thread), an S3 client independent of the gateway's. The gateway runs as
``twistd dicomrst`` (tests/support/gateway.py); ``store_instance`` and the timeouts are also tested
on an `S3Backend` in this process, against the same moto. The backend's parsing (URLs, file
meta, keys) is tested without any server in tests/unit/test_s3_parsing.py.
"""

from __future__ import annotations

import io
import json
import os
import socket
from collections.abc import Sequence
from typing import Any

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from twisted.internet import reactor as _global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface.verify import verifyObject

from dicomrst.backends import values as model
from dicomrst.backends.interfaces import IBackend, IRangedReads
from dicomrst.backends.s3 import S3Backend
from dicomrst.backends.s3.objects import HEAD_BYTES, parse_file_meta
from dicomrst.backends.values import ObjectChanged, RangesRefused, UploadedInstance
from dicomrst.common.codecs import install as install_decoders
from dicomrst.config import parse_config
from dicomrst.errors import (
    NotFound,
    NotImplementedService,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from dicomrst.wado.metadata import instance_metadata_json
from tests.support import peers
from tests.support.datasets import EXPLICIT_VR_LE, IMPLICIT_VR_LE, assert_same_dataset, part10
from tests.support.gateway import Gateway, Response, eventually, start_gateway
from tests.support.metadata import compare_metadata, metadata_data, pydicom_json
from tests.support.pacs.datasets import get_instance
from tests.support.s3 import AET, BUCKET, big_study, key_of, s3_aet, upload
from tests.support.sinks import RecordingPart, RecordingSink
from tests.support.stow import multipart_body
from tests.support.wado import (
    ANY_SYNTAX,
    PART_CONTENT_TYPE,
    RESPONSE_CONTENT_TYPE,
    RawClient,
    Stored,
    fresh,
    instance_path,
    orthanc_data,
    parse_http,
    parse_multipart,
)

reactor: Any = _global_reactor

TIMEOUT = 240
MPEG2 = "1.2.840.10008.1.2.4.100"  # no decoder: video


# -- data in the bucket ------------------------------------------------------------------------


def get_object(moto: peers.Moto, bucket: str, key: str) -> Deferred[bytes]:
    return deferToThread(lambda: moto.boto3().get_object(Bucket=bucket, Key=key)["Body"].read())


def backend_for(config: dict[str, Any], **kwargs: Any) -> S3Backend:
    loaded = parse_config({"aets": [config]})
    return S3Backend(loaded.aets[0], reactor, **kwargs)


# -- the test cases ----------------------------------------------------------------------------


class S3TestCase(TestCase):
    timeout = TIMEOUT

    async def moto(self, auth: bool = True) -> peers.Moto:
        moto = await peers.start_moto(self)
        if auth:
            await moto.enable_auth()
        return moto

    def assert_parts_in_order(
        self, gw: Gateway, response: Response, aet: str, expected: Sequence[Stored]
    ) -> list[Any]:
        """A complete multipart whose parts are `expected` in key order, each in Explicit VR LE
        with the original's data set."""
        self.assertEqual(response.code, 200, f"{response.body[:500]!r}\n{gw.log_tail()}")
        self.assertRegex(response.header("Content-Type") or "", RESPONSE_CONTENT_TYPE)
        body = parse_multipart(response.header("Content-Type"), response.body)
        self.assertTrue(body.closed, "the multipart body did not end with its close delimiter")
        ordered = sorted(expected, key=key_of)
        self.assertEqual([p.location.rsplit("/", 1)[-1] for p in body.parts], [s.sop for s in ordered])
        for part, item in zip(body.parts, ordered, strict=True):
            self.assertEqual(part.headers.get("Content-Type"), PART_CONTENT_TYPE)
            self.assertTrue(
                part.location.endswith(
                    f"/aets/{aet}/studies/{item.study}/series/{item.series}/instances/{item.sop}"
                ),
                part.location,
            )
            ds = part.dataset()
            self.assertEqual(ds.file_meta.TransferSyntaxUID, EXPLICIT_VR_LE)
            self.assertEqual(ds.original_encoding, (False, True))
            assert_same_dataset(self, ds, item.dataset(), item.label)
        return body.parts


class GatewayRetrieveTests(S3TestCase):
    async def test_path_style_static_credentials(self) -> None:
        """Study, series and instance level, Explicit and Implicit VR objects, and the errors
        that do not depend on the data: unknown study 404, health check; QIDO from the index."""
        moto = await self.moto()
        data = orthanc_data()
        items = [item for group in data.values() for item in group]
        await upload(moto, BUCKET, {key_of(item): item.data for item in items})
        gw = await start_gateway(self, [s3_aet(moto)])

        for group in data.values():
            response = await gw.get(instance_path(AET, group[0].study))
            self.assert_parts_in_order(gw, response, AET, group)
        self.assertEqual(data["mr"][0].stored_ts, IMPLICIT_VR_LE)  # arrived as Explicit VR LE above

        multi = data["multi"]
        series = [m for m in multi if m.series == multi[0].series]
        self.assert_parts_in_order(
            gw, await gw.get(instance_path(AET, multi[0].study, multi[0].series)), AET, series
        )
        one = multi[4]
        self.assert_parts_in_order(
            gw, await gw.get(instance_path(AET, one.study, one.series, one.sop)), AET, [one]
        )

        # Nothing under these: 404, not an empty 200 or a 502.
        self.assertEqual((await gw.get(instance_path(AET, generate_uid()))).code, 404)
        self.assertEqual((await gw.get(instance_path(AET, one.study, generate_uid()))).code, 404)
        missing = await gw.get(instance_path(AET, one.study, one.series, generate_uid()))
        self.assertEqual(missing.code, 404, missing.body)

        # A compressed object passes through as stored when the client accepts any syntax.
        jpeg = fresh(dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")), "jpeg")
        await upload(moto, BUCKET, {key_of(jpeg): jpeg.data})
        response = await gw.get(instance_path(AET, jpeg.study), headers={"Accept": ANY_SYNTAX})
        self.assertEqual(response.code, 200, response.body[:300])
        parts = parse_multipart(response.header("Content-Type"), response.body).parts
        self.assertEqual(len(parts), 1)
        self.assertEqual(
            parts[0].headers["Content-Type"], f"application/dicom; transfer-syntax={jpeg.stored_ts}"
        )
        self.assertTrue(jpeg.data.endswith(parts[0].body[-1000:]))
        assert_same_dataset(self, parts[0].dataset(), jpeg.dataset(), "jpeg")

        # Put before the gateway started: searchable once its first scan has run.
        studies = {group[0].study for group in data.values()}

        async def found() -> set[str]:
            qido = await gw.get(f"/aets/{AET}/studies")
            self.assertEqual(qido.code, 200, qido.body)
            return {r["0020000D"]["Value"][0] for r in qido.json()} if qido.body else set()

        for _ in range(100):
            if studies <= await found():
                break
            await deferLater(reactor, 0.1, lambda: None)
        self.assertLessEqual(studies, await found(), gw.log_tail())

        health = await gw.get(f"/aets/{AET}")
        self.assertEqual(health.code, 200, health.body)
        self.assertEqual(health.json()["status"], "ok")

    async def test_vhost_style_env_credentials_and_prefix(self) -> None:
        moto = await self.moto()
        data = orthanc_data()
        prefix = "archive/dicom/"
        items = data["multi"] + data["ct"]
        await upload(moto, BUCKET, {key_of(item, prefix): item.data for item in items})
        # The same study without the prefix must not be found: only the prefixed keys count.
        await upload(moto, BUCKET, {key_of(data["mr"][0]): data["mr"][0].data})
        names = {"DICOMRST_TEST_S3_KEY": moto.access_key, "DICOMRST_TEST_S3_SECRET": moto.secret_key}
        for name, value in names.items():
            self.addCleanup(restore_env, name, os.environ.get(name))
            os.environ[name] = value
        credentials = {"access-key-env": "DICOMRST_TEST_S3_KEY", "secret-key-env": "DICOMRST_TEST_S3_SECRET"}
        gw = await start_gateway(self, [s3_aet(moto, style="vhost", credentials=credentials, prefix=prefix)])

        response = await gw.get(instance_path(AET, data["multi"][0].study))
        self.assert_parts_in_order(gw, response, AET, data["multi"])
        response = await gw.get(instance_path(AET, data["ct"][0].study))
        self.assert_parts_in_order(gw, response, AET, data["ct"])
        self.assertEqual((await gw.get(instance_path(AET, data["mr"][0].study))).code, 404)
        # vhost really went to the bucket's host name.
        log = open(moto.log_path, encoding="utf-8", errors="replace").read()
        self.assertIn(f'"GET /{prefix}{data["ct"][0].study}/', log)
        self.assertNotIn(f"GET /{BUCKET}/{prefix}", log)

    async def test_anonymous_public_bucket(self) -> None:
        # moto checks no signature when auth is off; the bucket and objects are public-read,
        # and the gateway sends no Authorization header at all (anonymous, as configured).
        moto = await self.moto(auth=False)
        items = orthanc_data()["multi"]
        await upload(moto, "public-bucket", {key_of(item): item.data for item in items}, acl="public-read")
        gw = await start_gateway(self, [s3_aet(moto, bucket="public-bucket", anonymous=True)])
        self.assert_parts_in_order(gw, await gw.get(instance_path(AET, items[0].study)), AET, items)
        self.assertEqual((await gw.get(f"/aets/{AET}")).code, 200)

    async def test_wrong_secret_and_missing_bucket_are_502(self) -> None:
        moto = await self.moto()
        items = orthanc_data()["ct"]
        await upload(moto, BUCKET, {key_of(item): item.data for item in items})
        wrong = "wrong-secret-0123456789abcdef"
        gw = await start_gateway(
            self,
            [
                s3_aet(moto, aet="WRONG", credentials={"access-key": moto.access_key, "secret-key": wrong}),
                s3_aet(moto, aet="NOBUCKET", bucket="no-such-bucket"),
            ],
        )
        for path in (instance_path("WRONG", items[0].study), "/aets/WRONG"):
            response = await gw.get(path)
            self.assertEqual(response.code, 502, response.body)
            if path != "/aets/WRONG":  # HEAD answers carry no error code, only the status
                self.assertIn(b"SignatureDoesNotMatch", response.body)
            self.assertNotIn(wrong.encode(), response.body)
            self.assertNotIn(moto.secret_key.encode(), response.body)
        response = await gw.get(instance_path("NOBUCKET", items[0].study))
        self.assertEqual(response.code, 502, response.body)
        self.assertIn(b"NoSuchBucket", response.body)
        self.assertEqual((await gw.get("/aets/NOBUCKET")).code, 502)
        self.assertNotIn(wrong, gw.log())
        self.assertNotIn(moto.secret_key, gw.log())

    async def test_more_than_1000_objects(self) -> None:
        moto = await self.moto()
        study, series = generate_uid(), [generate_uid(), generate_uid()]
        items = [fresh(get_instance(0, i, 4, 4), f"i{i}", study, series[i % 2]) for i in range(1030)]
        await upload(moto, BUCKET, {key_of(item): item.data for item in items})
        gw = await start_gateway(self, [s3_aet(moto, concurrency=8)])
        response = await gw.get(instance_path(AET, study), timeout=120)
        self.assert_parts_in_order(gw, response, AET, items)
        metadata = await gw.get(instance_path(AET, study) + "/metadata", timeout=120)
        self.assertEqual(metadata.code, 200)
        self.assertEqual(len(metadata.json()), 1030)

    async def test_instance_prefix_collisions(self) -> None:
        moto = await self.moto()
        study = generate_uid()
        base = get_instance(0, 0, 8, 8)

        def item(series: str, sop: str) -> Stored:
            ds = base.copy()
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
            ds.file_meta.MediaStorageSOPInstanceUID = sop
            return Stored(sop, study, series, sop, part10(ds))

        a, a_longer = item("1.2.5", "1.2.3"), item("1.2.5", "1.2.34")
        b = item("1.2.56", "1.2.3.4")
        other_study = Stored("o", study + "1", "1.2.5", "1.2.9", a.data)
        objects = {key_of(x): x.data for x in (a, a_longer, b, other_study)}
        objects[f"{study}/1.2.5/1.2.3.dcm.bak"] = a.data  # not .dcm
        objects[f"{study}/1.2.5/nested/1.2.7.dcm"] = a.data  # too deep
        await upload(moto, BUCKET, objects)
        gw = await start_gateway(self, [s3_aet(moto)])
        self.assert_parts_in_order(gw, await gw.get(instance_path(AET, study, "1.2.5", "1.2.3")), AET, [a])
        self.assert_parts_in_order(gw, await gw.get(instance_path(AET, study, "1.2.5")), AET, [a, a_longer])
        self.assert_parts_in_order(gw, await gw.get(instance_path(AET, study)), AET, [a, a_longer, b])
        self.assertEqual((await gw.get(instance_path(AET, study, "1.2.5", "1.2.34.5"))).code, 404)
        self.assertEqual((await gw.get(instance_path(AET, study, "1.2"))).code, 404)

    async def test_metadata_equals_the_originals_minus_bulk_data(self) -> None:
        moto = await self.moto()
        data = metadata_data()
        items = [item for group in data.values() for item in group]
        await upload(moto, BUCKET, {key_of(item): item.data for item in items})
        gw = await start_gateway(self, [s3_aet(moto)])
        # The metadata sink writes each object when its conversion (in the reactor's
        # thread pool) ends, up to four at once, so under load on that pool they can end
        # out of the key order this test compares with (it did now and then before the
        # index, too); the index's first scan, parsing heads in that pool, is load the
        # gateway adds itself: let it end first.
        self.assertTrue(await eventually(lambda: bool(gw.log_lines(f"index: scanned {AET}"))), gw.log_tail())
        multi = data["multi"]
        cases = [
            (instance_path(AET, data["ct"][0].study), data["ct"]),
            (instance_path(AET, data["mr"][0].study), data["mr"]),
            (instance_path(AET, multi[0].study), multi),
            (
                instance_path(AET, multi[0].study, multi[3].series),
                [m for m in multi if m.series == multi[3].series],
            ),
            (instance_path(AET, multi[1].study, multi[1].series, multi[1].sop), [multi[1]]),
        ]
        for path, expected in cases:
            response = await gw.get(path + "/metadata")
            self.assertEqual(response.code, 200, response.body[:300])
            self.assertEqual(response.header("Content-Type"), "application/dicom+json")
            objects = response.json()
            self.assertEqual(
                [o["00080018"]["Value"][0] for o in objects], [s.sop for s in sorted(expected, key=key_of)]
            )
            for obj, item in zip(objects, sorted(expected, key=key_of), strict=True):
                problems = compare_metadata(
                    obj, pydicom_json(item.dataset()), item.label, frozenset({"FFFCFFFC"})
                )
                self.assertEqual(problems, [], path)
                self.assertTrue(
                    obj["7FE00010"]["BulkDataURI"].endswith(f"/instances/{item.sop}/bulkdata/7FE00010")
                )


class PausingSink(RecordingSink):
    """Pauses what it is attached to as soon as the first data set bytes arrive."""

    def __init__(self) -> None:
        super().__init__()
        self.throttle: Any = None

    def attach(self, throttle: Any) -> None:
        if throttle is not None:
            self.throttle = throttle

    def begin(self, sop_class: str, sop_instance: str, transfer_syntax: str) -> RecordingPart:
        consumer = super().begin(sop_class, sop_instance, transfer_syntax)
        if len(self.parts) == 1:
            original = consumer.dataReceived

            def first(data: bytes) -> None:
                original(data)
                if not getattr(self, "paused", False):
                    self.paused = True
                    self.throttle.pauseProducing()

            consumer.dataReceived = first  # type: ignore[method-assign]
        return consumer


class BackpressureTests(S3TestCase):
    async def test_prefetch_is_bounded_and_follows_the_sink(self) -> None:
        moto = await self.moto()
        items = big_study(12, rows=1100)  # 2.4 MB each
        await upload(moto, BUCKET, {key_of(item): item.data for item in items})
        backend = backend_for(s3_aet(moto, concurrency=8))
        self.addCleanup(backend.stop)
        sink = PausingSink()
        retrieving = backend.retrieve(items[0].study, None, None, sink=sink)

        def all_held() -> bool:
            run = sink.throttle
            return (
                run is not None
                and len(run.window) == 8
                and all(f._paused or f.ended for f in run.window)
                and all(f.transport is not None or f.ended for f in run.window)
            )

        self.assertTrue(await eventually(all_held, timeout=30))
        run = sink.throttle
        current, ahead = run.window[0], list(run.window)[1:]
        self.assertIs(run.current, current)
        self.assertEqual(run.prefetch_cap, 1 << 20)  # 8 MiB shared by 8
        size = len(items[0].data)
        self.assertLess(current.bytes, size)  # paused by the sink, not finished
        for fetch in ahead:
            # Each holds about its share and no more (a read is at most 64 KiB past it).
            self.assertGreaterEqual(fetch.held_bytes, run.prefetch_cap)
            self.assertLess(fetch.bytes, run.prefetch_cap + (256 << 10))
        self.assertEqual(len(sink.parts), 1)

        run.resumeProducing()
        self.assertEqual(await retrieving, 12)
        ordered = sorted(items, key=key_of)
        for consumer, item in zip(sink.parts, ordered, strict=True):
            self.assertEqual(consumer.meta[1], item.sop)
            self.assertTrue(item.data.endswith(b"".join(consumer.data)))
            self.assertGreater(len(b"".join(consumer.data)), size - 2000)


class HeadOnlySink(RecordingSink):
    """A sink that needs no bulk data (as the metadata sink)."""

    wants_bulk_data = False

    def __init__(self) -> None:
        super().__init__()
        self.run: Any = None

    def attach(self, run: Any) -> None:
        if run is not None:
            self.run = run


class MetadataHeadTests(S3TestCase):
    async def test_only_the_head_is_read_when_pixel_data_ends_the_object(self) -> None:
        moto = await self.moto()
        study = big_study(6, rows=1100)  # 2.4 MB each, Pixel Data last
        data = metadata_data()
        # CT_small ends with trailing padding after its Pixel Data: read whole.
        others = data["ct"] + data["mr"] + data["multi"]
        items = study + others
        await upload(moto, BUCKET, {key_of(item): item.data for item in items})
        backend = backend_for(s3_aet(moto, concurrency=4))
        self.addCleanup(backend.stop)
        for group in (study, data["ct"], data["mr"], data["multi"]):
            sink = HeadOnlySink()
            delivered = await backend.retrieve(group[0].study, None, None, sink=sink)
            self.assertEqual(delivered, len(group))
            ordered = sorted(group, key=key_of)
            for consumer, item in zip(sink.parts, ordered, strict=True):
                _sop_class, sop, syntax = consumer.meta
                self.assertEqual(sop, item.sop)
                offset = parse_file_meta(item.data)[0]  # type: ignore[index]
                got = instance_metadata_json(b"".join(consumer.data), syntax, "B")
                self.assertEqual(got, instance_metadata_json(item.data[offset:], syntax, "B"), item.label)
            total = sum(len(item.data) for item in group)
            if group is study:
                self.assertLessEqual(sink.run.bytes_read, 6 * HEAD_BYTES)
                self.assertGreater(total, 14_000_000)
            elif group is data["ct"]:
                self.assertEqual(sink.run.bytes_read, total)
        # One instance, no listing (the size comes from Content-Range).
        sink = HeadOnlySink()
        await backend.retrieve(study[2].study, study[2].series, study[2].sop, sink=sink)
        self.assertLessEqual(sink.run.bytes_read, HEAD_BYTES)
        self.assertEqual(
            instance_metadata_json(b"".join(sink.parts[0].data), EXPLICIT_VR_LE, "B"),
            instance_metadata_json(study[2].data[parse_file_meta(study[2].data)[0] :], EXPLICIT_VR_LE, "B"),  # type: ignore[index]
        )


class DecodingTests(S3TestCase):
    async def test_compressed_objects_decoded_or_refused_never_cut_off(self) -> None:
        """A plain install decodes every syntax pydicom can: RLE, JPEG-LS, JPEG 2000 and JPEG
        lossless objects asked for as Explicit VR LE arrive decoded.  One no decoder handles
        (here a JPEG relabelled MPEG-2 video) is a 406 naming the Accept that gets it, and
        arrives as stored with ``transfer-syntax=*``."""
        install_decoders()  # for the originals' pixel_array in this process
        moto = await self.moto()
        names = ("MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm",
                 "SC_rgb_jpeg_gdcm.dcm")  # fmt: skip
        compressed = [fresh(dcmread(get_testdata_file(name)), name) for name in names]
        video = dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
        video.file_meta.TransferSyntaxUID = MPEG2
        mpeg = fresh(video, "mpeg")
        await upload(moto, BUCKET, {key_of(item): item.data for item in [*compressed, mpeg]})
        gw = await start_gateway(self, [s3_aet(moto)])

        for item in compressed:
            response = await gw.get(instance_path(AET, item.study))
            self.assertEqual(response.code, 200, f"{item.label}: {response.body[:300]!r}\n{gw.log_tail()}")
            body = parse_multipart(response.header("Content-Type"), response.body)
            self.assertTrue(body.closed, item.label)
            self.assertEqual(body.parts[0].headers.get("Content-Type"), PART_CONTENT_TYPE, item.label)
            got, original = body.parts[0].dataset(), item.dataset()
            self.assertEqual(got.file_meta.TransferSyntaxUID, EXPLICIT_VR_LE)
            self.assertEqual(got.PixelData, original.pixel_array.tobytes(), item.label)

        for path in (instance_path(AET, mpeg.study), instance_path(AET, mpeg.study, mpeg.series, mpeg.sop)):
            refused = await gw.get(path)
            self.assertEqual(refused.code, 406, refused.body[:300])
            self.assertIn(f"transfer-syntax={MPEG2}", refused.json()["error"])
            response = await gw.get(path, headers={"Accept": ANY_SYNTAX})
            self.assertEqual(response.code, 200, response.body[:300])
            parts = parse_multipart(response.header("Content-Type"), response.body).parts
            self.assertEqual(parts[0].headers["Content-Type"], f"application/dicom; transfer-syntax={MPEG2}")
            self.assertTrue(mpeg.data.endswith(parts[0].body[-1000:]))


class GatewayStowTests(S3TestCase):
    async def test_stow_round_trip_and_conflict(self) -> None:
        """POST /studies/{study} into the bucket: every object byte for byte what was sent, a
        repeat is 200 again, changed content for a stored SOP Instance UID is 409."""
        boundary = b"s3-stow-boundary"
        content_type = b'multipart/related; type="application/dicom"; boundary=' + boundary
        moto = await self.moto()
        await upload(moto, BUCKET, {})
        gw = await start_gateway(self, [s3_aet(moto)])
        data = orthanc_data()
        study = data["multi"][0].study
        items = data["multi"] + big_study(1, rows=1300)  # one over the 1 MiB spool threshold
        items[-1] = fresh(items[-1].dataset(), "big", study, items[-1].series)
        body = multipart_body([([("Content-Type", "application/dicom")], i.data) for i in items], boundary)

        async def post(payload: bytes) -> Response:
            return await gw.request(
                "POST",
                f"/aets/{AET}/studies/{study}",
                data=payload,
                headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
                timeout=60,
            )

        response = await post(body)
        self.assertEqual(response.code, 200, response.body[:500])
        stored = response.json()["00081199"]["Value"]
        self.assertEqual([r["00081155"]["Value"][0] for r in stored], [i.sop for i in items])
        for item in items:
            self.assertEqual(await get_object(moto, BUCKET, key_of(item)), item.data, item.label)
        # Served back through WADO-RS as stored.
        self.assert_parts_in_order(gw, await gw.get(instance_path(AET, study), timeout=60), AET, items)

        self.assertEqual((await post(body)).code, 200)  # the same instances again: idempotent

        changed = items[0].dataset()
        changed.PatientName = "Other^Patient"
        response = await post(
            multipart_body([([("Content-Type", "application/dicom")], part10(changed))], boundary)
        )
        self.assertEqual(response.code, 409, response.body[:500])
        failed = response.json()["00081198"]["Value"]
        self.assertEqual(failed[0]["00081155"]["Value"], [items[0].sop])
        self.assertEqual(failed[0]["00081197"]["Value"], [model.FAILURE_CONFLICT])
        self.assertEqual(await get_object(moto, BUCKET, key_of(items[0])), items[0].data)


class StoreToTests(S3TestCase):
    async def test_storescu_into_the_bucket(self) -> None:
        """A listener with ``store-to`` an S3 AET: DCMTK's storescu pushes, the object in the
        bucket is the instance (the gateway's file meta, the data set as sent)."""
        moto = await self.moto()
        await upload(moto, BUCKET, {})
        gw = await start_gateway(self, [s3_aet(moto)], listener={"store-to": AET})
        item = orthanc_data()["multi"][0]
        path = os.path.join(peers._temp_dir(self, "storescu"), "one.dcm")
        with open(path, "wb") as f:
            f.write(item.data)
        argv = ["storescu", "-v", "-aet", "MODALITY", "-aec", "GWSCP", peers.LOCALHOST, str(gw.dimse_port)]
        argv.append(path)
        result = await peers.run_tool(self, argv)
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertIn("Received Store Response (Success)", result.stdout + result.stderr, result.describe())
        stored = await get_object(moto, BUCKET, key_of(item))
        sent = parse_file_meta(item.data, complete=True)
        got = parse_file_meta(stored, complete=True)
        assert sent is not None and got is not None
        self.assertEqual(stored[got[0]:], item.data[sent[0]:])
        self.assertEqual(dcmread(io.BytesIO(stored)).file_meta.SourceApplicationEntityTitle, "MODALITY")


class MidStreamTests(S3TestCase):
    async def test_server_stopped_mid_stream(self) -> None:
        moto = await self.moto(auth=False)
        items = big_study(48)  # ~25 MB: more than the gateway and the sockets hold
        objects = {key_of(item): item.data for item in items}
        # Public and anonymous: a restarted moto has new IAM keys, so no credentials.
        await upload(moto, BUCKET, objects, acl="public-read")
        gw = await start_gateway(self, [s3_aet(moto, anonymous=True, concurrency=4)])
        path = instance_path(AET, items[0].study)

        client = await deferToThread(RawClient, gw.http_port, path)
        await deferToThread(client.until, 1 << 20)
        await moto.stop()
        raw = await deferToThread(read_to_end, client)
        status, _headers, body, complete = parse_http(raw)
        self.assertEqual(status, 200)
        self.assertFalse(complete, "the response must end cut off, not as a complete body")
        self.assertLess(len(body), sum(len(i.data) for i in items))

        # S3 back (on the same port, its data put back): the next request works.
        again = await peers.start_moto(self, port=moto.port)
        await upload(again, BUCKET, objects, acl="public-read")
        response = await gw.get(path, timeout=120)
        self.assert_parts_in_order(gw, response, AET, items)

    async def test_client_disconnect_mid_stream(self) -> None:
        moto = await self.moto()
        # Objects larger than a prefetch holds (2 MiB at concurrency 4): the GETs ahead of
        # their turn stay open, paused, until their turn comes or the retrieve ends.
        items = big_study(12, rows=1100)
        await upload(moto, BUCKET, {key_of(item): item.data for item in items})
        gw = await start_gateway(self, [s3_aet(moto, concurrency=4)])
        path = instance_path(AET, items[0].study)
        pid = gw.child.pid
        for _ in range(3):
            client = await deferToThread(RawClient, gw.http_port, path)
            await deferToThread(client.until, 1 << 20)
            # The client stopped reading: the retrieve is paused, its GETs held (prefetching).
            self.assertTrue(
                await eventually(lambda: len(held_to(moto.port, pid)) >= 2),
                held_to(moto.port, pid),
            )
            client.close()
        # The S3 connections of the abandoned retrieves are dropped, not left paused.
        # Connections held paused would add up (2 or more per abandoned retrieve); at most an
        # idle one or two may stay in the pool.
        self.assertTrue(
            await eventually(lambda: len(held_to(moto.port, pid)) <= 2, timeout=20),
            held_to(moto.port, pid),
        )
        response = await gw.get(path, timeout=120)
        self.assert_parts_in_order(gw, response, AET, items)


def read_to_end(client: RawClient) -> bytes:
    """What the gateway sent until it closed or reset the connection (an abort is a reset)."""
    try:
        return client.rest()
    except ConnectionResetError:
        client.close()
        return bytes(client.data)


def held_to(port: int, pid: int) -> list[str]:
    """TCP connections of process `pid` to 127.0.0.1:`port` that it still holds open (from /proc).

    Any state counts, not only ESTABLISHED: a paused GET whose whole body fits in the kernel's
    receive buffer sees the server's FIN (moto closes after each response) and sits in
    CLOSE_WAIT, still held, until the gateway closes it."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    with open("/proc/net/tcp", encoding="ascii") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            remote, state, inode = fields[2], fields[3], fields[9]
            if int(remote.split(":")[1], 16) == port and inode in inodes:
                found.append(f"{fields[1]}/{state}")
    return found


class StoreTests(S3TestCase):
    """`S3Backend.store_instance` in this process, against moto."""

    async def backend(self, moto: peers.Moto, **kwargs: Any) -> S3Backend:
        await upload(moto, BUCKET, {})
        backend = backend_for(s3_aet(moto), **kwargs)
        self.addCleanup(backend.stop)
        return backend

    def uploaded(self, item: Stored, spool: bool = False) -> UploadedInstance:
        ds = item.dataset()
        common = dict(
            sop_class_uid=str(ds.SOPClassUID),
            sop_instance_uid=item.sop,
            study_instance_uid=item.study,
            series_instance_uid=item.series,
            transfer_syntax=item.stored_ts,
            dataset_offset=0,
            size=len(item.data),
        )
        if not spool:
            return UploadedInstance(data=item.data, **common)  # type: ignore[arg-type]
        path = os.path.join(self.mktemp())
        with open(path, "wb") as f:
            f.write(item.data)
        return UploadedInstance(path=path, **common)  # type: ignore[arg-type]

    async def test_round_trip_conflict_and_idempotence(self) -> None:
        moto = await self.moto()
        backend = await self.backend(moto)
        items = orthanc_data()
        for item in (items["ct"][0], items["mr"][0]):
            outcome = await backend.store_instance(self.uploaded(item, spool=True))
            self.assertEqual(outcome.status, model.SUCCESS, outcome)
            self.assertEqual(await get_object(moto, BUCKET, key_of(item)), item.data)
            # The same bytes again: success (a retried STOW), nothing rewritten.
            again = await backend.store_instance(self.uploaded(item))
            self.assertEqual(again.status, model.SUCCESS, again)
        ct = items["ct"][0]
        changed = dcmread(io.BytesIO(ct.data))
        changed.PatientName = "Someone^Else"
        different = Stored("ct2", ct.study, ct.series, ct.sop, part10(changed))
        outcome = await backend.store_instance(self.uploaded(different))
        self.assertEqual(outcome.status, model.FAILURE_CONFLICT, outcome)
        self.assertFalse(outcome.stored)
        self.assertEqual(await get_object(moto, BUCKET, key_of(ct)), ct.data)  # not overwritten

        # Stored objects are served back as they were.
        sink = RecordingSink()
        await backend.retrieve(ct.study, None, None, sink=sink)
        self.assertEqual(len(sink.parts), 1)
        dataset = b"".join(sink.parts[0].data)
        self.assertTrue(ct.data.endswith(dataset) and len(dataset) > 30000)

    async def test_multipart_upload(self) -> None:
        """Also indexed, with the ETag CompleteMultipartUpload answered: the one S3 lists,
        so a scan afterwards finds the object unchanged."""
        from dicomrst.index.database import SqlIndex, SqliteDatabase

        moto = await self.moto()
        directory = self.mktemp()
        os.makedirs(directory)
        index = SqlIndex(SqliteDatabase(reactor, os.path.join(directory, "index.sqlite")))
        await index.start()
        self.addCleanup(index.stop)
        backend = await self.backend(moto, multipart_threshold=5 << 20, part_size=5 << 20, index=index)
        study = big_study(1, rows=2400)[0]  # ~11.5 MB: three parts
        self.assertGreater(len(study.data), 10 << 20)
        outcome = await backend.store_instance(self.uploaded(study, spool=True))
        self.assertEqual(outcome.status, model.SUCCESS, outcome)
        self.assertEqual(await get_object(moto, BUCKET, key_of(study)), study.data)
        etag = await deferToThread(lambda: moto.boto3().head_object(Bucket=BUCKET, Key=key_of(study))["ETag"])
        self.assertTrue(etag.strip('"').endswith("-3"), etag)
        self.assertEqual(await index.stamps(AET), {key_of(study): etag})
        report = await backend.reconciler().scan()
        self.assertEqual((report.listed, report.added, report.changed, report.bytes_read), (1, 0, 0, 0))
        self.assertEqual(
            (await backend.store_instance(self.uploaded(study, spool=True))).status, model.SUCCESS
        )
        changed = dcmread(io.BytesIO(study.data))
        changed.PatientID = "OTHER"
        other = Stored("x", study.study, study.series, study.sop, part10(changed))
        self.assertEqual((await backend.store_instance(self.uploaded(other))).status, model.FAILURE_CONFLICT)

    async def test_wrong_secret_is_a_failure_outcome(self) -> None:
        moto = await self.moto()
        await upload(moto, BUCKET, {})
        backend = backend_for(s3_aet(moto, credentials={"access-key": moto.access_key, "secret-key": "nope"}))
        self.addCleanup(backend.stop)
        item = orthanc_data()["ct"][0]
        outcome = await backend.store_instance(self.uploaded(item))
        self.assertEqual(outcome.status, model.FAILURE_PROCESSING)
        # The HEAD that comes first is refused; a HEAD answer has no body, so no S3 error code.
        self.assertIn("(403)", outcome.reason)
        self.assertNotIn("nope", outcome.reason)


class UnreachableTests(TestCase):
    """504 when S3 cannot be reached or does not answer (in this process, short timeouts)."""

    timeout = 60

    async def test_refused_is_504_after_retries(self) -> None:
        port = peers.free_port()
        config = {
            "aet": AET,
            "backend": "S3",
            "endpoint": f"http://127.0.0.1:{port}",
            "bucket": BUCKET,
            "endpoint-style": "path",
        }
        backend = backend_for(config, attempts=2)
        self.addCleanup(backend.stop)
        with self.assertRaises(UpstreamTimeout):
            await backend.retrieve("1.2.3", None, None, sink=RecordingSink())
        with self.assertRaises(UpstreamTimeout):
            await backend.echo()
        outcome = backend.store_instance(
            UploadedInstance("1.2", "1.2.3.4", "1.2.3", "1.2.3.5", EXPLICIT_VR_LE, 0, 4, data=b"DICM")
        )
        with self.assertRaises(ServiceUnavailable):
            await outcome
        with self.assertRaises(NotImplementedService):
            await backend.find(None, limit=None, on_result=lambda _: None)  # type: ignore[arg-type]
        verifyObject(IBackend, backend)

    async def test_silent_server_is_504(self) -> None:
        # A listener that accepts and never answers: the read timeout ends each attempt.
        server = socket.socket()
        server.bind((peers.LOCALHOST, 0))
        server.listen(16)
        self.addCleanup(server.close)
        port = server.getsockname()[1]
        config = {
            "aet": AET,
            "backend": "S3",
            "endpoint": f"http://127.0.0.1:{port}",
            "bucket": BUCKET,
            "endpoint-style": "path",
        }
        backend = backend_for(config, attempts=2, read_timeout=0.5)
        self.addCleanup(backend.stop)
        with self.assertRaises(UpstreamTimeout) as raised:
            await backend.retrieve("1.2.3", None, None, sink=RecordingSink())
        self.assertIn("did not answer in time", str(raised.exception))


class _FaultyS3(Resource):
    """Fault injection moto cannot do: answers from a script, then an empty listing."""

    isLeaf = True

    def __init__(self, script: list[str]) -> None:
        super().__init__()
        self.script = script
        self.requests: list[str] = []

    def render(self, request: Any) -> bytes | int:
        self.requests.append(request.uri.decode())
        step = self.script.pop(0) if self.script else "empty"
        if step == "reset":
            request.channel.transport.abortConnection()
            return NOT_DONE_YET
        if step == "slowdown":
            request.setResponseCode(503)
            return b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
        request.setHeader(b"Content-Type", b"application/xml")
        return (
            b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            b"<KeyCount>0</KeyCount><IsTruncated>false</IsTruncated></ListBucketResult>"
        )


class RetryTests(TestCase):
    """Bounded retries with backoff for S3's 503 SlowDown and connection resets."""

    timeout = 60

    async def faulty(self, script: list[str], attempts: int) -> tuple[S3Backend, _FaultyS3]:
        resource = _FaultyS3(script)
        port = reactor.listenTCP(0, Site(resource), interface=peers.LOCALHOST)
        self.addCleanup(port.stopListening)
        config = {
            "aet": AET,
            "backend": "S3",
            "endpoint": f"http://127.0.0.1:{port.getHost().port}",
            "bucket": BUCKET,
            "endpoint-style": "path",
        }
        backend = backend_for(config, attempts=attempts)
        self.addCleanup(backend.stop)
        return backend, resource

    async def test_slowdown_and_reset_are_retried(self) -> None:
        backend, resource = await self.faulty(["slowdown", "reset", "slowdown"], attempts=4)
        with self.assertRaises(NotFound):  # the listing, fourth time lucky, is empty
            await backend.retrieve("1.2.3", None, None, sink=RecordingSink())
        self.assertEqual(len(resource.requests), 4)
        self.assertTrue(all("prefix=1.2.3%2F" in uri for uri in resource.requests), resource.requests)

    async def test_retries_are_bounded(self) -> None:
        backend, resource = await self.faulty(["slowdown"] * 10, attempts=3)
        with self.assertRaises(ServiceUnavailable) as raised:
            await backend.retrieve("1.2.3", None, None, sink=RecordingSink())
        self.assertEqual(len(resource.requests), 3)
        self.assertIn("SlowDown", str(raised.exception))
        backend, resource = await self.faulty(["reset"] * 10, attempts=2)
        with self.assertRaises(UpstreamTimeout):
            await backend.retrieve("1.2.3", None, None, sink=RecordingSink())
        self.assertEqual(len(resource.requests), 2)


def restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


class _CuttingS3(Resource):
    """Serves one object, cutting the first GET off after `cut` bytes; honours Range."""

    isLeaf = True

    def __init__(self, key: str, data: bytes, cut: int) -> None:
        super().__init__()
        self.key, self.data, self.cut = key, data, cut
        self.requests: list[tuple[str, str | None]] = []

    def render(self, request: Any) -> bytes | int:
        path = request.path.decode()
        byte_range = request.getHeader("range")
        self.requests.append((path, byte_range))
        if not path.endswith(self.key):
            request.setResponseCode(404)
            return b"<Error><Code>NoSuchKey</Code></Error>"
        request.setHeader(b"ETag", b'"etag-1"')
        if byte_range is None:
            request.setHeader(b"Content-Length", str(len(self.data)).encode())
            request.write(self.data[: self.cut])
            reactor.callLater(0.05, request.channel.transport.abortConnection)
            return NOT_DONE_YET
        self.if_match = request.getHeader("if-match")
        start = int(byte_range.split("=")[1].rstrip("-"))
        request.setResponseCode(206)
        request.setHeader(b"Content-Range", f"bytes {start}-{len(self.data) - 1}/{len(self.data)}".encode())
        return self.data[start:]


class ResumeTests(TestCase):
    timeout = 60

    async def test_cut_off_object_is_resumed_with_a_range(self) -> None:
        item = orthanc_data()["ct"][0]
        key = key_of(item)
        resource = _CuttingS3(key, item.data, cut=20000)
        port = reactor.listenTCP(0, Site(resource), interface=peers.LOCALHOST)
        self.addCleanup(port.stopListening)
        config = {
            "aet": AET,
            "backend": "S3",
            "endpoint": f"http://127.0.0.1:{port.getHost().port}",
            "bucket": BUCKET,
            "endpoint-style": "path",
        }
        backend = backend_for(config)
        self.addCleanup(backend.stop)
        sink = RecordingSink()
        await backend.retrieve(item.study, item.series, item.sop, sink=sink)
        self.assertEqual([r for _, r in resource.requests], [None, "bytes=20000-"])
        self.assertEqual(resource.if_match, '"etag-1"')
        offset = parse_file_meta(item.data)[0]  # type: ignore[index]
        self.assertEqual(b"".join(sink.parts[0].data), item.data[offset:])


class _NoRangeS3(Resource):
    """An S3 look-alike that ignores Range: the whole object, 200."""

    isLeaf = True

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.data = data

    def render(self, request: Any) -> bytes:
        return self.data


class RangedReadTests(S3TestCase):
    async def test_read_range_against_moto(self) -> None:
        moto = await self.moto()
        item = big_study(1, rows=300)[0]
        await upload(moto, BUCKET, {key_of(item): item.data})
        backend = backend_for(s3_aet(moto))
        self.addCleanup(backend.stop)
        self.assertTrue(IRangedReads.providedBy(backend))
        verifyObject(IRangedReads, backend)
        got = await backend.read_range(item.study, item.series, item.sop, 1000, 5000)
        self.assertEqual((got.data, got.start, got.size), (item.data[1000:5000], 1000, len(item.data)))
        self.assertIsNotNone(got.version)
        # Past the end: what there is.
        tail = await backend.read_range(
            item.study, item.series, item.sop, len(item.data) - 10, len(item.data) + 100
        )
        self.assertEqual(tail.data, item.data[-10:])
        same = await backend.read_range(item.study, item.series, item.sop, 0, 10, version=got.version)
        self.assertEqual(same.data, item.data[:10])
        with self.assertRaises(ObjectChanged):
            await backend.read_range(item.study, item.series, item.sop, 0, 10, version='"another"')
        with self.assertRaises(NotFound):
            await backend.read_range(item.study, item.series, generate_uid(), 0, 10)

    async def test_a_store_that_ignores_ranges(self) -> None:
        port = reactor.listenTCP(0, Site(_NoRangeS3(b"x" * 100_000)), interface=peers.LOCALHOST)
        self.addCleanup(port.stopListening)
        config = {
            "aet": AET,
            "backend": "S3",
            "endpoint": f"http://127.0.0.1:{port.getHost().port}",
            "bucket": BUCKET,
            "endpoint-style": "path",
        }
        backend = backend_for(config)
        self.addCleanup(backend.stop)
        with self.assertRaises(RangesRefused):
            await backend.read_range("1.2", "1.3", "1.4", 0, 10)


class ChainCredentialTests(S3TestCase):
    async def test_botocore_chain_from_the_environment(self) -> None:
        moto = await self.moto()
        items = orthanc_data()["ct"]
        await upload(moto, BUCKET, {key_of(item): item.data for item in items})
        env = {
            "AWS_ACCESS_KEY_ID": moto.access_key,
            "AWS_SECRET_ACCESS_KEY": moto.secret_key,
            # No instance metadata lookups on a machine without any.
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        for name, value in env.items():
            self.addCleanup(restore_env, name, os.environ.get(name))
            os.environ[name] = value
        backend = backend_for(s3_aet(moto, credentials={"chain": True}))
        self.addCleanup(backend.stop)
        sink = RecordingSink()
        self.assertEqual(await backend.retrieve(items[0].study, None, None, sink=sink), 1)
        self.assertEqual(sink.parts[0].meta[1], items[0].sop)
        self.assertGreater(await backend.echo(), 0)
        os.environ["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
        wrong = backend_for(s3_aet(moto, credentials={"chain": True}))
        self.addCleanup(wrong.stop)
        with self.assertRaises(UpstreamError) as raised:
            await wrong.retrieve(items[0].study, None, None, sink=RecordingSink())
        self.assertIn("SignatureDoesNotMatch", str(raised.exception))
        self.assertNotIn("not-the-secret", str(raised.exception))
        self.assertFalse(json.dumps(str(raised.exception)).count(moto.secret_key))
