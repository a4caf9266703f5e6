"""Fuzz harnesses for what DICOM peers send: PDUs, association items, DIMSE commands.

Each harness feeds its input to one parser and accepts only the parser's declared error
(`ProtocolError` for the Upper Layer, `CommandError` for command sets); the two stream
harnesses (``listener``, ``requestor``) feed a whole byte stream to a ULProtocol, where
nothing may escape ``dataReceived`` and no traceback may be logged: every bad input
must end as one A-ABORT.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

from dicomrst.common.addresses import host_networks
from dicomrst.common.dicomjson import dataset_json
from dicomrst.common.identifiers import decode_identifier
from dicomrst.common.transcode import CannotTranscode, DataSetError, to_explicit_le
from dicomrst.common.uids import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    STUDY_ROOT_FIND,
    VERIFICATION,
)
from dicomrst.common.walker import UIDPeeker
from dicomrst.dimse import commands
from dicomrst.dimse.connection import DimseConnection
from dicomrst.dimse.contexts import listener_policy
from dicomrst.dimse.find import FindOperation
from dicomrst.dimse.move_registry import MoveRegistry, Sender
from dicomrst.dimse.server import listener_factory
from dicomrst.ul import pdu
from dicomrst.ul.negotiation import AcceptorPolicy, AssociationRequest, ContextProposal
from dicomrst.ul.protocol import ULProtocol
from tests.fuzz import harness
from tests.support.moves import RunningMove
from tests.support.sinks import RecordingSink

# -- the parsers, one by one ------------------------------------------------------------------


@harness("pdu")
def pdu_stream(data: bytes) -> None:
    """The framer on a stream cut where the first byte says, and each PDU's cheap parsers."""
    if not data:
        return
    cut = data[0] % 8 + 1
    framer = pdu.PDUFramer(data[0] * 64)
    stream = data[1:]
    try:
        for start in range(0, len(stream), cut):
            framer.feed(stream[start : start + cut])
            while (item := framer.next_pdu()) is not None:
                pdu_type, body = item
                if pdu_type == pdu.P_DATA_TF:
                    pdu.parse_pdvs(body)
                elif pdu_type == pdu.ASSOCIATE_RJ:
                    pdu.decode_reject(body)
                elif pdu_type == pdu.ABORT:
                    pdu.decode_abort(body)
    except pdu.ProtocolError:
        pass


_REQUEST = AssociationRequest(
    "FUZZ-SCU",
    "FUZZ-SCP",
    (
        ContextProposal(VERIFICATION),
        ContextProposal(STUDY_ROOT_FIND),
        ContextProposal("1.2.840.10008.5.1.4.1.1.2", (EXPLICIT_VR_LE, IMPLICIT_VR_LE), True, True),
    ),
)
_LISTENER_POLICY = listener_policy("FUZZ-SCP", False, 16384)
_PLAIN_POLICY = AcceptorPolicy(
    "FUZZ-SCP", (ContextProposal(VERIFICATION), ContextProposal(STUDY_ROOT_FIND)), check_called_aet=False
)


@harness("associate")
def associate(data: bytes) -> None:
    """An A-ASSOCIATE-RQ/-AC/-RJ body (the first byte picks which) decoded, then used as
    the acceptor (both policies decide on it) or the requestor (negotiated) uses it."""
    if not data:
        return
    kind = data[0] % 3
    body = data[1:]
    try:
        if kind == 2:
            pdu.decode_reject(body)
            return
        pdu_type = pdu.ASSOCIATE_RQ if kind == 0 else pdu.ASSOCIATE_AC
        primitive = pdu.decode_associate(pdu_type, body)
        if pdu_type == pdu.ASSOCIATE_RQ:
            version = pdu.protocol_version(body)
            _LISTENER_POLICY.decide(primitive, version)
            _PLAIN_POLICY.decide(primitive, version)
        else:
            _REQUEST.negotiated(primitive)
    except pdu.ProtocolError:
        pass


@harness("command")
def command(data: bytes) -> None:
    """A DIMSE command set decoded; what decodes must encode again (responses echo it)."""
    try:
        decoded = commands.decode_command(data)
    except commands.CommandError:
        return
    commands.encode_command(decoded)


