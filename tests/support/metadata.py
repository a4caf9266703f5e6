"""WADO-RS metadata through the gateway process, for integration tests: data and comparisons.

`metadata_data` (CT_small, MR_small_implicit and a generated 2 x 3 study with text in UTF-8
and Latin-1, an Icon Image Sequence and a VOI LUT Sequence with bulk LUT Data, each study with
fresh UIDs), `compare_metadata` (the gateway's DICOM JSON against a reference such as Orthanc's
or `pydicom_json`, tolerating only bulk-data representation; see `ORTHANC_ONLY`), `bulk_uris`,
`bulk_base`, `encoded` and `data_set_of` (an instance's Explicit VR LE twin, a Part-10 file's
data set), and the `OrthancMetadataTests` mixin, the metadata tests run over C-GET
(tests/integration/test_wado_metadata.py) and over C-MOVE (tests/integration/test_wado_move.py).
"""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from dicomrst.wado.metadata import instance_metadata_json
from tests.support import peers
from tests.support.datasets import CT_IMAGE_STORAGE, EXPLICIT_VR_LE, IMPLICIT_VR_LE
from tests.support.gateway import Gateway, Response, start_gateway
from tests.support.pacs.datasets import get_instance, get_study_uid
from tests.support.wado import PACS_AET, Stored, fresh, generated, get_aet, instance_path

TIMEOUT = 180
AET = "ORTHANC"
DICOM_JSON = "application/dicom+json"
PIXEL_DATA = "7FE00010"
ICON_IMAGE_SEQUENCE = "00880200"
VOI_LUT_SEQUENCE = "00283010"
LUT_DATA = "00283006"
#: Binary VRs: a value that is a BulkDataURI on one side may be InlineBinary on the other.
BINARY_VRS = frozenset("OB OD OF OL OV OW UN".split())
#: VRs the gateway may move to bulk data when long (dicomrst/wado/metadata.py's BULK_VRS).
BULK_VRS = BINARY_VRS | frozenset("FL FD SL SS SV UL US UV".split())


#: Top-level attributes Orthanc's metadata has and ours has not, by design:
#: (FFFC,FFFC) Data Set Trailing Padding. Orthanc answers /metadata from the file it stored,
#: which kept CT_small's padding (Orthanc has it as a BulkDataURI); the gateway leaves it
#: out (it has no content, PS3.10 7.2), and Orthanc's own C-STORE does not even send it.
ORTHANC_ONLY = frozenset({"FFFCFFFC"})


# -- data --------------------------------------------------------------------------------------


def with_icon(ds: Dataset) -> Dataset:
    """`ds` with an Icon Image Sequence holding a 64x64 8-bit icon (Pixel Data in an item)."""
    icon = Dataset()
    icon.SamplesPerPixel = 1
    icon.PhotometricInterpretation = "MONOCHROME2"
    icon.Rows = 64
    icon.Columns = 64
    icon.BitsAllocated = 8
    icon.BitsStored = 8
    icon.HighBit = 7
    icon.PixelRepresentation = 0
    icon.PixelData = numpy.arange(64 * 64, dtype=numpy.uint8).tobytes()
    icon["PixelData"].VR = "OB"
    ds.IconImageSequence = [icon]
    return ds


def with_voi_lut(ds: Dataset) -> Dataset:
    """`ds` with a VOI LUT Sequence whose LUT Data (US, 2 KiB) is long enough for bulk data."""
    lut = Dataset()
    lut.LUTDescriptor = [1024, 0, 16]
    lut["LUTDescriptor"].VR = "US"
    lut.LUTExplanation = "ramp"
    lut.LUTData = [i * 64 for i in range(1024)]
    lut["LUTData"].VR = "US"
    ds.VOILUTSequence = [lut]
    return ds


