"""A minimal in-memory `IIndex` for tests of the backends that keep objects (LOCAL).

Stand-in until the real index (``dicomrst.index``, SQLite and PostgreSQL) lands next to
the LOCAL backend: records are kept in a dict, and `find` knows only single value
matching (exact, on the value's text) and universal matching (an empty key returns the
record's value), at the STUDY, SERIES or IMAGE level, in (study, series, instance)
order.  Everything fires at once; `fail_adds` makes `add` errback (an index that cannot
commit).
"""

from __future__ import annotations

from collections.abc import Callable

from pydicom.dataset import Dataset
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from dicomrst.index.interfaces import IIndex, IndexRecord

_LEVEL_KEY = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}
_NOT_MATCHED = ("QueryRetrieveLevel", "SpecificCharacterSet")


@implementer(IIndex)
class MemoryIndex:
    def __init__(self) -> None:
        self.records: dict[tuple[str, str], IndexRecord] = {}
        self.fail_adds: Exception | None = None
        self.started = False

    def start(self) -> Deferred[None]:
        self.started = True
        return succeed(None)

    def stop(self) -> Deferred[None]:
        return succeed(None)

    def add(self, record: IndexRecord) -> Deferred[None]:
        if self.fail_adds is not None:
            return fail(self.fail_adds)
        self.records[(record.aet, record.sop_instance)] = record
        return succeed(None)

    def remove(self, aet: str, sop_instance: str) -> Deferred[bool]:
        return succeed(self.records.pop((aet, sop_instance), None) is not None)

    def stamps(self, aet: str) -> Deferred[dict[str, str]]:
        return succeed({r.key: r.stamp for (a, _), r in self.records.items() if a == aet})

    def find(
        self,
        aet: str,
        identifier: Dataset,
        *,
        limit: int | None,
        offset: int,
        on_result: Callable[[Dataset], None],
    ) -> Deferred[None]:
        level = str(identifier.get("QueryRetrieveLevel", "STUDY"))
        unique = _LEVEL_KEY[level]
        records = sorted(
            (r for (a, _), r in self.records.items() if a == aet),
            key=lambda r: (r.study, r.series, r.sop_instance),
        )
        seen: set[str] = set()
        results = []
        for record in records:
            attributes = record.attributes
            if not all(_matches(attributes, element.keyword, element.value) for element in identifier
                       if element.keyword not in _NOT_MATCHED):
                continue
            uid = str(attributes.get(unique, ""))
            if uid in seen:
                continue
            seen.add(uid)
            result = Dataset()
            result.QueryRetrieveLevel = level
            for element in identifier:
                if element.keyword in _NOT_MATCHED:
                    continue
                setattr(result, element.keyword, attributes.get(element.keyword, ""))
            results.append(result)
        results = results[offset:]
        if limit is not None:
            results = results[:limit]
        for result in results:
            on_result(result)
        return succeed(None)


def _matches(attributes: Dataset, keyword: str, wanted: object) -> bool:
    if wanted in (None, "", b""):
        return True  # universal matching
    return str(attributes.get(keyword, "")) == str(wanted)
