"""WADO-RS rendered and thumbnail through the gateway process, from Orthanc over C-MOVE.

Orthanc holds CT_small and a generated series; the gateway retrieves by C-MOVE to its own
listener (as in test_wado_move.py).  The rendered CT is compared with Orthanc's own
DICOMweb ``/rendered`` of the same instance: loosely, since two renderers may round,
resample and encode differently; with the same explicit window the images must agree
closely, and with each server's default window (ours: the pixel range, CT_small has no
Window Center/Width) only roughly in mean brightness.
"""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from twisted.trial.unittest import TestCase

from tests.support.pacs.datasets import get_instance
from tests.support.wado import Stored, fresh, instance_path, upload_all
from tests.support.wado_move import start_move_gateway, start_orthanc_for_move

TIMEOUT = 180


def image_of(body: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(body))
    image.load()
    return image


def mean(image: Image.Image) -> float:
    return float(np.asarray(image.convert("L"), dtype=float).mean())


def per_pixel(a: Image.Image, b: Image.Image) -> float:
    """The mean absolute difference of two grey images' pixels."""
    return float(
        np.abs(np.asarray(a.convert("L"), dtype=float) - np.asarray(b.convert("L"), dtype=float)).mean()
    )


class RenderedFromOrthancTests(TestCase):
    timeout = TIMEOUT

    async def test_rendered_ct_and_series_thumbnail(self) -> None:
        orthanc, listener_port = await start_orthanc_for_move(self)
        ct = fresh(dcmread(get_testdata_file("CT_small.dcm")), "ct")
        study, series = generate_uid(), generate_uid()
        generated: list[Stored] = []
        for i in range(5):
            ds = get_instance(0, i, 32, 24)
            ds.InstanceNumber = i + 1
            generated.append(fresh(ds, f"gen{i}", study, series))
        await upload_all(self, orthanc, {"ct": [ct], "series": generated})
        gw = await start_move_gateway(self, orthanc, listener_port)
        path = instance_path("ORTHANC", ct.study, ct.series, ct.sop) + "/rendered"
        theirs_path = f"/dicom-web/studies/{ct.study}/series/{ct.series}/instances/{ct.sop}/rendered"

        async def both(query: str) -> tuple[Image.Image, Image.Image]:
            ours = await gw.get(path + query)
            self.assertEqual(ours.code, 200, f"{ours.body[:300]!r}\n{gw.log_tail()}")
            theirs = await orthanc.http.get(
                orthanc.url + theirs_path + query, headers={"Accept": "image/jpeg"}
            )
            self.assertEqual(theirs.code, 200)
            return image_of(ours.body), image_of(await theirs.content())

        ours = await gw.get(path)
        self.assertEqual(ours.code, 200, f"{ours.body[:300]!r}\n{gw.log_tail()}")
        self.assertEqual(ours.header("Content-Type"), "image/jpeg")
        image = image_of(ours.body)
        self.assertEqual((image.format, image.mode, image.size), ("JPEG", "L", (128, 128)))

        _, reference = await both("")
        self.assertEqual(reference.size, image.size)
        # Default windows: both use CT_small's pixel range (it has no Window Center/Width);
        # seen: the same mean (96.03), compared loosely all the same.
        self.assertLess(abs(mean(image) - mean(reference)), 8, (mean(image), mean(reference)))

        # The same explicit window, full size: the same picture up to JPEG (seen: a mean
        # difference of 0.0 per pixel).
        window = "?window=40,400,linear"
        image, reference = await both(window)
        self.assertEqual((image.size, reference.size), ((128, 128), (128, 128)))
        self.assertLess(per_pixel(image, reference), 3)
        # Scaled by a viewport: the same size and brightness; the pixels differ by the two
        # resampling filters (seen: 9.4 per pixel, means 101.45 and 101.39).
        image, reference = await both(window + "&viewport=64,64")
        self.assertEqual((image.size, reference.size), ((64, 64), (64, 64)))
        self.assertLess(abs(mean(image) - mean(reference)), 3, (mean(image), mean(reference)))
        self.assertLess(per_pixel(image, reference), 20)

        # A series thumbnail: its middle image (InstanceNumber 3 of 5; each has pixels of
        # its own), the same as that instance's thumbnail (served from the cache the series
        # retrieve filled).
        thumb = await gw.get(instance_path("ORTHANC", study, series) + "/thumbnail")
        self.assertEqual(thumb.code, 200, f"{thumb.body[:300]!r}\n{gw.log_tail()}")
        self.assertEqual(thumb.header("Content-Type"), "image/jpeg")
        middle = generated[2]
        single = await gw.get(instance_path("ORTHANC", study, series, middle.sop) + "/thumbnail")
        self.assertEqual(single.code, 200)
        self.assertEqual(thumb.body, single.body)
        first = await gw.get(instance_path("ORTHANC", study, series, generated[0].sop) + "/thumbnail")
        self.assertNotEqual(thumb.body, first.body)
        self.assertEqual(image_of(thumb.body).size, (24, 32))  # 32 rows, 24 columns

        rendered = await gw.get(instance_path("ORTHANC", study, series) + "/rendered?accept=image/png")
        self.assertEqual(rendered.code, 200, f"{rendered.body[:300]!r}\n{gw.log_tail()}")
        content_type = rendered.header("Content-Type") or ""
        self.assertTrue(content_type.startswith('multipart/related; type="image/png"'), content_type)
        locations = re.findall(rb"Content-Location: (\S+)", rendered.body)
        self.assertEqual(
            [loc.decode().rsplit("/", 2)[-2] for loc in locations], [item.sop for item in generated]
        )
