"""What the gateway adds to a query, measured on the wire (issue 15): a ``tcpdump`` capture
on the loopback interface of the client's HTTP connection and the gateway's association
to the PACS, read back here (pcap, no third-party parser).

For each query of a single serial client the capture gives four instants:

* ``t0`` the first request byte from the HTTP client reaches the gateway's socket;
* ``t1`` the gateway's first P-DATA to the PACS (the C-FIND-RQ) leaves;
* ``t2`` the PACS's last P-DATA before the gateway starts answering (the final C-FIND-RSP);
* ``t3`` the last response byte leaves the gateway.

``t2 - t1`` is the PACS's C-FIND service time seen on its socket, ``(t3 - t0) - (t2 - t1)``
what the gateway adds.  The HTTP client's own time (``http.client`` in Python) is in
neither, unlike a latency taken by the client.

tcpdump needs the capture capability (root, or ``cap_net_raw``): without it the
benchmark says so and prints the client-side figures only.
"""

from __future__ import annotations

import shutil
import signal
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import attrs

# Link-layer header lengths: Ethernet (Linux's lo), Linux cooked v1 and v2.
_LINK_HEADER = {1: 14, 113: 16, 276: 20}


@attrs.frozen
class Packet:
    time: float
    source_port: int
    destination_port: int
    payload: int  # TCP payload bytes (from the IP header: the capture keeps only headers)


class Capture:
    """``tcpdump`` on ``lo`` for `ports`, writing to `path`, between ``start()`` and ``stop()``."""

    def __init__(self, path: Path, ports: list[int]) -> None:
        self.path = path
        self.ports = ports
        self._process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> str | None:
        """None if a capture can run here, else why not."""
        tcpdump = shutil.which("tcpdump") or "/usr/sbin/tcpdump"
        if not Path(tcpdump).exists():
            return "tcpdump is not installed (apt-get install tcpdump)"
        probe = subprocess.Popen(
            [tcpdump, "-i", "lo", "-w", "/dev/null", "tcp port 9"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert probe.stderr is not None
        line = probe.stderr.readline()  # "listening on lo ..." or why not
        probe.terminate()
        probe.wait(timeout=10)
        probe.stderr.close()
        if b"listening" not in line:
            return f"tcpdump cannot capture here: {line.decode(errors='replace').strip()}"
        return None

    def start(self) -> None:
        tcpdump = shutil.which("tcpdump") or "/usr/sbin/tcpdump"
        expression = " or ".join(f"tcp port {port}" for port in self.ports)
        self._process = subprocess.Popen(
            # Headers only (-s 96), a large kernel buffer so nothing is dropped, packets
            # handed over as they come (--immediate-mode: else libpcap's ring keeps a
            # partly filled block, lost at SIGINT) and written so (-U).
            [
                tcpdump,
                "-i",
                "lo",
                "-s",
                "96",
                "-B",
                "16384",
                "--immediate-mode",
                "-U",
                "-n",
                "-w",
                str(self.path),
                expression,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert self._process.stderr is not None
        # tcpdump says "listening on lo" once the capture is armed.
        line = self._process.stderr.readline()
        if b"listening" not in line:
            self._process.kill()
            raise RuntimeError(f"tcpdump did not start: {line!r}")

    def stop(self) -> str:
        """Stop the capture; tcpdump's summary (received / dropped by kernel)."""
        assert self._process is not None
        # tcpdump stops reading at SIGINT, leaving what is still in the kernel's buffer:
        # on two busy cores it lags the traffic, so wait until the file stops growing.
        size, deadline = -1, time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(0.3)
            now = self.path.stat().st_size if self.path.exists() else 0
            if now == size:
                break
            size = now
        self._process.send_signal(signal.SIGINT)
        _, err = self._process.communicate(timeout=10)
        return " ".join(err.decode(errors="replace").split())


def packets(path: Path) -> Iterator[Packet]:
    data = path.read_bytes()
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        order = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        order = ">"
    else:
        raise ValueError(f"{path}: not a pcap file")
    fraction = 1e-9 if magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 1e-6
    (link,) = struct.unpack_from(order + "I", data, 20)
    skip = _LINK_HEADER.get(link)
    if skip is None:
        raise ValueError(f"{path}: link type {link} not handled")
    record = struct.Struct(order + "IIII")
    offset = 24
    while offset + 16 <= len(data):
        seconds, part, captured, _ = record.unpack_from(data, offset)
        offset += 16
        frame = data[offset : offset + captured]
        offset += captured
        ip = frame[skip:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
            continue  # only IPv4 TCP: the benchmark binds 127.0.0.1
        ip_header = (ip[0] & 0x0F) * 4
        (total,) = struct.unpack_from("!H", ip, 2)
        tcp = ip[ip_header:]
        source, destination = struct.unpack_from("!HH", tcp, 0)
        tcp_header = (tcp[12] >> 4) * 4
        yield Packet(seconds + part * fraction, source, destination, total - ip_header - tcp_header)


@attrs.frozen
class Exchange:
    total: float  # t3 - t0: the gateway's socket, request in to response out
    pacs: float  # t2 - t1: the PACS's socket, C-FIND-RQ out to final C-FIND-RSP in

    @property
    def added(self) -> float:
        return self.total - self.pacs


def exchanges(capture: list[Packet], http_port: int, pacs_port: int) -> list[Exchange]:
    """Split a serial client's capture into queries (see the module's docstring).

    A query with no traffic to the PACS (none is expected here) is skipped."""
    out: list[Exchange] = []
    t0 = t1 = t2 = t3 = None
    answering = False
    for p in capture:
        if p.payload <= 0:
            continue
        if p.destination_port == http_port:  # client -> gateway
            if answering and t0 is not None and t1 is not None and t2 is not None and t3 is not None:
                out.append(Exchange(t3 - t0, t2 - t1))
            if answering or t0 is None:
                t0, t1, t2, t3, answering = p.time, None, None, None, False
        elif p.destination_port == pacs_port:  # gateway -> PACS
            if t0 is not None and t1 is None and not answering:
                t1 = p.time
        elif p.source_port == pacs_port:  # PACS -> gateway
            if t1 is not None and not answering:
                t2 = p.time
        elif p.source_port == http_port:  # gateway -> client
            answering = True
            t3 = p.time
    if answering and t0 is not None and t1 is not None and t2 is not None and t3 is not None:
        out.append(Exchange(t3 - t0, t2 - t1))
    return out