def metadata_data() -> dict[str, list[Stored]]:
    """CT_small, MR_small_implicit and a generated 2x3 study, each with fresh UIDs."""
    ct = fresh(dcmread(get_testdata_file("CT_small.dcm")), "ct")
    mr = fresh(dcmread(get_testdata_file("MR_small_implicit.dcm")), "mr")
    assert mr.stored_ts == IMPLICIT_VR_LE, mr.stored_ts
    study = generate_uid()
    multi = []
    for s in range(2):
        series = generate_uid()
        for i in range(3):
            ds = get_instance(s, i, 32, 24)
            # Text beyond ASCII, in UTF-8 and in Latin-1.
            if s == 0:
                ds.SpecificCharacterSet = "ISO_IR 192"
                ds.SeriesDescription = "Tête 頭部"
            else:
                ds.SeriesDescription = "Schädel Übersicht"
            if (s, i) == (0, 1):
                ds = with_icon(ds)
            if (s, i) == (1, 1):
                ds = with_voi_lut(ds)
            multi.append(fresh(ds, f"gen{s}.{i}", study, series))
    return {"ct": [ct], "mr": [mr], "multi": multi}


def encoded(ds: Dataset, implicit: bool = False) -> bytes:
    """`ds`'s data set (no File Meta) as pydicom writes it in Implicit or Explicit VR LE; the
    latter is an instance's Explicit VR LE twin."""
    out = DicomBytesIO()
    out.is_little_endian = True
    out.is_implicit_VR = implicit
    write_dataset(out, ds)
    return out.getvalue()


def data_set_of(part10_bytes: bytes) -> bytes:
    """The data set of a Part-10 file: what follows the preamble, DICM and File Meta (whose
    (0002,0000) Group Length, an explicit VR UL, comes first)."""
    assert part10_bytes[128:132] == b"DICM" and part10_bytes[132:136] == b"\x02\x00\x00\x00"
    return part10_bytes[144 + int.from_bytes(part10_bytes[140:144], "little") :]


def pydicom_json(ds: Dataset) -> dict[str, Any]:
    """pydicom's own DICOM JSON for `ds` (binary values over 1 KiB as BulkDataURIs)."""
    return ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=lambda _: "bulk")


# -- comparison --------------------------------------------------------------------------------


def sop_of(obj: dict[str, Any]) -> str:
    return str(obj["00080018"]["Value"][0])


