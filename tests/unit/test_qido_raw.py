"""QIDO-RS results written from a C-FIND match's bytes (`SearchTarget.raw_result`, over
`dicomrst.common.rawjson.identifier_members`) against the pydicom path they replace, the
oracle: ``encode_dataset(target.result(decode_identifier(...)))``.  Byte for byte, on the
QIDO test fixtures and on generated identifiers; where the walk declines, the search uses
the oracle itself."""

from __future__ import annotations

import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.dataset import Dataset
from twisted.trial.unittest import SynchronousTestCase

from dicomrst.common import rawjson
from dicomrst.common.dicomjson import encode_dataset
from dicomrst.common.identifiers import RawIdentifier, decode_identifier, encode_identifier
from dicomrst.common.transcode import DataSetError
from dicomrst.common.uids import EXPLICIT_VR_LE, IMPLICIT_VR_LE
from dicomrst.qido.target import Target
from dicomrst.qido.worklist import WorklistTarget
from tests.support import qido_data
from tests.support.rawjson_data import Builder, datasets

SERVICE = "http://gw:8080/base/aets/PACS"
STUDY = "1.2.840.113619.2.55.3"
SERIES = "1.2.840.113619.2.55.3.1"
TARGETS = (
    Target.studies(),
    Target.study_series(STUDY),
    Target.study_series_instances(STUDY, SERIES),
    Target.study_instances(STUDY),
    Target.all_series(),
    Target.all_instances(),
)


