"""The one fake `IBackend` of the web layer's unit tests: `FakeBackend`.

The web layer talks to an AET only through `dicomrst.backends.interfaces.IBackend`, so its
tests put this fake behind `GatewayApp` and drive each service by hand:

* ``echo``: each call hands out a Deferred (kept in `echoes`) for the test to fire; the app
  cancelling one counts in `echo_cancels`. With `echo_ms` set it answers that at once.
* ``find``: each call is a `FindCall` (kept in `finds`, with the information model asked
  for) that replays `results` and succeeds, or, with `hold`, waits for the test to `send`
  results and `finish` it (or errback its Deferred). A find stops, as a PACS does, after
  `limit` results.
* ``retrieve``: each call is a `RetrieveCall` (kept in `retrieves`: what was asked, and the
  sink the instances would go into) whose Deferred the test fires, or never does.
* ``store_instance``: each instance is kept in `received` with the bytes `instance.open()`
  gave at that moment (a spooled part must still be on disk while it is stored); its outcome
  comes from `statuses` (by SOP Instance UID, default Success; an exception errbacks) or,
  with `manual`, from the test firing the Deferreds in `pending` (`fire`); the app cancelling
  one counts in `store_cancels`. `store_concurrency` (`pool_size`) is how many the STOW-RS
  route lets run at once; `retrieve_syntaxes` what retrieved instances may arrive in.
* With ``unsupported=True`` every service answers 501 (`NotImplementedService`), as a kind
  of backend without them does (the messages are those of dicomrst's former
  ``UnsupportedBackend``).

Also `KernelTransport`: Twisted's TCP write path (its buffer, ``doWrite``) over a recording
"kernel", for what reaches the socket and when.
"""

from __future__ import annotations

from collections.abc import Callable

from pydicom.dataset import Dataset
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import MemoryReactor
from zope.interface import implementer

from dicomrst.backends import values as model
from dicomrst.backends.interfaces import IBackend
from dicomrst.backends.values import StoreOutcome, UploadedInstance
from dicomrst.common.identifiers import Found, RawIdentifier, encode_identifier
from dicomrst.common.interfaces import IInstanceSink
from dicomrst.common.uids import EXPLICIT_VR_LE, IMPLICIT_VR_LE, STUDY_ROOT_FIND
from dicomrst.errors import NotImplementedService


def _as_received(ds: Dataset) -> Found:
    """`ds` as a PACS's C-FIND-RSP brings it (Implicit VR bytes), when it can be written."""
    try:
        return RawIdentifier(encode_identifier(ds, IMPLICIT_VR_LE), IMPLICIT_VR_LE)
    except Exception:  # a value pydicom cannot write: the test means the data set itself
        return ds


class FindCall:
    """One `find` the fake backend received (with its information `model`); the test drives it."""

    def __init__(
        self,
        identifier: Dataset,
        limit: int | None,
        on_result: Callable[[Found], None],
        model: str = STUDY_ROOT_FIND,
        raw: bool = False,
    ) -> None:
        self.identifier = identifier
        self.raw = raw
        self.limit = limit
        self.model = model
        self.on_result = on_result
        self.sent = 0
        self.cancelled = False
        self.deferred: Deferred[None] = Deferred(self._cancel)

    def _cancel(self, d: Deferred[None]) -> None:
        self.cancelled = True  # the Deferred then errbacks with CancelledError

    def send(self, *datasets: Dataset) -> None:
        """Deliver results as a PACS would: stop (and succeed) after `limit` of them."""
        for ds in datasets:
            if self.deferred.called:
                return
            self.on_result(_as_received(ds) if self.raw else ds)
            self.sent += 1
            if self.limit is not None and self.sent >= self.limit:
                self.deferred.callback(None)

    def finish(self) -> None:
        if not self.deferred.called:
            self.deferred.callback(None)


class RetrieveCall:
    """One `retrieve` the fake backend received: what was asked, the sink, and the Deferred
    the test fires (or leaves pending)."""

    def __init__(self, study: str, series: str | None, instance: str | None, sink: IInstanceSink) -> None:
        self.study = study
        self.series = series
        self.instance = instance
        self.sink = sink
        self.cancelled = False
        self.deferred: Deferred[object] = Deferred(self._cancel)

    def _cancel(self, d: Deferred[object]) -> None:
        self.cancelled = True  # the Deferred then errbacks with CancelledError