def _same_number(vr: str, a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    if vr == "FL":
        return bool(numpy.float32(a) == numpy.float32(b))
    return float(a) == float(b)


def compare_metadata(
    got: dict[str, Any],
    want: dict[str, Any],
    where: str,
    ignore_missing: frozenset[str] = frozenset(),
) -> list[str]:
    """The differences between the gateway's object `got` and a reference object `want`.

    Tolerated, because they are bulk data or representation only:
    * a BulkDataURI on one side against a BulkDataURI with any value (Orthanc's point at its
      own ``.../bulk/...`` and count sequence items from 1; the gateway's own are checked
      by `assert_objects`);
    * a BulkDataURI against InlineBinary for a binary VR: Orthanc makes every non-empty
      binary value a BulkDataURI (CT_small's 80- and 40-byte private OBs), the gateway only
      those over 1 KiB and Pixel Data;
    * a gateway BulkDataURI against a Value for a long numeric VR: the gateway moves those
      over 1 KiB to bulk data (the 2 KiB LUT Data, US), Orthanc keeps them inline;
    * FL values equal as 32-bit floats, FD as 64-bit floats: Orthanc prints a float32 with
      float64 digits (-77.20406341552734 for the gateway's -77.20406);
    * attributes of group 0002 on one side only (PS3.18 F.2: no File Meta in metadata).
    `ignore_missing`: top-level tags the reference may have alone (documented where passed).
    Everything else, text, numbers, PN, empty values, item counts, must be equal.
    """
    problems: list[str] = []
    for tag in sorted(set(got) | set(want)):
        here = f"{where} {tag}"
        if tag not in got or tag not in want:
            if tag.startswith("0002"):
                continue
            if tag not in got and tag in ignore_missing:
                continue
            side = "only the reference" if tag not in got else "only the gateway"
            problems.append(f"{here}: {side} has {json.dumps(want.get(tag, got.get(tag)))[:200]}")
            continue
        a, b = got[tag], want[tag]
        vr = a.get("vr")
        if vr != b.get("vr"):
            problems.append(f"{here}: VR {vr} != {b.get('vr')}")
            continue
        if "BulkDataURI" in a or "BulkDataURI" in b:
            other = b if "BulkDataURI" in a else a
            if "BulkDataURI" in other:
                continue
            if "InlineBinary" in other and vr in BINARY_VRS:
                continue
            if "BulkDataURI" in a and vr in BULK_VRS and "Value" in other:
                continue
            problems.append(f"{here}: bulk data {json.dumps(a)[:200]} vs {json.dumps(b)[:200]}")
            continue
        if vr == "SQ":
            items_a, items_b = a.get("Value", []), b.get("Value", [])
            if len(items_a) != len(items_b):
                problems.append(f"{here}: {len(items_a)} items != {len(items_b)}")
                continue
            for i, (x, y) in enumerate(zip(items_a, items_b, strict=True)):
                problems += compare_metadata(x, y, f"{here}[{i}]")
            continue
        if set(a) != set(b):
            problems.append(f"{here}: members {sorted(a)} != {sorted(b)}: {a} vs {b}")
            continue
        if vr in ("FL", "FD") and "Value" in a:
            values_a, values_b = a["Value"], b["Value"]
            if len(values_a) != len(values_b) or not all(
                _same_number(vr, x, y) for x, y in zip(values_a, values_b, strict=True)
            ):
                problems.append(f"{here}: {values_a} != {values_b}")
            continue
        if a != b:
            problems.append(f"{here}: {json.dumps(a)[:300]} != {json.dumps(b)[:300]}")
    return problems


def bulk_uris(obj: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """path -> BulkDataURI for every BulkDataURI in `obj`, at any depth; the path is the one
    the URIs must end with (``7FE00010``, ``00880200/0/7FE00010``)."""
    found: dict[str, str] = {}
    for tag, attribute in obj.items():
        if "BulkDataURI" in attribute:
            found[prefix + tag] = attribute["BulkDataURI"]
        if attribute.get("vr") == "SQ":
            for index, item in enumerate(attribute.get("Value", [])):
                found.update(bulk_uris(item, f"{prefix}{tag}/{index}/"))
    return found


def bulk_base(gw: Gateway, item: Stored, aet: str = AET) -> str:
    """Where the gateway's BulkDataURIs for `item` start."""
    return f"{gw.url}{instance_path(aet, item.study, item.series, item.sop)}/bulkdata"


# -- the tests ---------------------------------------------------------------------------------


if TYPE_CHECKING:
    _MetadataBase = TestCase
else:
    _MetadataBase = object


class OrthancMetadataTests(_MetadataBase):
    """Metadata routes against Orthanc 1.10 loaded with `metadata_data`: equal to Orthanc's own
    metadata apart from bulk data; Implicit VR instances; media types and errors;
    dicomweb-client. A mixin, not a TestCase (so it is not collected on its own): a test
    module mixes it into a TestCase whose `start` says how the gateway retrieves (C-GET or
    C-MOVE)."""

    timeout = TIMEOUT

    async def start(self) -> tuple[peers.Orthanc, Gateway, dict[str, list[Stored]]]:
        """Start Orthanc holding `metadata_data` and the gateway in front of it."""
        raise NotImplementedError

    async def orthanc_metadata(self, orthanc: peers.Orthanc, path: str) -> list[dict[str, Any]]:
        # The same path under Orthanc's DICOMweb root, without our /aets/{aet}.
        answer = await orthanc.get_json("/dicom-web" + path.removeprefix(f"/aets/{AET}") + "/metadata")
        return answer if isinstance(answer, list) else [answer]

    def assert_objects(
        self, gw: Gateway, response: Response, items: list[Stored], media: str = DICOM_JSON, aet: str = AET
    ) -> list[dict[str, Any]]:
        """A 200 of `media` whose array has one object per item (by SOP Instance UID), each
        with Pixel Data as a BulkDataURI, and every BulkDataURI of the documented shape
        ``{base}/aets/{aet}/studies/{s}/series/{se}/instances/{i}/bulkdata/{path}``."""
        self.assertEqual(response.code, 200, f"{response.body[:500]!r}\n{gw.log_tail()}")
        self.assertEqual(response.header("Content-Type"), media)
        objects = response.json()
        self.assertIsInstance(objects, list)
        self.assertEqual(sorted(sop_of(o) for o in objects), sorted(item.sop for item in items))
        for obj in objects:
            item = next(item for item in items if item.sop == sop_of(obj))
            base = bulk_base(gw, item, aet) + "/"
            uris = bulk_uris(obj)
            self.assertIn(PIXEL_DATA, uris, item.label)
            for path, uri in uris.items():
                self.assertEqual(uri, base + path, item.label)
        return objects

    def assert_clean_log(self, gw: Gateway) -> None:
        log = gw.log()
        self.assertNotIn("Traceback", log, gw.log_tail())
        self.assertNotIn("Unhandled", log, gw.log_tail())

    async def test_metadata_matches_orthanc(self) -> None:
        """Study, series and instance metadata: one object per instance, each Orthanc's own
        object for it apart from bulk data."""
        orthanc, gw, data = await self.start()
        ct, mr, multi = data["ct"][0], data["mr"][0], data["multi"]
        second = [item for item in multi if item.series == multi[3].series]
        requests_ = [
            ([ct], instance_path(AET, ct.study)),
            ([mr], instance_path(AET, mr.study)),
            (multi, instance_path(AET, multi[0].study)),
            (second, instance_path(AET, multi[3].study, multi[3].series)),
            ([multi[1]], instance_path(AET, multi[1].study, multi[1].series, multi[1].sop)),
            ([ct], instance_path(AET, ct.study, ct.series, ct.sop)),
            ([mr], instance_path(AET, mr.study, mr.series)),
        ]
        problems: list[str] = []
        seen: dict[str, list[dict[str, Any]]] = {}
        for items, path in requests_:
            response = await gw.get(path + "/metadata")
            objects = self.assert_objects(gw, response, items)
            reference = {sop_of(o): o for o in await self.orthanc_metadata(orthanc, path)}
            self.assertEqual(sorted(reference), sorted(item.sop for item in items))
            for obj in objects:
                sop = sop_of(obj)
                label = next(item.label for item in items if item.sop == sop)
                # Orthanc has Pixel Data as a BulkDataURI too (its own /bulk/ route).
                self.assertIn("BulkDataURI", reference[sop][PIXEL_DATA], label)
                problems += compare_metadata(
                    obj, reference[sop], f"{path} {label}", ignore_missing=ORTHANC_ONLY
                )
                seen.setdefault(label, []).append(obj)
        self.assertEqual(problems, [], "\n".join(problems))
        # Each level gave the same object for an instance (bulk URIs included).
        for label, objects in seen.items():
            self.assertTrue(all(o == objects[0] for o in objects), label)
        # The Icon Image Sequence's Pixel Data is bulk data at its own path (item 0), which
        # assert_objects found under the instance's bulkdata base, also at the study level
        # (where the series UID came from the data set).
        self.assertIn(f"{ICON_IMAGE_SEQUENCE}/0/{PIXEL_DATA}", bulk_uris(seen["gen0.1"][0]))
        # So is the 2 KiB LUT Data (US) in the VOI LUT Sequence.
        self.assertIn(f"{VOI_LUT_SEQUENCE}/0/{LUT_DATA}", bulk_uris(seen["gen1.1"][0]))
        # MR_small_implicit (stored in Implicit VR LE) gives the metadata of its Explicit VR LE
        # twin.
        twin = instance_metadata_json(encoded(mr.dataset()), EXPLICIT_VR_LE, bulk_base(gw, mr))
        self.assertEqual(seen["mr"][0], json.loads(twin))
        self.assert_clean_log(gw)

    async def test_implicit_vr_like_its_explicit_twin(self) -> None:
        """Instances that arrive in Implicit VR LE give exactly the metadata of their Explicit
        VR LE twins, which agrees with pydicom's own reading of the originals.

        Which syntax Orthanc sends MR_small_implicit in is Orthanc's choice (it may transcode
        for the accepted context), so here the PACS is pynetdicom's get-implicit profile,
        which accepts only Implicit VR LE for storage; the study-level retrieve also makes the
        gateway find each instance's series UID (for its BulkDataURIs) in an Implicit VR data
        set."""
        scp = await peers.start_pynetdicom_scp(self, "get-implicit", aet=PACS_AET, series=2, instances=2)
        gw = await start_gateway(self, [get_aet(PACS_AET, scp.host, scp.port)])
        items = generated(series=2, instances=2)
        response = await gw.get(instance_path(PACS_AET, get_study_uid()) + "/metadata")
        objects = self.assert_objects(gw, response, items, aet=PACS_AET)
        accepted = scp.events("accepted")[0]["accepted_contexts"]
        ct = [cx for cx in accepted if cx["abstract_syntax"] == CT_IMAGE_STORAGE]
        self.assertEqual([cx["transfer_syntax"] for cx in ct], [IMPLICIT_VR_LE])

        problems: list[str] = []
        for obj in objects:
            item = next(item for item in items if item.sop == sop_of(obj))
            original = item.dataset()
            twin = instance_metadata_json(encoded(original), EXPLICIT_VR_LE, bulk_base(gw, item, PACS_AET))
            self.assertEqual(obj, json.loads(twin), item.label)
            # As the PACS sent it: pydicom reading the instance in Implicit VR LE.
            implicit = read_dataset(io.BytesIO(encoded(original, implicit=True)), True, True)
            problems += compare_metadata(obj, pydicom_json(implicit), item.label)
        self.assertEqual(problems, [], "\n".join(problems))
        self.assert_clean_log(gw)

        # MR_small_implicit, as the file is: its Implicit VR data set gives the metadata of its
        # Explicit VR LE twin (no PACS needed), and agrees with pydicom's reading of the file.
        mr = fresh(dcmread(get_testdata_file("MR_small_implicit.dcm")), "mr")
        original = mr.dataset()
        self.assertEqual(original.file_meta.TransferSyntaxUID, IMPLICIT_VR_LE)
        base = bulk_base(gw, mr)
        from_implicit = json.loads(instance_metadata_json(data_set_of(mr.data), IMPLICIT_VR_LE, base))
        twin = json.loads(instance_metadata_json(encoded(original), EXPLICIT_VR_LE, base))
        self.assertEqual(from_implicit, twin)
        problems = compare_metadata(from_implicit, pydicom_json(original), "mr")
        self.assertEqual(problems, [], "\n".join(problems))

    async def test_media_types_and_errors(self) -> None:
        _, gw, data = await self.start()
        ct, multi = data["ct"][0], data["multi"]
        study_path = instance_path(AET, multi[0].study) + "/metadata"
        expected = self.assert_objects(gw, await gw.get(study_path), multi)

        for headers, query, media in (
            ({"Accept": "application/json"}, "", "application/json"),
            ({"Accept": "application/dicom+json"}, "", DICOM_JSON),
            ({"Accept": "*/*"}, "", DICOM_JSON),
            ({"Accept": "application/dicom+xml, application/json; q=0.5"}, "", "application/json"),
            ({}, "?accept=application/json", "application/json"),
        ):
            response = await gw.get(study_path + query, headers=headers)
            objects = self.assert_objects(gw, response, multi, media)
            self.assertEqual(sorted(objects, key=sop_of), sorted(expected, key=sop_of), headers)

        errors = [
            (study_path, {"Accept": "application/dicom+xml"}, 406),
            (study_path, {"Accept": "application/dicom"}, 406),
            (instance_path(AET, generate_uid()) + "/metadata", {}, 404),
            (instance_path(AET, ct.study, generate_uid()) + "/metadata", {}, 404),
            (instance_path(AET, ct.study, ct.series, generate_uid()) + "/metadata", {}, 404),
            (instance_path(AET, "1.2.abc") + "/metadata", {}, 400),
            (instance_path(AET, ct.study, "1..2") + "/metadata", {}, 400),
            (instance_path(AET, ct.study, ct.series, "01.2") + "/metadata", {}, 400),
            (instance_path("NOSUCHAET", ct.study) + "/metadata", {}, 404),
            (instance_path("NOSUCHAET", ct.study, ct.series, ct.sop) + "/metadata", {}, 404),
        ]
        for path, headers, status in errors:
            response = await gw.get(path, headers=headers)
            self.assertEqual(response.code, status, f"{path} {headers}: {response.body!r}\n{gw.log_tail()}")
            self.assertEqual(response.header("Content-Type"), "application/json", path)
            self.assertIn("error", response.json())
        # The gateway still serves.
        self.assert_objects(gw, await gw.get(study_path), multi)
        self.assert_clean_log(gw)

    async def test_dicomweb_client(self) -> None:
        _, gw, data = await self.start()
        multi, mr = data["multi"], data["mr"][0]
        one = multi[4]

        def fetch() -> tuple[list[dict[str, Any]], ...]:
            with requests.Session() as session:
                client = DICOMwebClient(url=f"{gw.url}/aets/{AET}", session=session)
                return (
                    client.retrieve_study_metadata(one.study),
                    client.retrieve_series_metadata(one.study, one.series),
                    [client.retrieve_instance_metadata(one.study, one.series, one.sop)],
                    client.retrieve_study_metadata(mr.study),
                )

        study, series, instance, implicit = await deferToThread(fetch)
        originals = {item.sop: item for item in [*multi, mr]}
        fetched: list[str] = []
        for got, want in (
            (study, multi),
            (series, [item for item in multi if item.series == one.series]),
            (instance, [one]),
            (implicit, [mr]),
        ):
            self.assertIsInstance(got, list)
            for obj in got:
                self.assertIsInstance(obj, dict)

            def no_fetch(tag: str, vr: str, uri: str) -> bytes:
                fetched.append(uri)
                return b""

            datasets = [Dataset.from_json(obj, bulk_data_uri_handler=no_fetch) for obj in got]
            self.assertEqual(sorted(ds.SOPInstanceUID for ds in datasets), sorted(item.sop for item in want))
            for ds in datasets:
                item = originals[ds.SOPInstanceUID]
                original = item.dataset()
                self.assertEqual(ds.StudyInstanceUID, item.study)
                self.assertEqual(ds.SeriesInstanceUID, item.series)
                self.assertEqual(ds.PatientName, original.PatientName)
                self.assertEqual((ds.Rows, ds.Columns), (original.Rows, original.Columns))
                self.assertEqual(ds.PixelData, b"")
        # The handler stood in for every BulkDataURI, so nothing was fetched: Pixel Data of
        # each object, gen0.1's icon and gen1.1's LUT Data. dicomweb-client sends
        # "Host: 127.0.0.1" without the port (its _http_get sets Host to its host name) and the
        # gateway builds its URIs from the Host header, so compare the paths only.
        extra = {
            "gen0.1": [f"{ICON_IMAGE_SEQUENCE}/0/{PIXEL_DATA}"],
            "gen1.1": [f"{VOI_LUT_SEQUENCE}/0/{LUT_DATA}"],
        }
        paths = sorted(urlsplit(uri).path for uri in fetched)
        want_paths = [
            f"{instance_path(AET, item.study, item.series, item.sop)}/bulkdata/{path}"
            for group in (multi, [item for item in multi if item.series == one.series], [one], [mr])
            for item in group
            for path in [PIXEL_DATA, *extra.get(item.label, [])]
        ]
        self.assertEqual(paths, sorted(want_paths))
        self.assert_clean_log(gw)
