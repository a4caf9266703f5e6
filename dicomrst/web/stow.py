# -*- test-case-name: tests.unit.test_stow_web -*-
"""STOW-RS: ``POST /aets/{aet}/studies[/{study}]`` (PS3.18 §10.5).

The body is consumed while it arrives: `body_consumer` is called through the site's hook
(`GatewayRoot.bodyConsumerFactory`, which finds STOW-RS requests through Klein's URL map)
once the request headers are in, and returns the `StowUpload` that parses the body and
stores each instance as its part completes.  The route handler (`store`) then only waits
for the outcomes and writes the Store Instances Response.  Behind a plain twisted.web
Site (no hook) the handler feeds the buffered body to the same upload.
"""

from __future__ import annotations

from twisted.web.iweb import IRequest

from dicomrst.backends.interfaces import IBackend
from dicomrst.errors import (
    BadRequest,
    DicomrstError,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from dicomrst.logs import logger
from dicomrst.stow.multipart import MultipartError, check_boundary, parse_media_type, shown
from dicomrst.stow.response import encode, store_instances_response, summarize
from dicomrst.stow.upload import ReadControl, StowUpload, UploadTarget
from dicomrst.web.context import WebContext
from dicomrst.web.site import GatewayRequest

log = logger("dicomrst.web")

DICOM_JSON = b"application/dicom+json"
_METADATA_TYPES = ("application/dicom+json", "application/dicom+xml", "application/json")
_EXPECTED = 'multipart/related; type="application/dicom"'


def boundary_of(content_type: bytes | None) -> bytes:
    """The boundary of a STOW-RS body; 415 for a media type we do not take, 400 for no boundary."""
    if content_type is None:
        raise UnsupportedMediaType(f"a Content-Type is required: {_EXPECTED}")
    text = content_type.decode("latin-1")
    try:
        media = parse_media_type(text)
    except MultipartError as e:
        raise UnsupportedMediaType(f"{e}; expected {_EXPECTED}") from None
    part_type = media.params.get("type", "application/dicom").split(";", 1)[0].strip().lower()
    if media.essence in _METADATA_TYPES or part_type in _METADATA_TYPES:
        raise UnsupportedMediaType(
            "STOW-RS of metadata and bulk data (application/dicom+json or application/dicom+xml) is "
            f"not supported; send Part-10 instances as {_EXPECTED}"
        )
    if media.essence != "multipart/related" or part_type != "application/dicom":
        raise UnsupportedMediaType(f"Content-Type {shown(text)} is not supported; expected {_EXPECTED}")
    boundary = media.params.get("boundary")
    if not boundary:
        raise BadRequest("the multipart/related Content-Type has no boundary parameter")
    try:
        return check_boundary(boundary)
    except MultipartError as e:
        raise BadRequest(str(e)) from None


class _RequestReading:
    """Throttles a `GatewayRequest`'s body (`ReadControl`): the upload holds its pause
    through the request's one owner of it."""

    def __init__(self, request: GatewayRequest) -> None:
        self._request = request

    def pause(self) -> None:
        self._request.pause_body(self)

    def resume(self) -> None:
        self._request.resume_body(self)

    def progress(self) -> None:
        self._request.body_progress()


def new_upload(
    context: WebContext,
    request: IRequest,
    aet: str,
    study: str | None,
    reading: ReadControl | None = None,
) -> StowUpload:
    """An upload for `request`; errors found in its headers are kept in ``upload.error``."""
    error: DicomrstError | None = None
    backend: IBackend | None = None
    boundary: bytes | None = None
    service_url = ""
    try:
        service_url = context.service_url(request, aet)  # BadRequest for a malformed Host
        backend = context.backend(aet)
        boundary = boundary_of(request.getHeader(b"content-type"))
    except DicomrstError as e:
        error = e
    target = UploadTarget(aet=aet, study=study, service_url=service_url)
    return StowUpload(
        target,
        backend,
        boundary=boundary,
        concurrency=backend.store_concurrency if backend is not None else 1,
        spool_dir=context.stow_spool_dir,
        spool_threshold=context.stow_spool_threshold,
        error=error,
        reading=reading,
        metrics=context.metrics,
    )


def body_consumer(context: WebContext, request: GatewayRequest, aet: str, study: str | None) -> StowUpload:
    """The upload that takes the body of a STOW-RS request to `aet` (and `study`) as it arrives."""
    return new_upload(context, request, aet, study, reading=_RequestReading(request))


async def store(context: WebContext, request: IRequest, aet: str, study: str | None) -> bytes:
    """Wait for the upload's outcomes and answer with the Store Instances Response."""
    upload = request.bodyConsumer if isinstance(request, GatewayRequest) else None
    own = False
    if not (isinstance(upload, StowUpload) and (upload.target.aet, upload.target.study) == (aet, study)):
        # No site hook (a plain twisted.web Site): the body was buffered; feed it now.
        upload = new_upload(context, request, aet, study)
        own = True
    try:
        if upload.error is not None:
            raise upload.error
        if own:
            content = request.content
            if content is None:
                upload.bodyFinished()
            else:
                await upload.feed_from(content)
        results = await upload.wait()
        context.audit.stored(
            request,
            (
                (r.study_instance_uid, r.outcome.sop_class_uid, r.outcome.sop_instance_uid)
                for r in results
                if r.outcome is not None and r.outcome.stored
            ),
        )
        summary = summarize(results)
        unavailable = upload.unavailable
        status = summary.status
        if unavailable is not None and results and all(r.unavailable for r in results):
            status = 503
        _log_request(upload, summary.stored, summary.warnings, summary.failed, summary.other, status)
        upload.answered = True
        if status == 503:
            assert unavailable is not None
            raise ServiceUnavailable(
                f"no instance could be stored: {unavailable.message}", retry_after=unavailable.retry_after
            )
        if study is not None:
            study_url: str | None = f"{upload.target.service_url}/studies/{study}"
        else:
            studies = {r.study_instance_uid for r in results if r.outcome is not None and r.outcome.stored}
            study_url = f"{upload.target.service_url}/studies/{studies.pop()}" if len(studies) == 1 else None
        body = encode(store_instances_response(results, study_url))
        if upload.cut_off is not None:
            # The Failure Reason (0xA700) does not say why: the Warning does.
            warning = f"299 {upload.target.service_url}: {upload.cut_off}; the rest of the body was not read"
            request.responseHeaders.addRawHeader(b"Warning", warning.encode("utf-8"))
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", DICOM_JSON)
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return body
    finally:
        if own:
            upload.requestOver()


def _log_request(
    upload: StowUpload, stored: int, warnings: int, failed: int, other: int, status: int
) -> None:
    target = upload.target
    where = f"{target.aet} study {target.study}" if target.study else target.aet
    log.info(
        "STOW {where}: {parts} part(s), {stored} stored ({warnings} with warnings), {failed} failed, "
        "{other} other failure(s) -> {status}",
        where=where,
        aet=target.aet,
        parts=upload.parts,
        stored=stored,
        warnings=warnings,
        failed=failed,
        other=other,
        status=status,
    )
