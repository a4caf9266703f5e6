"""What a QIDO-RS study search costs the gateway from the request's bytes in to the
response's bytes out (issue 15), in µs of CPU, without a socket, a PACS or a running
reactor.

``python -m bench.qido_path [N] [--profile] [--spin] [--info] [--gc] [--windows [--cold]]
[--clients=K]``: N keep-alive GETs (default 3000) of the bench's
``/aets/PACS/studies?PatientID=…`` (as `bench.qido` sends them) into the `GatewaySite`
that `dicomrst.tap.build` makes from a config like the bench's (one DIMSE AET, pool size
4, max-idle 4, ``telemetry.level`` WARN), on a `StringTransport`.  The AET's real
`DimseBackend` and pool open their association through the reactor's ``connectTCP``,
which here puts the `ULProtocol` on a `StringTransport` and is answered with an
A-ASSOCIATE-AC; it is reused by every search.
For each request, once its C-FIND-RQ is out, the PACS's five Pending C-FIND-RSPs
(command and data set in P-DATA-TFs of their own, as DCMTK and Orthanc send them, one
``dataReceived`` each) and the final one are fed in, and the HTTP response is read.  The
reactor is the real one, not running: after the request and after the responses its
``runUntilCurrent`` does what a turn would (timed calls, cancelled ones dropped).

Start-up is as under twistd, ``settle_heap`` included (``gc.freeze``), so the cyclic
collector's share is in the figures as in the gateway.  Prints the median and the lowest
of 5 blocks of process CPU time per request.  Every response's status line is checked,
and the last of each block in full (its C-FIND-RQ, its headers, the five matches' UIDs
in its JSON).

* ``--profile``: a cProfile table instead of timings;
* ``--spin``: only the N requests, untimed (for ``valgrind --tool=callgrind``,
  ``py-spy record``);
* ``--info``: ``telemetry.level`` INFO, the access lines written through the output
  twistd would use (`dicomrst.logs.make_output`) to a temporary file;
* ``--gc``: the cyclic collector's share, timed with ``gc.callbacks``;
* ``--clients=K``: K connections sending at once, round after round (as `bench.qido`'s
  16-client run; N requests in all), over the pool's 4 associations: the requests that
  wait for one and the hand-over at each release are in the figure (`Crowd`; with
  ``--profile`` and ``--spin`` only);
* ``--windows``: instead, the two windows on a single client's critical path (request in
  to C-FIND-RQ out, final C-FIND-RSP in to response out) and the work after each, in µs
  of CPU; ``--cold``: with the caches evicted before each, as the real process wakes
  after others ran (an upper bound: the gateway under `bench.qido`'s serial client
  spent ~650 and ~260 µs there, from timestamps at its socket calls, against ~800 and
  ~300 here cold and ~250 and ~55 warm).
"""

from __future__ import annotations

import cProfile
import gc
import json
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any, cast

from pydicom.dataset import Dataset
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IConnector, IProtocolFactory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogBeginner

from dicomrst.backends.pacs import POOL_CONTEXTS, DimseBackend
from dicomrst.common.identifiers import encode_identifier
from dicomrst.common.reactor import IGatewayReactor
from dicomrst.common.uids import STUDY_ROOT_FIND
from dicomrst.config import Config, parse_config
from dicomrst.dimse import commands
from dicomrst.dimse.connection import DimseConnection
from dicomrst.logs import make_output, set_level
from dicomrst.tap import BackendsService, build, settle_heap
from dicomrst.ul import pdu
from dicomrst.ul.negotiation import AcceptorPolicy, AssociationRequest
from dicomrst.ul.protocol import ULProtocol
from dicomrst.web.service import HTTPService
from dicomrst.web.site import GatewaySite

PACS = "PACS"
PACS_PORT = 11112
CLIENT = IPv4Address("TCP", "127.0.0.1", 50123)
MATCHES = 5
N_PATIENTS = 20


