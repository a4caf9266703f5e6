# -*- test-case-name: tests.unit.test_wado_parts -*-
"""WADO-RS metadata: one instance's data set → a DICOM JSON object with BulkDataURIs.

`instance_metadata_json` writes the object straight from the data set's bytes with
`dicomrst.common.rawjson` (Explicit and Implicit VR Little Endian). For what that walk
declines (other syntaxes, code extensions, values pydicom would have to guess at…), and
as the reference the walk is tested against, `pydicom_metadata_json` parses the data set
with pydicom and writes the object with `dicomrst.common.dicomjson.element_json` for every
attribute it keeps inline, so search and retrieve speak the same DICOM JSON. Both write the
same bytes. Values replaced by ``{"vr": …, "BulkDataURI": …}``:

* the pixel data elements (7FE0,0010), (7FE0,0008), (7FE0,0009), whenever not empty
  (native or encapsulated), at any depth;
* binary values (OB OD OF OL OV OW UN) and numeric ones (FL FD SL SS SV UL US UV)
  longer than `threshold` bytes, also inside sequences (e.g. LUT data, waveform data,
  private blobs). Text (LT, UT, …) stays inline.

Group lengths, group 0002 and Data Set Trailing Padding are left out (PS3.18
§10.4.1.1.2). Bulk values are not converted, except where pydicom must read one to
resolve an ambiguous VR ('OB or OW' pixel data in Implicit VR, LUT Data).

BulkDataURI shape (stable; the ``.../bulkdata/...`` routes will serve it):
``{bulk_base}/{path}`` where `bulk_base` is the instance's
``…/studies/{study}/series/{series}/instances/{instance}/bulkdata`` and `path` is the
element's tag as 8 upper-case hex digits, preceded for an element inside a sequence by
``{sequence tag}/{item index}/`` per level, item indexes counting from 0: Pixel Data is
``{bulk_base}/7FE00010``, an OB in the first item of (0040,0275) is
``{bulk_base}/00400275/0/00400009``.
"""

from __future__ import annotations

import json
import zlib

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.hooks import hooks
from pydicom.valuerep import AMBIGUOUS_VR

from dicomrst.common.dicomjson import element_json
from dicomrst.common.rawjson import metadata_json
from dicomrst.common.tags import PIXEL_DATA_TAGS, TRAILING_PADDING, UNDEFINED_LENGTH
from dicomrst.common.transcode import DataSetError, check_length, parse_dataset, resolve_ambiguous
from dicomrst.common.uids import DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_BE, IMPLICIT_VR_LE

DEFAULT_THRESHOLD = 1024
BULK_VRS = frozenset("OB OD OF OL OV OW UN FL FD SL SS SV UL US UV".split())


def instance_metadata_json(
    dataset_bytes: bytes, transfer_syntax: str, bulk_base: str, threshold: int = DEFAULT_THRESHOLD
) -> bytes:
    """One instance's metadata as a UTF-8 DICOM JSON object (no surrounding array).

    `dataset_bytes` is the data set without File Meta, in `transfer_syntax` (any syntax:
    compressed ones are explicit VR little endian outside the pixel data). Raises
    `DataSetError` when it does not parse.
    """
    if transfer_syntax not in (DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_BE):
        text = metadata_json(
            dataset_bytes,
            implicit=transfer_syntax == IMPLICIT_VR_LE,
            bulk_base=bulk_base,
            threshold=threshold,
        )
        if text is not None:
            return text.encode("utf-8")
    return pydicom_metadata_json(dataset_bytes, transfer_syntax, bulk_base, threshold)


def pydicom_metadata_json(
    dataset_bytes: bytes, transfer_syntax: str, bulk_base: str, threshold: int = DEFAULT_THRESHOLD
) -> bytes:
    """`instance_metadata_json` through pydicom: any transfer syntax, every value pydicom
    reads; the reference the fast walk is tested against."""
    if transfer_syntax == DEFLATED_EXPLICIT_VR_LE:
        try:
            dataset_bytes = zlib.decompressobj(-zlib.MAX_WBITS).decompress(dataset_bytes)
        except zlib.error as e:
            raise DataSetError(f"cannot inflate a deflated data set: {e}") from None
    ds = parse_dataset(
        dataset_bytes, implicit=transfer_syntax == IMPLICIT_VR_LE, little=transfer_syntax != EXPLICIT_VR_BE
    )
    try:
        text = _object(ds, bulk_base.rstrip("/") + "/", threshold, top=True)
    except DataSetError:
        raise
    except Exception as e:  # a value pydicom cannot convert
        raise DataSetError(f"cannot encode the data set as DICOM JSON: {e}") from None
    return text.encode("utf-8")


def _vr_and_length(ds: Dataset, tag: int, element: DataElement | RawDataElement) -> tuple[str, int]:
    if isinstance(element, RawDataElement):
        check_length(element)
        data: dict[str, object] = {}
        hooks.raw_element_vr(element, data, encoding=ds._character_set, ds=ds)
        return str(data["VR"]), element.length
    value = element.value
    length = len(value) if isinstance(value, bytes | bytearray) else 0
    return str(element.VR), UNDEFINED_LENGTH if element.is_undefined_length and element.VR != "SQ" else length


def _object(ds: Dataset, prefix: str, threshold: int, top: bool = False) -> str:
    """`ds` as a JSON object; `prefix` is the BulkDataURI of this level, ending in '/'."""
    members = []
    # The elements as read, before any is converted: pydicom converts some on the way (Pixel
    # Representation when a sequence is opened; get_item any empty Implicit VR element), and a
    # converted one has lost its length.
    elements = [(tag, ds.get_item(tag, keep_deferred=True)) for tag in sorted(ds.keys())]
    for tag, element in elements:
        if tag.element == 0 or (top and tag.group == 2) or tag == TRAILING_PADDING:
            continue  # group lengths; file meta that some PACS leave in the data set; padding
        vr, length = _vr_and_length(ds, tag, element)
        if vr in AMBIGUOUS_VR:  # all of them binary or numeric; pydicom resolves them
            vr = str(resolve_ambiguous(ds, tag).VR)
        key = f"{int(tag):08X}"
        if length and (
            tag in PIXEL_DATA_TAGS or (vr in BULK_VRS and (length == UNDEFINED_LENGTH or length > threshold))
        ):
            uri = json.dumps(prefix + key)
            members.append(f'"{key}":{{"vr":"{vr}","BulkDataURI":{uri}}}')
            continue
        if vr == "SQ":
            items = [
                _object(item, f"{prefix}{key}/{index}/", threshold)
                for index, item in enumerate(ds[tag].value)
            ]
            value = f'{{"vr":"SQ","Value":[{",".join(items)}]}}' if items else '{"vr":"SQ"}'
            members.append(f'"{key}":{value}')
            continue
        encoded = element_json(ds[tag])
        if encoded is not None:
            members.append(f'"{key}":{encoded}')
    return "{" + ",".join(members) + "}"
