"""The S3 backend's parsing, with no server: request URLs for each endpoint style, the Part-10
file meta at the head of an object, and which listed keys are an instance's.

The S3 backend against moto's S3 server is tests/integration/test_s3.py.
"""

from __future__ import annotations

import io
from typing import Any

from pydicom import dcmread
from pydicom.data import get_testdata_file
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import TestCase

from dicomrst.backends.s3 import S3Backend
from dicomrst.backends.s3.objects import NotDicomObject, parse_file_meta
from dicomrst.backends.s3.retrieve import matching_keys, parse_content_range
from dicomrst.config import parse_config
from tests.support.datasets import EXPLICIT_VR_LE

AET = "S3AET"


def backend_for(config: dict[str, Any], **kwargs: Any) -> S3Backend:
    """An `S3Backend` on a memory reactor (it connects to nothing here)."""
    loaded = parse_config({"aets": [config]})
    return S3Backend(loaded.aets[0], MemoryReactorClock(), **kwargs)


class ParsingTests(TestCase):
    def test_urls(self) -> None:
        def url(endpoint: str, style: str) -> str:
            config = {
                "aet": AET,
                "backend": "S3",
                "endpoint": endpoint,
                "bucket": "bkt",
                "endpoint-style": style,
            }
            backend = backend_for(config)
            self.addCleanup(backend.stop)
            return backend.client.url("p/1.2/3.dcm", [("list-type", "2"), ("prefix", "a/b c")])

        self.assertEqual(
            url("https://s3.example", "vhost"),
            "https://bkt.s3.example/p/1.2/3.dcm?list-type=2&prefix=a%2Fb%20c",
        )
        self.assertEqual(
            url("http://minio:9000/base/", "path"),
            "http://minio:9000/base/bkt/p/1.2/3.dcm?list-type=2&prefix=a%2Fb%20c",
        )
        # No host name to put the bucket in: path style, as the AWS SDKs do.
        self.assertEqual(
            url("http://10.0.0.5:9000", "vhost"),
            "http://10.0.0.5:9000/bkt/p/1.2/3.dcm?list-type=2&prefix=a%2Fb%20c",
        )

    def test_file_meta(self) -> None:
        data = open(get_testdata_file("CT_small.dcm"), "rb").read()
        ds = dcmread(io.BytesIO(data))
        for cut in (0, 100, 132, 140, 200):
            self.assertIsNone(parse_file_meta(data[:cut]))
        offset, sop_class, sop, syntax = parse_file_meta(data)  # type: ignore[misc]
        self.assertEqual((sop_class, sop, syntax), (ds.SOPClassUID, ds.SOPInstanceUID, EXPLICIT_VR_LE))
        self.assertEqual(data[offset : offset + 4], b"\x08\x00\x05\x00")  # (0008,0005) comes first
        with self.assertRaises(NotDicomObject):
            parse_file_meta(b"\0" * 200)
        with self.assertRaises(NotDicomObject):
            parse_file_meta(data[:150], complete=True)

    def test_content_range(self) -> None:
        self.assertEqual(parse_content_range("bytes 0-65535/31457902"), (0, 31457902))
        self.assertEqual(parse_content_range("bytes 100-199/200"), (100, 200))
        for bad in (None, "", "bytes */200", "bytes 0-9/*", "items 0-9/10", "bytes x-9/10"):
            self.assertIsNone(parse_content_range(bad), bad)

    def test_exact_instance_keys(self) -> None:
        listed = [
            (k, 1)
            for k in (
                "p/1.2/1.3/1.4.dcm",
                "p/1.2/1.3/1.4.dcm.bak",
                "p/1.2/1.3/x/1.5.dcm",
                "p/1.2/1.3/.dcm",
                "p/1.2/1.6.dcm",
                "p/1.2/1.3/1.45.dcm",
            )
        ]
        self.assertEqual(
            matching_keys(listed, "p/1.2/", series_level=False), ["p/1.2/1.3/1.4.dcm", "p/1.2/1.3/1.45.dcm"]
        )
        self.assertEqual(
            matching_keys(listed, "p/1.2/1.3/", series_level=True),
            ["p/1.2/1.3/1.4.dcm", "p/1.2/1.3/1.45.dcm"],
        )
