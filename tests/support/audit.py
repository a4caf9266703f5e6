"""The audit trail's test doubles and readers: a gateway's audit source, a collector that
takes messages only when told (`MemoryWriter`), and `split`, which takes a syslog message
apart into its header and its body."""

from __future__ import annotations

import re

from dicomrst.audit.formats import BOM, Source
from dicomrst.audit.trail import AuditQueue

SOURCE = Source("gw-1.example.org", "dicomrst", "4242", "SITE-A")

# <PRI>VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID SP SD SP MSG
_HEADER = re.compile(rb"<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) (-) ")


def split(message: bytes) -> tuple[re.Match[bytes], bytes]:
    match = _HEADER.match(message)
    assert match is not None, message[:120]
    body = message[match.end() :]
    assert body.startswith(BOM), body[:10]
    return match, body[len(BOM) :]


class MemoryWriter:
    """Takes nothing from the queue until told: a collector that stalls."""

    description = "memory"

    def __init__(self, queue: AuditQueue) -> None:
        self.queue = queue
        self.wakes = 0
        self.taken: list[bytes] = []

    def wake(self) -> None:
        self.wakes += 1

    def drain(self) -> None:
        while (item := self.queue.take()) is not None:
            self.taken.append(item)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass
