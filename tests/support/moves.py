"""A C-MOVE as `dicomrst.dimse.move_registry` sees it, waiting for its instances, for tests
and fuzz harnesses that feed C-STOREs to a listener without running a real C-MOVE."""

from __future__ import annotations

from dicomrst.dimse.move_registry import Sender
from dicomrst.dimse.retrieval import RetrieveResult
from dicomrst.ul.protocol import ULProtocol
from tests.support.sinks import RecordingSink


class RunningMove:
    """A study-level C-MOVE to `destination` that `senders` may deliver to, never ending."""

    series = None
    instance = None

    def __init__(
        self,
        sink: RecordingSink,
        *,
        pacs_aet: str,
        destination: str,
        senders: tuple[Sender, ...],
        message_id: int,
        study: str = "1.2.3",
    ) -> None:
        self.sink = sink
        self.pacs_aet = pacs_aet
        self.destination = destination
        self.senders = senders
        self.message_id = message_id
        self.study = study
        self.result = RetrieveResult()
        self.outstanding = 0
        self.owed = 0
        self.delivered: set[str] = set()

    def activity(self) -> None:
        pass

    def store_association(self, association: ULProtocol) -> None:
        pass
