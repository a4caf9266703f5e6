# -*- test-case-name: tests.unit.test_ul_protocol -*-
"""The DICOM Upper Layer as a Twisted protocol (PS3.8 §9), requestor or acceptor.

Each received PDU and each local request becomes an event of `dicomrst.ul.fsm`; the
table names the action, and the action is the method `_AE_6`, `_AA_8`, ... here.
Everything above the Upper Layer (DIMSE) is the `ULUser`: it is told when the
association is established, gets every PDV as it arrives, and is told once when the
association ends.  The user can pause us: buffered PDUs then stay unparsed and the
transport stops reading, which is how a slow HTTP client throttles a PACS.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast
from typing import Protocol as TypingProtocol

from pynetdicom.pdu_primitives import A_ASSOCIATE
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IPushProducer,
    IReactorTime,
    ITCPTransport,
    ITransport,
)
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from dicomrst.common.addresses import address_host, format_address
from dicomrst.common.metrics import Metrics
from dicomrst.common.tls import tls_failure
from dicomrst.common.twisted_internals import write_now
from dicomrst.logs import logger
from dicomrst.ul import fsm, pdu
from dicomrst.ul.errors import (
    AssociationAborted,
    AssociationClosed,
    AssociationError,
    AssociationRejected,
    AssociationTimeout,
    ConnectionLost,
    NoAcceptableContext,
    ProtocolViolation,
    TLSFailed,
)
from dicomrst.ul.negotiation import (
    Acceptance,
    AcceptedContext,
    AcceptorPolicy,
    AssociationRequest,
    Rejection,
    describe_reject,
    peer_max_pdu,
    reject_primitive,
)

log = logger("dicomrst.ul")

# Fragment size we use towards a peer that declares no maximum (0): big enough to
# be efficient, small enough that one PDU never dominates memory.
UNLIMITED_PDU_CHUNK = 1 << 20

DEFAULT_ARTIM_TIMEOUT = 30.0

# Connected, no association yet: where a TLS handshake can still be under way.
_UNASSOCIATED = frozenset({"Sta2", "Sta3", "Sta4", "Sta5"})


class ULUser(TypingProtocol):
    """What the Upper Layer reports to the layer above it (DIMSE)."""

    def association_established(self, association: ULProtocol) -> None: ...

    def pdv_received(self, pdv: pdu.PDV) -> None: ...

    def release_requested(self) -> None: ...

    def association_ended(self, reason: Failure | None) -> None:
        """Called once; `reason` is None after an orderly release."""

    def awaiting_us(self) -> bool:
        """True while the peer waits for us (a response we owe is being prepared): then a
        silence is ours, not the peer's, and the idle timer does not end the association."""


class _IConnection(ITransport, IPushProducer, IConsumer):
    """What a `ULProtocol`'s transport is once connected, for typing it: a TCP
    connection (or a test's `StringTransport`) also produces the bytes we read and
    consumes those we write.  `Protocol.transport` is declared an optional ITransport."""


