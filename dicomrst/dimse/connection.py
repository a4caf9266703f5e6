# -*- test-case-name: tests.unit.test_dimse -*-
"""DIMSE messages over one association: assembly from PDVs, requests and responses.

A message's command set is small and is collected whole; its data set is not.  When
the command set is complete, whoever the message is for (a pending request of ours,
or the service handler for an incoming request) chooses an `IDataSetConsumer`, and the
data set's fragments go to it one by one, as they arrive.  The consumer can pause the
association (`DimseConnection.association.pauseProducing`), which stops the PACS.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol as TypingProtocol

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from dicomrst.common import metrics as m
from dicomrst.common.interfaces import IDataSetConsumer
from dicomrst.common.twisted_internals import flush_now
from dicomrst.dimse import commands
from dicomrst.dimse.commands import Command
from dicomrst.logs import debug_enabled, logger
from dicomrst.ul.errors import AssociationClosed, AssociationTimeout
from dicomrst.ul.pdu import PDV, ProtocolError
from dicomrst.ul.protocol import ULProtocol

log = logger("dicomrst.dimse")


@implementer(IDataSetConsumer)
class BufferConsumer:
    """Collects a (small) data set whole: identifiers, C-FIND results."""

    def __init__(self, done: Callable[[bytes], None]) -> None:
        # A C-FIND match comes in one fragment: a list only once there is a second.
        self._first = b""
        self._parts: list[bytes] | None = None
        self._done = done

    def dataReceived(self, fragment: bytes) -> None:
        if self._parts is not None:
            self._parts.append(fragment)
        elif self._first:
            self._parts = [self._first, fragment]
        else:
            self._first = fragment

    def dataFinished(self) -> None:
        self._done(self._first if self._parts is None else b"".join(self._parts))

    def dataFailed(self, reason: Failure) -> None:
        self._first = b""
        self._parts = None


@attrs.define
class IncomingMessage:
    context_id: int
    command: Command

    @property
    def command_field(self) -> int:
        return self.command.number("CommandField")


class RequestHandler(TypingProtocol):
    """Serves one kind of incoming request (C-ECHO-RQ, C-STORE-RQ, ...)."""

    def request_received(
        self, connection: DimseConnection, message: IncomingMessage
    ) -> IDataSetConsumer | None:
        """Return a consumer for the data set, if the message has one."""


ResponseCallback = Callable[[IncomingMessage], "IDataSetConsumer | None"]


@attrs.define
class _Pending:
    message_id: int
    name: str
    deferred: Deferred[IncomingMessage]
    on_response: ResponseCallback | None
    timeout: float | None
    timer: IDelayedCall | None = None
    started: float = 0.0  # when it was sent (kept with metrics on)


class DimseConnection:
    """The ULUser that speaks DIMSE on an association, in either role."""

    def __init__(
        self,
        clock: IReactorTime,
        handlers: Mapping[int, RequestHandler] | None = None,
        metrics: m.Metrics | None = None,
    ) -> None:
        self.clock = clock
        self.handlers = dict(handlers or {})
        #: Counts the requests we send, by their end (None: metrics are off).
        self.metrics = metrics
        self.association: ULProtocol | None = None
        self.ended: Failure | None = None
        self.whenEnded: Deferred[None] = Deferred()
        self._command_parts: list[bytes] = []
        self._command_context: int | None = None
        self._data_context: int | None = None
        self._consumer: IDataSetConsumer | None = None
        self._pending: dict[int, _Pending] = {}
        # Message IDs of requests cancelled locally whose final response may still come.
        self._abandoned: set[int] = set()
        # Message IDs of the peer's requests we have not answered yet.
        self._unanswered: set[int] = set()
        self._next_id = 0
        #: The HTTP request the association serves (set by the pool that lent it): named
        #: on the DEBUG lines of messages that arrive in network callbacks.
        self.request_id: str | None = None

    @property
    def is_ended(self) -> bool:
        """True once the association ended in any way, orderly release included
        (`ended` holds the failure, and is None after a release)."""
        return self.whenEnded.called

    # -- ULUser ---------------------------------------------------------------------

    def association_established(self, association: ULProtocol) -> None:
        self.association = association

    def release_requested(self) -> None:
        pass

    def awaiting_us(self) -> bool:
        # The peer sent a whole request and waits for our response; while it is still
        # sending a message (a data set in progress), the turn is its own.
        return bool(self._unanswered) and self._data_context is None and not self._command_parts

    def association_ended(self, reason: Failure | None) -> None:
        self.ended = reason
        failure = reason or Failure(AssociationClosed("association released"))
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.dataFailed(failure)
        pending, self._pending = self._pending, {}
        for p in pending.values():
            _cancel(p.timer)
            self._count(p, m.ERROR)
            p.deferred.errback(failure)
        if not self.whenEnded.called:
            self.whenEnded.callback(None)

    def pdv_received(self, pdv: PDV) -> None:
        context_id, is_command, is_last, fragment = pdv
        if is_command:
            # A data set nobody consumes (no consumer) is still in progress: PS3.8 E.1
            # forbids interleaving another message with it.
            if self._data_context is not None:
                raise ProtocolError("command fragment while a data set is in progress")
            if self._command_context not in (None, context_id):
                raise ProtocolError("command fragments on different presentation contexts")
            if not is_last:
                self._command_context = context_id
                self._command_parts.append(fragment)
                return
            if self._command_parts:
                self._command_parts.append(fragment)
                data = b"".join(self._command_parts)
                self._command_parts = []
                self._command_context = None
            else:
                data = fragment  # a command set in one PDV, as nearly all are
            try:
                ds = commands.decode_command(data)
            except commands.CommandError as e:
                raise ProtocolError(str(e)) from e
            self._message_received(IncomingMessage(context_id, ds))
            return
        data_context = self._data_context
        if data_context is None:
            raise ProtocolError("data set fragment without a command announcing it")
        if context_id != data_context:
            raise ProtocolError("data set fragments on a different presentation context than their command")
        consumer = self._consumer
        if fragment and consumer is not None:
            consumer.dataReceived(fragment)
        if is_last:
            self._consumer = None
            self._data_context = None
            if consumer is not None:
                consumer.dataFinished()

    # -- dispatch ---------------------------------------------------------------------

    def _logged(self, direction: str, command: Command) -> None:
        """A DEBUG line per DIMSE message: command, message ID, status, the peer's AET."""
        if not debug_enabled():
            return  # a C-STORE stream sends thousands: not even the fields are gathered
        field = command.number("CommandField")
        association = self.association
        peer_aet = "-"
        if association is not None:
            peer_aet = association.called_aet if association.is_requestor else association.calling_aet
        response = commands.is_response(field)
        status = command.number("Status", -1) if response else -1
        extra = {} if self.request_id is None else {"request_id": self.request_id}
        log.debug(
            "DIMSE {direction} {command} message_id={message_id} status={status} peer_aet={peer_aet}",
            direction=direction,
            command=commands.NAMES.get(field, hex(field)),
            message_id=command.number("MessageIDBeingRespondedTo" if response else "MessageID", -1),
            status="-" if status < 0 else f"0x{status:04X}",
            peer_aet=peer_aet,
            **extra,
        )

    def _message_received(self, message: IncomingMessage) -> None:
        command = message.command
        if debug_enabled():
            self._logged("received", command)
        field = command.number("CommandField")
        consumer: IDataSetConsumer | None
        if commands.is_response(field):
            consumer = self._response_received(message)
        else:
            handler = self.handlers.get(field)
            if handler is None:
                raise ProtocolError(f"unexpected {commands.NAMES.get(field, hex(field))}")
            if field != commands.C_CANCEL_RQ:
                self._unanswered.add(message.command.number("MessageID"))
            consumer = handler.request_received(self, message)
        if commands.has_dataset(command):
            self._data_context = message.context_id
            # No consumer means nobody wants the bytes: they are read and dropped.
            self._consumer = consumer

    def _response_received(self, message: IncomingMessage) -> IDataSetConsumer | None:
        rsp = message.command
        message_id = rsp.number("MessageIDBeingRespondedTo", -1)
        status = rsp.number("Status", 0)
        pending = self._pending.get(message_id)
        if pending is None:
            if message_id in self._abandoned:
                # We stopped waiting, the peer did not: read and drop its answers.
                if not commands.is_pending(status):
                    self._abandoned.discard(message_id)
                return None
            raise ProtocolError(f"response to message {message_id}, which we did not send")
        consumer = pending.on_response(message) if pending.on_response else None
        if commands.is_pending(status):
            if pending.timeout is not None:
                self._arm(pending)
            return consumer
        del self._pending[message_id]
        _cancel(pending.timer)
        self._count(pending, m.status_class(status))
        if consumer is not None and commands.has_dataset(rsp):
            # The final response carries a data set (e.g. a failed-SOP list): fire
            # only after the consumer has it.
            def finished(_: object = None) -> None:
                pending.deferred.callback(message)

            return _Chained(consumer, finished)
        pending.deferred.callback(message)
        return consumer

    # -- requests we send -------------------------------------------------------------

    def next_message_id(self) -> int:
        for _ in range(0xFFFF):
            self._next_id = self._next_id % 0xFFFF + 1
            if self._next_id not in self._pending and self._next_id not in self._abandoned:
                return self._next_id
        raise RuntimeError("no free DIMSE message ID")

    def request(
        self,
        context_id: int,
        command: Command,
        dataset: bytes | None = None,
        *,
        timeout: float | None = None,
        on_response: ResponseCallback | None = None,
        streamed: bool = False,
        message_id: int | None = None,
    ) -> Deferred[IncomingMessage]:
        """Send a request; fire with its final response.

        With `streamed`, the command announces a data set that the caller then sends
        piece by piece with `send_data` (C-STORE of a large instance).

        `on_response` sees every response (pending ones too) and may return a
        consumer for that response's data set.  `timeout` bounds the wait for each
        response, not the whole operation (as DICOM-RST documents its timeouts); on
        expiry the association is aborted, since we no longer know the PACS's state.
        `message_id` is one the caller chose (a C-MOVE's must be unique gateway-wide).
        """
        association = self._require()
        if message_id is None:
            message_id = self.next_message_id()
        elif message_id in self._pending or message_id in self._abandoned:
            raise ValueError(f"message ID {message_id} is in use on this association")
        command.MessageID = message_id
        command.CommandDataSetType = (
            commands.HAS_DATASET if dataset is not None or streamed else commands.NO_DATASET
        )
        name = commands.NAMES.get(command.number("CommandField"), "request")
        pending = _Pending(
            message_id, name, Deferred(lambda d: self._cancelled(message_id)), on_response, timeout
        )
        self._pending[message_id] = pending
        if self.metrics is not None:
            pending.started = self.clock.seconds()
        self._arm(pending)
        self._logged("sent", command)
        try:
            association.send_message(context_id, commands.encode_command(command), dataset)
            # To the PACS now, not on the reactor's next turn: the PACS's service time
            # starts when it has the request (a C-FIND's answer waits on it).
            flush_now(association.transport)
        except Exception:
            self._pending.pop(message_id, None)
            _cancel(pending.timer)
            raise
        return pending.deferred

    def send_data(self, context_id: int, data: bytes | memoryview, last: bool) -> None:
        """The next piece of a `streamed` request's data set."""
        self._require().send_data(context_id, data, last)

    def respond(self, context_id: int, command: Command, dataset: bytes | None = None) -> None:
        command.CommandDataSetType = commands.HAS_DATASET if dataset is not None else commands.NO_DATASET
        if commands.is_response(command.number("CommandField")):
            self._unanswered.discard(command.number("MessageIDBeingRespondedTo", -1))
        self._logged("sent", command)
        self._require().send_message(context_id, commands.encode_command(command), dataset)

    def release(self) -> Deferred[None]:
        if self.association is None:
            return succeed(None)
        return self.association.release()

    def abort(self, message: str) -> None:
        if self.association is not None:
            self.association.abort(message)

    def _require(self) -> ULProtocol:
        if self.association is None or self.ended is not None or not self.association.established:
            raise AssociationClosed("association is not established")
        return self.association

    def _count(self, pending: _Pending, outcome: str) -> None:
        """The end of a request we sent, for the metrics: by the AE title asked."""
        metrics = self.metrics
        if metrics is None:
            return
        association = self.association
        aet = "-"
        if association is not None:
            aet = association.called_aet if association.is_requestor else association.calling_aet
        # "C-FIND-RQ" -> "C-FIND"
        service = pending.name[:-3] if pending.name.endswith("-RQ") else pending.name
        metrics.dimse_operation(aet, service, outcome, self.clock.seconds() - pending.started)

    def _arm(self, pending: _Pending) -> None:
        _cancel(pending.timer)
        if pending.timeout is not None:
            pending.timer = self.clock.callLater(pending.timeout, self._timed_out, pending.message_id)

    def _timed_out(self, message_id: int) -> None:
        pending = self._pending.pop(message_id, None)
        if pending is None:
            return
        pending.timer = None
        self._count(pending, m.ERROR)
        pending.deferred.errback(
            AssociationTimeout(f"no {pending.name[:-3]}-RSP within {pending.timeout:g} s")
        )
        self.abort(f"{pending.name} timed out")

    def _cancelled(self, message_id: int) -> None:
        # Cancelling our Deferred (the HTTP client went away) abandons the operation;
        # the association carries on for the pool to judge, and the peer's late
        # responses to it are not protocol errors.
        pending = self._pending.pop(message_id, None)
        if pending is not None:
            _cancel(pending.timer)
            self._count(pending, m.ABANDONED)
            self._abandoned.add(message_id)


@implementer(IDataSetConsumer)
class _Chained:
    def __init__(self, inner: IDataSetConsumer, after: Callable[[], None]) -> None:
        self._inner = inner
        self._after = after

    def dataReceived(self, fragment: bytes) -> None:
        self._inner.dataReceived(fragment)

    def dataFinished(self) -> None:
        self._inner.dataFinished()
        self._after()

    def dataFailed(self, reason: Failure) -> None:
        self._inner.dataFailed(reason)


def _cancel(call: IDelayedCall | None) -> None:
    if call is not None and call.active():
        call.cancel()
