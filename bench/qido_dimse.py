"""What the DIMSE side of a QIDO-RS study search costs (issue 15), in µs of CPU, without a
socket, a PACS or HTTP.

``python -m bench.qido_dimse [N] [--profile] [--only find|search]``: N searches (default
3000), one after the other, on one association held by a `ULProtocol` on a
`StringTransport`: ``parse_query`` of the bench's ``/studies?PatientID=…``, the C-FIND-RQ
out, then five Pending C-FIND-RSPs with a match each and the final one fed in as the
PACS's PDUs, one ``dataReceived`` per PDU (command and data set in P-DATA-TFs of their
own, as DCMTK and Orthanc send them), the matches written as the response's JSON array.
Every match is new (its UIDs, accession number and study ID unseen), the rest of its
values are shared with others, as in a real archive.  Logs at WARN, as the gateway of
``python -m bench qido``.

Each search is run two ways: ``find``, `c_find` on the association itself; ``search``,
what the QIDO-RS handler runs (`dicomrst.qido.search.search` → `DimseBackend.find` →
`AssociationPool.run` → `c_find`) on a pool holding that one association, idle between
searches.  Prints the median and the lowest of 5 blocks of process CPU time per search;
with ``--profile`` a cProfile table instead.  An association's own cost (RQ out, AC in,
release, close) is printed beside it.

``--only find|search`` runs N searches of one way once, inside ``functools.reduce``, for
instruction counts of the searches alone (imports and set-up left out)::

    valgrind --tool=callgrind --collect-atstart=no --toggle-collect=functools_reduce \
        python -m bench.qido_dimse 200 --only search
"""

from __future__ import annotations

import cProfile
import functools
import pstats
import statistics
import sys
import time
from collections.abc import Callable

from pydicom.dataset import Dataset
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from dicomrst.backends.pacs import POOL_CONTEXTS, DimseBackend
from dicomrst.common.dicomjson import json_array
from dicomrst.common.identifiers import encode_identifier
from dicomrst.common.uids import STUDY_ROOT_FIND
from dicomrst.config import parse_config
from dicomrst.dimse import commands
from dicomrst.dimse.connection import DimseConnection
from dicomrst.dimse.find import c_find
from dicomrst.logs import set_level
from dicomrst.qido.query import parse_query
from dicomrst.qido.search import SearchOutcome, SearchResults, search
from dicomrst.qido.target import Target
from dicomrst.ul import pdu
from dicomrst.ul.negotiation import AcceptorPolicy, AssociationRequest
from dicomrst.ul.protocol import ULProtocol

SERVICE = "http://127.0.0.1:8080/aets/PACS"
REQUEST = AssociationRequest("DICOMRST", "PACS", tuple(POOL_CONTEXTS))
POLICY = AcceptorPolicy("PACS", tuple(POOL_CONTEXTS))
MATCHES = 5


def _match(i: int) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.QueryRetrieveLevel = "STUDY"
    ds.RetrieveAETitle = "ORTHANC"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101010"
    ds.AccessionNumber = f"ACC{i}"
    ds.InstanceAvailability = "ONLINE"
    ds.ModalitiesInStudy = ["CT", "SR"]
    ds.ReferringPhysicianName = "Doe^John"
    ds.PatientName = f"Bench^Patient{i % 20}"
    ds.PatientID = f"BENCH{i % 20:03d}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.8.498.{i}"
    ds.StudyID = f"S{i}"
    ds.NumberOfStudyRelatedSeries = "2"
    ds.NumberOfStudyRelatedInstances = "10"
    return ds


def _accept() -> bytes:
    """The A-ASSOCIATE-AC our own acceptor answers `REQUEST` with."""
    clock = Clock()
    acceptor = ULProtocol(clock, DimseConnection(clock), policy=POLICY)
    transport = StringTransport()
    acceptor.makeConnection(transport)
    acceptor.dataReceived(REQUEST.encoded())
    return transport.value()


def _pdata(context_id: int, control: int, fragment: bytes) -> bytes:
    return b"".join(pdu.encode_pdata([(context_id, control, fragment)]))


def _responses(context_id: int, syntax: str, message_id: int, first: int) -> list[bytes]:
    out = []
    for k in range(MATCHES):
        rsp = commands.command(
            commands.C_FIND_RSP,
            MessageIDBeingRespondedTo=message_id,
            AffectedSOPClassUID=STUDY_ROOT_FIND,
            Status=0xFF00,
        )
        rsp.CommandDataSetType = commands.HAS_DATASET
        out.append(_pdata(context_id, 3, commands.encode_command(rsp)))
        out.append(_pdata(context_id, 2, encode_identifier(_match(first + k), syntax)))
    final = commands.command(
        commands.C_FIND_RSP,
        MessageIDBeingRespondedTo=message_id,
        AffectedSOPClassUID=STUDY_ROOT_FIND,
        Status=0,
    )
    out.append(_pdata(context_id, 3, commands.encode_command(final)))
    return out


