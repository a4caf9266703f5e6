# -*- test-case-name: tests.unit.test_tap -*-
"""Running one WADO-RS retrieve into its response, and how it ends.

The response starts with the first instance, so a retrieve that yields nothing is a
404 and one that fails before anything arrived is an error status.  After that a failure
can only cut the body off (`IInstanceSink.fail`): a multipart that ends cleanly always
holds every instance the source delivered.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError

from dicomrst.backends.interfaces import IBackend
from dicomrst.cache import InstanceCache
from dicomrst.common.identifiers import describe_target
from dicomrst.errors import DicomrstError, NotFound, UpstreamError
from dicomrst.logs import logger
from dicomrst.wado.metadata_sink import MetadataSink
from dicomrst.wado.sinks import MultipartSink

log = logger("dicomrst.wado")


async def send(
    backend: IBackend,
    sink: MultipartSink | MetadataSink,
    study: str,
    series: str | None = None,
    instance: str | None = None,
    *,
    cache: InstanceCache | None = None,
) -> bool:
    """Retrieve the study, series or instance from `backend` into `sink` (and, through
    `cache`, into the instance cache as it streams).

    True: the response ended cleanly.  False: it was cut off after it began (the failure
    is logged here, in one line).  Raises when nothing was written yet: the backend's
    error (`NotFound`, `UpstreamError`, ...), `NotFound` when nothing was retrieved,
    `NotAcceptable` (406) when an instance could not be served as the Accept asks before
    the response started, `UpstreamError` when nothing retrieved could be served
    otherwise; `CancelledError` when the request was cancelled (instances still in flight are then refused).
    """
    aet = backend.aet
    what = describe_target(study, series, instance)
    try:
        try:
            if cache is not None:
                await cache.retrieve(backend, study, series, instance, sink=sink)
            else:
                await backend.retrieve(study, series, instance, sink=sink)
        finally:
            # Instances the source was already answered for may still be on their way
            # into the response (metadata converts after answering): judge it after them.
            await sink.settled()
    except CancelledError:
        sink.abandon()
        raise
    except DicomrstError as e:
        if not sink.started:
            if sink.refused is not None:
                # We refused the instances (the PACS may then report a failure): the
                # client's Accept is the reason.
                raise sink.refused from e
            raise
        # The status line is out: only a cut-off body can tell the client.  An expected
        # failure, logged in one line (its message has the sub-operation counts), not as
        # an unhandled error with a traceback.
        log.warn(
            "{aet} failed after {n} instance(s), {bytes} bytes for {what}: {why}; response cut off",
            aet=aet,
            n=sink.parts,
            bytes=sink.bytes,
            what=what,
            why=e.message,
        )
        sink.fail("error")
        return False
    if sink.dropped:
        # The source delivered instances we could not write: a body that ends cleanly
        # would claim a complete study.
        if not sink.started:
            if sink.refused is not None:
                raise sink.refused
            raise UpstreamError(f"{aet}: none of the {sink.dropped} instance(s) for {what} could be served")
        log.warn(
            "{n} instance(s) for {what} from {aet} could not be served; response cut off",
            n=sink.dropped,
            what=what,
            aet=aet,
        )
        sink.fail("error")
        return False
    if sink.parts == 0:
        raise NotFound(f"{aet} has no instance for {what}")
    sink.finish()
    log.info(
        "retrieved {n} instance(s){kind}, {bytes} bytes from {aet} for {what}",
        kind=" as metadata" if isinstance(sink, MetadataSink) else "",
        n=sink.parts,
        bytes=sink.bytes,
        aet=aet,
        what=what,
    )
    return True
