# -*- test-case-name: tests.integration.test_s3 -*-
"""An AET served from an S3 bucket (``backend: S3``), on the reactor.

Objects are ``{prefix}{study}/{series}/{sop}.dcm`` Part-10 files, DICOM-RST's layout.
Search asks the index (`dicomrst.index.interfaces.IIndex`), which STOW-RS and C-STOREs
through the gateway update as they store, and the reconcile scan (`reconciler`) keeps
true of what others put into the bucket or delete from it.
"""

from __future__ import annotations

from collections.abc import Callable

from pydicom.dataset import Dataset
from pydicom.uid import AllTransferSyntaxes
from twisted.internet.defer import Deferred
from zope.interface import implementer

from dicomrst.backends.indexed import find_in_index
from dicomrst.backends.interfaces import IBackend, IIndexedSearch, IRangedReads
from dicomrst.backends.s3.client import (
    ATTEMPTS,
    CONNECT_TIMEOUT,
    READ_TIMEOUT,
    CredentialSource,
    S3Client,
)
from dicomrst.backends.s3.reconcile import S3Reconciler
from dicomrst.backends.s3.retrieve import level_prefix, read_object_range, retrieve_objects
from dicomrst.backends.s3.store import MULTIPART_THRESHOLD, PART_SIZE, Store
from dicomrst.backends.values import ObjectRange, StoreOutcome, UploadedInstance
from dicomrst.common.identifiers import Found
from dicomrst.common.interfaces import IInstanceSink
from dicomrst.common.metrics import Metrics
from dicomrst.common.reactor import IGatewayReactor
from dicomrst.common.uids import STUDY_ROOT_FIND
from dicomrst.config import AetConfig
from dicomrst.index.interfaces import IIndex
from dicomrst.logs import logger

log = logger("dicomrst.s3")


@implementer(IBackend, IRangedReads, IIndexedSearch)
class S3Backend:
    kind = "S3"
    #: Objects are served in the syntax they were stored in (or converted, as the web
    #: layer decides per part), so any syntax may arrive from a bucket.
    retrieve_syntaxes: tuple[str, ...] = tuple(str(uid) for uid in AllTransferSyntaxes)

    def __init__(
        self,
        config: AetConfig,
        reactor: IGatewayReactor,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        attempts: int = ATTEMPTS,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        part_size: int = PART_SIZE,
        index: IIndex | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        assert config.endpoint is not None and config.bucket is not None
        self.config = config
        self.aet = config.aet
        self.store_concurrency = config.concurrency
        self.reactor = reactor
        self.index = index
        self.credentials = CredentialSource(config.credentials, reactor)
        self.client = S3Client(
            reactor,
            endpoint=config.endpoint,
            style=config.endpoint_style,
            bucket=config.bucket,
            region=config.region,
            credentials=self.credentials,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            attempts=attempts,
            persistent=config.concurrency,
            metrics=metrics,
        )
        self.store = Store(
            self.client, config.prefix, multipart_threshold, part_size, index=index, aet=config.aet
        )
        # The chain may call instance metadata: resolve it now, off the reactor.
        started = self.credentials.start()
        started.addErrback(lambda f: None)  # logged by the source; requests will retry

    def echo(self) -> Deferred[float]:
        async def head_bucket() -> float:
            start = self.reactor.seconds()
            response = await self.client.request("HEAD", None)
            await self.client.discard(response)
            return (self.reactor.seconds() - start) * 1000.0

        return Deferred.fromCoroutine(head_bucket())

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
            "S3",
            identifier,
            limit=limit,
            offset=offset,
            on_result=on_result,
            model=model,
        )

    def reconciler(self) -> S3Reconciler:
        """The reconcile scan of this AET's bucket against its index (which it needs)."""
        assert self.index is not None
        return S3Reconciler(
            self.client, self.index, self.aet, self.config.prefix, self.reactor,
            concurrency=self.config.concurrency,
        )

    def retrieve(
        self, study: str, series: str | None, instance: str | None, *, sink: IInstanceSink
    ) -> Deferred[int]:
        return Deferred.fromCoroutine(
            retrieve_objects(
                self.client,
                prefix=self.config.prefix,
                concurrency=self.config.concurrency,
                aet=self.aet,
                study=study,
                series=series,
                instance=instance,
                sink=sink,
            )
        )

    def read_range(
        self, study: str, series: str, sop: str, start: int, stop: int, *, version: str | None = None
    ) -> Deferred[ObjectRange]:
        key = f"{level_prefix(self.config.prefix, study, series)}{sop}.dcm"
        return Deferred.fromCoroutine(read_object_range(self.client, key, start, stop, version))

    def store_instance(self, instance: UploadedInstance) -> Deferred[StoreOutcome]:
        return Deferred.fromCoroutine(self.store.store(instance))

    def stop(self) -> Deferred[None]:
        return self.client.stop()
