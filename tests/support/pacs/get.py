"""The get-* profiles of the pynetdicom PACS: a Study Root C-GET SCP serving generated instances.

`GetSCP` holds what the get-* profiles share (and the move-* profiles build on): matching a
request's unique keys against the generated study of `tests.support.pacs.datasets`, sending
the matches as C-STORE sub-operations, cancels, and the events it logs.
"""

from __future__ import annotations

import time
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from tests.support.pacs.datasets import (
    GET_UID_ROOT,
    UNPROPOSED_SOP_CLASS,
    get_instance,
    get_series_uid,
    get_sop_uid,
    get_study_uid,
)
from tests.support.pacs.profiles import Counter, Profile, assoc_fields, profile, stall_until_gone

# The instances are made up by `datasets.get_instance`, so a test builds the same data sets to
# compare with what came through: a study `get_study_uid()` of `series` (1) series of
# `instances` (3) CT images each, `rows` x `columns` (16 x 16) 16-bit pixels from a seeded
# generator. A C-GET at any level (study, series, image; unique keys as given) matches those
# instances; each is sent as a C-STORE sub-operation on the requestor's own association
# (pynetdicom does that for each `(0xFF00, ds)` the handler yields), on a context the
# requestor proposed with the SCP role.
#
# Every get-* profile accepts Verification, Study Root FIND/MOVE/GET and, for the storage SOP
# classes, the SCU and SCP roles (`transfer_syntaxes`, default Explicit then Implicit VR LE), and
# logs, besides the common events:
#   c_get       (message_id, level, study, series, sop, matches, n = the n-th C-GET served)
#   store_start (message_id, index, sop): the handler hands instance `index` to pynetdicom
#   store_done  (message_id, index, sop): its C-STORE-RSP came back (the generator resumed)
#   store_rsp   (status, sop): a C-STORE-RSP as it arrives from the requestor
#   c_cancel    (message_id), get_cancelled (message_id, sent)
#   get_done    (message_id, sent, status): the handler's last word
#   assoc_count (count, max): open connections to this peer
#   get_rsp     (status, remaining, completed, failed, warning): each C-GET-RSP as sent
# The faulty profiles serve the first `healthy` (0) C-GETs like `get`, misbehave on the next `times`
# (default 1; null = always) and serve the later ones like `get` again.



