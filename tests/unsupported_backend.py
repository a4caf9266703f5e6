"""A backend that serves nothing: every service answers 501.

No configuration builds one any more (S3 AETs get `dicomrst.backends.s3.S3Backend`); the web
tests use it as a backend kind without support for a service.
"""

from __future__ import annotations

from collections.abc import Callable

from pydicom.dataset import Dataset
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from dicomrst.backends.interfaces import IBackend
from dicomrst.backends.values import StoreOutcome, UploadedInstance
from dicomrst.common.interfaces import IInstanceSink
from dicomrst.errors import NotImplementedService


@implementer(IBackend)
class UnsupportedBackend:
    def __init__(self, aet: str, kind: str) -> None:
        self.aet = aet
        self.kind = kind
        self.retrieve_syntaxes: tuple[str, ...] = ()
        self.store_concurrency = 1

    def echo(self) -> Deferred[float]:
        return fail(NotImplementedService(f"the {self.kind} backend of {self.aet} is not supported yet"))

    def find(
        self, identifier: Dataset, *, limit: int | None, on_result: Callable[[Dataset], None]
    ) -> Deferred[None]:
        # QIDO over an object store needs an index of the stored instances' attributes,
        # which does not exist yet; 501 is what PS3.18 §8.5 gives for "not supported".
        return fail(
            NotImplementedService(
                f"search (QIDO-RS) on {self.aet} is not supported: the {self.kind} backend "
                "has no index of instance attributes to search"
            )
        )

    def retrieve(
        self, study: str, series: str | None, instance: str | None, *, sink: IInstanceSink
    ) -> Deferred[object]:
        return fail(NotImplementedService(f"retrieve (WADO-RS) on {self.aet} is not supported"))

    def store_instance(self, instance: UploadedInstance) -> Deferred[StoreOutcome]:
        return fail(NotImplementedService(f"store (STOW-RS) on {self.aet} is not supported"))

    def stop(self) -> Deferred[None]:
        return succeed(None)
