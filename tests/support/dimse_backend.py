"""`DimseBackend` on the real reactor against real peers, for integration tests.

`FindTestCase` gives each test a backend (`backend(aet, port, ...)`, the pool and timeouts as
``aets[]`` config) that is stopped in cleanup before the peer, so no association outlives the
test (`stop_backend` checks it); `find` / `find_error` run a C-FIND through it, `until` and
`peer_event` poll the reactor for a condition or a peer's logged event. Also `study_query`
(a Study Root identifier), `sleep` (on the reactor) and `CALLING`, our AE title.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from dicomrst.backends.pacs import DimseBackend
from dicomrst.common.identifiers import found_dataset
from dicomrst.config import parse_config
from tests.support import peers

INTEGRATION_TIMEOUT = 120
CALLING = "DICOMRST"


def global_reactor() -> Any:
    """The global reactor, imported when first needed."""
    from twisted.internet import reactor

    return reactor


def sleep(seconds: float) -> Deferred[None]:
    return task.deferLater(global_reactor(), seconds, lambda: None)


def study_query(**keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = ""
    ds.StudyInstanceUID = ""
    ds.StudyDate = ""
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


class FindTestCase(TestCase):
    timeout = INTEGRATION_TIMEOUT

    def backend(
        self,
        aet: str,
        port: int,
        *,
        size: int = 4,
        pool_timeout_ms: int = 10_000,
        idle_timeout_ms: int = 60_000,
        qido_timeout_ms: int = 30_000,
    ) -> DimseBackend:
        config = parse_config(
            {
                "aets": [
                    {
                        "aet": aet,
                        "host": peers.LOCALHOST,
                        "port": port,
                        "pool": {"size": size, "timeout": pool_timeout_ms, "idle-timeout": idle_timeout_ms},
                        "qido-rs": {"timeout": qido_timeout_ms},
                    }
                ]
            }
        )
        backend = DimseBackend(config.aets[0], CALLING, global_reactor())
        # Registered after the peer's own cleanup, so it runs first: associations end before the peer.
        self.addCleanup(lambda: Deferred.fromCoroutine(self.stop_backend(backend)))
        return backend

    async def stop_backend(self, backend: DimseBackend) -> None:
        connections = list(backend.pool._all)
        await backend.stop()
        for connection in connections:
            assert connection.association is not None
            self.assertTrue(connection.association.whenClosed.called, "an association outlived stop()")
        self.assertEqual(backend.pool._all, set())

    async def find(
        self, backend: DimseBackend, identifier: Dataset | None = None, limit: int | None = None
    ) -> list[Dataset]:
        """The matches, decoded (`found_dataset`) as they arrive."""
        results: list[Dataset] = []
        await backend.find(
            identifier or study_query(),
            limit=limit,
            on_result=lambda found: results.append(found_dataset(found)),
        )
        return results

    async def find_error(
        self, backend: DimseBackend, identifier: Dataset | None = None
    ) -> tuple[BaseException, list[Dataset], float]:
        """Run a find that must fail: (the error, results delivered before it, seconds taken)."""
        results: list[Dataset] = []
        start = global_reactor().seconds()
        try:
            await backend.find(
                identifier or study_query(),
                limit=None,
                on_result=lambda found: results.append(found_dataset(found)),
            )
        except Exception as e:
            return e, results, global_reactor().seconds() - start
        self.fail(f"the find succeeded with {len(results)} results")

    async def until(self, check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
        start = global_reactor().seconds()
        while not check():
            if global_reactor().seconds() - start > timeout:
                self.fail(f"not within {timeout} s: {what}")
            await sleep(0.02)

    async def peer_event(
        self, peer: peers.Peer, kind: str, count: int = 1, timeout: float = 15.0
    ) -> list[dict[str, Any]]:
        await self.until(
            lambda: len(peer.events(kind)) >= count, f"{count} {kind} event(s) from the peer", timeout
        )
        return peer.events(kind)
