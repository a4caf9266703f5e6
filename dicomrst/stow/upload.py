# -*- test-case-name: tests.unit.test_stow_web -*-
"""One STOW-RS upload: body parsed as it arrives, parts checked, instances stored.

A `StowUpload` is fed the request body chunk by chunk (by the site's request class while
the body is still arriving, or from a buffered body).  Each complete part is checked as a
Part-10 object and, if valid, handed to `IBackend.store_instance` at once, so the C-STOREs
run while the rest of the body is still being received; at most `concurrency` are in
flight.  When parts wait for a free slot, reading the body pauses (`ReadControl`), so
neither memory nor spool space grows with the body.

Parts up to `spool_threshold` bytes stay in memory, larger ones go to a temporary file.
Each spool is removed as soon as its instance's store has settled, and every one is
removed when the request ends, however it ends.  Instances already handed to the backend
always finish: a client that goes away does not cancel them.
"""

from __future__ import annotations

import os
import tempfile
from collections import deque
from typing import IO, Any, Protocol, cast

import attrs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

from dicomrst.backends.interfaces import IBackend
from dicomrst.backends.values import (
    FAILURE_CANNOT_UNDERSTAND,
    FAILURE_OUT_OF_RESOURCES,
    FAILURE_PROCESSING,
    FAILURE_STUDY_MISMATCH,
    StoreOutcome,
    UploadedInstance,
)
from dicomrst.common.metrics import Metrics
from dicomrst.errors import BadRequest, DicomrstError, ServiceUnavailable
from dicomrst.logs import logger
from dicomrst.stow.multipart import MultipartError, MultipartParser
from dicomrst.stow.part10 import NotPart10, Part10Checker
from dicomrst.stow.response import InstanceResult

log = logger("dicomrst.stow")

DEFAULT_SPOOL_THRESHOLD = 1024 * 1024
#: Checked parts waiting for a free store slot before reading the body pauses.
MAX_WAITING = 2
SPOOL_PREFIX = "dicomrst-stow-"


class ReadControl(Protocol):
    """How an upload throttles the body it is fed."""

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def progress(self) -> None:
        """A store finished while reading is paused: the upload is not idle."""


class _NoReadControl:
    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def progress(self) -> None:
        pass