@harness("identifier")
def identifier(data: bytes) -> None:
    """A C-FIND match (Implicit or Explicit VR LE, by the first byte) decoded, and
    rendered as the QIDO-RS response renders it."""
    if not data:
        return
    syntax = IMPLICIT_VR_LE if data[0] & 1 else EXPLICIT_VR_LE
    try:
        ds = decode_identifier(data[1:], syntax)
    except DataSetError:
        return
    dataset_json(ds)


_SYNTAXES = (IMPLICIT_VR_LE, EXPLICIT_VR_BE, DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_LE)


@harness("dataset")
def dataset(data: bytes) -> None:
    """A C-STORE sub-operation's data set (in the syntax the first byte picks) turned into
    Explicit VR LE for the response, and its UIDs peeked for correlation."""
    if not data:
        return
    syntax = _SYNTAXES[data[0] % len(_SYNTAXES)]
    peeker = UIDPeeker(implicit=syntax == IMPLICIT_VR_LE)
    peeker.feed(data[1:])
    _ = peeker.uids
    try:
        to_explicit_le(data[1:], syntax)
    except (DataSetError, CannotTranscode):
        pass


# -- whole streams into a protocol --------------------------------------------------------------

def _feed(proto: ULProtocol, clock: Clock, data: bytes) -> None:
    # Only what this input makes the protocol log counts: an observer for the feed alone,
    # so a failure another test logged in the same process is not this input's.
    failures: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if "log_failure" in event:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        cut = data[0] % 16 + 1 if data else 1
        for start in range(1, len(data), cut):
            proto.dataReceived(data[start : start + cut])
        # Whatever state the input left, the timers must end it.
        clock.advance(3600)
        proto.connectionLost()
    finally:
        globalLogPublisher.removeObserver(observe)
    if failures:
        raise AssertionError(f"traceback logged: {failures[0]['log_failure'].getTraceback()}")


# One listener for every input, as in the gateway: its policy caches decisions.
_LISTENER_CLOCK = Clock()
# A C-MOVE of study 1.2.3 (message ID 7) from PACS at 192.0.2.1, always running: the seeds'
# C-STOREs reach correlation by Message ID and by UIDs, and the sink.
_MOVE = RunningMove(
    RecordingSink(keep=False),
    pacs_aet="PACS",
    destination="FUZZ-SCP",
    senders=(Sender("PACS", host_networks("192.0.2.1")),),
    message_id=7,
)
_REGISTRY = MoveRegistry("FUZZ-SCU")
_REGISTRY.register(_MOVE)  # type: ignore[arg-type]
_LISTENER = listener_factory("FUZZ-SCP", _LISTENER_CLOCK, _REGISTRY, uncompressed=False)


@harness("listener")
def listener(data: bytes) -> None:
    """A stream to one of our listeners (C-ECHO, C-STORE for moves), from the first byte."""
    _MOVE.delivered.clear()  # each input may deliver the seeds' instance again
    address = IPv4Address("TCP", "192.0.2.1", 104)
    proto = _LISTENER.buildProtocol(address)
    proto.makeConnection(StringTransport(peerAddress=address))
    _feed(proto, _LISTENER_CLOCK, data)


_ACCEPT: list[bytes] = []


def _accept_bytes() -> bytes:
    if not _ACCEPT:
        decision = _PLAIN_POLICY.decide(_REQUEST.to_primitive())
        _ACCEPT.append(pdu.encode_associate(decision.primitive))  # type: ignore[union-attr]
    return _ACCEPT[0]


@harness("requestor")
def requestor(data: bytes) -> None:
    """A stream from a PACS we sent a C-FIND-RQ to (message ID 1, context 3)."""
    clock = Clock()
    connection = DimseConnection(clock)
    proto = ULProtocol(clock, connection, request=_REQUEST)
    proto.makeConnection(StringTransport())
    proto.dataReceived(_accept_bytes())
    from pydicom.dataset import Dataset

    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    op = FindOperation(connection, clock, aet="FUZZ-SCP", limit=None, timeout=30, on_result=lambda ds: None)
    request = op.start(identifier)
    request.addErrback(lambda _: None)
    _feed(proto, clock, data)
