"""Search for the backends that keep objects (LOCAL, S3): QIDO-RS answered from the index."""

from __future__ import annotations

from collections.abc import Callable

from pydicom.dataset import Dataset
from twisted.internet.defer import Deferred, fail

from dicomrst.common.identifiers import Found
from dicomrst.common.uids import MODALITY_WORKLIST_FIND
from dicomrst.errors import NotImplementedService, ServiceUnavailable
from dicomrst.index.interfaces import IIndex


def find_in_index(
    index: IIndex | None,
    aet: str,
    kind: str,
    identifier: Dataset,
    *,
    limit: int | None,
    offset: int,
    on_result: Callable[[Found], None],
    model: str,
) -> Deferred[None]:
    """`IBackend.find` of an AET of `kind` (``"LOCAL"``, ``"S3"``) whose objects `index`
    records.  A store of images never holds a worklist: MWL-RS is this AET's service being
    unavailable (503, as DICOM-RST answers), not a "not yet"; without an index a store
    cannot be searched by attribute: 501."""
    if model == MODALITY_WORKLIST_FIND:
        return fail(
            ServiceUnavailable(
                f"modality worklist (MWL-RS) on {aet} is not available: the {kind} backend holds no worklist"
            )
        )
    if index is None:
        return fail(
            NotImplementedService(f"search (QIDO-RS) on {aet} is not available: no index is configured")
        )
    return index.find(aet, identifier, limit=limit, offset=offset, on_result=on_result)
