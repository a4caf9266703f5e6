# -*- test-case-name: tests.unit.test_local -*-
"""An AET served from a directory (``backend: LOCAL``, ``aets[].path``).

Objects are ``{path}/{study}/{series}/{sop}.dcm`` Part-10 files, the S3 layout
(`dicomrst.backends.local.files`).  Retrieves stream them (`retrieve`), STOW-RS and
C-STOREs into a listener with ``store-to`` write them durably (`store`), search asks
the index (`dicomrst.index.interfaces.IIndex`; the reconcile scan, `reconciler`, finds
what was copied in or deleted by hand), and frames and bulk data read the
byte ranges they need (`IRangedReads`).  Every blocking file operation runs in a
thread; the directory must be on a local disk (a slow network filesystem would still
hold each thread, and each C-STORE fragment's append, as long as it takes).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import AllTransferSyntaxes
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from dicomrst.backends.indexed import find_in_index
from dicomrst.backends.interfaces import IBackend, IIndexedSearch, IInstanceIntake, IRangedReads
from dicomrst.backends.local.files import (
    check_root,
    list_objects,
    new_token,
    prepare_root,
    read_at,
    remove_leftovers,
    safe_uid,
    stamp_of,
)
from dicomrst.backends.local.reconcile import LocalReconciler
from dicomrst.backends.local.retrieve import LocalRetrieval
from dicomrst.backends.local.store import LocalStore
from dicomrst.backends.local.threads import Threads
from dicomrst.backends.values import ObjectChanged, ObjectRange, StoreOutcome, UploadedInstance
from dicomrst.common.identifiers import Found
from dicomrst.common.interfaces import IInstanceConsumer, IInstanceSink
from dicomrst.common.uids import STUDY_ROOT_FIND
from dicomrst.errors import NotFound, UpstreamError
from dicomrst.index.interfaces import IIndex
from dicomrst.logs import logger

log = logger("dicomrst.local")

#: Instances of one STOW-RS upload in flight: written and fsynced (at most
#: `dicomrst.backends.local.store.DISK_CONCURRENCY` of them at once, for the AET), or
#: waiting for the index's commit, which groups them (each holds its part meanwhile, up
#: to the spool threshold in memory).
STORE_CONCURRENCY = 16


class LocalArchiveError(Exception):
    """The directory cannot be used (at start); the message says why."""


@implementer(IBackend, IRangedReads, IInstanceIntake, IIndexedSearch)
class LocalBackend:
    kind = "LOCAL"
    #: Files are served in the syntax they were stored in (converted as the web layer
    #: decides per part), so any syntax may come out of the directory.
    retrieve_syntaxes: tuple[str, ...] = tuple(str(uid) for uid in AllTransferSyntaxes)
    store_concurrency = STORE_CONCURRENCY

    def __init__(
        self, aet: str, path: str, reactor: IReactorTime, *, index: IIndex | None = None, pool: Any = None
    ) -> None:
        self.aet = aet
        self.root = os.path.abspath(path)
        self.reactor = reactor
        self.index = index
        self.threads = Threads(reactor, pool)
        self.token = new_token()
        self.store = LocalStore(aet, self.root, self.threads, index, self.token)

    def start(self) -> Deferred[int]:
        """Create the directory if needed (blocking, before anything is served:
        `LocalArchiveError`), then remove what an earlier run left half-written (in a
        thread); fires with how many temporary files were removed."""
        try:
            prepare_root(self.root)
        except OSError as e:
            raise LocalArchiveError(f"cannot use {self.root!r}: {e.strerror or e}") from None
        cleaned = self.threads.run(remove_leftovers, self.root, self.token)

        def report(n: int) -> int:
            if n:
                log.info("{aet}: removed {n} temporary file(s) an earlier run left in {root}",
                         aet=self.aet, n=n, root=self.root)
            return n

        return cleaned.addCallback(report)

    def reconciler(self) -> LocalReconciler:
        """The reconcile scan of this AET's directory against its index (which it needs)."""
        assert self.index is not None
        return LocalReconciler(self.root, self.index, self.aet, self.threads)

    def echo(self) -> Deferred[float]:
        started = self.reactor.seconds()

        def checked(_: None) -> float:
            return (self.reactor.seconds() - started) * 1000.0

        def failed(reason: Failure) -> float:
            error = reason.value
            why = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            raise UpstreamError(f"{self.aet}: the directory {self.root} is not usable: {why}")

        return self.threads.run(check_root, self.root).addCallbacks(checked, failed)

    def find(
        self,
        identifier: Dataset,
        *,
        limit: int | None,
        on_result: Callable[[Found], None],
        model: str = STUDY_ROOT_FIND,
        offset: int = 0,
    ) -> Deferred[None]:
        return find_in_index(
            self.index,
            self.aet,
            "LOCAL",
            identifier,
            limit=limit,
            offset=offset,
            on_result=on_result,
            model=model,
        )

    def retrieve(
        self, study: str, series: str | None, instance: str | None, *, sink: IInstanceSink
    ) -> Deferred[int]:
        return Deferred.fromCoroutine(self._retrieve(study, series, instance, sink))

    async def _retrieve(
        self, study: str, series: str | None, instance: str | None, sink: IInstanceSink
    ) -> int:
        what = f"study {study}" + (f" series {series}" if series else "")
        uids = [study] + [u for u in (series, instance) if u is not None]
        if not all(safe_uid(u) for u in uids):
            raise NotFound(f"{self.aet} has no instance for {what}")
        if instance is not None:
            assert series is not None
            paths = [os.path.join(self.root, study, series, f"{instance}.dcm")]
        else:
            listed = await self.threads.run(list_objects, self.root, study, series)
            paths = [path for _series, path in listed]
            if not paths:
                raise NotFound(f"{self.aet} has no instance for {what}")
        run = LocalRetrieval(self.threads, sink, paths, single=instance is not None)
        delivered = await run.run()
        if instance is not None and run.missing:
            raise NotFound(f"{self.aet} has no instance {instance} in {what}")
        return delivered

    def read_range(
        self, study: str, series: str, sop: str, start: int, stop: int, *, version: str | None = None
    ) -> Deferred[ObjectRange]:
        if not (safe_uid(study) and safe_uid(series) and safe_uid(sop)):
            return fail(NotFound(f"{self.aet} has no instance {sop}"))
        path = os.path.join(self.root, study, series, f"{sop}.dcm")

        def read() -> ObjectRange:
            try:
                data, st = read_at(path, start, stop)
            except FileNotFoundError:
                raise NotFound(f"{self.aet} has no instance {sop}") from None
            except OSError as e:
                raise UpstreamError(f"cannot read LOCAL object {path}: {e.strerror or e}") from None
            stamp = stamp_of(st)
            if version is not None and stamp != version:
                raise ObjectChanged(f"LOCAL object {path} changed since its head was read")
            return ObjectRange(data, start, st.st_size, stamp)

        return self.threads.run(read)

    def store_instance(self, instance: UploadedInstance) -> Deferred[StoreOutcome]:
        return Deferred.fromCoroutine(self.store.store(instance))

    def receive(
        self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_aet: str
    ) -> IInstanceConsumer:
        return self.store.receive(sop_class_uid, sop_instance_uid, transfer_syntax, source_aet)

    def stop(self) -> Deferred[None]:
        return succeed(None)
