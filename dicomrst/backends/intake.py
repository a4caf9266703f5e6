# -*- test-case-name: tests.integration.test_local -*-
"""C-STOREs into an archive that has no intake of its own (S3): spooled, then stored.

The data set streams into a temporary file (file meta first, so it is a Part-10 object)
as it arrives; once whole, its Study and Series Instance UIDs are read from it in a
thread and it goes to `IBackend.store_instance` as a STOW-RS part would.  The consumer's
``done`` fires with that outcome's status; the file is removed either way.  (The LOCAL
backend provides `IInstanceIntake` itself and writes straight into its directory.)
"""

from __future__ import annotations

import os
import re
import tempfile
from typing import Any

from pydicom import dcmread
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from zope.interface import implementer

from dicomrst.backends.interfaces import IBackend, IInstanceIntake
from dicomrst.backends.values import (
    FAILURE_CANNOT_UNDERSTAND,
    FAILURE_OUT_OF_RESOURCES,
    FAILURE_PROCESSING,
    UploadedInstance,
)
from dicomrst.common.interfaces import IInstanceConsumer
from dicomrst.common.part10 import file_meta
from dicomrst.errors import ServiceUnavailable
from dicomrst.logs import logger

log = logger("dicomrst.intake")

#: A UID as STOW-RS checks it (it becomes part of the object's key).
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


@implementer(IInstanceIntake)
class SpoolingIntake:
    """Instances pushed into `backend`, spooled under `directory` (None: the system's
    temporary directory) until they are whole."""

    def __init__(
        self, backend: IBackend, reactor: Any, directory: str | None = None, pool: Any = None
    ) -> None:
        self.backend = backend
        self.reactor = reactor
        self.directory = directory
        self.pool = pool

    def run_blocking(self, f: Any, *args: Any) -> Deferred[Any]:
        pool = self.pool if self.pool is not None else self.reactor.getThreadPool()
        return deferToThreadPool(self.reactor, pool, f, *args)

    def receive(
        self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_aet: str
    ) -> IInstanceConsumer:
        return _Spooled(self, sop_class_uid, sop_instance_uid, transfer_syntax, source_aet)


def _uids(path: str) -> tuple[str, str | None]:
    """Blocking: the Study and Series Instance UIDs of a spooled object."""
    ds = dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID", "SeriesInstanceUID"])
    series = ds.get("SeriesInstanceUID")
    return str(ds.get("StudyInstanceUID", "")), (str(series) if series else None)


@implementer(IInstanceConsumer)
class _Spooled:
    def __init__(
        self, intake: SpoolingIntake, sop_class: str, sop: str, transfer_syntax: str, source_aet: str
    ) -> None:
        self.intake = intake
        self.sop_class = sop_class
        self.sop = sop
        self.transfer_syntax = transfer_syntax
        self.done: Deferred[int] = Deferred()
        header = file_meta(sop_class, sop, transfer_syntax, source_aet or None)
        self.offset = len(header)
        # Appended to on the reactor, a fragment at a time, as the instance cache does.
        self.file = tempfile.NamedTemporaryFile(  # closed in _store / dataFailed
            dir=intake.directory, prefix="dicomrst-store-", suffix=".dcm", delete=False
        )
        self.size = 0
        self.error: OSError | None = None
        self._write(header)

    def _write(self, data: bytes) -> None:
        if self.error is not None:
            return
        try:
            self.file.write(data)
            self.size += len(data)
        except OSError as e:
            self.error = e

    def dataReceived(self, fragment: bytes) -> None:
        self._write(fragment)

    def dataFinished(self) -> None:
        stored = Deferred.fromCoroutine(self._store())
        stored.addCallback(self.done.callback)
        stored.addErrback(self._crashed)

    def _crashed(self, reason: Failure) -> None:
        log.failure("storing {sop} failed", reason, sop=self.sop)
        if not self.done.called:
            self.done.callback(FAILURE_PROCESSING)

    async def _store(self) -> int:
        path = self.file.name
        try:
            self.file.close()
            if self.error is not None:
                log.warn("cannot spool {sop}: {why}", sop=self.sop, why=str(self.error))
                return FAILURE_OUT_OF_RESOURCES
            try:
                study, series = await self.intake.run_blocking(_uids, path)
                if not _UID.fullmatch(study) or (series is not None and not _UID.fullmatch(series)):
                    raise ValueError(f"no valid Study/Series Instance UID ({study!r}, {series!r})")
            except Exception as e:
                log.warn("instance {sop} refused: {why}", sop=self.sop, why=str(e))
                return FAILURE_CANNOT_UNDERSTAND
            instance = UploadedInstance(
                sop_class_uid=self.sop_class,
                sop_instance_uid=self.sop,
                study_instance_uid=study,
                series_instance_uid=series,
                transfer_syntax=self.transfer_syntax,
                dataset_offset=self.offset,
                size=self.size,
                path=path,
            )
            try:
                outcome = await self.intake.backend.store_instance(instance)
            except ServiceUnavailable as e:
                log.warn("instance {sop} not stored: {why}", sop=self.sop, why=str(e))
                return FAILURE_OUT_OF_RESOURCES
            return outcome.status
        finally:
            _unlink(path)

    def dataFailed(self, reason: Failure) -> None:
        self.file.close()
        _unlink(self.file.name)
        if not self.done.called:
            self.done.errback(reason)
            self.done.addErrback(lambda _: None)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