def searches(n: int) -> Callable[[int], bytes]:
    """A function running search i (0 <= i < n, each once and in order: the message IDs
    the responses carry are 1, 2, ...) and returning its JSON array."""
    clock = Clock()
    user = DimseConnection(clock)
    protocol = ULProtocol(clock, user, request=REQUEST)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(_accept())
    context = protocol.context(STUDY_ROOT_FIND)
    assert context is not None
    streams = [
        _responses(context.context_id, context.transfer_syntax, i % 0xFFFF + 1, i * MATCHES) for i in range(n)
    ]
    target = Target.studies()

    def search(i: int) -> bytes:
        query = parse_query(target, {"PatientID": [f"BENCH{i % 20:03d}"]})
        results = SearchResults(query, SERVICE, clock)
        done = Deferred.fromCoroutine(
            c_find(
                user,
                clock,
                query.identifier,
                aet="PACS",
                limit=query.backend_limit,
                timeout=30.0,
                on_result=results,
            )
        )
        transport.clear()
        for chunk in streams[i]:
            protocol.dataReceived(chunk)
        assert done.called and len(results.encoded) == MATCHES
        return b"".join(json_array(results.encoded))

    return search


def backend_searches(n: int) -> Callable[[int], bytes]:
    """`searches`, through what the QIDO-RS handler calls: `dicomrst.qido.search.search` on a
    `DimseBackend` whose pool holds one association (opened here, idle between searches)."""
    reactor = MemoryReactorClock()
    config = parse_config(
        {"aets": [{"aet": "PACS", "host": "127.0.0.1", "port": 104, "pool": {"size": 1, "max-idle": 1}}]},
        resolve=lambda host: None,
    )
    backend = DimseBackend(config.aets[0], "DICOMRST", reactor)
    target = Target.studies()
    query = parse_query(target, {"PatientID": ["BENCH000"]})
    first = Deferred.fromCoroutine(search(backend, query, SERVICE, reactor))
    _host, _port, factory, _timeout, _ = reactor.tcpClients[0]
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(_ACCEPT)
    # The pool's ULProtocol is wrapped by the endpoint: one negotiated alike says the context.
    twin = ULProtocol(reactor, DimseConnection(reactor), request=backend.pool.request)
    twin.makeConnection(StringTransport())
    twin.dataReceived(_ACCEPT)
    context = twin.context(STUDY_ROOT_FIND)
    assert context is not None
    for chunk in _responses(context.context_id, context.transfer_syntax, 1, n * MATCHES)[-1:]:
        protocol.dataReceived(chunk)  # the opening search: no matches
    assert first.called
    streams = [
        _responses(context.context_id, context.transfer_syntax, (i + 1) % 0xFFFF + 1, i * MATCHES)
        for i in range(n)
    ]
    done: list[SearchOutcome] = []

    def one(i: int) -> bytes:
        query = parse_query(target, {"PatientID": [f"BENCH{i % 20:03d}"]})
        Deferred.fromCoroutine(search(backend, query, SERVICE, reactor)).addCallback(done.append)
        transport.clear()
        for chunk in streams[i]:
            protocol.dataReceived(chunk)
        outcome = done.pop()
        assert not done and outcome.body.count(b'"0020000D"') == MATCHES
        return outcome.body

    return one


def association() -> None:
    """One association of the pool's request, on our side: RQ out, AC in, release, close."""
    clock = Clock()
    protocol = ULProtocol(clock, DimseConnection(clock), request=REQUEST)
    protocol.makeConnection(StringTransport())
    protocol.dataReceived(_ACCEPT)
    assert protocol.established
    protocol.release()
    protocol.dataReceived(pdu.encode_release_rp())
    protocol.connectionLost(Failure(ConnectionDone()))


_ACCEPT = _accept()


def _blocks(run: Callable[[int], object], n: int, first: int = 0) -> list[float]:
    per = n // 5
    out = []
    i = first
    for _ in range(5):
        started = time.process_time()
        for _ in range(per):
            run(i)
            i += 1
        out.append((time.process_time() - started) * 1e6 / per)
    return out


PATHS = {"find": searches, "search": backend_searches}
TITLES = {
    "find": "c_find",
    "search": "qido.search.search -> DimseBackend.find -> pool -> c_find",
}


def main(argv: list[str]) -> None:
    n = int(argv[0]) if argv and argv[0].isdigit() else 3000
    set_level("WARN")  # as the benchmark's gateway logs (`python -m bench qido`)
    only = argv[argv.index("--only") + 1] if "--only" in argv else None
    for path in [only] if only else PATHS:
        run = PATHS[path](n + 1)
        run(0)  # warm up: imports, the caches' first entries
        if only and "--profile" not in argv:
            # For callgrind: --toggle-collect=functools_reduce counts these searches alone.
            functools.reduce(lambda _, i: run(i), range(1, n + 1), b"")
            print(f"{n} searches ({TITLES[path]}) run once")
            return
        if "--profile" in argv:
            profile = cProfile.Profile()
            profile.enable()
            for i in range(1, n + 1):
                run(i)
            profile.disable()
            print(TITLES[path])
            pstats.Stats(profile).sort_stats("tottime").print_stats(40)
            continue
        figures = _blocks(run, n, first=1)
        print(
            f"QIDO-RS study search, DIMSE side ({MATCHES} matches), {TITLES[path]}: "
            f"median {statistics.median(figures):.1f} us CPU, lowest {min(figures):.1f} "
            f"(5 blocks of {n // 5})"
        )
    if "--profile" in argv:
        return
    association()
    figures = _blocks(lambda _: association(), 2000)
    print(
        f"association (RQ, AC, release, close): median {statistics.median(figures):.1f} us CPU, "
        f"lowest {min(figures):.1f}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