def oracle(data: bytes, syntax: str, target: Target) -> bytes | None:
    """Today's pydicom path; None when decoding fails (the find's protocol error)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            dataset = decode_identifier(data, syntax)
        except DataSetError:
            return None
        return encode_dataset(target.result(dataset, Dataset(), SERVICE))


def fast(data: bytes, syntax: str, target: Target) -> bytes | None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the walk never makes pydicom warn
        return target.raw_result(RawIdentifier(data, syntax), SERVICE)


class Compare(SynchronousTestCase):
    def assert_same(self, data: bytes, syntax: str, *, served: bool = False) -> int:
        """The fast path writes what the oracle writes, for every target; how many it served."""
        count = 0
        for target in TARGETS:
            got = fast(data, syntax, target)
            if got is None:
                if served:
                    self.fail(f"declined on {target.resource}")
                continue
            count += 1
            want = oracle(data, syntax, target)
            self.assertIsNotNone(want, "served a match pydicom cannot decode")
            self.assertEqual(got.decode(), want.decode() if want else None, target.resource)
        return count


def _without_pixels(ds: Dataset) -> Dataset:
    """An instance as a PACS would answer a C-FIND asking for all of it (no pixel data)."""
    for tag in [t for t in ds.keys() if t.group in (0x7FE0, 0xFFFC) or t.group == 0x0002]:
        del ds[tag]
    ds.QueryRetrieveLevel = "IMAGE"
    return ds


class FixtureTests(Compare):
    def test_qido_fixtures(self) -> None:
        """The instances the QIDO-RS integration tests load into Orthanc (their every
        attribute, character sets included), in both syntaxes."""
        served = declined = 0
        for instance in qido_data.build():
            ds = _without_pixels(dcmread(BytesIO(instance.data)))
            for syntax in (IMPLICIT_VR_LE, EXPLICIT_VR_LE):
                n = self.assert_same(encode_identifier(ds, syntax), syntax)
                served += n
                declined += len(TARGETS) - n
        self.assertGreater(served, declined)  # the fast path is the common one

    def test_typical_results_are_served(self) -> None:
        """What a PACS answers a study search: every target writes it from the bytes."""
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyDate = "20200101"
        ds.StudyTime = "101010.5"
        ds.AccessionNumber = ""
        ds.ModalitiesInStudy = ["CT", "MR"]
        ds.PatientName = "Müller^Hans=ミュラー^ハンス"
        ds.PatientID = "P1"
        ds.StudyInstanceUID = STUDY + ".7"
        ds.SeriesInstanceUID = SERIES
        ds.SOPInstanceUID = SERIES + ".1"
        ds.NumberOfStudyRelatedInstances = "12"
        ds.InstanceAvailability = "ONLINE"
        ds.RetrieveAETitle = "ORTHANC"
        ds.PatientName = "Muller^Hans"
        item = Dataset()
        item.ScheduledProcedureStepID = "SPS1"
        item.RequestedProcedureID = ""
        ds.RequestAttributesSequence = [item, Dataset()]
        for syntax in (IMPLICIT_VR_LE, EXPLICIT_VR_LE):
            self.assert_same(encode_identifier(ds, syntax), syntax, served=True)

    def test_typical_results_take_the_flat_loop(self) -> None:
        """A match without sequences is written by the flat loop alone: with the full walk
        out of the way, every target still serves it, as the oracle writes it."""
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.QueryRetrieveLevel = "STUDY"
        ds.RetrieveAETitle = "ORTHANC"
        ds.StudyDate = "20200101"
        ds.StudyTime = "101010.5"
        ds.AccessionNumber = ""
        ds.InstanceAvailability = "ONLINE"
        ds.ModalitiesInStudy = ["CT", "MR"]
        ds.ReferringPhysicianName = "Doe^John"
        ds.PatientName = "Müller^Hans"
        ds.PatientID = "P1"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyInstanceUID = STUDY + ".7"
        ds.SeriesInstanceUID = SERIES
        ds.SOPInstanceUID = SERIES + ".1"
        ds.StudyID = "S1"
        ds.NumberOfStudyRelatedSeries = "2"
        ds.NumberOfStudyRelatedInstances = "12"
        ds.Rows = 512
        self.patch(rawjson, "_Walk", _NoWalk)
        for syntax in (IMPLICIT_VR_LE, EXPLICIT_VR_LE):
            self.assert_same(encode_identifier(ds, syntax), syntax, served=True)

    def test_same_element_bytes_in_other_syntaxes_and_character_sets(self) -> None:
        """An element's bytes seen before stand for the same member only in the same
        syntax and character set: a name's Latin-1 bytes read as Cyrillic differ."""
        name = b"M\xfcller^J"
        for syntax in (IMPLICIT_VR_LE, EXPLICIT_VR_LE, IMPLICIT_VR_LE):
            b = Builder(syntax == IMPLICIT_VR_LE)
            for charset in (b"ISO_IR 100", b"ISO_IR 144", b"ISO_IR 100"):
                data = b.element(0x00080005, "CS", charset) + b.element(0x00100010, "PN", name + b" ")
                self.assertEqual(self.assert_same(data, syntax, served=True), len(TARGETS))

    def test_retrieve_url_quotes_what_is_not_a_uid_proper(self) -> None:
        b = Builder(True)
        for uid, segment in ((b"1.2.840.5 ", "1.2.840.5"), (b"1.2 3%4 ", "1.2%203%254")):
            got = fast(b.element(0x0020000D, "UI", uid), IMPLICIT_VR_LE, Target.studies())
            assert got is not None
            self.assertIn(f'"{SERVICE}/studies/{segment}"', got.decode())

    def test_retrieve_url_of_a_service_url_json_escapes(self) -> None:
        """The service URL is escaped once per service and put in front of the path: as
        the oracle escapes the whole URL, for every target."""
        b = Builder(True)
        data = (
            b.element(0x0008_0018, "UI", b"1.2.3.4")
            + b.element(0x0020_000D, "UI", b"1.2 3")
            + b.element(0x0020_000E, "UI", b"1.2.3")
        )
        # (Not a backslash: the oracle splits the UR value there, the raw path never did.)
        for service in ('http://gw/a"b/aets/PACS', "http://gw/ü\u2028/aets/PACS", "http://gw/\ud800/x"):
            for target in TARGETS:
                got = target.raw_result(RawIdentifier(data, IMPLICIT_VR_LE), service)
                dataset = decode_identifier(data, IMPLICIT_VR_LE)
                want = encode_dataset(target.result(dataset, Dataset(), service))
                self.assertEqual(got, want, (service, target.resource))

    def test_path_uids_charset_and_retrieve_url(self) -> None:
        """The attributes `result` adds, replaces or drops, in each of their states."""
        b = Builder(True)
        cases = [
            b"",
            b.element(0x00080005, "CS", b"  "),
            b.element(0x00080005, "CS", b"ISO_IR 192"),
            b.element(0x00080005, "CS", b"\\ISO_IR 100"),
            b.element(0x00080052, "CS", b"STUDY "),
            b.element(0x00080018, "UI", b"1.2.3\x00"),
            b.element(0x00081190, "UR", b"http://pacs/x "),
            b.element(0x0020000D, "UI", b""),
            b.element(0x0020000D, "UI", b" 1.2 \x00"),
            b.element(0x0020000D, "UI", b"1.2\\1.3 "),
            b.element(0x0020000D, "UI", b"1.2/3 "),
            b.element(0x0020000E, "UI", b"9.8"),
        ]
        for i in range(1 << 7):
            chosen = [c for bit, c in enumerate(cases[1:8]) if i >> bit & 1]
            chosen += [cases[8 + i % 4]] + ([cases[-1]] if i & 1 else [])
            elements = {struct.unpack("<HH", c[:4]): c for c in chosen}
            data = b"".join(elements[k] for k in sorted(elements))
            self.assert_same(data, IMPLICIT_VR_LE)

    def test_matches_after_matches(self) -> None:
        """Each match is compared with the last one's elements: elements missing, added,
        changed, the character set changed (the same bytes read otherwise) or moved
        later than an element that uses it: each is what the oracle writes."""
        import random

        rng = random.Random(15)
        for implicit in (True, False):
            b = Builder(implicit)
            syntax = IMPLICIT_VR_LE if implicit else EXPLICIT_VR_LE
            pool = [
                [b.element(0x00080005, "CS", v) for v in (b"ISO_IR 100", b"ISO_IR 144", b"ISO_IR 192")],
                [b.element(0x00080020, "DA", v) for v in (b"20200101", b"20210202")],
                [b.element(0x00080050, "SH", v) for v in (b"A1", b"M\xfcl ", b"")],
                [b.element(0x00080052, "CS", b"STUDY ")],
                [b.element(0x00100010, "PN", v) for v in (b"M\xfcller^J ", b"Doe^J ", b"\xc3\xbc^A ")],
                [b.element(0x00100020, "LO", v) for v in (b"P1", b"\xd0\xc1")],
                [b.element(0x0020000D, "UI", v) for v in (b"1.2.3\x00", b"1.2.4\x00")],
                [b.element(0x00201208, "IS", v) for v in (b"12", b"7 ")],
            ]
            for _ in range(300):
                data = b"".join(rng.choice(choices) for choices in pool if rng.random() < 0.8)
                self.assert_same(data, syntax)
        # An element that uses the character set before it: the pydicom way, every time.
        b = Builder(False)
        early = b.element(0x00041130, "LO", b"\xd0\xc1") + b.element(0x00080005, "CS", b"ISO_IR 144")
        for _ in range(2):
            self.assert_same(early, EXPLICIT_VR_LE)
            self.assertIsNone(rawjson.identifier_attributes(early, implicit=False))

    def test_one_value_or_several(self) -> None:
        """One text value (written without splitting) and several, padded every way."""
        tags = {"UI": 0x00081150, "LO": 0x00081030, "SH": 0x00080050, "UC": 0x00189367}
        values = (b"", b"  ", b"A ", b" A", b" A B ", b"A\\B", b"\\", b"A\\", b"1.2\x00", b"A\x00 ", b"\x00A")
        for implicit in (True, False):
            b = Builder(implicit)
            for vr, tag in tags.items():
                for value in values:
                    data = b.element(tag, vr, value + b" " * (len(value) % 2))
                    self.assert_same(data, IMPLICIT_VR_LE if implicit else EXPLICIT_VR_LE, served=True)

    def test_cut_short_anywhere(self) -> None:
        """A match cut anywhere (a header, a value) is what the oracle makes of it: the
        flat loop's struct.error at a short header hands it to the full walk."""
        b = Builder(False)
        data = (
            b.element(0x00080005, "CS", b"ISO_IR 100")
            + b.element(0x00080020, "DA", b"20200101")
            + b.element(0x00100010, "PN", b"Doe^J ")
            + b.element(0x0020000D, "UI", b"1.2.3\x00")
        )
        for cut in range(1, len(data)):
            self.assert_same(data[:cut], EXPLICIT_VR_LE)

    def test_declines(self) -> None:
        """ISO 2022 and multi-byte character sets, pixel data, and the worklist (whose
        results take keys from the query) go the pydicom way."""
        b = Builder(True)
        for data in (
            b.element(0x00080005, "CS", b"ISO 2022 IR 87") + b.element(0x00100010, "PN", b"\x1b$B;3ED\x1b(B"),
            b.element(0x00080005, "CS", b"\\ISO 2022 IR 100"),
            b.element(0x00080005, "CS", b"GB18030 ") + b.element(0x00100010, "PN", "张三".encode("gb18030")),
            b.element(0x7FE00010, "OW", b"\x00\x01"),
            b.element(0xFFFCFFFC, "OB", b"\x00\x00"),
            b.element(0x00020010, "UI", b"1.2\x00"),
        ):
            for target in TARGETS:
                self.assertIsNone(fast(data, IMPLICIT_VR_LE, target))
        self.assertIsNone(WorklistTarget().raw_result(RawIdentifier(b"", IMPLICIT_VR_LE), SERVICE))