def config(level: str, cache_dir: str) -> Config:
    """The bench gateway's config (`bench.peers.Gateway`, `bench.qido.POOL`)."""
    return parse_config(
        {
            "telemetry": {"level": level},
            "server": {
                "aet": "DICOMRST",
                "http": {"interface": "127.0.0.1", "port": 8080, "request-timeout": 600000},
                "dimse": [{"aet": "DICOMRST", "interface": "127.0.0.1", "port": 11113}],
                "cache": {"path": cache_dir},
            },
            "aets": [
                {"aet": PACS, "host": "127.0.0.1", "port": PACS_PORT, "pool": {"size": 4, "max-idle": 4}}
            ],
        },
        environ={},
    )


class _Connector:
    """What ``connectTCP`` returns: nothing to stop, the connection is made already."""

    def __init__(self, address: IPv4Address) -> None:
        self._address = address

    def stopConnecting(self) -> None:
        pass

    def disconnect(self) -> None:
        pass

    def getDestination(self) -> IPv4Address:
        return self._address


class MemoryPacsReactor:
    """The installed reactor, except that ``connectTCP`` connects the factory's protocol
    to a `StringTransport` at once (kept in `connections`).  The reactor's own methods are
    copied onto the instance: no ``__getattr__`` on the paths the gateway uses."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        for name in dir(reactor):
            if not name.startswith("__") and name != "connectTCP":
                try:
                    setattr(self, name, getattr(reactor, name))
                except AttributeError:
                    pass
        self.connections: list[StringTransport] = []
        self.protocols: list[Any] = []

    def connectTCP(
        self, host: str, port: int, factory: IProtocolFactory, timeout: float = 30, bindAddress: Any = None
    ) -> IConnector:
        address = IPv4Address("TCP", host, port)
        protocol = factory.buildProtocol(address)
        assert protocol is not None
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        self.connections.append(transport)
        self.protocols.append(protocol)
        return cast(IConnector, _Connector(address))


def _accept(request: AssociationRequest) -> tuple[bytes, int, str]:
    """The A-ASSOCIATE-AC a PACS accepting the pool's contexts answers `request` with
    (our own acceptor's), and the context ID and transfer syntax it accepts for Study
    Root C-FIND."""
    clock = Clock()
    acceptor = ULProtocol(clock, DimseConnection(clock), policy=AcceptorPolicy(PACS, tuple(POOL_CONTEXTS)))
    transport = StringTransport()
    acceptor.makeConnection(transport)
    acceptor.dataReceived(request.encoded())
    context = acceptor.context(STUDY_ROOT_FIND)
    assert context is not None
    return transport.value(), context.context_id, context.transfer_syntax


def match(i: int) -> Dataset:
    """Match `i` (its UIDs, accession number and study ID new; the rest shared)."""
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
    ds.PatientName = f"Bench^Patient{i % N_PATIENTS}"
    ds.PatientID = f"BENCH{i % N_PATIENTS:03d}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = _study_uid(i)
    ds.StudyID = f"S{i}"
    ds.NumberOfStudyRelatedSeries = "2"
    ds.NumberOfStudyRelatedInstances = "10"
    return ds


def _pdata(context_id: int, control: int, fragment: bytes) -> bytes:
    return b"".join(pdu.encode_pdata([(context_id, control, fragment)]))


def responses(context_id: int, syntax: str, message_id: int, first: int) -> list[bytes]:
    """The PACS's PDUs for one search: five Pending responses, each command and data set
    in its own P-DATA-TF, and the final Success."""
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
        out.append(_pdata(context_id, 2, encode_identifier(match(first + k), syntax)))
    final = commands.command(
        commands.C_FIND_RSP,
        MessageIDBeingRespondedTo=message_id,
        AffectedSOPClassUID=STUDY_ROOT_FIND,
        Status=0,
    )
    out.append(_pdata(context_id, 3, commands.encode_command(final)))
    return out


def request_bytes(i: int) -> bytes:
    """GET i, as `bench.qido`'s http.client session sends it."""
    return (
        f"GET /aets/{PACS}/studies?PatientID=BENCH{i % N_PATIENTS:03d} HTTP/1.1\r\n"
        "Host: 127.0.0.1:8080\r\nAccept-Encoding: identity\r\nAccept: application/dicom+json\r\n\r\n"
    ).encode()


def _find_request(data: bytes) -> tuple[int, int]:
    """The context ID and message ID of the C-FIND-RQ in `data` (one P-DATA-TF with the
    command, then one with the identifier)."""
    if len(data) < 6 or data[0] != pdu.P_DATA_TF:
        raise RuntimeError(f"no C-FIND-RQ sent: {data[:60]!r}")
    length = int.from_bytes(data[2:6], "big")
    pdvs = pdu.parse_pdvs(data[6 : 6 + length])
    command = commands.decode_command(b"".join(p.fragment for p in pdvs if p.is_command))
    if command.CommandField != commands.C_FIND_RQ:
        raise RuntimeError(f"not a C-FIND-RQ: {command!r}")
    return pdvs[0].context_id, cast(int, command.MessageID)


def check_response(raw: bytes, first: int | None) -> list[str]:
    """`raw` is one complete 200 response whose JSON array holds five matches: matches
    `first`..+5 (None: any); returns their Study Instance UIDs."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/1.1 200 "):
        raise RuntimeError(f"unexpected answer: {raw[:300]!r}")
    fields = (line.partition(b":") for line in head.split(b"\r\n")[1:])
    headers = {name.strip().lower(): value.strip() for name, _, value in fields}
    if headers.get(b"content-type") != b"application/dicom+json":
        raise RuntimeError(f"Content-Type {headers.get(b'content-type')!r}")
    if b"content-length" in headers:
        if int(headers[b"content-length"]) != len(body):
            raise RuntimeError(f"Content-Length {headers[b'content-length']!r}, body {len(body)} bytes")
    elif headers.get(b"transfer-encoding") == b"chunked":
        body = _dechunk(body)
    else:
        raise RuntimeError("neither Content-Length nor chunked")
    studies = [m["0020000D"]["Value"][0] for m in json.loads(body)]
    expected = [_study_uid(first + k) for k in range(MATCHES)] if first is not None else None
    if (expected is not None and studies != expected) or len(studies) != MATCHES:
        raise RuntimeError(f"matches {studies}, expected {expected or MATCHES}")
    return cast(list[str], studies)


def _study_uid(i: int) -> str:
    return f"1.2.826.0.1.3680043.8.498.{i}"


def _dechunk(body: bytes) -> bytes:
    out: list[bytes] = []
    while True:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            if rest != b"\r\n":
                raise RuntimeError(f"after the last chunk: {rest!r}")
            return b"".join(out)
        out.append(rest[:size])
        if rest[size : size + 2] != b"\r\n":
            raise RuntimeError("chunk not followed by CRLF")
        body = rest[size + 2 :]


class _Gateway:
    """The gateway `dicomrst.tap.build` makes from the bench's config, on a reactor whose
    ``connectTCP`` is answered in memory."""

    def __init__(self, level: str, log_file: str | None, reactor: Any) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._cache_dir = tempfile.mkdtemp(prefix="dicomrst-qido-path-")
        self.config = config(level, self._cache_dir)
        set_level(self.config.telemetry.level)
        if log_file is not None:
            output = make_output(log_file, nodaemon=False, json_format=False)
            globalLogBeginner.beginLoggingTo([output], redirectStandardIO=False)
        self.reactor = MemoryPacsReactor(reactor)
        top = build(self.config, cast(IGatewayReactor, self.reactor))
        self.site: GatewaySite = next(s for s in top if isinstance(s, HTTPService)).site
        backends = next(s for s in top if isinstance(s, BackendsService)).backends
        pacs = backends[PACS]
        assert isinstance(pacs, DimseBackend)
        self.pool_size = pacs.pool.size
        self.accept, self.context_id, self.syntax = _accept(pacs.pool.request)
        # What a reactor turn does after the I/O: the timed calls (a Clock's due ones).
        self.run: Callable[[], object] = getattr(reactor, "runUntilCurrent", None) or (
            lambda: reactor.advance(0)
        )

    def connect(self, transport: StringTransport) -> Any:
        """A new HTTP connection on `transport`: its protocol."""
        protocol = self.site.buildProtocol(transport.getPeer())
        assert protocol is not None
        protocol.makeConnection(transport)
        return protocol

    def close(self) -> None:
        shutil.rmtree(self._cache_dir, ignore_errors=True)


class Path:
    """The gateway, one keep-alive HTTP connection to it and its association to the PACS.

    `search(i)` runs request i (i = 0, 1, ... in order) and returns the raw response."""

    def __init__(self, n: int, level: str = "WARN", log_file: str | None = None, reactor: Any = None) -> None:
        """`reactor`: the installed one by default (a `MemoryReactorClock` in tests)."""
        gateway = _Gateway(level, log_file, reactor)
        self._gateway = gateway
        self.config, self.reactor, self.site = gateway.config, gateway.reactor, gateway.site
        self._accept, self._context_id, self._syntax = gateway.accept, gateway.context_id, gateway.syntax
        self.transport = StringTransport(peerAddress=CLIENT)
        self._http = gateway.connect(self.transport)
        self._requests = [request_bytes(i) for i in range(n)]
        self._streams: list[list[bytes]] = []
        self._message_ids: list[int] = []
        self._pacs: StringTransport | None = None
        self._ul: Any = None
        self._run = gateway.run

    def _associate(self) -> None:
        """Answer the association the first request opened; the streams for every search."""
        if len(self.reactor.connections) != 1:
            raise RuntimeError(f"{len(self.reactor.connections)} associations opened, expected 1")
        self._pacs = self.reactor.connections[0]
        self._ul = self.reactor.protocols[0]
        if self._pacs.value()[:1] != bytes([pdu.ASSOCIATE_RQ]):
            raise RuntimeError(f"no A-ASSOCIATE-RQ: {self._pacs.value()[:60]!r}")
        self._pacs.clear()
        self._ul.dataReceived(self._accept)
        self._run()
        context_id, message_id = _find_request(self._pacs.value())
        if context_id != self._context_id:
            raise RuntimeError(f"C-FIND-RQ on context {context_id}, accepted {self._context_id}")
        # Message IDs count up on the association, one per search.
        self._message_ids = [(message_id - 1 + i) % 0xFFFF + 1 for i in range(len(self._requests))]
        self._streams = [
            responses(context_id, self._syntax, self._message_ids[i], i * MATCHES)
            for i in range(len(self._requests))
        ]

    def search(self, i: int) -> bytes:
        self._http.dataReceived(self._requests[i])
        self._run()
        if self._pacs is None:
            self._associate()
        pacs = self._pacs
        assert pacs is not None
        pacs.clear()
        ul = self._ul
        for chunk in self._streams[i]:
            ul.dataReceived(chunk)
        self._run()
        out: bytes = self.transport.value()
        self.transport.clear()
        return out

    def checked(self, i: int) -> None:
        """Request i, with its C-FIND-RQ and response checked."""
        self._http.dataReceived(self._requests[i])
        self._run()
        if self._pacs is None:
            self._associate()
        assert self._pacs is not None
        context_id, message_id = _find_request(self._pacs.value())
        if (context_id, message_id) != (self._context_id, self._message_ids[i]):
            raise RuntimeError(f"request {i}: C-FIND-RQ {message_id} on context {context_id}")
        self._pacs.clear()
        for chunk in self._streams[i]:
            self._ul.dataReceived(chunk)
        self._run()
        raw = self.transport.value()
        self.transport.clear()
        check_response(raw, i * MATCHES)

    def windows(self, i: int, evict: Callable[[], object] | None = None) -> tuple[float, float, float, float]:
        """Request i (after `checked` ran once), timed as a single client's latency sees
        it: µs of thread CPU from the request's bytes in to the C-FIND-RQ's out, from
        there until the request's ``dataReceived`` returns, from the final C-FIND-RSP in
        to the response's last bytes out, and from there until that ``dataReceived``
        returns.  `evict` runs before each of the two (the real process wakes with cold
        caches: other processes ran while it waited)."""
        marks: dict[str, int] = {}
        pacs, http = self._pacs, self.transport
        assert pacs is not None

        def first_write(*ignored: object) -> None:
            marks.setdefault("rq", time.thread_time_ns())

        def last_write(*ignored: object) -> None:
            marks["response"] = time.thread_time_ns()

        _observe_writes(pacs, first_write)
        _observe_writes(http, last_write)
        try:
            if evict is not None:
                evict()
            started = time.thread_time_ns()
            self._http.dataReceived(self._requests[i])
            handled = time.thread_time_ns()
            self._run()
            pacs.clear()
            stream = self._streams[i]
            for chunk in stream[:-1]:
                self._ul.dataReceived(chunk)
            if evict is not None:
                evict()
            final = time.thread_time_ns()
            self._ul.dataReceived(stream[-1])
            answered = time.thread_time_ns()
            self._run()
            check_response(http.value(), i * MATCHES)
            http.clear()
        finally:
            for transport in (pacs, http):
                del transport.write, transport.writeSequence  # the class's again
        return (
            (marks["rq"] - started) / 1e3,
            (handled - marks["rq"]) / 1e3,
            (marks["response"] - final) / 1e3,
            (answered - marks["response"]) / 1e3,
        )

    def close(self) -> None:
        self._gateway.close()


def _observe_writes(transport: StringTransport, seen: Callable[[], object]) -> None:
    """Call `seen` at every write to `transport` (instance attributes over its methods)."""
    write, write_sequence = transport.write, transport.writeSequence

    def observed_write(data: bytes) -> None:
        seen()
        write(data)

    def observed_sequence(data: Any) -> None:
        seen()
        write_sequence(data)

    transport.write = observed_write  # type: ignore[method-assign]
    transport.writeSequence = observed_sequence  # type: ignore[method-assign]


class _Evictor:
    """Touches 32 MB and a large list: what the caches held is gone, as when the
    gateway's process wakes up after others ran."""

    def __init__(self) -> None:
        self._bytes = bytearray(32 << 20)
        self._zeros = bytes(len(self._bytes[::64]))
        self._list = list(range(300_000))

    def __call__(self) -> None:
        self._bytes[::64] = self._zeros
        sum(self._list)


def _windows(path: Path, first: int, n: int, cold: bool) -> None:
    evict = _Evictor() if cold else None
    figures = [path.windows(i, evict) for i in range(first, first + n)]
    medians = [statistics.median(f[k] for f in figures) for k in range(4)]
    print(
        f"single-client critical path, median us of CPU over {n} requests "
        f"({'caches evicted before each' if cold else 'warm caches'}):\n"
        f"  request in -> C-FIND-RQ out          {medians[0]:7.1f}   (then {medians[1]:.1f} until handled)\n"
        f"  final C-FIND-RSP in -> response out  {medians[2]:7.1f}   (then {medians[3]:.1f} until handled)"
    )


class Crowd:
    """`clients` keep-alive HTTP connections that send at once, as `bench.qido`'s
    16-client run does: in each round every client sends one request; the pool's
    associations (up to its size, 4) are answered as their C-FIND-RQs come, and the final
    response of one search hands its association to a waiting request (the pool's
    release) before the next round."""

    def __init__(self, clients: int, rounds: int, reactor: Any = None) -> None:
        gateway = _Gateway("WARN", None, reactor)
        self._gateway = gateway
        self.reactor = gateway.reactor
        self._run = gateway.run
        self._http = []
        for c in range(clients):
            transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000 + c))
            self._http.append((gateway.connect(transport), transport))
        self._requests = [request_bytes(c) for c in range(clients)]
        self._associations: list[tuple[StringTransport, Any]] = []
        self._next_id: list[int] = []
        # Searches per association, with room for an uneven share (more are made as needed).
        self._per_association = rounds * -(-clients // gateway.pool_size) * 2 + 10
        self._streams: dict[tuple[int, int], list[bytes]] = {}
        self.made_late = 0  # streams made while timed (should stay 0)
        self.fed: list[str] = []  # the Study Instance UIDs fed since the last `responses`

    def _stream(self, association: int, message_id: int) -> list[bytes]:
        key = (association, message_id)
        stream = self._streams.get(key)
        if stream is None:
            self.made_late += 1
            stream = self._streams[key] = self._make(association, message_id)
        return stream

    def _make(self, association: int, message_id: int) -> list[bytes]:
        first = (association * 1_000_000 + message_id) * MATCHES
        return responses(self._gateway.context_id, self._gateway.syntax, message_id, first)

    def _open(self) -> None:
        """Answer the associations opened since the last call."""
        while len(self._associations) < len(self.reactor.connections):
            a = len(self._associations)
            transport, ul = self.reactor.connections[a], self.reactor.protocols[a]
            if transport.value()[:1] != bytes([pdu.ASSOCIATE_RQ]):
                raise RuntimeError(f"no A-ASSOCIATE-RQ: {transport.value()[:60]!r}")
            transport.clear()
            ul.dataReceived(self._gateway.accept)
            self._run()
            _, message_id = _find_request(transport.value())
            self._associations.append((transport, ul))
            self._next_id.append(message_id)

    def prepare(self) -> None:
        """Make the PACS's responses for the searches to come (once the associations are
        open: done during a round, it would take long enough for the gateway's timeouts
        to fire on the reactor's clock)."""
        for a, first in enumerate(self._next_id):
            for k in range(self._per_association):
                message_id = (first - 1 + k) % 0xFFFF + 1
                if (a, message_id) not in self._streams:
                    self._streams[a, message_id] = self._make(a, message_id)
        self.made_late = 0

    def round(self, check: bool = False) -> None:
        """Every client sends a request; every C-FIND is answered; every response read
        (with `check`: each checked, and together they hold the matches fed)."""
        for protocol, _ in self._http:
            protocol.dataReceived(self._requests[0])
        self._run()
        self._open()
        fed = []
        pending = True
        while pending:
            pending = False
            for a, (transport, ul) in enumerate(self._associations):
                if transport.value():
                    if check:
                        _, message_id = _find_request(transport.value())
                        if message_id != self._next_id[a]:
                            raise RuntimeError(f"C-FIND-RQ {message_id}, expected {self._next_id[a]}")
                    transport.clear()
                    message_id = self._next_id[a]
                    self._next_id[a] = message_id % 0xFFFF + 1
                    for chunk in self._stream(a, message_id):
                        ul.dataReceived(chunk)
                    fed.append((a, message_id))
                    pending = True
            self._run()
            if len(self._associations) < len(self.reactor.connections):
                self._open()
                pending = True
        if len(fed) != len(self._http):
            raise RuntimeError(f"{len(fed)} searches answered for {len(self._http)} requests")
        studies = []
        for _, transport in self._http:
            raw = transport.value()
            transport.clear()
            if check:
                studies.extend(check_response(raw, None))
            elif not raw.startswith(b"HTTP/1.1 200 "):
                raise RuntimeError(f"unexpected answer: {raw[:300]!r}")
        if check:
            expected = [
                _study_uid((a * 1_000_000 + message_id) * MATCHES + k)
                for a, message_id in fed
                for k in range(MATCHES)
            ]
            if sorted(studies) != sorted(expected):
                raise RuntimeError("the responses do not hold the matches fed")

    def close(self) -> None:
        self._gateway.close()


class _GcTimer:
    """Time spent in the cyclic collector, by generation (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.counts = [0, 0, 0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            generation = info["generation"]
            self.seconds[generation] += time.perf_counter() - self._started
            self.counts[generation] += 1


def _blocks(path: Path, first: int, per: int, blocks: int = 5) -> list[float]:
    out = []
    i = first
    for _ in range(blocks):
        started = time.process_time()
        for _ in range(per - 1):
            raw = path.search(i)
            if not raw.startswith(b"HTTP/1.1 200 "):
                raise RuntimeError(f"request {i}: {raw[:300]!r}")
            i += 1
        path.checked(i)  # the last of each block in full, its check timed too (~1%)
        i += 1
        out.append((time.process_time() - started) * 1e6 / per)
    return out


def _crowd(clients: int, n: int, argv: list[str]) -> None:
    rounds = max(n // clients, 5)
    warm = 5
    crowd = Crowd(clients, warm + rounds)
    try:
        for _ in range(warm):
            crowd.round(check=True)
        crowd.prepare()
        settle_heap()
        if "--spin" in argv or "--profile" in argv:
            profile = cProfile.Profile() if "--profile" in argv else None
            if profile is not None:
                profile.enable()
            for _ in range(rounds):
                crowd.round()
            if profile is not None:
                profile.disable()
                pstats.Stats(profile).sort_stats("tottime").print_stats(45)
            return
        per = rounds // 5
        figures = []
        for _ in range(5):
            started = time.process_time()
            for _ in range(per - 1):
                crowd.round()
            crowd.round(check=True)
            figures.append((time.process_time() - started) * 1e6 / (per * clients))
        late = f"; {crowd.made_late} streams made while timed" if crowd.made_late else ""
        print(
            f"QIDO-RS study search, whole path, {clients} clients at once on a pool of "
            f"{len(crowd.reactor.connections)} associations ({MATCHES} matches, level WARN): "
            f"median {statistics.median(figures):.1f} us CPU per request, lowest {min(figures):.1f} "
            f"(5 blocks of {per} rounds){late}"
        )
    finally:
        crowd.close()


def main(argv: list[str]) -> None:
    args = [a for a in argv if not a.startswith("--")]
    n = int(args[0]) if args else 3000
    warm = 50
    clients = next((int(a.split("=", 1)[1]) for a in argv if a.startswith("--clients=")), 1)
    if clients > 1:
        _crowd(clients, n, argv)
        return
    log_file = None
    if "--info" in argv:
        log_file = os.path.join(tempfile.mkdtemp(prefix="dicomrst-qido-path-log-"), "twistd.log")
    try:
        _serial(n, warm, log_file, argv)
    finally:
        if log_file is not None:
            shutil.rmtree(os.path.dirname(log_file), ignore_errors=True)


def _serial(n: int, warm: int, log_file: str | None, argv: list[str]) -> None:
    path = Path(warm + n, "INFO" if log_file else "WARN", log_file)
    # The first request opens the association; a few more warm the caches.
    for i in range(warm):
        path.checked(i)
    settle_heap()  # as tap.makeService has the reactor do once it runs
    try:
        if "--spin" in argv:
            for i in range(warm, warm + n):
                path.search(i)
            return
        if "--profile" in argv:
            profile = cProfile.Profile()
            profile.enable()
            for i in range(warm, warm + n):
                path.search(i)
            profile.disable()
            pstats.Stats(profile).sort_stats("tottime").print_stats(45)
            return
        if "--windows" in argv:
            _windows(path, warm, n, "--cold" in argv)
            return
        timer = _GcTimer() if "--gc" in argv else None
        if timer is not None:
            gc.callbacks.append(timer)
        figures = _blocks(path, warm, n // 5)
        level = "INFO, access lines to a file" if log_file else "WARN"
        print(
            f"QIDO-RS study search, whole path (HTTP in .. PDUs .. HTTP out, {MATCHES} matches, "
            f"level {level}): median {statistics.median(figures):.1f} us CPU per request, "
            f"lowest {min(figures):.1f} (5 blocks of {n // 5})"
        )
        if timer is not None:
            gc.callbacks.remove(timer)
            done = n // 5 * 5
            print(
                "  cyclic GC: "
                + ", ".join(
                    f"gen{g} {timer.counts[g]} runs {timer.seconds[g] * 1e6 / done:.1f} us/request"
                    for g in range(3)
                )
                + f"; thresholds {gc.get_threshold()}, frozen {gc.get_freeze_count()}"
            )
    finally:
        path.close()


if __name__ == "__main__":
    main(sys.argv[1:])
