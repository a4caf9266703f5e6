# -*- test-case-name: tests.unit.test_daemon -*-
"""What a daemon owes its operator beyond serving: SIGHUP reopens the log file and
re-reads what can be re-read (the users file), in one log line; SIGUSR1 rotates the log
file, as twistd's own log file does.

Without a handler SIGHUP terminates the process, silently, and with a status systemd's
``Restart=on-failure`` counts as clean: logrotate's ``postrotate`` would stop the gateway.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.logfile import LogFile

from dicomrst.logs import OutputLog, logger, make_output

log = logger("dicomrst")

#: Something SIGHUP re-reads: returns a few words for the log line.
Reloader = Callable[[], str]

_Handler = Callable[[int, FrameType | None], Any] | int | None


def log_output(twistd_options: Mapping[str, Any] | None, json_format: bool) -> OutputLog | None:
    """The log output for twistd's options (``--logfile``, ``--nodaemon``), None where
    twistd's own choice must stand: not run by twistd, ``--syslog``, ``--logger``, or a
    daemon told to log to stdout (twistd refuses that itself)."""
    if twistd_options is None or "logfile" not in twistd_options:
        return None
    if twistd_options.get("syslog") or twistd_options.get("logger"):
        return None
    logfile = twistd_options.get("logfile")
    nodaemon = bool(twistd_options.get("nodaemon"))
    if logfile == "-" and not nodaemon:
        return None
    return make_output(logfile, nodaemon, json_format)


class HangupService(Service):
    """Installs the SIGHUP (and SIGUSR1) handlers while running; restores the previous
    ones when stopped.  The handlers only schedule `hangup` on the reactor: a signal
    arrives between any two bytecodes, and the log file must not be swapped mid-write.

    :ivar output: the log output (None: twistd's own, which cannot be reopened).
    :ivar reloaders: what else SIGHUP re-reads, in order.
    """

    def __init__(
        self, reactor: IReactorFromThreads, output: OutputLog | None, reloaders: list[Reloader]
    ) -> None:
        self._reactor = reactor
        self.output = output
        self.reloaders = reloaders
        self._previous: dict[int, _Handler] = {}

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self._install(signal.SIGHUP, self.hangup)
        if self.output is not None and isinstance(self.output.stream, LogFile):
            self._install(signal.SIGUSR1, self.rotate)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous.clear()

    def _install(self, number: int, action: Callable[[], None]) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            self._reactor.callFromThread(action)

        self._previous[number] = signal.signal(number, handler)

    def hangup(self) -> None:
        """Reopen the log file, re-read the reloaders' files; one line says what was done."""
        done = []
        if self.output is not None and self.output.reopen():
            done.append(f"reopened log file {self.output.path}")
        for reload in self.reloaders:
            try:
                done.append(reload())
            except Exception as e:
                done.append(f"failed: {e}")
        log.info("SIGHUP: {done}", done="; ".join(done) or "nothing to reopen or re-read")

    def rotate(self) -> None:
        if self.output is not None and isinstance(self.output.stream, LogFile):
            self.output.stream.rotate()
