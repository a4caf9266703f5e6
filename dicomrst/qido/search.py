# -*- test-case-name: tests.unit.test_qido_web -*-
"""Running one search: the find, the gateway's own matching, offset and limit, DICOM JSON.

Results are encoded one by one as the backend delivers them, after `Query.accepts` and
the offset; a backend that searches a database (`IIndexedSearch`) matches every key and
skips the offset itself, so there the gateway filters nothing.  At most ``limit`` are
held, so memory is bounded.  A match a PACS sent is written from its bytes
(`SearchTarget.raw_result`), and decoded only for the gateway's own filters (or when the
walk declines it): without filters, results skipped or beyond the page are never parsed.
The caller writes the
response only once the find has ended: a failure status, a timeout or a full pool is
then an error and never a 200 with part of the results.
"""

from __future__ import annotations

from typing import cast

import attrs
from pydicom.dataset import Dataset
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from dicomrst.backends.interfaces import IBackend, IIndexedSearch
from dicomrst.common.dicomjson import encode_dataset, json_array
from dicomrst.common.identifiers import Found, RawIdentifier
from dicomrst.common.transcode import DataSetError
from dicomrst.qido.query import Query


@attrs.frozen
class SearchOutcome:
    """The response body (a DICOM JSON array) and whether more results exist."""

    body: bytes
    more: bool


class SearchResults:
    """Receives `IBackend.find` results: filters, skips the offset, shapes each as its
    target says (`SearchTarget.result`), encodes, keeps `limit`.

    :param service: the service URL (``{base}/aets/{aet}``) RetrieveURLs start with.
    """

    def __init__(self, query: Query, service: str, clock: IReactorTime, filtered: bool = True) -> None:
        self.query = query
        self._filtered = filtered and bool(query.filters)
        self._service = service
        self._clock = clock
        self.skipped = 0
        self.encoded: list[bytes] = []
        self.more = False
        self.error: Failure | None = None
        self.done = False  # nothing more is wanted; later results are ignored
        self.find: Deferred[None] | None = None
        self.stopped_by_us = False
        self._stop_call: IDelayedCall | None = None

    def __call__(self, found: Found) -> None:
        if self.done:
            return
        try:
            raw = isinstance(found, RawIdentifier)
            dataset: Dataset | None = None
            if self._filtered:
                dataset = found.dataset() if isinstance(found, RawIdentifier) else found
                if not self.query.accepts(dataset):
                    return
            if self.skipped < self.query.offset:
                self.skipped += 1
                return
            if len(self.encoded) >= self.query.limit:
                self.more = True
                self._stop()
                return
            encoded = None
            if raw:  # decoded only for the gateway's filters, if at all: JSON from the bytes
                encoded = self.query.target.raw_result(cast(RawIdentifier, found), self._service)
            if encoded is None:
                if dataset is None:
                    dataset = found.dataset() if isinstance(found, RawIdentifier) else found
                result = self.query.target.result(dataset, self.query.identifier, self._service)
                encoded = encode_dataset(result)
            self.encoded.append(encoded)
        except DataSetError:
            raise  # a malformed match: the find fails with the PACS's protocol error
        except Exception:
            self.error = Failure()
            self._stop()

    def _stop(self) -> None:
        self.done = True
        if not self._filtered and self.error is None:
            return  # the backend stops by itself after the limit it was given
        # Cancel outside the backend's own call stack: it is delivering a result.
        self._stop_call = self._clock.callLater(0, self._cancel_find)

    def _cancel_find(self) -> None:
        self._stop_call = None
        if self.find is not None and not self.find.called:
            self.stopped_by_us = True
            self.find.cancel()

    def forget(self) -> None:
        if self._stop_call is not None and self._stop_call.active():
            self._stop_call.cancel()
        self._stop_call = None


async def search(backend: IBackend, query: Query, service: str, clock: IReactorTime) -> SearchOutcome:
    """Run `query` on `backend`; the encoded page of results.

    Raises what the backend's find raises (`UpstreamError`, `UpstreamTimeout`,
    `ServiceUnavailable`, `NotImplementedService`); `CancelledError` when cancelled (the
    client went away or the request timed out), which cancels the find.
    """
    if IIndexedSearch.providedBy(backend):
        # The index matches every key itself (the gateway's filters, combined date-time
        # included) and skips the offset in its SQL.
        results = SearchResults(query, service, clock, filtered=False)
        results.skipped = query.offset
        find = cast(IIndexedSearch, backend).find(
            query.exact_identifier or query.identifier,
            limit=query.limit + 1,
            on_result=results,
            model=query.target.sop_class,
            offset=query.offset,
        )
    else:
        results = SearchResults(query, service, clock)
        find = backend.find(
            query.identifier, limit=query.backend_limit, on_result=results, model=query.target.sop_class
        )
    results.find = find
    try:
        await find
    except CancelledError:
        if not results.stopped_by_us:
            raise
    finally:
        results.forget()
    if results.error is not None:
        results.error.raiseException()
    return SearchOutcome(b"".join(json_array(results.encoded)), results.more)
