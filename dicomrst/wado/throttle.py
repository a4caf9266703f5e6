# -*- test-case-name: tests.unit.test_machines -*-
"""A response's hold on the producer that feeds it: the association (or S3 download)
paused while the HTTP client reads slower than the source sends.

`ResponseThrottle` is the HTTP request's push producer: twisted.web pauses it when the
client's socket is full, and it pauses the producer attached to it (`attach`), which stops
reading from the PACS.  Its states and events are `THROTTLE` (diagram:
``docs/state-machines/response-throttle.dot``).

Several responses may pause one association (a PACS may send two C-MOVEs' instances over
one association to our listener), and one response's instances may move on to another
association: `hold_paused`/`release_paused` count who wants a producer paused, so it reads
again only once none does.  A plain pause/resume would let one response's resume override
another's pause (buffering without bound for a slow client), and a response moving on
would leave the first association paused for good (the PACS then waits for a C-STORE-RSP
that never comes).
"""

from __future__ import annotations

from weakref import WeakKeyDictionary

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from dicomrst.common.machine import Machine, Run, transitions
from dicomrst.errors import NotAcceptable

# Who wants a producer paused, by producer.
_pause_holders: WeakKeyDictionary[IPushProducer, set[object]] = WeakKeyDictionary()


def hold_paused(producer: IPushProducer, holder: object) -> None:
    """Pause `producer` on behalf of `holder`."""
    holders = _pause_holders.setdefault(producer, set())
    holders.add(holder)
    producer.pauseProducing()


def release_paused(producer: IPushProducer, holder: object) -> None:
    """`holder` no longer wants `producer` paused; it runs again once nobody does."""
    holders = _pause_holders.get(producer)
    if holders is None or holder not in holders:
        return
    holders.discard(holder)
    if not holders:
        del _pause_holders[producer]
        producer.resumeProducing()


THROTTLE = Machine(
    name="response-throttle",
    initial="flowing",
    states={
        "flowing": "the client keeps up: the attached producer runs",
        "paused": "the client's socket is full: the attached producer is held paused",
        "gone": "the client left or the request was answered: late instances are refused",
    },
    events={
        "pause": "twisted.web: the client's socket buffer is full",
        "resume": "twisted.web: the client's socket buffer drained",
        "gone": "the connection closed (stopProducing) or the handler was cancelled",
        "attach": "a retrieve attaches the producer that now feeds the response (None: detaches)",
    },
    transitions=transitions(
        [
            ("flowing", "pause", "paused", "_hold"),
            ("flowing", "resume", "flowing", None),
            ("flowing", "gone", "gone", None),
            ("flowing", "attach", "flowing", "_swap"),
            ("paused", "pause", "paused", None),
            ("paused", "resume", "flowing", "_release"),
            ("paused", "gone", "gone", "_release"),
            ("paused", "attach", "paused", "_swap_held"),
            ("gone", "pause", "gone", None),
            ("gone", "resume", "gone", None),
            ("gone", "gone", "gone", None),
            ("gone", "attach", "gone", "_swap"),
        ]
    ),
)


@implementer(IPushProducer)
class ResponseThrottle:
    """The HTTP request's push producer; pauses the producer attached to it.

    Shared by the multipart and the metadata sinks (`IInstanceSink.attach`, `.gone`,
    `.started`); they set `started`, `parts` and `bytes` as they write.
    """

    def __init__(self) -> None:
        self.started = False
        self.parts = 0
        self.bytes = 0
        # Instances the source delivered that we could not write (conversion failed,
        # syntax not servable): a response missing them must not end cleanly.
        self.dropped = 0
        # The first instance that could not be served as asked, when that was known before
        # the response started: the answer (406) once the retrieve ends.
        self.refused: NotAcceptable | None = None
        self._producer: IPushProducer | None = None
        self._run = Run(THROTTLE, self)

    @property
    def state(self) -> str:
        return self._run.state

    @property
    def gone(self) -> bool:
        return self._run.state == "gone"

    def refuse_if_gone(self) -> None:
        """Called for every arriving instance: once the client is gone (or the request was
        answered), a late instance of the cancelled retrieve is refused here, not written
        into a dead request."""
        if self.gone:
            raise ConnectionError("HTTP client disconnected or request already answered")

    # -- events ------------------------------------------------------------------------

    def attach(self, producer: IPushProducer | None) -> None:
        """`producer` now feeds the response (None: let go of the one attached, whose
        operation ended and which may serve another request this response must no longer
        pause).  A paused response holds the new one paused and lets the old one run."""
        self._run.fire("attach", producer)

    def pauseProducing(self) -> None:
        self._run.fire("pause")

    def resumeProducing(self) -> None:
        self._run.fire("resume")

    def stopProducing(self) -> None:
        # The client went away; Klein cancels the handler, which C-CANCELs the retrieve.
        # The producer must run again, or the association would never see its end (what
        # still arrives is refused).
        self._run.fire("gone")

    def abandon(self) -> None:
        """The handler was cancelled (client gone, or the request timed out and was answered)."""
        self._run.fire("gone")

    def settled(self) -> Deferred[None]:
        """Fires once every instance the source delivered is written or dropped: what the
        retrieve's end waits for before it judges the response (`parts`, `dropped`).  A
        sink that writes each instance before it answers the source is always settled."""
        return succeed(None)

    # -- actions -----------------------------------------------------------------------

    def _hold(self) -> None:
        if self._producer is not None:
            hold_paused(self._producer, self)

    def _release(self) -> None:
        if self._producer is not None:
            release_paused(self._producer, self)

    def _swap(self, producer: IPushProducer | None) -> None:
        self._producer = producer

    def _swap_held(self, producer: IPushProducer | None) -> None:
        if producer is self._producer:
            return
        self._release()
        self._producer = producer
        self._hold()