class _Spool:
    """A part's bytes: in memory up to `threshold`, then in a temporary file.  In memory,
    the chunks as they came, joined once at the end (a part is copied once, not grown
    and then copied)."""

    def __init__(self, threshold: int, directory: str | None) -> None:
        self._threshold = threshold
        self._directory = directory
        self._memory: list[bytes] | None = []
        self._file: IO[bytes] | None = None
        self.path: str | None = None
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self._file is not None:
            self._file.write(data)
            return
        assert self._memory is not None
        self._memory.append(data)
        if self.size > self._threshold:
            fd, self.path = tempfile.mkstemp(prefix=SPOOL_PREFIX, suffix=".dcm", dir=self._directory)
            self._file = os.fdopen(fd, "wb")
            self._file.writelines(self._memory)
            self._memory = None

    def close(self) -> bytes | None:
        """Stop writing; the bytes if they are in memory (else they are at `path`)."""
        if self._file is not None:
            self._file.close()
            self._file = None
            return None
        if self._memory is None:
            return None
        data = b"".join(self._memory)
        self._memory = [data]
        return data

    def discard(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
        self._memory = None
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warn("could not remove STOW spool file {path}: {error}", path=self.path, error=e)
            self.path = None


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    return next((value for key, value in headers if key == name), None)


class _Part:
    def __init__(self, index: int, headers: list[tuple[str, str]], spool: _Spool) -> None:
        self.index = index
        self.checker = Part10Checker()
        self.spool: _Spool | None = spool
        self.problem: str | None = None
        content_type = _header(headers, "content-type")
        essence = (content_type or "").split(";", 1)[0].strip().lower()
        if essence != "application/dicom":
            shown = content_type if content_type is not None else "none (text/plain by default)"
            self.problem = f"part Content-Type is {shown}, not application/dicom"
        encoding = (_header(headers, "content-encoding") or "identity").strip().lower()
        if encoding != "identity":
            self.problem = f"part Content-Encoding {encoding} is not supported"

    def write(self, data: bytes) -> None:
        self.checker.feed(data)
        if self.spool is None:
            return
        if self.problem is not None or self.checker.failed:
            # Failed already: only its UIDs are still of interest, not its bytes.
            self.spool.discard()
            self.spool = None
            return
        self.spool.write(data)


@attrs.frozen
class UploadTarget:
    """Where an upload goes and how its URLs are spelt."""

    aet: str
    study: str | None  # the study in the URL (``/studies/{study}``), if any
    service_url: str  # ``{base}/aets/{aet}``, for RetrieveURLs


class StowUpload:
    """Feed it with `dataReceived`, end it with `bodyFinished`; `wait` for the results.

    Also the site's body consumer: `requestOver` is called when the request ends however
    it ends (response finished, 413, connection lost), and releases everything once the
    stores in flight have settled.

    :ivar error: an error found before any part was read (unknown AET, unsupported media
        type, no boundary); the body is then discarded and the handler raises it.
    """

    def __init__(
        self,
        target: UploadTarget,
        backend: IBackend | None,
        *,
        boundary: bytes | None,
        concurrency: int,
        spool_dir: str | None = None,
        spool_threshold: int = DEFAULT_SPOOL_THRESHOLD,
        error: DicomrstError | None = None,
        reading: ReadControl | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.target = target
        self.metrics = metrics
        self.backend = backend
        self.error = error
        self.concurrency = max(1, concurrency)
        self.reading: ReadControl = reading or _NoReadControl()
        self._spool_dir = spool_dir
        self._spool_threshold = spool_threshold
        self._parser = MultipartParser(boundary, self) if boundary is not None and error is None else None
        self._part: _Part | None = None
        self._parts = 0
        self._completed = 0  # parts whose closing delimiter was seen
        self.results: list[InstanceResult | None] = []
        self._waiting: deque[tuple[int, UploadedInstance, _Spool]] = deque()
        self._spools: dict[int, _Spool] = {}  # spools not yet removed, by part index
        self._inflight = 0
        self._paused = False
        self._body_done = False
        self._over = False  # the request ended: nothing more is started
        self._malformed: str | None = None
        self._cut_off: str | None = None  # why the body was cut short (max-upload-size)
        self._unavailable: ServiceUnavailable | None = None
        self._settled = False
        self._waiters: list[Deferred[list[InstanceResult]]] = []
        self.answered = False  # set by the handler before it writes the response

    # -- the body ------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        parser = self._parser
        if parser is None or self._malformed is not None or self._over or self._cut_off is not None:
            return
        try:
            parser.feed(data)
        except MultipartError as e:
            self._body_malformed(str(e))

    def bodyFinished(self) -> None:
        """The whole body has arrived."""
        if self._body_done:
            return
        self._body_done = True
        if self._paused:
            self._paused = False
            self.reading.resume()
        if self._parser is not None and self._malformed is None and not self._over:
            try:
                self._parser.finish()
            except MultipartError as e:
                self._body_malformed(str(e))
        self._check_settled()

    def bodyTooLarge(self, reason: str) -> bool:
        """The body grew past the site's limit (`reason`) and nothing more of it comes.

        With no part complete there is nothing to report: False (the site answers 413).
        Otherwise True: the complete parts are stored as they would be had the body ended
        here (all their bytes came within the limit), and the results report them, with
        the part cut off (by its UIDs, if its file meta was read) or, between parts, the
        rest of the body as a failure 0xA700 (out of resources).
        """
        if self._over or self._parser is None or self._body_done or self._malformed is not None:
            return False
        if self._completed == 0:
            return False
        self._cut_off = reason
        part, self._part = self._part, None
        if part is not None:
            if part.spool is not None:
                part.spool.discard()
            self._spools.pop(part.index, None)
            self.results[part.index] = self._part_failed(part, reason, FAILURE_OUT_OF_RESOURCES)
        else:
            self.results.append(InstanceResult(None, failure_reason=FAILURE_OUT_OF_RESOURCES))
        log.info(
            "STOW {aet}: {reason}: {complete} complete part(s) kept, the rest not read",
            aet=self.target.aet,
            reason=reason,
            complete=self._completed,
        )
        self._body_done = True
        if self._paused:
            self._paused = False
            self.reading.resume()  # the rest of the body is read and discarded
        self._check_settled()
        return True

    def requestOver(self) -> None:
        """The request ended (answered, rejected or lost): start nothing more, clean up."""
        if self._over:
            return
        self._over = True
        if self._part is not None and self._part.spool is not None:
            self._part.spool.discard()
        self._part = None
        while self._waiting:
            index, _, spool = self._waiting.popleft()
            spool.discard()
            self._spools.pop(index, None)
        self._check_settled()

    async def feed_from(self, content: IO[bytes], chunk_size: int = 64 * 1024) -> None:
        """Feed a body that was buffered before the handler ran (a plain twisted.web Site)."""
        waiting: list[Deferred[None]] = []

        class Pausing:
            paused = False

            def pause(self) -> None:
                self.paused = True

            def resume(self) -> None:
                self.paused = False
                while waiting:
                    waiting.pop().callback(None)

            def progress(self) -> None:
                pass

        control = Pausing()
        self.reading = control
        content.seek(0)
        while chunk := content.read(chunk_size):
            self.dataReceived(chunk)
            if control.paused:
                d: Deferred[None] = Deferred()
                waiting.append(d)
                await d
        self.bodyFinished()

    # -- PartHandler (the multipart parser's events) -------------------------------------

    def part_begin(self, headers: list[tuple[str, str]]) -> None:
        index = self._parts
        self._parts += 1
        self.results.append(None)
        spool = _Spool(self._spool_threshold, self._spool_dir)
        self._spools[index] = spool
        self._part = _Part(index, headers, spool)

    def part_data(self, data: bytes) -> None:
        if self._part is not None:
            self._part.write(data)

    def part_end(self) -> None:
        part, self._part = self._part, None
        assert part is not None
        self._completed += 1
        result, instance = self._check(part)
        if instance is None:
            if part.spool is not None:
                part.spool.discard()
            self._spools.pop(part.index, None)
            self.results[part.index] = result
            return
        assert part.spool is not None
        self._waiting.append((part.index, instance, part.spool))
        self._pump()
        if len(self._waiting) >= MAX_WAITING and not self._paused and not self._body_done:
            self._paused = True
            self.reading.pause()

    def _check(self, part: _Part) -> tuple[InstanceResult, UploadedInstance | None]:
        checker = part.checker
        try:
            info = checker.finish()
        except NotPart10 as e:
            return self._part_failed(part, str(e), FAILURE_CANNOT_UNDERSTAND), None
        if part.problem is not None:
            return self._part_failed(part, part.problem, FAILURE_CANNOT_UNDERSTAND), None
        wanted = self.target.study
        if wanted is not None and info.study_instance_uid != wanted:
            return self._part_failed(
                part,
                f"Study Instance UID {info.study_instance_uid} is not {wanted}, the study in the URL",
                FAILURE_STUDY_MISMATCH,
            ), None
        assert part.spool is not None
        data = part.spool.close()
        instance = UploadedInstance(
            sop_class_uid=info.sop_class_uid,
            sop_instance_uid=info.sop_instance_uid,
            study_instance_uid=info.study_instance_uid,
            series_instance_uid=info.series_instance_uid,
            transfer_syntax=info.transfer_syntax,
            dataset_offset=info.dataset_offset,
            size=part.spool.size,
            path=part.spool.path,
            data=data,
        )
        return InstanceResult(None), instance

    def _part_failed(self, part: _Part, why: str, status: int) -> InstanceResult:
        checker = part.checker
        log.info("STOW {aet}: part {n} rejected: {why}", aet=self.target.aet, n=part.index + 1, why=why)
        if checker.uids_known:
            assert checker.sop_class_uid is not None and checker.sop_instance_uid is not None
            return InstanceResult(StoreOutcome(checker.sop_class_uid, checker.sop_instance_uid, status, why))
        return InstanceResult(None, failure_reason=status)

    # -- storing -------------------------------------------------------------------------

    def _pump(self) -> None:
        while self._waiting and self._inflight < self.concurrency and not self._over:
            index, instance, spool = self._waiting.popleft()
            # Each instance is tried even after another got ServiceUnavailable: a PACS that
            # limits its associations rejects the pool's extra ones while those it has work.
            self._inflight += 1
            assert self.backend is not None
            stored = maybeDeferred(self.backend.store_instance, instance)
            stored.addCallbacks(
                self._stored, self._store_failed, callbackArgs=(index, instance, spool),
                errbackArgs=(index, instance, spool),
            )
        if self._paused and len(self._waiting) < MAX_WAITING:
            self._paused = False
            self.reading.resume()

    def _stored(self, outcome: StoreOutcome, index: int, instance: UploadedInstance, spool: _Spool) -> None:
        self._inflight -= 1
        self._finished(index, instance, spool, outcome, False)

    def _store_failed(self, failure: Failure, index: int, instance: UploadedInstance, spool: _Spool) -> None:
        self._inflight -= 1
        unavailable = False
        if failure.check(ServiceUnavailable):
            error = cast(ServiceUnavailable, failure.value)  # as check() just said
            if self._unavailable is None:
                self._unavailable = error
            outcome = StoreOutcome(
                instance.sop_class_uid, instance.sop_instance_uid, FAILURE_OUT_OF_RESOURCES, error.message
            )
            unavailable = True
        else:
            log.failure(
                "STOW {aet}: storing {sop} failed unexpectedly",
                failure,
                aet=self.target.aet,
                sop=instance.sop_instance_uid,
            )
            outcome = StoreOutcome(
                instance.sop_class_uid, instance.sop_instance_uid, FAILURE_PROCESSING, "internal error"
            )
        self._finished(index, instance, spool, outcome, unavailable)

    def _finished(
        self, index: int, instance: UploadedInstance, spool: _Spool, outcome: StoreOutcome, unavailable: bool
    ) -> None:
        spool.discard()
        self._spools.pop(index, None)
        url = None
        if outcome.stored and instance.series_instance_uid:
            url = (
                f"{self.target.service_url}/studies/{instance.study_instance_uid}"
                f"/series/{instance.series_instance_uid}/instances/{instance.sop_instance_uid}"
            )
        self.results[index] = InstanceResult(
            outcome, retrieve_url=url, study_instance_uid=instance.study_instance_uid, unavailable=unavailable
        )
        if self._paused:
            self.reading.progress()
        self._pump()
        self._check_settled()

    # -- the end -------------------------------------------------------------------------

    def _body_malformed(self, why: str) -> None:
        self._malformed = why
        log.info("STOW {aet}: malformed body: {why}", aet=self.target.aet, why=why)
        if self._part is not None:
            if self._part.spool is not None:
                self._part.spool.discard()
            self._spools.pop(self._part.index, None)
            self.results.pop()  # the incomplete part is not a part
            self._part = None
        if self._paused:
            self._paused = False
            self.reading.resume()  # the rest of the body is read and discarded

    def _check_settled(self) -> None:
        if self._settled or self._inflight or (self._waiting and not self._over):
            return
        if not (self._body_done or self._over):
            return
        self._settled = True
        self._cleanup()
        if self.metrics is not None:
            self._count(self._final_results())
        if self._over and not self.answered:
            results = self._final_results()
            log.info(
                "STOW {aet}: request ended before its response ({parts} parts): {stored} stored, "
                "{failed} failed, {dropped} not stored",
                aet=self.target.aet,
                parts=self._parts,
                stored=sum(1 for r in results if r.outcome is not None and r.outcome.stored),
                failed=sum(1 for r in results if not (r.outcome is not None and r.outcome.stored)),
                dropped=self._parts - sum(1 for r in self.results if r is not None),
            )
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(self._final_results())

    def _count(self, results: list[InstanceResult]) -> None:
        # Once per upload, when it settles: answered or not, each instance counts once.
        stored = warning = failed = 0
        for result in results:
            outcome = result.outcome
            if outcome is None or not outcome.stored:
                failed += 1
            elif outcome.warning:
                warning += 1
            else:
                stored += 1
        assert self.metrics is not None
        self.metrics.stow_instances(stored, warning, failed)

    def _cleanup(self) -> None:
        for spool in self._spools.values():
            spool.discard()
        self._spools.clear()
        if self._part is not None and self._part.spool is not None:
            self._part.spool.discard()

    def _final_results(self) -> list[InstanceResult]:
        results = [r for r in self.results if r is not None]
        if self._malformed is not None and results:
            results.append(InstanceResult(None, failure_reason=FAILURE_CANNOT_UNDERSTAND))
        return results

    def wait(self) -> Deferred[list[InstanceResult]]:
        """Fire with one result per part, once the body is in and every store has settled.

        Errbacks with `BadRequest` if the body was malformed before any part completed.
        Cancelling the returned Deferred does not cancel the stores (they finish, and
        `requestOver` cleans up after them).
        """
        if self.error is not None:
            raise self.error
        d: Deferred[list[InstanceResult]] = Deferred(lambda d: self._forget(d))
        if self._settled:
            d.callback(self._final_results())
        else:
            self._waiters.append(d)

        def malformed(results: list[InstanceResult]) -> list[InstanceResult]:
            # Parts that completed before the body went wrong were stored (or tried) while
            # it was still arriving: they are reported, with the rest as one other failure.
            # With none complete, the whole request is a 400.
            if self._malformed is not None and not any(r is not None for r in self.results):
                raise BadRequest(f"malformed multipart body: {self._malformed}")
            return results

        return d.addCallback(malformed)

    def _forget(self, d: Deferred[Any]) -> None:
        if d in self._waiters:
            self._waiters.remove(d)

    @property
    def unavailable(self) -> ServiceUnavailable | None:
        """The first ServiceUnavailable the backend errbacked with, if any (its Retry-After)."""
        return self._unavailable

    @property
    def malformed(self) -> str | None:
        return self._malformed

    @property
    def cut_off(self) -> str | None:
        """Why the body was cut short (over ``max-upload-size``), if it was."""
        return self._cut_off

    @property
    def parts(self) -> int:
        return self._parts
