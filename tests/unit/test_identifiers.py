"""`encode_identifier` writes what pydicom's `write_dataset` writes: its own writer for the
identifiers QIDO-RS builds (empty return keys, ASCII match values, item keys), pydicom's
for the rest."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import config as pydicom_config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from twisted.trial.unittest import SynchronousTestCase

from dicomrst.common import identifiers
from dicomrst.common.identifiers import encode_identifier, retrieve_identifier
from dicomrst.common.uids import EXPLICIT_VR_LE, IMPLICIT_VR_LE
from dicomrst.qido.query import parse_query
from dicomrst.qido.target import Target
from dicomrst.qido.worklist import WorklistTarget


def pydicom_bytes(ds: Dataset, implicit: bool) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit
    write_dataset(fp, ds)
    return fp.getvalue()


QUERIES: list[dict[str, list[str]]] = [
    {},
    {"PatientID": ["BENCH001"]},
    {"PatientName": ["Doe^J*"], "includefield": ["all"]},
    {"PatientName": ["Müller^*"]},
    {"StudyInstanceUID": ["1.2.3,1.2.4"], "StudyDate": ["20200101-"]},
    {"StudyDate": ["20200101-20210704"], "StudyTime": ["100000-130000"]},
    {"ModalitiesInStudy": ["CT"], "includefield": ["00081030,StudyDescription"]},
    {"RequestAttributesSequence.ScheduledProcedureStepID": ["SPS1"]},
    {"NumberOfStudyRelatedInstances": ["5"], "Rows": ["512"]},
    {"includefield": ["ReferencedStudySequence", "IssuerOfPatientIDQualifiersSequence"]},
]
TARGETS = (
    Target.studies(),
    Target.all_series(),
    Target.all_instances(),
    Target.study_series("1.2.3"),
    Target.study_series_instances("1.2.3", "1.2.3.4"),
)


class QueryIdentifierTests(SynchronousTestCase):
    def test_query_identifiers(self) -> None:
        """Byte for byte pydicom's, and all but the non-ASCII and numeric ones written
        without it."""
        calls: list[object] = []

        def spy(*args: Any, **kwargs: Any) -> Any:
            calls.append(args)
            return write_dataset(*args, **kwargs)

        self.patch(identifiers, "write_dataset", spy)
        for args in QUERIES:
            for target in TARGETS:
                try:
                    query = parse_query(target, args)
                except Exception:
                    continue  # not a query of this target
                for implicit in (True, False):
                    syntax = IMPLICIT_VR_LE if implicit else EXPLICIT_VR_LE
                    got = encode_identifier(query.identifier, syntax)
                    self.assertEqual(got, pydicom_bytes(query.identifier, implicit), (args, target))
                    served = "Müller^*" not in str(args) and "Rows" not in args
                    self.assertEqual(len(calls), 0 if served else 1, args)
                    calls.clear()

    def test_empty_elements_per_vr_and_syntax(self) -> None:
        """An empty element's header is kept per tag, VR and syntax: the same tag with
        another VR (a long one in Explicit VR) or in the other syntax is not mistaken."""
        for vr in ("LO", "UT", "LO"):
            for implicit in (True, False, True):
                ds = Dataset()
                ds.add(DataElement(0x00100020, vr, ""))
                ds.add(DataElement(0x00100021, vr, None))
                got = encode_identifier(ds, IMPLICIT_VR_LE if implicit else EXPLICIT_VR_LE)
                self.assertEqual(got, pydicom_bytes(ds, implicit), (vr, implicit))

    def test_worklist_and_retrieve_identifiers(self) -> None:
        for ds in (
            parse_query(WorklistTarget(), {"PatientID": ["P1"]}).identifier,
            parse_query(WorklistTarget(), {"includefield": ["all"]}).identifier,
            retrieve_identifier("1.2.3"),
            retrieve_identifier("1.2.3", "1.2.3.4", "1.2.3.4.5"),
        ):
            for implicit in (True, False):
                syntax = IMPLICIT_VR_LE if implicit else EXPLICIT_VR_LE
                self.assertEqual(encode_identifier(ds, syntax), pydicom_bytes(ds, implicit))


_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "text": st.one_of(
        st.none(),
        st.just(""),
        st.text(st.sampled_from("AZaz09 ^*?-.é"), max_size=9),
        st.lists(st.text(st.sampled_from("AB01 "), max_size=4), max_size=3),
    ),
    "number": st.one_of(st.none(), st.integers(0, 600), st.lists(st.integers(0, 9), max_size=2)),
    "float": st.one_of(st.none(), st.floats(-10, 10)),
    "decimal": st.one_of(st.none(), st.just(""), st.sampled_from(["5", "007", "1.50", "-2e3"])),
}
_TAGS = {
    "text": [
        (0x00080020, "DA"),
        (0x00080050, "SH"),
        (0x00080052, "CS"),
        (0x00080061, "CS"),
        (0x00081030, "LO"),
        (0x00081190, "UR"),
        (0x00100010, "PN"),
        (0x00104000, "LT"),
        (0x0020000D, "UI"),
        (0x00321060, "LO"),
        (0x00400254, "LO"),
        (0x00401400, "LT"),
    ],
    "number": [(0x00280010, "US"), (0x00181310, "US")],
    "float": [(0x00189087, "FD")],
    "decimal": [(0x00201208, "IS"), (0x00180050, "DS")],
}


_ASCII_TEXT = st.one_of(
    st.none(),
    st.text(st.sampled_from("AZaz09 ^*?-.="), max_size=9),
    st.lists(st.text(st.sampled_from("AB01 ^="), max_size=4), max_size=3),
)


@st.composite
def datasets(draw: Callable[[st.SearchStrategy[Any]], Any], clean: bool, depth: int = 0) -> Dataset:
    """With `clean`, what the writer serves itself: ASCII text, empty numbers."""
    ds = Dataset()
    if draw(st.integers(0, 2)) == 0:
        charsets = [None, "", "ISO_IR 192"] if clean else [None, "ISO_IR 100", "ISO_IR 144", "ISO 2022 IR 6"]
        ds.add(DataElement(0x00080005, "CS", draw(st.sampled_from(charsets))))
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(sorted(_TAGS)))
        tag, vr = draw(st.sampled_from(_TAGS[kind]))
        value = draw(_VALUES[kind]) if not clean else draw(_ASCII_TEXT) if kind == "text" else None
        if vr == "UI" and isinstance(value, str):
            value = value.replace(" ", "")
        ds.add(DataElement(tag, vr, value, validation_mode=pydicom_config.IGNORE))
    if depth < 2:
        for tag in draw(st.lists(st.sampled_from([0x00400275, 0x00081110]), max_size=2, unique=True)):
            items = draw(st.lists(datasets(clean, depth + 1), max_size=2))
            ds.add(DataElement(tag, "SQ", Sequence(items)))
    return ds


class GeneratedTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.booleans().flatmap(datasets), st.booleans())
    def test_same_as_pydicom(self, ds: Dataset, implicit: bool) -> None:
        """Empty, single and multiple values of text, number and sequence VRs, character
        sets included: the same bytes as pydicom's writer (or its error)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                want = pydicom_bytes(ds, implicit)
            except Exception as e:
                self.assertRaises(
                    type(e), encode_identifier, ds, IMPLICIT_VR_LE if implicit else EXPLICIT_VR_LE
                )
                return
            got = encode_identifier(ds, IMPLICIT_VR_LE if implicit else EXPLICIT_VR_LE)
        self.assertEqual(got, want)