@implementer(IPushProducer)
class ULProtocol(Protocol):
    """One DICOM association over one TCP connection.

    As requestor give `request`; as acceptor give `policy`.  `whenEstablished`
    fires with this protocol once data can flow (or fails with an
    `AssociationError`); `whenClosed` fires with the outcome text when the TCP
    connection has gone, and never fails.
    """

    def __init__(
        self,
        clock: IReactorTime,
        user: ULUser,
        *,
        request: AssociationRequest | None = None,
        policy: AcceptorPolicy | None = None,
        artim_timeout: float = DEFAULT_ARTIM_TIMEOUT,
        idle_timeout: float | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if (request is None) == (policy is None):
            raise ValueError("give exactly one of request (requestor) or policy (acceptor)")
        self.clock = clock
        self.user = user
        # Counts the bytes that cross the connection (None: metrics are off).
        self.metrics = metrics
        self.request = request
        self.policy = policy
        self.is_requestor = request is not None
        self.artim_timeout = artim_timeout
        # Established, how long the peer may send no whole PDU while it is its turn (None:
        # no limit; the pool times its own associations).
        self.idle_timeout = idle_timeout
        # Exactly one was given (checked above): no request means a policy.
        max_pdu = request.max_pdu if request is not None else cast(AcceptorPolicy, policy).max_pdu
        self.max_pdu = max_pdu
        self.state = "Sta1"
        self.contexts: dict[int, AcceptedContext] = {}
        self.peer_max_pdu = 0
        self.calling_aet = request.calling_aet if request else ""
        self.called_aet = request.called_aet if request else ""
        self.peer = ""
        self.peer_host = ""  # the peer's IP address (TCP)
        self.outcome = "open"
        self.whenEstablished: Deferred[ULProtocol] = Deferred()
        self.whenClosed: Deferred[str] = Deferred()
        self._framer = pdu.PDUFramer(max_pdu)
        # After a bad PDU header the stream has no PDU boundaries left: what follows
        # (say, the body of an oversized P-DATA) is dropped, not parsed as more PDUs.
        self._desynchronized = False
        self._release_waiters: list[Deferred[None]] = []
        self._end_reason: Failure | None = None
        self._artim: IDelayedCall | None = None
        # None, or active: `_idle_expired` clears it, `_stop_idle` cancels and clears it.
        self._idle: IDelayedCall | None = None
        self._idle_since = 0.0  # when the peer last made progress (a whole PDU), or we answered
        self._paused = False
        # PDVs of a P-DATA the user paused us in the middle of; delivered on resume.
        self._held: list[pdu.PDV] = []
        self._processing = False
        self._ended = False
        self._started = 0.0
        self._request_version = 1  # of the A-ASSOCIATE-RQ received (acceptor)
        self._write_producer: IPushProducer | None = None

    # -- Twisted ----------------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        if ITCPTransport.providedBy(transport):
            # Nagle plus delayed ACKs stalls every small DIMSE response by ~40 ms.
            transport.setTcpNoDelay(True)
        peer = self._connection.getPeer()
        self.peer = format_address(peer)
        self.peer_host = address_host(peer)
        self._started = self.clock.seconds()
        if self.is_requestor:
            self._event("Evt1")
            self._event("Evt2")
        else:
            self._event("Evt5")

    def dataReceived(self, data: bytes) -> None:
        if self.metrics is not None:
            self.metrics.dimse_received(len(data))
        if self._desynchronized:
            return
        if self.state == "Sta6" and not (self._paused or self._processing or self._held):
            # Nearly every chunk in Sta6: one whole P-DATA-TF, or the body of one whose
            # header came alone, its PDVs to the user without the framer's buffer or
            # `_process`'s loop (what they would do, in the order they would do it).
            body = self._framer.whole_pdata(data)
            if body is not None:
                if self.idle_timeout is not None:
                    self._restart_idle()
                try:
                    pdvs = pdu.parse_pdvs(body)
                except pdu.ProtocolError as e:
                    self._event("Evt19", error=e)
                    return
                self._processing = True
                try:
                    self._deliver(pdvs)
                finally:
                    self._processing = False
                if self._framer.buffered():
                    # Bytes the user's callbacks fed us re-entrantly, after these.
                    self._process()
                return
            if self._framer.pdata_header(data):
                return  # its body comes next (a header alone is no progress)
        self._framer.feed(data)
        self._process()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        # Over TLS, a refused certificate ends the connection before any PDU: say so, not
        # just "closed" (the peer sees only an alert, or nothing).
        tls = tls_failure(reason) if self.state in _UNASSOCIATED else None
        if tls is not None:
            if self.outcome == "open":
                self.outcome = f"TLS failed: {tls}"
            if self.is_requestor and not self.whenEstablished.called:
                failed = TLSFailed(f"TLS with {self.called_aet}@{self.peer} failed: {tls}")
                self.whenEstablished.errback(failed)
        if self.state != "Sta1":
            self._event("Evt17")
        self._stop_artim()
        self._stop_idle()
        if self.is_requestor and not self.whenEstablished.called:
            self.whenEstablished.errback(
                ConnectionLost("connection closed before the association was established")
            )
        self._end(Failure(ConnectionLost("connection closed without release or abort")))
        duration_ms = (self.clock.seconds() - self._started) * 1000
        log.info(
            "association {role} peer={peer} calling={calling} called={called} outcome={outcome} "
            "duration_ms={duration_ms:.1f}",
            role="requestor" if self.is_requestor else "acceptor",
            peer=self.peer,
            calling=self.calling_aet,
            called=self.called_aet,
            outcome=self.outcome,
            duration_ms=duration_ms,
        )
        self.whenClosed.callback(self.outcome)

    # -- what the user may do -----------------------------------------------------

    @property
    def established(self) -> bool:
        return self.state == "Sta6"

    def send_message(
        self, context_id: int, command: bytes, dataset: bytes | memoryview | None = None
    ) -> None:
        """Send one DIMSE message, fragmented to the peer's maximum PDU length."""
        if self.state not in ("Sta6", "Sta8"):
            raise AssociationClosed(f"association is not established ({fsm.STATES[self.state]})")
        if context_id not in self.contexts:
            raise ValueError(f"presentation context {context_id} was not accepted")
        limit = self.peer_max_pdu or UNLIMITED_PDU_CHUNK
        # Fragments must have even length (PS3.8 E.1); each PDV costs 6 header bytes.
        size = max(2, (limit - 6) & ~1)
        pdvs: list[tuple[int, int, bytes]]
        if 0 < len(command) <= size and (dataset is None or len(dataset) <= size):
            # A command set and a data set of one fragment each: every request and
            # response but a C-STORE's (or a large identifier's).
            pdvs = [(context_id, 3, bytes(command))]
            if dataset:
                pdvs.append((context_id, 2, bytes(dataset)))
        else:
            pdvs = []
            for fragments, bit in ((_fragments(command, size), 1), (_fragments(dataset, size), 0)):
                for i, fragment in enumerate(fragments):
                    last = 2 if i == len(fragments) - 1 else 0
                    pdvs.append((context_id, bit | last, fragment))
        if self.state == "Sta6":
            self._DT_1(_pack(pdvs, limit))  # Evt9 in Sta6, without the table's dispatch
        else:
            self._event("Evt9", pdus=_pack(pdvs, limit))

    def send_data(self, context_id: int, data: bytes | memoryview, last: bool) -> None:
        """Send the next piece of a data set whose command went out with `send_message`
        (no data set): a message streamed piece by piece, the last one flagged.  The
        caller must send nothing else on this association until the last piece."""
        if self.state not in ("Sta6", "Sta8"):
            raise AssociationClosed(f"association is not established ({fsm.STATES[self.state]})")
        if context_id not in self.contexts:
            raise ValueError(f"presentation context {context_id} was not accepted")
        limit = self.peer_max_pdu or UNLIMITED_PDU_CHUNK
        fragments = _fragments(data, max(2, (limit - 6) & ~1)) or [b""]
        pdvs = [
            (context_id, 2 if last and i == len(fragments) - 1 else 0, fragment)
            for i, fragment in enumerate(fragments)
        ]
        self._event("Evt9", pdus=_pack(pdvs, limit))

    def register_write_producer(self, producer: IPushProducer) -> None:
        """Let the TCP send buffer pause and resume `producer`: a data set streamed
        with `send_data` then goes no faster than the peer reads it."""
        if self.transport is not None:
            self._connection.registerProducer(producer, True)
            self._write_producer = producer

    def unregister_write_producer(self) -> None:
        if self.transport is not None and self._write_producer is not None:
            self._write_producer = None
            self._connection.unregisterProducer()

    def release(self) -> Deferred[None]:
        """Ask for an orderly release; fires when the peer confirmed it.

        Fails with the reason the association ended if it ended any other way; when
        that happened before this call, the Deferred returned has already failed.
        """
        if self.state == "Sta6":
            self._event("Evt11")
        released: Deferred[None] = Deferred()
        if self._ended:
            if self._end_reason is None:
                released.callback(None)
            else:
                released.errback(self._end_reason)
        elif self.state == "Sta1":
            released.errback(AssociationClosed("association is not open"))
        else:
            self._release_waiters.append(released)
        return released

    def abort(self, message: str = "aborted locally") -> None:
        """A-ABORT (service-user source) and close the connection."""
        if fsm.action_for("Evt15", self.state):
            self._event("Evt15", message=message)
        elif self.state == "Sta2":
            # No association yet, so no A-ABORT to send (PS3.8 has no Evt15 in Sta2);
            # at shutdown we still must not wait for ARTIM.
            if self.outcome == "open":
                self.outcome = message
            self._close()

    @property
    def paused(self) -> bool:
        """Whether the user paused us (we are not reading from the peer)."""
        return self._paused

    def pauseProducing(self) -> None:
        """Stop reading: no more PDUs are dispatched until resumeProducing."""
        if not self._paused:
            self._paused = True
            # The peer cannot make progress while we do not read: not its silence.
            self._stop_idle()
            if self.transport is not None:
                self._connection.pauseProducing()

    def resumeProducing(self) -> None:
        if self._paused:
            self._paused = False
            self._restart_idle()
            if self.transport is not None and self.state != "Sta1":
                self._connection.resumeProducing()
            self._process()

    def stopProducing(self) -> None:
        self.abort("stopped by consumer")

    def context(self, abstract_syntax: str, transfer_syntax: str | None = None) -> AcceptedContext | None:
        for cx in self.contexts.values():
            if cx.abstract_syntax == abstract_syntax and transfer_syntax in (None, cx.transfer_syntax):
                return cx
        return None

    # -- the event loop -----------------------------------------------------------

    def _process(self) -> None:
        # Re-entrant calls (a consumer resuming us from inside pdv_received) just
        # return: the outer loop carries on with what is buffered.
        if self._processing:
            return
        self._processing = True
        try:
            while not self._paused and self.state not in ("Sta1",):
                if self._held:
                    held, self._held = self._held, []
                    if self.state in ("Sta6", "Sta7"):
                        self._deliver(held)
                    continue
                try:
                    item = self._framer.next_pdu()
                except pdu.ProtocolError as e:
                    self._desynchronized = True
                    self._framer = pdu.PDUFramer(self.max_pdu)
                    self._event("Evt19", error=e)
                    break
                if item is None:
                    break
                # Progress is counted in whole PDUs: a peer trickling bytes makes none.
                self._restart_idle()
                pdu_type, body = item
                if pdu_type == pdu.P_DATA_TF and self.state == "Sta6":
                    # Nearly every PDU: Evt10 in Sta6 is DT-2, the PDVs to the user, without
                    # the event table's dispatch (`_pdu_received`, `_event`, `_DT_2`).
                    try:
                        pdvs = pdu.parse_pdvs(body)
                    except pdu.ProtocolError as e:
                        self._event("Evt19", error=e)
                        continue
                    self._deliver(pdvs)
                    continue
                self._pdu_received(pdu_type, body)
        finally:
            self._processing = False

    def _pdu_received(self, pdu_type: int, body: bytes | memoryview) -> None:
        event = fsm.PDU_EVENTS[pdu_type]
        try:
            if pdu_type == pdu.P_DATA_TF:  # nearly every PDU
                payload: object = pdu.parse_pdvs(body)
            elif pdu_type in (pdu.ASSOCIATE_RQ, pdu.ASSOCIATE_AC):
                payload = pdu.decode_associate(pdu_type, body)
                if pdu_type == pdu.ASSOCIATE_RQ:
                    self._request_version = pdu.protocol_version(body)
            elif pdu_type == pdu.ASSOCIATE_RJ:
                payload = pdu.decode_reject(body)
            elif pdu_type == pdu.ABORT:
                payload = pdu.decode_abort(body)
            else:
                payload = None
        except pdu.ProtocolError as e:
            self._event("Evt19", error=e)
            return
        self._event(event, payload=payload)

    def _event(self, event: str, **kw: Any) -> None:
        method = fsm.METHODS.get((event, self.state))
        if method is None:
            raise AssociationClosed(f"{fsm.EVENTS[event]} is not possible in {self.state}")
        getattr(self, method)(**kw)

    # -- timers -------------------------------------------------------------------

    def _start_artim(self) -> None:
        self._stop_artim()
        self._artim = self.clock.callLater(self.artim_timeout, self._artim_expired)

    def _stop_artim(self) -> None:
        if self._artim is not None and self._artim.active():
            self._artim.cancel()
        self._artim = None

    def _restart_idle(self) -> None:
        """(Re)start the idle timer, in Sta6 when one is configured and we are reading."""
        if self.idle_timeout is None or self.state != "Sta6" or self._paused:
            return
        # A lazy deadline (as `DimseOperation`'s): the progress is noted, and the timer, set
        # once, looks when it fires whether the silence has lasted since; a PDU of a C-STORE
        # stream costs a clock read, not a reschedule.
        self._idle_since = self.clock.seconds()
        if self._idle is None:
            self._idle = self.clock.callLater(self.idle_timeout, self._idle_expired)

    def _stop_idle(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def _idle_expired(self) -> None:
        self._idle = None
        if self.state != "Sta6" or self._paused:
            return
        assert self.idle_timeout is not None  # the timer runs only with one
        left = self._idle_since + self.idle_timeout - self.clock.seconds()
        if left > 0:  # progress since it was set: wait for the rest
            self._idle = self.clock.callLater(left, self._idle_expired)
            return
        if self.user.awaiting_us():
            # We owe the peer an answer (the HTTP side is still taking an instance):
            # the silence is ours.  The peer's clock starts when we answer.
            self._restart_idle()
            return
        text = f"no PDU from the peer for {self.idle_timeout:g} s"
        log.warn(
            "association from {peer} (calling {calling}) idle: {text}; A-ABORT sent",
            peer=self.peer,
            calling=self.calling_aet,
            text=text,
        )
        self._fail_pending(AssociationTimeout(text))
        self.abort(text)

    def _artim_expired(self) -> None:
        self._artim = None
        if fsm.action_for("Evt18", self.state):
            self._event("Evt18")
        elif self.state in ("Sta5", "Sta7", "Sta9", "Sta10", "Sta11", "Sta12"):
            # PS3.8 puts no timer on these states; we do, or a silent peer would
            # hold the connection forever.
            what = "association request" if self.state == "Sta5" else "release request"
            self._fail_pending(AssociationTimeout(f"no answer to our {what} within {self.artim_timeout:g} s"))
            self.abort(f"timed out in {self.state}")

    # -- helpers ------------------------------------------------------------------

    @property
    def _connection(self) -> _IConnection:
        """The transport, typed as what it is (see `_IConnection`).  Only used while
        connected; if it were None, using it would raise AttributeError as before."""
        return cast(_IConnection, self.transport)

    def _write(self, data: bytes) -> None:
        if self.metrics is not None:
            self.metrics.dimse_sent(len(data))
        self._connection.write(data)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def _end(self, reason: Failure | None) -> None:
        self._stop_idle()
        if self._ended:
            return
        self._ended = True
        self._end_reason = reason
        if reason is None:
            self.outcome = "released"
        elif self.outcome == "open":
            self.outcome = str(reason.value)
        waiters, self._release_waiters = self._release_waiters, []
        for waiter in waiters:
            if reason is None:
                waiter.callback(None)
            else:
                waiter.errback(reason)
                # Whoever waits has its callbacks on already; a fire-and-forget release
                # (an idle pool entry) must not log an unhandled error.
                waiter.addErrback(lambda _: None)
        self.user.association_ended(reason)

    def _fail_pending(self, error: AssociationError | AssociationTimeout) -> None:
        if self.is_requestor and not self.whenEstablished.called:
            self.whenEstablished.errback(error)
        self._end(Failure(error))

    def _abort_pdu(self, source: int, reason: int) -> None:
        self._write(pdu.encode_abort(source, reason))

    # -- AE: establishment (PS3.8 Table 9-6) ---------------------------------------

    def _AE_1(self) -> None:
        self.state = "Sta4"  # the endpoint has already connected us

    def _AE_2(self) -> None:
        assert self.request is not None
        self._write(self.request.encoded())
        self.state = "Sta5"
        self._start_artim()

    def _AE_3(self, payload: A_ASSOCIATE) -> None:
        assert self.request is not None
        self._stop_artim()
        self.peer_max_pdu = peer_max_pdu(payload)
        self.contexts = self.request.negotiated(payload)
        self.state = "Sta6"
        if not self.contexts:
            reasons = sorted(
                {
                    _CONTEXT_RESULTS.get(cx.result, str(cx.result))
                    for cx in payload.presentation_context_definition_results_list
                }
            )
            error = NoAcceptableContext(
                f"{self.called_aet} accepted the association but none of our presentation contexts "
                f"({', '.join(reasons)})"
            )
            self._fail_pending(error)
            self.abort(str(error))
            return
        self.user.association_established(self)
        self._restart_idle()
        self.whenEstablished.callback(self)

    def _AE_4(self, payload: tuple[int, int, int]) -> None:
        self._stop_artim()
        result, source, reason = payload
        error = AssociationRejected(result, source, reason, describe_reject(result, source, reason))
        self.outcome = str(error)
        self.whenEstablished.errback(error)
        self._end(Failure(error))
        self._close()
        self.state = "Sta1"

    def _AE_5(self) -> None:
        self.state = "Sta2"
        self._start_artim()

    def _AE_6(self, payload: A_ASSOCIATE) -> None:
        assert self.policy is not None
        self._stop_artim()
        self.calling_aet = payload.calling_ae_title.strip()
        self.called_aet = payload.called_ae_title.strip()
        self.peer_max_pdu = peer_max_pdu(payload)
        decision = self.policy.decide(payload, self._request_version)
        if isinstance(decision, Rejection) and decision.source != 1:
            # Provider-level rejection (protocol version) happens in AE-6 itself.
            self._write(pdu.encode_associate(reject_primitive(payload, decision)))
            self.outcome = f"rejected ({decision.describe()})"
            self._start_artim()
            self.state = "Sta13"
            return
        self.state = "Sta3"
        if isinstance(decision, Acceptance):
            self._event("Evt7", decision=decision)
        else:
            self._event("Evt8", decision=decision, request=payload)

    def _AE_7(self, decision: Acceptance) -> None:
        self._write(decision.encoded or pdu.encode_associate(decision.primitive))
        self.contexts = decision.contexts
        self.state = "Sta6"
        self.user.association_established(self)
        self._restart_idle()
        self.whenEstablished.callback(self)

    def _AE_8(self, decision: Rejection, request: A_ASSOCIATE) -> None:
        self._write(pdu.encode_associate(reject_primitive(request, decision)))
        self.outcome = f"rejected ({decision.describe()})"
        self.state = "Sta13"
        self._start_artim()

    # -- DT: data transfer (Table 9-7) --------------------------------------------

    def _DT_1(self, pdus: list[list[bytes]]) -> None:
        metrics = self.metrics
        for parts in pdus:
            data = b"".join(parts)
            if metrics is not None:
                metrics.dimse_sent(len(data))
            # Straight to the socket when nothing waits before it: a request to the PACS
            # (its service time starts when it has it) without registering the socket for
            # writing and unregistering it again, two system calls per message.
            write_now(self.transport, data)
        # What we sent (a response) hands the turn to the peer: its time starts now.
        self._restart_idle()

    def _DT_2(self, payload: list[pdu.PDV]) -> None:
        self._deliver(payload)

    def _deliver(self, pdvs: list[pdu.PDV]) -> None:
        for i, item in enumerate(pdvs):
            if self._paused:
                # Paused by the consumer of an earlier PDV of this same P-DATA.
                self._held = pdvs[i:]
                return
            if item.context_id not in self.contexts:
                self._event(
                    "Evt19",
                    error=pdu.ProtocolError(
                        f"PDV on presentation context {item.context_id} that was not accepted"
                    ),
                )
                return
            try:
                self.user.pdv_received(item)
            except pdu.ProtocolError as e:
                self._event("Evt19", error=e)
                return
            except Exception:
                log.failure("DIMSE layer failed on a PDV from {peer}; aborting", peer=self.peer)
                self.abort("internal error")
                return
            if self.state not in ("Sta6", "Sta7"):
                return

    # -- AR: release (Table 9-8) --------------------------------------------------

    def _AR_1(self) -> None:
        self._stop_idle()  # ARTIM times the release
        self._write(pdu.encode_release_rq())
        self.state = "Sta7"
        self._start_artim()

    def _AR_2(self, payload: None) -> None:
        self.state = "Sta8"
        self.user.release_requested()
        # We have nothing to finish before agreeing: answer at once.
        self._event("Evt14")

    def _AR_3(self, payload: None = None) -> None:
        self._stop_artim()
        self._end(None)
        self._close()
        self.state = "Sta1"

    def _AR_4(self) -> None:
        self._write(pdu.encode_release_rp())
        self._end(None)
        self.state = "Sta13"
        self._start_artim()

    def _AR_5(self) -> None:
        self._stop_artim()
        self.state = "Sta1"

    def _AR_6(self, payload: list[pdu.PDV]) -> None:
        self._deliver(payload)

    def _AR_7(self, pdus: list[list[bytes]]) -> None:
        self._DT_1(pdus)

    def _AR_8(self, payload: None) -> None:
        # Release collision: both sides asked.  The requestor answers first.
        if self.is_requestor:
            self.state = "Sta9"
            self._event("Evt14")
        else:
            self.state = "Sta10"

    def _AR_9(self) -> None:
        self._write(pdu.encode_release_rp())
        self.state = "Sta11"

    def _AR_10(self, payload: None) -> None:
        self.state = "Sta12"
        self._event("Evt14")

    # -- AA: abort (Table 9-9) ----------------------------------------------------

    def _AA_1(
        self, message: str | None = None, error: pdu.ProtocolError | None = None, payload: object = None
    ) -> None:
        if message is not None:
            # A local A-ABORT request: service-user source, then we drop the connection
            # rather than wait on a peer we no longer trust.
            self._abort_pdu(pdu.SOURCE_SERVICE_USER, pdu.REASON_NOT_SPECIFIED)
            self._fail_pending(AssociationAborted(message))
            self.state = "Sta13"
            self._start_artim()
            if self._paused and self.transport is not None:
                self._connection.resumeProducing()
            self._close()
            return
        # Sta2: the peer sent something other than an A-ASSOCIATE-RQ.  We, the
        # provider, detected it, so say so and why (more useful than source 0).
        reason = error.reason if error is not None else pdu.REASON_UNEXPECTED_PDU
        text = str(error) if error is not None else "PDU before A-ASSOCIATE-RQ"
        self._abort_pdu(pdu.SOURCE_SERVICE_PROVIDER, reason)
        self.outcome = f"aborted by us: {text}"
        log.warn("protocol error from {peer}: {text}; A-ABORT sent", peer=self.peer, text=text)
        self.state = "Sta13"
        self._start_artim()

    def _AA_2(self, payload: object = None) -> None:
        self._stop_artim()
        if self.outcome == "open":
            self.outcome = (
                "aborted by peer before association"
                if payload is not None
                else "ARTIM expired in " + self.state
            )
        self._close()
        self.state = "Sta1"

    def _AA_3(self, payload: tuple[int, int]) -> None:
        source, reason = payload
        who = "service user" if source == pdu.SOURCE_SERVICE_USER else "service provider"
        text = f"aborted by peer ({who}"
        if source == pdu.SOURCE_SERVICE_PROVIDER:
            text += f": {pdu.ABORT_REASONS.get(reason, reason)}"
        text += ")"
        self._fail_pending(AssociationAborted(text, source, reason))
        self._close()
        self.state = "Sta1"

    def _AA_4(self) -> None:
        self._fail_pending(ConnectionLost("connection closed by peer without release or abort"))
        self.state = "Sta1"

    def _AA_5(self) -> None:
        self._stop_artim()
        if self.outcome == "open":
            self.outcome = "closed before association request"
        self.state = "Sta1"

    def _AA_6(self, payload: object = None) -> None:
        self.state = "Sta13"

    def _AA_7(self, payload: object = None, error: pdu.ProtocolError | None = None) -> None:
        self._abort_pdu(pdu.SOURCE_SERVICE_PROVIDER, error.reason if error else pdu.REASON_UNEXPECTED_PDU)
        self.state = "Sta13"

    def _AA_8(self, payload: object = None, error: pdu.ProtocolError | None = None) -> None:
        reason = error.reason if error is not None else pdu.REASON_UNEXPECTED_PDU
        text = str(error) if error is not None else f"unexpected PDU in {self.state}"
        self._abort_pdu(pdu.SOURCE_SERVICE_PROVIDER, reason)
        log.warn("protocol error from {peer}: {text}; A-ABORT sent", peer=self.peer, text=text)
        self._fail_pending(ProtocolViolation(f"aborted by us: {text}", pdu.SOURCE_SERVICE_PROVIDER, reason))
        self.state = "Sta13"
        self._start_artim()
        # A paused transport would not see the peer close; read again so Sta13 ends.
        if self._paused and self.transport is not None:
            self._connection.resumeProducing()


# Looked up by PresentationContext.result, which pynetdicom types as optional.
_CONTEXT_RESULTS: dict[int | None, str] = {
    1: "user rejection",
    2: "provider rejection",
    3: "abstract syntax not supported",
    4: "transfer syntaxes not supported",
}


def _fragments(data: bytes | memoryview | None, size: int) -> list[bytes]:
    if not data:
        return []
    # Transports take bytes only, so each fragment is copied once, here.
    view = memoryview(data)
    return [bytes(view[i : i + size]) for i in range(0, len(view), size)]


def _pack(pdvs: Iterable[tuple[int, int, bytes]], limit: int) -> list[list[bytes]]:
    """Group PDVs into as few P-DATA-TF PDUs as the peer's limit allows."""
    pdus: list[list[bytes]] = []
    batch: list[tuple[int, int, bytes]] = []
    used = 0
    for context_id, control, fragment in pdvs:
        cost = 6 + len(fragment)
        if batch and used + cost > limit:
            pdus.append(pdu.encode_pdata(batch))
            batch, used = [], 0
        batch.append((context_id, control, fragment))
        used += cost
    if batch:
        pdus.append(pdu.encode_pdata(batch))
    return pdus
