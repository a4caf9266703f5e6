"""WADO-RS metadata over C-GET, end to end: the gateway as a process, real peers.

Orthanc holds CT_small (Explicit VR LE, many private and FL/FD attributes), MR_small_implicit
(Implicit VR LE) and a generated study of 2 series x 3 instances (text in UTF-8 and Latin-1;
one instance with an Icon Image Sequence, so Pixel Data sits inside a sequence too, one with
a VOI LUT Sequence whose 2 KiB LUT Data is bulk data), each study with fresh UIDs. Every
object the gateway returns is compared attribute by attribute with Orthanc's own DICOMweb
metadata for the same instance, apart from bulk data (see `compare_metadata` and
`ORTHANC_ONLY` for what may differ and why), and every BulkDataURI is checked against the
documented shape. Instances that arrive in Implicit VR LE come from the pynetdicom PACS of
tests/support/pacs/ (get-implicit profile).
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests.support import peers
from tests.support.gateway import Gateway, start_gateway
from tests.support.metadata import AET, OrthancMetadataTests, metadata_data
from tests.support.wado import Stored, get_aet


class MetadataTests(OrthancMetadataTests, TestCase):
    """Metadata routes against Orthanc 1.10 (C-GET); the tests are
    `tests.support.metadata.OrthancMetadataTests`, run over C-MOVE too."""

    async def start(self) -> tuple[peers.Orthanc, Gateway, dict[str, list[Stored]]]:
        orthanc = await peers.start_orthanc(self)
        data = metadata_data()
        for group in data.values():
            for item in group:
                answer = await orthanc.upload(item.data)
                self.assertEqual(answer.get("Status"), "Success", answer)
        gw = await start_gateway(self, [get_aet(AET, orthanc.host, orthanc.dicom_port)])
        return orthanc, gw, data
