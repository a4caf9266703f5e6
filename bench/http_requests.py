"""What the HTTP side costs per request (issue 15), in µs of CPU, without a socket or a PACS.

``python -m bench.http_requests [N]``: N keep-alive GETs (default 5000), one after the
other, through a `GatewaySite` on a `StringTransport` (the real reactor as the site's
clock, not running), each answered before the next is sent; the median of 5 runs of
process CPU time per request, for:

* ``GET /`` — routing, access gate, headers, request machine, log line, response write,
  with a handler that does nothing but a small JSON body;
* ``GET /aets/PACS/studies?PatientID=P1`` — the same plus the QIDO handler (query parsing,
  Accept, service URL) over a backend that answers at once with one raw match, the bench's
  request as `bench.qido` sends it;
* ``--profile``: a cProfile table of the QIDO request instead of timings (``--root``:
  of ``GET /``); ``--spin``: only N of those requests, untimed, for ``py-spy record``.

The cyclic garbage collector's share is in the figures (a request that leaves a reference
cycle costs its collection too).
"""

from __future__ import annotations

import cProfile
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import StringTransport

from dicomrst.common.identifiers import RawIdentifier, encode_identifier
from dicomrst.common.uids import IMPLICIT_VR_LE
from dicomrst.logs import set_level
from dicomrst.web.app import GatewayApp
from dicomrst.web.site import make_site

CLIENT = IPv4Address("TCP", "127.0.0.1", 50123)


def _match() -> RawIdentifier:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyDate = "20240105"
    ds.StudyTime = "101530"
    ds.AccessionNumber = "ACC00001"
    ds.ModalitiesInStudy = ["CT"]
    ds.PatientName = "Doe^John"
    ds.PatientID = "P1"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.NumberOfStudyRelatedSeries = 1
    ds.NumberOfStudyRelatedInstances = 2
    return RawIdentifier(encode_identifier(ds, IMPLICIT_VR_LE), IMPLICIT_VR_LE)


class _AtOnce:
    """Just enough of an `IBackend` for a search: one match, at once."""

    aet = "PACS"
    kind = "DIMSE"

    def __init__(self) -> None:
        self._match = _match()

    def find(
        self, identifier: Any, *, limit: int | None, on_result: Callable[[Any], None], **kw: Any
    ) -> Deferred[None]:
        on_result(self._match)
        return succeed(None)


def _connection(path: str) -> tuple[Callable[[], None], StringTransport]:
    app = GatewayApp({"PACS": _AtOnce()}, reactor, base_path="/")  # type: ignore[dict-item]
    site = make_site(app.resource(), reactor, request_timeout=30.0)  # type: ignore[arg-type]
    transport = StringTransport(peerAddress=CLIENT)
    protocol = site.buildProtocol(CLIENT)
    assert protocol is not None
    protocol.makeConnection(transport)
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAccept-Encoding: identity\r\n"
        "Accept: application/dicom+json\r\nUser-Agent: Python-urllib/3.11\r\n\r\n"
    ).encode()

    def one() -> None:
        protocol.dataReceived(request)
        transport.clear()

    protocol.dataReceived(request)
    if not transport.value().startswith(b"HTTP/1.1 200 OK\r\n"):
        raise RuntimeError(f"unexpected answer: {transport.value()[:300]!r}")
    transport.clear()
    return one, transport


def _time(one: Callable[[], None], n: int) -> float:
    start = time.process_time()
    for _ in range(n):
        one()
    return (time.process_time() - start) / n * 1e6


PATHS = {"GET /": "/", "GET /aets/PACS/studies?PatientID=P1": "/aets/PACS/studies?PatientID=P1"}


def main() -> None:
    set_level("WARN")  # as bench.peers.Gateway runs it: the access line is not shown
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(args[0]) if args else 5000
    if "--spin" in sys.argv:  # for py-spy: only the QIDO request (``--root``: only GET /)
        one, _ = _connection("/" if "--root" in sys.argv else PATHS["GET /aets/PACS/studies?PatientID=P1"])
        _time(one, n)
        return
    if "--profile" in sys.argv:
        one, _ = _connection("/" if "--root" in sys.argv else PATHS["GET /aets/PACS/studies?PatientID=P1"])
        profile = cProfile.Profile()
        profile.runcall(_time, one, n)
        pstats.Stats(profile).sort_stats("tottime").print_stats(45)
        return
    for label, path in PATHS.items():
        one, _ = _connection(path)
        _time(one, n // 5)  # warm up
        runs = [_time(one, n) for _ in range(5)]
        print(f"{label:45s} {statistics.median(runs):7.1f} µs/request CPU (min {min(runs):.1f}, {n} x 5)")


if __name__ == "__main__":
    main()
