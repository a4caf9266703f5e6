"""The explicit state machines above the Upper Layer, transition by transition.

For every transition of every machine (`dicomrst.dimse.find.FIND`, `.get.GET`,
`.move.MOVE`, `.store.STORE`, `dicomrst.wado.throttle.THROTTLE`,
`dicomrst.web.site.REQUEST`) there is a test that brings a real owner (an operation on an
in-memory association, a throttle, a request on an in-memory HTTP connection) into the
transition's source state, applies the stimulus that raises the event (a PDU from the
PACS, the clock, the client), and checks that the machine took that transition, and for
some what its action did.  The tests are generated from the tables: a transition with no
way to reach its source state or raise its event fails, so a table cannot grow without its
test.  Also: the diagrams in docs/state-machines are the ones the tables draw.
"""

from __future__ import annotations

import gc
import io
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from dicomrst import diagrams
from dicomrst.common.identifiers import encode_identifier, retrieve_identifier
from dicomrst.common.machine import InvalidTransition, Machine, Run, Transition
from dicomrst.common.uids import (
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
)
from dicomrst.dimse import commands
from dicomrst.dimse.connection import DimseConnection
from dicomrst.dimse.find import FIND, FindOperation
from dicomrst.dimse.get import GET, GetOperation
from dicomrst.dimse.move import MOVE, MoveOperation, SubOperationsMissing
from dicomrst.dimse.move_registry import MoveRegistry
from dicomrst.dimse.operation import DimseOperation
from dicomrst.dimse.store import STORE, StoreOperation
from dicomrst.ul.negotiation import AcceptorPolicy, AssociationRequest
from dicomrst.ul.protocol import ULProtocol
from dicomrst.wado.throttle import THROTTLE, ResponseThrottle
from dicomrst.web.site import (
    REQUEST,
    GatewayRequest,
    GatewaySite,
    IStreamedBodies,
    abort_connection,
    make_site,
)
from tests.support.pool import POOL_CONTEXTS
from tests.support.ul import (
    ARTIM,
    CT_IMAGE_STORAGE,
    abort_pdu,
    accept_bytes,
    command_bytes,
    messages_written,
    pdata,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "state-machines"
OWNERS: dict[str, type] = {
    "c-find": FindOperation,
    "c-get": GetOperation,
    "c-move": MoveOperation,
    "c-store": StoreOperation,
    "response-throttle": ResponseThrottle,
    "http-request": GatewayRequest,
}
MACHINES = (FIND, GET, MOVE, STORE, THROTTLE, REQUEST)


class TableTests(SynchronousTestCase):
    def test_committed_diagrams_are_the_tables(self) -> None:
        for name, source in diagrams.diagrams().items():
            path = DOCS / name
            self.assertTrue(path.exists(), f"{path} is missing: run python -m dicomrst.diagrams")
            self.assertEqual(
                path.read_text(encoding="utf-8"), source, f"{path} is stale: run python -m dicomrst.diagrams"
            )

    def test_every_action_is_a_method_of_the_owner(self) -> None:
        for machine in MACHINES:
            owner = OWNERS[machine.name]
            for action in machine.actions():
                self.assertTrue(
                    callable(getattr(owner, action, None)), f"{machine.name}: no {owner.__name__}.{action}"
                )

    def test_every_state_is_reachable(self) -> None:
        for machine in MACHINES:
            seen, todo = {machine.initial}, [machine.initial]
            while todo:
                state = todo.pop()
                for t in machine.transitions:
                    if t.source == state and t.target not in seen:
                        seen.add(t.target)
                        todo.append(t.target)
            self.assertEqual(seen, set(machine.states), machine.name)

    def test_an_unexpected_event_is_an_error_not_an_action(self) -> None:
        from dicomrst.common.machine import InvalidTransition

        throttle = ResponseThrottle()
        self.assertRaises(InvalidTransition, throttle._run.fire, "drain")


# -- the generator ------------------------------------------------------------------------------


def per_transition(machine: Machine) -> Callable[[type], type]:
    """A test method per transition of `machine` on the decorated class."""

    def decorate(cls: type) -> type:
        for t in machine.transitions:

            def test(self: TransitionTests, t: Transition = t) -> None:
                self.check(t)

            name = f"test_{t.source}__{t.event}".replace("-", "_")
            test.__name__ = name
            test.__doc__ = f"{t.source} --{t.event}--> {t.target}" + (f" / {t.action}" if t.action else "")
            setattr(cls, name, test)
        return cls

    return decorate


class TransitionTests(SynchronousTestCase):
    """Reach `t.source` (`reach`), raise `t.event` (`stimulate`), and find the transition in
    what the machine did; `effect` checks what its action did, where a test says so."""

    machine: Machine

    def setUp(self) -> None:
        self.clock = Clock()
        self.trace: list[tuple[str, str, str, str]] = []
        fire = Run.fire

        def tracing(run: Run, event: str, *args: object, **kwargs: object) -> None:
            target = run.machine.transition(run.state, event).target
            self.trace.append((run.machine.name, run.state, event, target))
            fire(run, event, *args, **kwargs)

        self.patch(Run, "fire", tracing)

    def check(self, t: Transition) -> None:
        owner = self.reach(t.source, t.event)
        self.assertEqual(owner._run.state, t.source, f"could not reach {t.source}")
        self.trace.clear()
        self.stimulate(owner, t.event, t.source)
        ours = [entry[1:] for entry in self.trace if entry[0] == self.machine.name]
        self.assertIn(
            (t.source, t.event, t.target), ours, f"{t.source} --{t.event}--> {t.target} not taken: {ours}"
        )
        self.effect(owner, t)

    def reach(self, state: str, event: str) -> Any:
        raise NotImplementedError

    def stimulate(self, owner: Any, event: str, state: str) -> None:
        raise NotImplementedError

    def effect(self, owner: Any, t: Transition) -> None:
        pass


# -- the response throttle ----------------------------------------------------------------------


@implementer(IPushProducer)
class Producer:
    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


@per_transition(THROTTLE)
class ThrottleTransitions(TransitionTests):
    machine = THROTTLE

    # What the attached producer and a newly attached one see, by transition.
    EFFECTS = {
        ("flowing", "pause"): (["pause"], []),
        ("flowing", "resume"): ([], []),
        ("flowing", "gone"): ([], []),
        ("flowing", "attach"): ([], []),
        ("paused", "pause"): ([], []),
        ("paused", "resume"): (["resume"], []),
        ("paused", "gone"): (["resume"], []),
        ("paused", "attach"): (["resume"], ["pause"]),
        ("gone", "pause"): ([], []),
        ("gone", "resume"): ([], []),
        ("gone", "gone"): ([], []),
        ("gone", "attach"): ([], []),
    }

    def reach(self, state: str, event: str) -> ResponseThrottle:
        throttle = ResponseThrottle()
        self.producer, self.other = Producer(), Producer()
        throttle.attach(self.producer)
        if state == "paused":
            throttle.pauseProducing()
        elif state == "gone":
            throttle.stopProducing()
        self.producer.events.clear()
        return throttle

    def stimulate(self, throttle: ResponseThrottle, event: str, state: str) -> None:
        {
            "pause": throttle.pauseProducing,
            "resume": throttle.resumeProducing,
            "gone": throttle.stopProducing,
            "attach": lambda: throttle.attach(self.other),
        }[event]()

    def effect(self, throttle: ResponseThrottle, t: Transition) -> None:
        self.assertEqual((self.producer.events, self.other.events), self.EFFECTS[(t.source, t.event)])


# -- the HTTP request lifecycle -----------------------------------------------------------------


class _Body:
    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.events: list[str] = []

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def bodyFinished(self) -> None:
        self.events.append("finished")

    def bodyTooLarge(self, reason: str) -> bool:
        self.events.append("too large")
        return False

    def requestOver(self) -> None:
        self.events.append("over")


@implementer(IStreamedBodies)
class _Streaming(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[_Body] = []
        self.rendered: list[IRequest] = []

    def bodyConsumerFactory(self, request: GatewayRequest) -> _Body | None:
        body = _Body()
        self.bodies.append(body)
        return body

    def render(self, request: IRequest) -> int:
        self.rendered.append(request)
        return NOT_DONE_YET


class _Recorded(GatewayRequest):
    made: list[GatewayRequest] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _Recorded.made.append(self)


class TCPLike(StringTransport):
    """Aborts as a TCP transport does: reading and writing stop, and connectionLost comes
    on a later reactor turn (here: when the test says), not `disconnecting`."""

    def abortConnection(self) -> None:
        self.aborted = True


LIMIT = 100
HEAD = b"POST /upload HTTP/1.1\r\nHost: gw\r\n"
CHUNKED = b"Transfer-Encoding: chunked\r\n\r\n"
TOO_LONG = b"Content-Length: 1000\r\n\r\n"
CHUNK = b"3\r\nabc\r\n"
BIG_CHUNK = b"96\r\n" + b"x" * 150 + b"\r\n"
LAST_CHUNK = b"0\r\n\r\n"


@per_transition(REQUEST)
class RequestTransitions(TransitionTests):
    machine = REQUEST

    def setUp(self) -> None:
        super().setUp()
        self.resource = _Streaming()
        self.site: GatewaySite = make_site(
            self.resource, self.clock, request_timeout=5.0, max_upload_size=LIMIT
        )
        self.site.requestFactory = _Recorded
        _Recorded.made = []
        self.transport = TCPLike(peerAddress=IPv4Address("TCP", "192.0.2.7", 50123))
        self.protocol = self.site.buildProtocol(IPv4Address("TCP", "192.0.2.7", 50123))
        assert self.protocol is not None
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    @property
    def request(self) -> GatewayRequest:
        return _Recorded.made[-1]

    def reach(self, state: str, event: str) -> GatewayRequest:
        if state == "head":
            self.send(HEAD)
        elif state == "body":
            self.send(HEAD + CHUNKED + CHUNK)
        elif state == "rejected":
            self.send(HEAD + CHUNKED + BIG_CHUNK)  # answered on the next reactor turn
            if event == "finish":
                self.request.write(b"")
        elif state in ("handling", "responding", "timing-out"):
            self.send(b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n")
            if state == "responding":
                self.request.write(b"x")
            if state == "timing-out":
                # Transient: the deadline's action writes the 504 and finishes at once.
                self.request._run.state = "timing-out"
        elif state == "aborting":
            # The rest of the read that carried an aborting request's body is still parsed.
            if event in ("chunk", "complete"):
                self.send(HEAD + CHUNKED + CHUNK)
            else:
                self.send(b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n")
                if event == "deadline":
                    self.request.write(b"x")
            abort_connection(self.request, "error")
        elif state == "lost":
            self.send(b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n")
            self.protocol.connectionLost(Failure(ConnectionDone()))
        elif state == "finished":
            self.send(b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n")
            self.request.write(b"x")
            self.request.finish()
        return self.request

    def stimulate(self, request: GatewayRequest, event: str, state: str) -> None:
        if event == "headers":
            self.send(CHUNKED)
        elif event == "too-large":
            self.send(TOO_LONG if state == "head" else BIG_CHUNK)
        elif event == "chunk":
            self.send(CHUNK)
        elif event == "complete":
            self.send(LAST_CHUNK)
        elif event == "written":
            if state == "rejected":
                self.clock.advance(0)
            else:
                request.write(b"x")
        elif event == "finish":
            request.finish()
        elif event == "deadline":
            self.clock.advance(5)
        elif event == "head-deadline":
            self.clock.advance(self.site.headerTimeout)
        elif event == "bad-request":
            # A header line with no colon; in a body, a chunk size that is not hex.
            self.send(b"no colon here\r\n\r\n" if state == "head" else b"zz\r\n")
        elif event == "abort":
            abort_connection(request, "error")
        elif event == "refused":
            request.setHeader(b"WWW-Authenticate", b'Basic realm="gw"')
            request.refuse(401, "authentication required")
        elif event == "lost":
            self.protocol.connectionLost(Failure(ConnectionDone()))
        else:
            raise AssertionError(event)

    def effect(self, request: GatewayRequest, t: Transition) -> None:
        if t.target in ("finished", "lost"):
            self.assertEqual(self.site.inflight, 0, "a request that ended is still in flight")
        if (t.source, t.event) == ("head", "too-large"):
            self.assertIn(b"413", self.transport.value())
        if (t.source, t.event) == ("handling", "deadline"):
            self.assertIn(b"504", self.transport.value())
        if (t.source, t.event) == ("head", "head-deadline"):
            self.assertIn(b"HTTP/1.1 408 Request Timeout\r\n", self.transport.value())
        if t.event == "bad-request":
            self.assertIn(b"HTTP/1.1 400 Bad Request\r\n", self.transport.value())
            self.assertIn(b"Connection: close", self.transport.value())
        if t.event == "refused":
            self.assertIn(b"HTTP/1.1 401 Unauthorized\r\n", self.transport.value())
            self.assertIn(b'WWW-Authenticate: Basic realm="gw"', self.transport.value())
            self.assertIn(b"Connection: close", self.transport.value())
            self.assertEqual(self.resource.rendered, [])
        if (t.source, t.event) == ("body", "complete"):
            self.assertEqual(self.resource.bodies[-1].events, ["finished"])
            self.assertEqual(len(self.resource.rendered), 1)


# -- DIMSE operations on an in-memory association -----------------------------------------------


class PacsSide:
    """Our established association to an in-memory PACS: what we sent, and what it answers."""

    def __init__(self, clock: Clock, transport: StringTransport | None = None) -> None:
        self.connection = DimseConnection(clock)
        request = AssociationRequest("GATEWAY", "PACS", POOL_CONTEXTS)
        self.protocol = ULProtocol(clock, self.connection, request=request, artim_timeout=ARTIM)
        self.transport = transport or StringTransport()
        self.protocol.makeConnection(self.transport)
        self.protocol.dataReceived(
            accept_bytes(self.transport.value(), AcceptorPolicy("PACS", POOL_CONTEXTS))
        )
        self.transport.clear()

    def context(self, abstract_syntax: str) -> int:
        cx = self.protocol.context(abstract_syntax)
        assert cx is not None
        return cx.context_id

    def respond(
        self,
        abstract_syntax: str,
        field: int,
        message_id: int,
        status: int,
        dataset: bytes | None = None,
        **fields: object,
    ) -> None:
        command = command_bytes(
            field,
            MessageIDBeingRespondedTo=message_id,
            Status=status,
            CommandDataSetType=commands.HAS_DATASET if dataset is not None else commands.NO_DATASET,
            **fields,
        )
        context = self.context(abstract_syntax)
        items = [(context, 3, command)]
        if dataset is not None:
            items.append((context, 2, dataset))
        self.protocol.dataReceived(pdata(*items))

    def abort(self) -> None:
        self.protocol.dataReceived(abort_pdu(0, 0))

    def cancels(self) -> list[int]:
        """The Message IDs of the C-CANCEL-RQs we sent."""
        return [
            int(command.MessageIDBeingRespondedTo)
            for _, command, _ in messages_written(self.transport.value())
            if int(command.CommandField) == commands.C_CANCEL_RQ
        ]


class Sink:
    started = False
    gone = False
    wants_bulk_data = True

    def __init__(self) -> None:
        self.attached: list[Any] = []

    def begin(self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> Any:
        raise ConnectionError("not used")

    def attach(self, producer: Any) -> None:
        self.attached.append(producer)

    def finish(self) -> None:
        pass

    def fail(self, reason: str) -> None:
        pass

    def abandon(self) -> None:
        pass


TIMEOUT = 5.0


class OperationTransitions(TransitionTests):
    """What every operation's stimuli have in common."""

    def setUp(self) -> None:
        super().setUp()
        self.pacs = PacsSide(self.clock)

    def stimulate(self, op: Any, event: str, state: str) -> None:
        if event == "timeout":
            self.clock.advance(TIMEOUT)
        elif event == "quiet-ours":
            op.owed = 1
            self.clock.advance(TIMEOUT)
        elif event == "failed":
            self.pacs.abort()
        elif event == "abandon":
            op.abandon()
        else:
            self.operation_stimulus(op, event, state)

    def operation_stimulus(self, op: Any, event: str, state: str) -> None:
        raise NotImplementedError

    def transient(self, op: DimseOperation, state: str) -> None:
        """Put `op` into a state it only passes through inside an action (timed-out: the
        timer fired, and the abort it sends fails the request at once)."""
        op._stop_timer()
        op._run.state = state


IDENTIFIER = encode_identifier(retrieve_identifier("1.2.3"), IMPLICIT_VR_LE)


@per_transition(FIND)
class FindTransitions(OperationTransitions):
    machine = FIND

    def reach(self, state: str, event: str) -> FindOperation:
        self.results: list[Dataset] = []
        op = FindOperation(
            self.pacs.connection,
            self.clock,
            aet="PACS",
            limit=1,
            timeout=TIMEOUT,
            on_result=self.results.append,
        )
        if state == "idle":
            return op
        self.request = op.start(retrieve_identifier("1.2.3"))
        self.request.addErrback(lambda _: None)
        if state == "cancelled":
            self.pending(op, dataset=True)
        elif state == "abandoned":
            op.abandon()
        elif state == "timed-out":
            self.transient(op, "timed-out")
        return op

    def pending(self, op: FindOperation, dataset: bool) -> None:
        data = encode_identifier(retrieve_identifier("1.2.3"), EXPLICIT_VR_LE) if dataset else None
        self.pacs.respond(STUDY_ROOT_FIND, commands.C_FIND_RSP, op._message_id, 0xFF00, data)

    def operation_stimulus(self, op: FindOperation, event: str, state: str) -> None:
        if event == "start":
            op.start(retrieve_identifier("1.2.3")).addErrback(lambda _: None)
        elif event == "activity":
            self.pending(op, dataset=False)
        elif event == "limit":
            self.pending(op, dataset=True)
        elif event == "final":
            self.pacs.respond(STUDY_ROOT_FIND, commands.C_FIND_RSP, op._message_id, commands.SUCCESS)
        else:
            raise AssertionError(event)

    def effect(self, op: FindOperation, t: Transition) -> None:
        if (t.source, t.event) in (("finding", "limit"), ("finding", "abandon")):
            self.assertTrue(op.cancel_sent)
        if t.event in ("limit", "abandon"):
            self.assertEqual(self.pacs.cancels(), [op._message_id])  # once, not again
        if t.event == "timeout":
            self.assertTrue(op.timed_out)
            self.assertTrue(self.pacs.transport.disconnecting)
        if t.target == "ended":
            self.assertIsNone(op._timer, "the operation's timer outlived it")


class InactivityDeadlineTests(SynchronousTestCase):
    """The timeout counts from the last response; a response moves no timer."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.pacs = PacsSide(self.clock)
        self.op = FindOperation(
            self.pacs.connection, self.clock, aet="PACS", limit=None, timeout=TIMEOUT, on_result=list().append
        )
        self.request = self.op.start(retrieve_identifier("1.2.3"))
        self.request.addErrback(lambda _: None)

    def pending(self) -> None:
        self.pacs.respond(STUDY_ROOT_FIND, commands.C_FIND_RSP, self.op._message_id, 0xFF00)

    def test_the_silence_after_the_last_response_times_out(self) -> None:
        for _ in range(3):
            self.clock.advance(TIMEOUT / 2)
            self.pending()
        self.clock.advance(TIMEOUT - 0.5)
        self.assertEqual(self.op.state, "finding")
        self.assertFalse(self.op.timed_out)
        self.clock.advance(0.5)
        self.assertEqual(self.op.state, "ended")  # timed out, aborted, the request failed
        self.assertTrue(self.op.timed_out)
        self.assertTrue(self.pacs.transport.disconnecting)

    def test_responses_leave_the_timer_where_it_is(self) -> None:
        (timer,) = self.clock.getDelayedCalls()
        due = timer.getTime()
        for _ in range(5):
            self.clock.advance(0.5)
            self.pending()
        self.assertEqual(self.clock.getDelayedCalls(), [timer])
        self.assertEqual(timer.getTime(), due)
        self.clock.advance(due - self.clock.seconds())  # it fires, and waits for the rest
        self.assertFalse(self.op.timed_out)
        (again,) = self.clock.getDelayedCalls()
        self.assertEqual(again.getTime(), 2.5 + TIMEOUT)

    def test_the_final_response_stops_it(self) -> None:
        self.pending()
        self.pacs.respond(STUDY_ROOT_FIND, commands.C_FIND_RSP, self.op._message_id, commands.SUCCESS)
        self.assertEqual(self.op.state, "ended")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_an_ended_operation_is_freed_without_the_cyclic_collector(self) -> None:
        """Its run lets go of it at the end: no operation (and all a search holds) per
        request is left for the garbage collector."""
        self.pacs.respond(STUDY_ROOT_FIND, commands.C_FIND_RSP, self.op._message_id, commands.SUCCESS)
        self.assertEqual(self.op.state, "ended")
        gone = weakref.ref(self.op)
        enabled = gc.isenabled()
        gc.disable()
        try:
            del self.op, self.request
            self.assertIsNone(gone())
        finally:
            if enabled:
                gc.enable()


class RunTests(SynchronousTestCase):
    """A run and its owner."""

    machine = Machine(
        name="m",
        initial="a",
        states={"a": "first", "b": "second", "end": "over"},
        events={"go": "on", "stop": "off"},
        transitions=(Transition("a", "go", "b", "went"), Transition("b", "stop", "end", "stopped")),
    )

    def test_the_owner_is_let_go_in_a_terminal_state_after_its_action(self) -> None:
        calls: list[str] = []

        class Owner:
            def went(self) -> None:
                calls.append("went")

            def stopped(self) -> None:
                calls.append("stopped")

        owner = Owner()
        run = Run(self.machine, owner)
        self.assertEqual(self.machine.terminal, frozenset({"end"}))
        run.fire("go")
        self.assertIs(run.owner, owner)
        run.fire("stop")
        self.assertEqual(calls, ["went", "stopped"])
        self.assertIsNone(run.owner)
        with self.assertRaises(InvalidTransition):
            run.fire("go")


@per_transition(GET)
class GetTransitions(OperationTransitions):
    machine = GET

    def reach(self, state: str, event: str) -> GetOperation:
        op = GetOperation(self.pacs.connection, self.clock, aet="PACS", timeout=TIMEOUT, sink=Sink())  # type: ignore[arg-type]
        if state == "idle":
            return op
        op.start(retrieve_identifier("1.2.3")).addErrback(lambda _: None)
        if state == "abandoned":
            op.abandon()
        elif state == "timed-out":
            self.transient(op, "timed-out")
        elif state == "ended":
            self.final(op)
        return op

    def final(self, op: GetOperation) -> None:
        self.pacs.respond(STUDY_ROOT_GET, commands.C_GET_RSP, op._message_id, commands.SUCCESS)

    def operation_stimulus(self, op: GetOperation, event: str, state: str) -> None:
        if event == "start":
            op.start(retrieve_identifier("1.2.3")).addErrback(lambda _: None)
        elif event == "activity":
            if state == "ended":
                op.activity()  # a sub-operation the sink finished late
            else:
                self.pacs.respond(
                    STUDY_ROOT_GET,
                    commands.C_GET_RSP,
                    op._message_id,
                    0xFF00,
                    NumberOfRemainingSuboperations=1,
                )
        elif event == "final":
            self.final(op)
        else:
            raise AssertionError(event)

    def effect(self, op: GetOperation, t: Transition) -> None:
        if t.event == "abandon":
            self.assertEqual(self.pacs.cancels(), [op._message_id])
        if t.target == "ended":
            self.assertNotIn(commands.C_STORE_RQ, self.pacs.connection.handlers)
            self.assertIsNone(op._timer, "the operation's timer outlived it")
        if t.event == "quiet-ours":
            self.assertFalse(op.timed_out)
            self.assertIsNotNone(op._timer)


@per_transition(MOVE)
class MoveTransitions(OperationTransitions):
    machine = MOVE

    def reach(self, state: str, event: str) -> MoveOperation:
        self.registry = MoveRegistry("GATEWAY")
        self.sink = Sink()
        op = MoveOperation(
            self.pacs.connection,
            self.clock,
            aet="PACS",
            timeout=TIMEOUT,
            sink=self.sink,  # type: ignore[arg-type]
            registry=self.registry,
            destination="GWSCP",
            senders=(),
            study="1.2.3",
        )
        self.drained: Deferred[None] | None = None
        if state == "idle":
            return op
        op.start().addErrback(lambda _: None)
        if state in ("answered", "draining", "drained"):
            completed = 1 if state == "draining" or event == "drained" else 0
            self.final(op, completed=completed)
            if state in ("draining", "drained"):
                self.drained = op.drain()
                self.drained.addErrback(lambda f: f.trap(SubOperationsMissing))
        elif state == "abandoned":
            op.abandon()
        elif state == "timed-out" and event == "failed":
            self.transient(op, "timed-out")
        elif state == "timed-out":
            self.clock.advance(TIMEOUT)  # cancelled and aborted: the request failed
        elif state == "ended":
            op.end()
        return op

    def final(self, op: MoveOperation, completed: int = 0) -> None:
        self.pacs.respond(
            STUDY_ROOT_MOVE,
            commands.C_MOVE_RSP,
            op.message_id,
            commands.SUCCESS,
            NumberOfCompletedSuboperations=completed,
        )

    def operation_stimulus(self, op: MoveOperation, event: str, state: str) -> None:
        if event == "start":
            op.start().addErrback(lambda _: None)
        elif event == "activity":
            op.activity()
        elif event == "final":
            self.final(op)
        elif event == "drain":
            op.drain()
        elif event == "drained":
            op.result.received = 1  # the instance the final response reported arrived
            op.activity()
        elif event == "end":
            if state == "abandoned":
                self.final(op)  # the PACS confirms the cancel: ended after the request
            else:
                op.end()
        else:
            raise AssertionError(event)

    def effect(self, op: MoveOperation, t: Transition) -> None:
        if (t.source, t.event) == ("idle", "start"):
            self.assertTrue(self.registry.is_active(op))
        if t.event == "abandon":
            # Only what still runs at the PACS is cancelled: not after the final response.
            self.assertEqual(op.cancel_sent, t.source == "moving")
            self.assertEqual(self.pacs.cancels(), [op.message_id] if t.source == "moving" else [])
        if t.target in ("abandoned", "ended"):
            self.assertFalse(self.registry.is_active(op))
        if t.target == "ended":
            self.assertTrue(op.ended.called)
            self.assertIsNone(op._timer, "the operation's timer outlived it")
        if (t.source, t.event) == ("draining", "timeout"):
            assert self.drained is not None
            self.assertTrue(self.drained.called)
            self.assertTrue(op.timed_out)
        if (t.source, t.event) == ("draining", "drained"):
            assert self.drained is not None
            self.assertIsNone(self.successResultOf(self.drained))


class PausingTransport(StringTransport):
    """A send buffer that is "full" after every write: the registered producer is paused each time."""

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None and self.streaming:
            self.producer.pauseProducing()

    def writeSequence(self, seq: Any) -> None:
        self.write(b"".join(seq))


@per_transition(STORE)
class StoreTransitions(OperationTransitions):
    machine = STORE

    def setUp(self) -> None:
        super().setUp()
        self.pacs = PacsSide(self.clock, PausingTransport())

    def reach(self, state: str, event: str) -> StoreOperation:
        op = StoreOperation(self.pacs.connection, self.clock, aet="PACS", timeout=TIMEOUT)
        if state == "idle":
            return op
        self.start(op)  # the first of three pieces goes out, then the buffer is full
        if state == "awaiting":
            self.send_all(op)
        elif state == "timed-out":
            self.transient(op, "timed-out")
        return op

    def start(self, op: StoreOperation) -> None:
        context = self.pacs.protocol.context(CT_IMAGE_STORAGE)
        assert context is not None
        source = io.BytesIO(b"\x00" * 3000)
        op.start(context, CT_IMAGE_STORAGE, "1.2.3.4", source, chunk=1000).addErrback(lambda _: None)

    def send_all(self, op: StoreOperation) -> None:
        assert op.sender is not None
        while not op.sender.finished:
            op.sender.resumeProducing()

    def operation_stimulus(self, op: StoreOperation, event: str, state: str) -> None:
        if event == "start":
            self.start(op)
        elif event == "activity":
            assert op.sender is not None
            op.sender.resumeProducing()
        elif event == "sent":
            self.send_all(op)
        elif event == "final":
            self.pacs.respond(
                CT_IMAGE_STORAGE,
                commands.C_STORE_RSP,
                op._message_id,
                commands.SUCCESS,
                AffectedSOPClassUID=CT_IMAGE_STORAGE,
                AffectedSOPInstanceUID="1.2.3.4",
            )
        else:
            raise AssertionError(event)

    def effect(self, op: StoreOperation, t: Transition) -> None:
        if (t.source, t.event) == ("sending", "final"):
            self.assertTrue(self.pacs.transport.disconnecting)  # answered early: aborted
        if t.event == "timeout":
            self.assertTrue(op.timed_out)
            self.assertTrue(self.pacs.transport.disconnecting)
        if t.target == "ended":
            self.assertIsNone(op._timer, "the operation's timer outlived it")