@implementer(IBackend)
class FakeBackend:
    """An IBackend whose services the test scripts or fires by hand (see the module docstring)."""

    def __init__(
        self, aet: str = "PACS", kind: str = "DIMSE", *, pool_size: int = 16, unsupported: bool = False
    ) -> None:
        self.aet = aet
        self.kind = kind
        self.unsupported = unsupported
        self.store_concurrency = pool_size
        self.retrieve_syntaxes: tuple[str, ...] = (EXPLICIT_VR_LE, IMPLICIT_VR_LE)
        # echo
        self.echo_ms: float | None = None
        self.echoes: list[Deferred[float]] = []
        self.echo_cancels = 0
        # find
        self.results: list[Dataset] = []
        self.hold = False
        # True: results reach `on_result` as a PACS's do, as bytes (`RawIdentifier`).
        self.raw = False
        self.finds: list[FindCall] = []
        # retrieve
        self.retrieves: list[RetrieveCall] = []
        # store_instance
        self.statuses: dict[str, int | Exception] = {}
        self.manual = False
        self.received: list[tuple[UploadedInstance, bytes]] = []
        self.pending: list[tuple[UploadedInstance, Deferred[StoreOutcome]]] = []
        self.store_cancels = 0

    def echo(self) -> Deferred[float]:
        if self.unsupported:
            return fail(NotImplementedService(f"the {self.kind} backend of {self.aet} is not supported yet"))
        if self.echo_ms is not None:
            return succeed(self.echo_ms)

        def cancel(d: Deferred[float]) -> None:
            self.echo_cancels += 1

        d: Deferred[float] = Deferred(cancel)
        self.echoes.append(d)
        return d

    def find(
        self,
        identifier: Dataset,
        *,
        limit: int | None,
        on_result: Callable[[Found], None],
        model: str = STUDY_ROOT_FIND,
    ) -> Deferred[None]:
        if self.unsupported:
            return fail(
                NotImplementedService(
                    f"search (QIDO-RS) on {self.aet} is not supported: the {self.kind} backend "
                    "has no index of instance attributes to search"
                )
            )
        call = FindCall(identifier, limit, on_result, model, raw=self.raw)
        self.finds.append(call)
        if not self.hold:
            call.send(*self.results)
            call.finish()
        return call.deferred

    def retrieve(
        self, study: str, series: str | None, instance: str | None, *, sink: IInstanceSink
    ) -> Deferred[object]:
        if self.unsupported:
            return fail(NotImplementedService(f"retrieve (WADO-RS) on {self.aet} is not supported"))
        call = RetrieveCall(study, series, instance, sink)
        self.retrieves.append(call)
        return call.deferred

    def store_instance(self, instance: UploadedInstance) -> Deferred[StoreOutcome]:
        if self.unsupported:
            return fail(NotImplementedService(f"store (STOW-RS) on {self.aet} is not supported"))
        with instance.open() as f:
            self.received.append((instance, f.read()))
        if self.manual:

            def cancel(d: Deferred[StoreOutcome]) -> None:
                self.store_cancels += 1

            d: Deferred[StoreOutcome] = Deferred(cancel)
            self.pending.append((instance, d))
            return d
        status = self.statuses.get(instance.sop_instance_uid, model.SUCCESS)
        if isinstance(status, Exception):
            return fail(status)
        return succeed(StoreOutcome(instance.sop_class_uid, instance.sop_instance_uid, status))

    def fire(self, status: int = model.SUCCESS) -> UploadedInstance:
        """Answer the oldest pending store (``manual``) with `status`; the instance it was."""
        instance, d = self.pending.pop(0)
        d.callback(StoreOutcome(instance.sop_class_uid, instance.sop_instance_uid, status))
        return instance

    def stop(self) -> Deferred[None]:
        return succeed(None)


class KernelTransport(FileDescriptor):
    """A TCP-like transport: Twisted's own write buffer, written out on the reactor's turn
    (or by ``doWrite``), recording what reaches the 'kernel' in `sent`."""

    connected = True

    def __init__(self) -> None:
        super().__init__(MemoryReactor())
        self.sent: list[bytes] = []

    def writeSomeData(self, data: bytes) -> int:
        self.sent.append(bytes(data))
        return len(data)
