# -*- test-case-name: tests.test_qido_web -*-
"""QIDO-RS request handling: negotiate, parse, run the find, answer DICOM JSON.

The routes in `dicomrst.web.app` call `search` with the resource's `Target`. Order of
checks: unknown AET (404), malformed path UID or query (400), Accept (406); HEAD stops
there with the headers a GET would carry (no C-FIND). Otherwise the find runs and its
results are encoded one by one as they arrive, after the gateway's own matching and
the offset; at most ``limit`` (≤ `DEFAULT_LIMIT`) are held, so memory is bounded. The
response is only written once the find has ended: a failure status, a timeout or a
full pool is then a 502/504/503 and never a 200 with part of the results.

Retrieve URL (0008,1190) is ``{scheme}://{Host}{base-path}/aets/{aet}/studies/…``:
the scheme of the connection and the request's Host header. ``X-Forwarded-*`` headers
are not trusted (anyone can send them); a proxy in front should pass Host through.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import quote

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from dicomrst.errors import BadRequest, NotAcceptable
from dicomrst.logs import logger
from dicomrst.qido.attributes import IMAGE, SERIES, STUDY, UNIQUE_KEY
from dicomrst.qido.dicomjson import CONTENT_TYPE as DICOM_JSON
from dicomrst.qido.dicomjson import encode_dataset, json_array
from dicomrst.qido.query import MORE_RESULTS_WARNING, Query, Target, parse_query
from dicomrst.web.site import format_address

if TYPE_CHECKING:
    from dicomrst.web.app import GatewayApp

log = logger("dicomrst.web")

JSON = b"application/json"
_RETRIEVE_URL = 0x00081190
_QR_LEVEL = 0x00080052
_CHARSET = 0x00080005
_SOP_INSTANCE_UID = UNIQUE_KEY[IMAGE]
_STUDY_UID = UNIQUE_KEY[STUDY]
_SERIES_UID = UNIQUE_KEY[SERIES]

# What each media range we understand stands for, best first.
_PRODUCED = (DICOM_JSON, JSON)
_NOT_YET = "application/dicom+xml (multipart/related) is not supported yet"


# -- Accept -----------------------------------------------------------------------------


def _media_ranges(header: str, wildcards: bool) -> list[tuple[str, dict[str, str], float]]:
    """``type/subtype; p=v; q=0.5, …`` → [(type, params, q)]; invalid entries are ignored."""
    ranges = []
    for entry in header.split(","):
        kind, *params = (p.strip() for p in entry.split(";"))
        kind = kind.lower()
        if kind.count("/") != 1 or (not wildcards and "*" in kind):
            continue
        parameters: dict[str, str] = {}
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            key, value = key.strip().lower(), value.strip().strip('"')
            if key == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = -1.0
            elif key:
                parameters[key] = value.lower()
        if 0.0 <= q <= 1.0:
            ranges.append((kind, parameters, q))
    return ranges


def _quality(ranges: list[tuple[str, dict[str, str], float]], media_type: bytes) -> float:
    """The q of `media_type` under its most specific matching range; -1 if none matches."""
    wanted = media_type.decode("ascii")
    main = wanted.split("/")[0]
    best: tuple[int, float] = (-1, -1.0)
    for kind, params, q in ranges:
        if kind == wanted:
            specificity = 3
        elif kind == f"{main}/*":
            specificity = 2
        elif kind == "*/*":
            specificity = 1
        else:
            continue
        charset = params.get("charset")
        if charset is not None and charset not in ("utf-8", "utf8"):
            continue  # DICOM JSON is UTF-8 only (PS3.18 F.2)
        if specificity > best[0]:
            best = (specificity, q)
    return best[1]


def negotiate(request: IRequest) -> bytes:
    """The media type to answer a search with (PS3.18 §8.7.8.1), or `NotAcceptable`.

    ``accept=`` in the query wins over the header; no Accept at all (non-conformant
    but common) is treated as ``*/*``, whose default is ``application/dicom+json``.
    """
    sources = []
    query_accept = request.args.get(b"accept")  # type: ignore[attr-defined]
    if query_accept:
        sources.append((b",".join(query_accept).decode("utf-8", "replace"), False))
    header = request.getHeader(b"accept")
    sources.append((header.decode("latin-1") if header is not None else "*/*", True))
    for text, wildcards in sources:
        ranges = _media_ranges(text, wildcards)
        scored = [(_quality(ranges, t), -i, t) for i, t in enumerate(_PRODUCED)]
        q, _, media_type = max(scored)
        if q > 0:
            return media_type
    raise NotAcceptable(
        "search results are available as application/dicom+json or application/json; " + _NOT_YET
    )


# -- the request ------------------------------------------------------------------------


def _args(request: IRequest) -> dict[str, list[str]]:
    try:
        return {
            name.decode("utf-8"): [v.decode("utf-8") for v in values]
            for name, values in request.args.items()  # type: ignore[attr-defined]
        }
    except UnicodeDecodeError:
        raise BadRequest("the query string is not UTF-8 (percent-encode UTF-8 bytes)") from None


