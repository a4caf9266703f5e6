"""A configured AET whose backend this version cannot serve yet (S3, until it lands)."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from dicomrst.backends.interfaces import IBackend
from dicomrst.errors import NotImplementedService


@implementer(IBackend)
class UnsupportedBackend:
    def __init__(self, aet: str, kind: str) -> None:
        self.aet = aet
        self.kind = kind

    def echo(self) -> Deferred[float]:
        return fail(NotImplementedService(f"the {self.kind} backend of {self.aet} is not supported yet"))

    def stop(self) -> Deferred[None]:
        return succeed(None)