class GetSCP:
    """The shared parts of the get-* profiles (and, as `kind` says, of the move-* ones)."""

    kind = "get"  # names the log events: get_done / move_done, get_cancelled / ...

    def __init__(self, p: Profile) -> None:
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import StoragePresentationContexts

        self.p = p
        self.counter = Counter()
        self.gets = 0
        self.series = int(p.options.get("series", 1))
        self.instances = int(p.options.get("instances", 3))
        self.rows = int(p.options.get("rows", 16))
        self.columns = int(p.options.get("columns", 16))
        self.delay = float(p.options.get("delay", 0))
        times = p.options.get("times", 1)
        self.times = None if times is None else int(times)
        self.healthy = int(p.options.get("healthy", 0))
        syntaxes = p.options.get("transfer_syntaxes", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        for context in (
            Verification,
            StudyRootQueryRetrieveInformationModelFind,
            StudyRootQueryRetrieveInformationModelMove,
            StudyRootQueryRetrieveInformationModelGet,
        ):
            p.ae.add_supported_context(context)
        for cx in StoragePresentationContexts:
            p.ae.add_supported_context(cx.abstract_syntax, syntaxes, scu_role=True, scp_role=True)
        p.on(evt.EVT_CONN_OPEN, self._conn_open)
        p.on(evt.EVT_CONN_CLOSE, self._conn_close)
        p.on(evt.EVT_DIMSE_RECV, self._dimse_recv)
        p.on(evt.EVT_DIMSE_SENT, self._dimse_sent)

    def _conn_open(self, event: evt.Event) -> None:
        count, most = self.counter.opened()
        self.p.log.write("assoc_count", count=count, max=most, **assoc_fields(event))

    def _conn_close(self, event: evt.Event) -> None:
        count, most = self.counter.closed()
        self.p.log.write("assoc_count", count=count, max=most, **assoc_fields(event))

    def _dimse_sent(self, event: evt.Event) -> None:
        message = event.message
        if type(message).__name__ == "C_GET_RSP":
            command = message.command_set
            counts = {
                name: int(command[keyword].value)
                for name, keyword in (
                    ("remaining", "NumberOfRemainingSuboperations"),
                    ("completed", "NumberOfCompletedSuboperations"),
                    ("failed", "NumberOfFailedSuboperations"),
                    ("warning", "NumberOfWarningSuboperations"),
                )
                if keyword in command and command[keyword].value is not None
            }
            self.p.log.write("get_rsp", status=int(command.Status), **counts, **assoc_fields(event))

    def _dimse_recv(self, event: evt.Event) -> None:
        message = event.message
        kind = type(message).__name__
        if kind == "C_CANCEL_RQ":
            self.p.log.write(
                "c_cancel",
                message_id=int(message.command_set.MessageIDBeingRespondedTo),
                **assoc_fields(event),
            )
        elif kind == "C_STORE_RSP":
            command = message.command_set
            self.p.log.write(
                "store_rsp",
                status=int(command.Status),
                sop=str(command.get("AffectedSOPInstanceUID", "")),
                **assoc_fields(event),
            )

    def matches(self, identifier: Dataset) -> list[tuple[int, int]]:
        """(series, index) of the instances the identifier's unique keys select."""
        study = str(identifier.get("StudyInstanceUID", "") or "")
        series = str(identifier.get("SeriesInstanceUID", "") or "")
        sop = str(identifier.get("SOPInstanceUID", "") or "")
        if study and study != get_study_uid():
            return []
        found = []
        for s in range(self.series):
            if series and series != get_series_uid(s):
                continue
            for i in range(self.instances):
                if sop and sop != get_sop_uid(s, i):
                    continue
                found.append((s, i))
        return found

    def begin(self, event: evt.Event) -> tuple[list[tuple[int, int]], bool]:
        """Log the C-GET; (its matches, whether this one should misbehave)."""
        self.gets += 1  # association threads: only the counter's lock matters for counts
        n = self.gets
        identifier = event.identifier
        found = self.matches(identifier)
        self.p.log.write(
            "c_get",
            message_id=int(event.request.MessageID),
            level=str(identifier.get("QueryRetrieveLevel", "")),
            study=str(identifier.get("StudyInstanceUID", "") or ""),
            series=str(identifier.get("SeriesInstanceUID", "") or ""),
            sop=str(identifier.get("SOPInstanceUID", "") or ""),
            matches=len(found),
            n=n,
            **assoc_fields(event),
        )
        faulty = n > self.healthy and (self.times is None or n <= self.healthy + self.times)
        return found, faulty

    def instance(self, series: int, index: int) -> Dataset:
        return get_instance(series, index, self.rows, self.columns)

    def done(self, event: evt.Event, sent: int, status: int) -> None:
        self.p.log.write(
            f"{self.kind}_done",
            message_id=int(event.request.MessageID),
            sent=sent,
            status=status,
            **assoc_fields(event),
        )

    def send(self, event: evt.Event, found: list[tuple[int, int]], start: int = 0) -> Any:
        """Yield `found[start:]` as C-STORE sub-operations (C-GET) or Pending responses
        whose sub-operations pynetdicom sends (C-MOVE); stop with 0xFE00 at a C-CANCEL.

        Returns how many were handed on (from `start`), or None after a cancel.
        """
        message_id = int(event.request.MessageID)
        for index in range(start, len(found)):
            if self.delay:
                time.sleep(self.delay)
            if event.is_cancelled:
                fields = assoc_fields(event)
                self.p.log.write(f"{self.kind}_cancelled", message_id=message_id, sent=index, **fields)
                self.done(event, index, 0xFE00)
                yield 0xFE00, None
                return None
            ds = self.instance(*found[index])
            sop = str(ds.SOPInstanceUID)
            self.p.log.write(
                "store_start", message_id=message_id, index=index, sop=sop, **assoc_fields(event)
            )
            yield 0xFF00, ds
            self.p.log.write(
                "store_done", message_id=message_id, index=index, sop=sop, **assoc_fields(event)
            )
        return len(found) - start

    def answer(self, event: evt.Event, found: list[tuple[int, int]]) -> Any:
        """Serve like the `get` profile (pynetdicom sends the final response itself)."""
        yield len(found)
        sent = yield from self.send(event, found)
        if sent is not None:
            self.done(event, sent, 0x0000)


@profile("get")
def _profile_get(p: Profile) -> None:
    """Study Root C-GET SCP: every matching instance as a C-STORE sub-operation (`delay`, 0 s,
    before each), then Success; a C-CANCEL seen between sub-operations ends it with Cancel."""
    scp = GetSCP(p)

    def on_get(event: evt.Event) -> Any:
        found, _ = scp.begin(event)
        yield from scp.answer(event, found)

    p.on(evt.EVT_C_GET, on_get)


@profile("get-warning")
def _profile_get_warning(p: Profile) -> None:
    """`get`, plus one sub-operation (after the first good instance) that fails: an instance of a
    SOP class the requestor did not propose, which cannot be sent. Final status Warning B000
    with one failed sub-operation (pynetdicom counts and answers it)."""
    scp = GetSCP(p)

    def on_get(event: evt.Event) -> Any:
        found, faulty = scp.begin(event)
        if not faulty or not found:
            yield from scp.answer(event, found)
            return
        yield len(found) + 1
        sent = yield from scp.send(event, found[:1])
        if sent is None:
            return
        bad = scp.instance(*found[0])
        bad.SOPClassUID = UNPROPOSED_SOP_CLASS
        bad.SOPInstanceUID = f"{GET_UID_ROOT}.4.1"
        bad.file_meta.MediaStorageSOPClassUID = UNPROPOSED_SOP_CLASS
        bad.file_meta.MediaStorageSOPInstanceUID = bad.SOPInstanceUID
        p.log.write("store_unsendable", sop=str(bad.SOPInstanceUID), **assoc_fields(event))
        yield 0xFF00, bad
        rest = yield from scp.send(event, found, start=1)
        if rest is not None:
            scp.done(event, len(found), 0xB000)

    p.on(evt.EVT_C_GET, on_get)


@profile("get-fail")
def _profile_get_fail(p: Profile) -> None:
    """`ok_before` (1) sub-operations, then the failure `status` (0xC000) as final response."""
    scp = GetSCP(p)
    ok_before = int(p.options.get("ok_before", 1))
    status = int(p.options.get("status", 0xC000))

    def on_get(event: evt.Event) -> Any:
        found, faulty = scp.begin(event)
        if not faulty:
            yield from scp.answer(event, found)
            return
        yield len(found)
        sent = yield from scp.send(event, found[:ok_before])
        if sent is not None:
            scp.done(event, sent, status)
            yield status, None

    p.on(evt.EVT_C_GET, on_get)


@profile("get-implicit")
def _profile_get_implicit(p: Profile) -> None:
    """`get` with only Implicit VR Little Endian accepted for the storage SOP classes: the
    instances go out as Implicit VR LE (pynetdicom re-encodes them for the context)."""
    p.options.setdefault("transfer_syntaxes", ["1.2.840.10008.1.2"])
    _profile_get(p)


@profile("get-abort")
def _profile_get_abort(p: Profile) -> None:
    """A-ABORT during a C-GET after `ok_before` (1) complete sub-operations. With `partial`
    (false), first send the command and the first data set fragment of the next instance's
    C-STORE, so the abort comes in the middle of an instance."""
    scp = GetSCP(p)
    ok_before = int(p.options.get("ok_before", 1))
    partial = bool(p.options.get("partial", False))

    def on_get(event: evt.Event) -> Any:
        found, faulty = scp.begin(event)
        if not faulty:
            yield from scp.answer(event, found)
            return
        yield len(found)
        sent = yield from scp.send(event, found[:ok_before])
        if sent is None:
            return
        if partial and sent < len(found):
            _send_partial_store(event, scp.instance(*found[sent]))
            p.log.write("partial_sent", sop=get_sop_uid(*found[sent]), **assoc_fields(event))
        p.log.write("abort_sent", message_id=int(event.request.MessageID), sent=sent, **assoc_fields(event))
        event.assoc.abort()

    p.on(evt.EVT_C_GET, on_get)


def _send_partial_store(event: evt.Event, ds: Dataset) -> None:
    """Put the C-STORE-RQ command and the first data set P-DATA of `ds` on the wire, no more."""
    from io import BytesIO

    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.dsutils import encode

    assoc = event.assoc
    context = assoc._get_valid_context(ds.SOPClassUID, ExplicitVRLittleEndian, "scu")
    ts = context.transfer_syntax[0]
    primitive = C_STORE()
    primitive.MessageID = (int(event.request.MessageID) + 100) & 0xFFFF
    primitive.AffectedSOPClassUID = ds.SOPClassUID
    primitive.AffectedSOPInstanceUID = ds.SOPInstanceUID
    primitive.Priority = 2
    primitive.DataSet = BytesIO(encode(ds, ts.is_implicit_VR, ts.is_little_endian))
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    pdus = list(message.encode_msg(context.context_id, assoc.dimse.maximum_pdu_size))
    # The command set, then the first data set fragment (the data set runs over several).
    for pdu in pdus[:2]:
        assoc.dul.send_pdu(pdu)


@profile("get-stall")
def _profile_get_stall(p: Profile) -> None:
    """Accept the C-GET and never answer (after `ok_before`, default 0, sub-operations); the
    handler waits until the requestor aborts or the connection goes (``stalling``, then
    ``stall_ended`` with ``reason``)."""
    scp = GetSCP(p)
    ok_before = int(p.options.get("ok_before", 0))
    p.ae.network_timeout = None
    p.ae.dimse_timeout = None

    def on_get(event: evt.Event) -> Any:
        found, faulty = scp.begin(event)
        if not faulty:
            yield from scp.answer(event, found)
            return
        yield max(len(found), 1)
        sent = yield from scp.send(event, found[:ok_before])
        if sent is None:
            return
        stall_until_gone(p, event)

    p.on(evt.EVT_C_GET, on_get)