def _base_url(app: GatewayApp, request: IRequest) -> str:
    scheme = "https" if request.isSecure() else "http"
    host_header = request.getHeader(b"host")
    if host_header:
        host = host_header.decode("latin-1")
    else:
        host = format_address(request.getHost())  # HTTP/1.0 without Host
    base = "/" + app.base_path.strip("/") if app.base_path.strip("/") else ""
    return f"{scheme}://{host}{base}"


class _Results:
    """Receives `IBackend.find` results: filters, skips the offset, encodes, keeps `limit`."""

    def __init__(self, query: Query, service: str, clock: IReactorTime) -> None:
        self.query = query
        self._service = service
        self._clock = clock
        self._path_uids = query.target.path_keys()
        self.skipped = 0
        self.encoded: list[bytes] = []
        self.more = False
        self.error: Failure | None = None
        self.done = False  # nothing more is wanted; later results are ignored
        self.find: Deferred[None] | None = None
        self.stopped_by_us = False
        self._stop_call: IDelayedCall | None = None

    def __call__(self, dataset: Dataset) -> None:
        if self.done:
            return
        try:
            if not self.query.accepts(dataset):
                return
            if self.skipped < self.query.offset:
                self.skipped += 1
                return
            if len(self.encoded) >= self.query.limit:
                self.more = True
                self._stop()
                return
            self.encoded.append(encode_dataset(self._prepare(dataset)))
        except Exception:
            self.error = Failure()
            self._stop()

    def _stop(self) -> None:
        self.done = True
        if self.query.backend_limit is not None and self.error is None:
            return  # the backend stops by itself after backend_limit results
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

    def _prepare(self, dataset: Dataset) -> Dataset:
        """What the client sees of a C-FIND result."""
        level = self.query.target.level
        if _QR_LEVEL in dataset:
            del dataset[_QR_LEVEL]  # a C-FIND artefact, not data
        # Path UIDs the PACS left out (StudyInstanceUID at series level, …).
        for tag, uid in self._path_uids.items():
            current = dataset.get(tag)
            if current is None or current.value in (None, ""):
                dataset.add(DataElement(tag, "UI", uid))
        if _CHARSET in dataset:
            # The values are decoded now and JSON is UTF-8: say so (PS3.18 F.2).
            charset = dataset[_CHARSET].value
            dataset[_CHARSET].value = "ISO_IR 192" if charset else None
        url = self._retrieve_url(dataset, level)
        if url is not None:
            dataset.add(DataElement(_RETRIEVE_URL, "UR", url))
        return dataset

    def _retrieve_url(self, dataset: Dataset, level: str) -> str | None:
        keys = [(_STUDY_UID, "studies")]
        if level in (SERIES, IMAGE):
            keys.append((_SERIES_UID, "series"))
        if level == IMAGE:
            keys.append((_SOP_INSTANCE_UID, "instances"))
        parts = [self._service]
        for tag, segment in keys:
            element = dataset.get(tag)
            value = element.value if element is not None else None
            uid = value.strip(" \x00") if isinstance(value, str) else ""  # not absent, empty or a list
            if not uid or "/" in uid:
                return None
            parts.append(f"{segment}/{quote(uid, safe='.')}")
        return "/".join(parts)


def _set_warnings(request: IRequest, service: str, texts: list[str]) -> None:
    for text in texts:
        request.responseHeaders.addRawHeader(b"Warning", f"299 {service}: {text}".encode())


async def search(
    app: GatewayApp, request: IRequest, aet: str, target: Callable[..., Target], *uids: str
) -> bytes:
    """Answer one QIDO-RS request (see the module docstring).

    :param target: a `Target` constructor, called with the path's `uids` once the
        AET is known to exist (so an unknown AET is a 404 before a bad UID is a 400).
    """
    backend = app.backend(aet)
    query = parse_query(target(*uids), _args(request))
    media_type = negotiate(request)

    service = f"{_base_url(app, request)}/aets/{quote(aet, safe='')}"
    request.setHeader(b"Vary", b"Accept")
    if request.method == b"HEAD":
        request.setHeader(b"Content-Type", media_type)
        _set_warnings(request, service, query.warnings)
        return b""

    results = _Results(query, service, app.clock)
    find = backend.find(query.identifier, limit=query.backend_limit, on_result=results)
    results.find = find
    try:
        await find
    except CancelledError:
        if not results.stopped_by_us:
            raise  # the client went away or the request timed out
    finally:
        results.forget()
    if results.error is not None:
        results.error.raiseException()

    body = b"".join(json_array(results.encoded))
    request.setResponseCode(200)
    request.setHeader(b"Content-Type", media_type)
    request.setHeader(b"Content-Length", b"%d" % len(body))
    warnings = list(query.warnings)
    if results.more:
        warnings.append(MORE_RESULTS_WARNING)
    _set_warnings(request, service, warnings)
    return body