class _NoWalk:
    """Stands in for the full walk: any data set that reaches it is declined."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def dataset(self, *args: object, **kwargs: object) -> tuple[str, int]:
        raise ValueError("the full walk was asked")


_CHARSETS = ["ISO_IR 100", "ISO_IR 192", "ISO_IR 144", "", "ISO 2022 IR 87", "\\ISO 2022 IR 100", "GB18030"]


_settings = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))


@contextmanager
def _walk_replaced() -> Iterator[None]:
    """The full walk replaced by `_NoWalk` (hypothesis runs one test many times: no
    trial ``patch``, which undoes itself only once the test is over)."""
    walk = rawjson._Walk
    rawjson._Walk = _NoWalk  # type: ignore[assignment,misc]
    try:
        yield
    finally:
        rawjson._Walk = walk  # type: ignore[misc]


class GeneratedTests(Compare):
    @_settings
    @given(st.data())
    def test_generated(self, data: st.DataObject) -> None:
        """Every VR, empty and multi-valued values, nested sequences, in both syntaxes."""
        implicit = data.draw(st.booleans())
        raw = data.draw(datasets(implicit, data.draw(st.booleans())))
        self.assert_same(raw, IMPLICIT_VR_LE if implicit else EXPLICIT_VR_LE)

    @_settings
    @given(st.data())
    def test_generated_flat(self, data: st.DataObject) -> None:
        """Data sets without sequences (what the flat loop takes), with the full walk out of
        the way: what the flat loop writes alone is what the oracle writes."""
        implicit = data.draw(st.booleans())
        raw = data.draw(datasets(implicit, data.draw(st.booleans()), depth=2))
        syntax = IMPLICIT_VR_LE if implicit else EXPLICIT_VR_LE
        self.assert_same(raw, syntax)
        with _walk_replaced():
            self.assert_same(raw, syntax)

    @_settings
    @given(st.data())
    def test_result_attributes(self, data: st.DataObject) -> None:
        """The UIDs, level, character set and Retrieve URL `result` works on."""
        implicit = data.draw(st.booleans())
        b = Builder(implicit)
        elements: dict[int, bytes] = {}
        uids = st.sampled_from(["", "1.2.3", " 1.2.3\x00", "1.2\\3.4", "1/2", "\x00", "1.2.3 "])
        for tag in (0x0020000D, 0x0020000E, 0x00080018):
            if data.draw(st.booleans()):
                elements[tag] = b.element(tag, "UI", data.draw(uids).encode())
        if data.draw(st.booleans()):
            level = data.draw(st.sampled_from([b"STUDY ", b"", b"IMAGE"]))
            elements[0x00080052] = b.element(0x00080052, "CS", level)
        if data.draw(st.booleans()):
            elements[0x00081190] = b.element(0x00081190, "UR", b"http://elsewhere/ ")
        if data.draw(st.booleans()):
            charset = data.draw(st.sampled_from(_CHARSETS)).encode()
            elements[0x00080005] = b.element(0x00080005, "CS", charset + b" " * (len(charset) % 2))
        if data.draw(st.booleans()):
            name = data.draw(st.sampled_from(["Doe^J", "Müller", "", "A\\B"])).encode("latin-1")
            elements[0x00100010] = b.element(0x00100010, "PN", name + b" " * (len(name) % 2))
        raw = b"".join(elements[t] for t in sorted(elements))
        self.assert_same(raw, IMPLICIT_VR_LE if implicit else EXPLICIT_VR_LE)
