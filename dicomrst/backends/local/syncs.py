# -*- test-case-name: tests.unit.test_local_syncs -*-
"""Directory fsyncs shared by the stores that need them.

A stored object's name is durable once its directory has been fsynced after the link
that gave it.  The slices of a series all go into one directory: an fsync per slice
costs a journal commit each, most of them for nothing.  `DirectorySyncs` runs at most one
fsync of a directory at a time; a store whose link came before it began is made durable
by it, one whose link came while it ran waits for the next, which starts as soon as the
running one ends and covers every link made meanwhile.  A store is never answered before
an fsync that began after its link has ended, and never waits for more than two.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from dicomrst.backends.local.files import fsync_directory
from dicomrst.backends.local.threads import Threads


class _Directory:
    def __init__(self) -> None:
        self.running = False
        self.waiting: list[Deferred[None]] = []  # for the next fsync (not the running one)


class DirectorySyncs:
    """Coalesced fsyncs of directories, run in `threads` (`fsync`: the blocking call)."""

    def __init__(self, threads: Threads, fsync: Callable[[str], None] = fsync_directory) -> None:
        self._threads = threads
        self._fsync = fsync
        self._directories: dict[str, _Directory] = {}

    def sync(self, directory: str) -> Deferred[None]:
        """Fires once an fsync of `directory` that began after this call has ended (errbacks
        with its error if it failed)."""
        state = self._directories.get(directory)
        if state is None:
            state = self._directories[directory] = _Directory()
        done: Deferred[None] = Deferred()
        state.waiting.append(done)
        if not state.running:
            self._start(directory, state)
        return done

    def _start(self, directory: str, state: _Directory) -> None:
        covered, state.waiting = state.waiting, []
        state.running = True

        def ended(result: object) -> None:
            state.running = False
            for waiter in covered:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(None)
            if state.running:
                return  # a waiter's callback asked again and started the next one
            if state.waiting:
                self._start(directory, state)
            elif self._directories.get(directory) is state:
                del self._directories[directory]

        self._threads.run(self._fsync, directory).addBoth(ended)

    @property
    def pending(self) -> int:
        """Directories with an fsync running (for tests and logs)."""
        return len(self._directories)
