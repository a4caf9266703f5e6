# -*- test-case-name: tests.test_echo_interop -*-
"""An AET served by a PACS over DIMSE."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTCP
from zope.interface import implementer

from dicomrst.backends.interfaces import IBackend
from dicomrst.config import AetConfig
from dicomrst.dimse.echo import echo_scu


@implementer(IBackend)
class DimseBackend:
    kind = "DIMSE"

    def __init__(self, config: AetConfig, calling_aet: str, reactor: IReactorTCP) -> None:
        self.config = config
        self.aet = config.aet
        self.calling_aet = calling_aet
        self.reactor = reactor

    def echo(self) -> Deferred[float]:
        # A fresh association each time: a health check must prove the PACS accepts
        # new associations, which a reused one would not.  pool.timeout bounds the
        # connect, the association request and the C-ECHO each.
        assert self.config.host is not None and self.config.port is not None
        return echo_scu(
            self.reactor,
            self.config.host,
            self.config.port,
            self.calling_aet,
            self.aet,
            timeout=self.config.pool.timeout_s,
        )

    def stop(self) -> Deferred[None]:
        return succeed(None)
