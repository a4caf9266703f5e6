# -*- test-case-name: tests.unit.test_ul_protocol -*-
"""Association negotiation (PS3.7 Annex D, PS3.8 §9.3.2-9.3.4) on pynetdicom's helpers.

What we propose as requestor and what we accept as acceptor are plain values here;
turning them into A-ASSOCIATE primitives and reading the peer's answer back uses
pynetdicom's presentation-context negotiation, which is pure code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias, cast

import attrs
from pydicom.uid import UID
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import (
    PresentationContext,
    negotiate_as_acceptor,
    negotiate_as_requestor,
)

from dicomrst.common.uids import (
    APPLICATION_CONTEXT,
    EXPLICIT_VR_LE,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    IMPLICIT_VR_LE,
)
from dicomrst.ul import pdu

if TYPE_CHECKING:
    from pynetdicom.pdu_primitives import (
        AsynchronousOperationsWindowNegotiation,
        SOPClassCommonExtendedNegotiation,
        SOPClassExtendedNegotiation,
        UserIdentityNegotiation,
    )

    # An item of A_ASSOCIATE.user_information, as pynetdicom types it (its alias is private).
    _UserItem: TypeAlias = (
        MaximumLengthNotification
        | ImplementationClassUIDNotification
        | ImplementationVersionNameNotification
        | AsynchronousOperationsWindowNegotiation
        | SCP_SCU_RoleSelectionNegotiation
        | SOPClassExtendedNegotiation
        | UserIdentityNegotiation
        | SOPClassCommonExtendedNegotiation
    )

# What we advertise as our maximum P-DATA-TF variable field.  DCMTK's own upper
# bound is 128 KiB; larger PDUs mean fewer headers and syscalls on the retrieve path.
DEFAULT_MAX_PDU = 131072

# A-ASSOCIATE-RJ (PS3.8 §9.3.4)
RESULT_REJECTED_PERMANENT = 1
RESULT_REJECTED_TRANSIENT = 2
SOURCE_USER = 1
SOURCE_PROVIDER_ACSE = 2
SOURCE_PROVIDER_PRESENTATION = 3
REASON_NO_REASON = 1
REASON_APP_CONTEXT_NOT_SUPPORTED = 2
REASON_CALLING_AE_NOT_RECOGNIZED = 3
REASON_CALLED_AE_NOT_RECOGNIZED = 7
REASON_PROTOCOL_VERSION_NOT_SUPPORTED = 2

_RJ_REASONS = {
    (SOURCE_USER, 1): "no reason given",
    (SOURCE_USER, 2): "application context name not supported",
    (SOURCE_USER, 3): "calling AE title not recognized",
    (SOURCE_USER, 7): "called AE title not recognized",
    (SOURCE_PROVIDER_ACSE, 1): "no reason given",
    (SOURCE_PROVIDER_ACSE, 2): "protocol version not supported",
    (SOURCE_PROVIDER_PRESENTATION, 1): "temporary congestion",
    (SOURCE_PROVIDER_PRESENTATION, 2): "local limit exceeded",
}


def describe_reject(result: int, source: int, reason: int) -> str:
    kind = "permanent" if result == RESULT_REJECTED_PERMANENT else "transient"
    text = _RJ_REASONS.get((source, reason), f"source {source} reason {reason}")
    return f"{kind}: {text}"


@attrs.frozen
class ContextProposal:
    """An abstract syntax with the transfer syntaxes we take for it, best first.

    `scp_role`/`scu_role` of None means no role selection item (the default roles).
    """

    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...] = (EXPLICIT_VR_LE, IMPLICIT_VR_LE)
    scu_role: bool | None = None
    scp_role: bool | None = None


@attrs.frozen
class AcceptedContext:
    """A presentation context both sides agreed on, with our roles on it."""

    context_id: int
    abstract_syntax: str
    transfer_syntax: str
    as_scu: bool
    as_scp: bool


@attrs.frozen
class AssociationRequest:
    """What we ask for when we open an association."""

    calling_aet: str
    called_aet: str
    contexts: tuple[ContextProposal, ...]
    max_pdu: int = DEFAULT_MAX_PDU
    # A pool opens every association with the same request: its PDU and its outcome for
    # a given answer are worked out once (pynetdicom validates each of ~124 contexts'
    # UIDs every time it builds or negotiates them, some 15 ms per association).
    _encoded: list[bytes] = attrs.field(init=False, factory=list, eq=False, repr=False, hash=False)
    _outcomes: dict[tuple[Any, ...], dict[int, AcceptedContext]] = attrs.field(
        init=False, factory=dict, eq=False, repr=False, hash=False
    )
    # The same outcomes by the identity of the answer's items (see `negotiated`).
    _answers: dict[tuple[tuple[int, ...], tuple[int, ...]], _Answer] = attrs.field(
        init=False, factory=dict, eq=False, repr=False, hash=False
    )

    def encoded(self) -> bytes:
        """The A-ASSOCIATE-RQ PDU of `to_primitive()`."""
        if not self._encoded:
            self._encoded.append(pdu.encode_associate(self.to_primitive()))
        return self._encoded[0]

    def presentation_contexts(self) -> list[PresentationContext]:
        if not 1 <= len(self.contexts) <= 128:
            raise ValueError("an association proposes 1 to 128 presentation contexts")
        out = []
        for i, proposal in enumerate(self.contexts):
            cx = PresentationContext()
            cx.context_id = 2 * i + 1
            cx.abstract_syntax = UID(proposal.abstract_syntax)
            cx.transfer_syntax = [UID(ts) for ts in proposal.transfer_syntaxes]
            out.append(cx)
        return out

    def to_primitive(self) -> A_ASSOCIATE:
        primitive = A_ASSOCIATE()
        primitive.application_context_name = UID(APPLICATION_CONTEXT)
        primitive.calling_ae_title = self.calling_aet
        primitive.called_ae_title = self.called_aet
        primitive.presentation_context_definition_list = self.presentation_contexts()
        info = _common_user_information(self.max_pdu)
        for proposal in self.contexts:
            if proposal.scu_role is not None or proposal.scp_role is not None:
                role = SCP_SCU_RoleSelectionNegotiation()
                role.sop_class_uid = UID(proposal.abstract_syntax)
                role.scu_role = bool(proposal.scu_role)
                role.scp_role = bool(proposal.scp_role)
                info.append(role)
        primitive.user_information = info
        return primitive

    def negotiated(self, accept: A_ASSOCIATE) -> dict[int, AcceptedContext]:
        """The contexts the acceptor took, keyed by context ID, with our roles."""
        # First by the answer's items themselves: a PACS answers every association alike,
        # and `pdu.decode_associate` hands out the items decoded the first time (shared,
        # never changed), so a repeated answer is found without reading its ~250 items
        # (`_answer_key` was half of an association's CPU on our side).  The entry holds
        # those items, so no other object can take their ids while it is kept.
        items = accept.presentation_context_definition_results_list
        users = accept.user_information
        same = (tuple(map(id, items)), tuple(map(id, users)))
        answer = self._answers.get(same)
        if answer is not None:
            return dict(answer.contexts)
        key = _answer_key(accept)
        outcome = self._outcomes.get(key)
        if outcome is None:
            if len(self._outcomes) >= OUTCOMES_KEPT:
                self._outcomes.clear()
            outcome = self._outcomes[key] = self._negotiate(accept)
        if len(self._answers) >= OUTCOMES_KEPT:
            self._answers.clear()
        self._answers[same] = _Answer(outcome, (*items, *users))
        return dict(outcome)

    def _negotiate(self, accept: A_ASSOCIATE) -> dict[int, AcceptedContext]:
        rq = self.presentation_contexts()
        rq_roles = {
            p.abstract_syntax: (p.scu_role, p.scp_role)
            for p in self.contexts
            if p.scu_role is not None or p.scp_role is not None
        }
        for cx in rq:
            if cx.abstract_syntax in rq_roles:
                scu, scp = rq_roles[cx.abstract_syntax]
                cx.scu_role, cx.scp_role = bool(scu), bool(scp)
        ac_roles = {
            # pynetdicom types the item's UID as optional (as it does, and casts, itself);
            # it is only looked up by a context's abstract syntax, which None never matches.
            cast(UID, item.sop_class_uid): (item.scu_role, item.scp_role)
            for item in accept.user_information
            if isinstance(item, SCP_SCU_RoleSelectionNegotiation)
        }
        return _accepted(
            negotiate_as_requestor(rq, accept.presentation_context_definition_results_list, ac_roles)
        )


#: Distinct answers whose outcome an AssociationRequest keeps (it forgets all past that).
OUTCOMES_KEPT = 16


@attrs.frozen
class _Answer:
    """A negotiation's outcome, with the answer's items whose ids key it (held, so that
    those ids stay theirs)."""

    contexts: dict[int, AcceptedContext]
    items: tuple[object, ...]


def _answer_key(accept: A_ASSOCIATE) -> tuple[Any, ...]:
    """All of an A-ASSOCIATE-AC that negotiate_as_requestor reads."""
    # UIDs as they are (a UID is a str: it compares and hashes as one); converting each
    # of the ~130 contexts' UIDs cost ~0.2 ms an association.
    return (
        tuple(
            (cx.context_id, cx.result, cx.abstract_syntax, *cx.transfer_syntax)
            for cx in accept.presentation_context_definition_results_list
        ),
        tuple(
            (str(item.sop_class_uid), item.scu_role, item.scp_role)
            for item in accept.user_information
            if isinstance(item, SCP_SCU_RoleSelectionNegotiation)
        ),
    )


def _accepted(results: list[PresentationContext]) -> dict[int, AcceptedContext]:
    """The accepted contexts of a negotiation result, by context ID, with our roles."""
    return {
        # Every negotiated result has its context ID (pynetdicom types it optional).
        int(cast(int, cx.context_id)): AcceptedContext(
            int(cast(int, cx.context_id)),
            str(cx.abstract_syntax),
            str(cx.transfer_syntax[0]),
            bool(cx.as_scu),
            bool(cx.as_scp),
        )
        for cx in results
        if cx.result == 0 and cx.transfer_syntax
    }


def _common_user_information(max_pdu: int) -> list[_UserItem]:
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = UID(IMPLEMENTATION_CLASS_UID)
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    return [max_length, class_uid, version]


def peer_max_pdu(primitive: A_ASSOCIATE) -> int:
    """The peer's maximum P-DATA-TF length; 0 (no limit) when it sent none."""
    for item in primitive.user_information:
        if isinstance(item, MaximumLengthNotification):
            return int(item.maximum_length_received or 0)
    return 0


@attrs.frozen
class Rejection:
    result: int
    source: int
    reason: int

    def describe(self) -> str:
        return describe_reject(self.result, self.source, self.reason)


@attrs.frozen
class Acceptance:
    primitive: A_ASSOCIATE
    contexts: dict[int, AcceptedContext]
    #: `primitive` as its A-ASSOCIATE-AC PDU, encoded once with the decision so that a
    #: cached decision (StoragePolicy) is answered without pynetdicom's encoder.
    encoded: bytes = b""


@attrs.frozen
class AcceptorPolicy:
    """How a listener answers an A-ASSOCIATE-RQ.

    `contexts` lists the abstract syntaxes served and the transfer syntaxes taken
    for each, in our order of preference (pynetdicom's acceptor negotiation keeps it).
    """

    aet: str
    contexts: tuple[ContextProposal, ...]
    max_pdu: int = DEFAULT_MAX_PDU
    check_called_aet: bool = True
    #: The calling AE titles accepted (empty: any).
    allowed_callers: frozenset[str] = frozenset()

    def decide(self, request: A_ASSOCIATE, protocol_version: int = 1) -> Acceptance | Rejection:
        """Accept or reject `request` (an A-ASSOCIATE-RQ with `protocol_version`)."""
        if not protocol_version & 1:
            return Rejection(
                RESULT_REJECTED_PERMANENT, SOURCE_PROVIDER_ACSE, REASON_PROTOCOL_VERSION_NOT_SUPPORTED
            )
        if str(request.application_context_name) != APPLICATION_CONTEXT:
            return Rejection(RESULT_REJECTED_PERMANENT, SOURCE_USER, REASON_APP_CONTEXT_NOT_SUPPORTED)
        if self.check_called_aet and request.called_ae_title.strip() != self.aet.strip():
            return Rejection(RESULT_REJECTED_PERMANENT, SOURCE_USER, REASON_CALLED_AE_NOT_RECOGNIZED)
        if self.allowed_callers and request.calling_ae_title.strip() not in self.allowed_callers:
            return Rejection(RESULT_REJECTED_PERMANENT, SOURCE_USER, REASON_CALLING_AE_NOT_RECOGNIZED)
        supported = []
        for proposal in self.contexts:
            cx = PresentationContext()
            cx.abstract_syntax = UID(proposal.abstract_syntax)
            cx.transfer_syntax = [UID(ts) for ts in proposal.transfer_syntaxes]
            # pynetdicom reads None as "default roles only"
            cx.scu_role = proposal.scu_role
            cx.scp_role = proposal.scp_role
            supported.append(cx)
        rq_roles = {
            # As in AssociationRequest._negotiate: looked up by abstract syntax only.
            cast(UID, item.sop_class_uid): (item.scu_role, item.scp_role)
            for item in request.user_information
            if isinstance(item, SCP_SCU_RoleSelectionNegotiation)
        }
        results, reply_roles = negotiate_as_acceptor(
            request.presentation_context_definition_list, supported, rq_roles
        )
        accept = A_ASSOCIATE()
        accept.application_context_name = UID(APPLICATION_CONTEXT)
        accept.calling_ae_title = request.calling_ae_title
        accept.called_ae_title = request.called_ae_title
        accept.result = 0
        accept.result_source = 1
        accept.presentation_context_definition_results_list = results
        accept.user_information = _common_user_information(self.max_pdu) + list(reply_roles)
        return Acceptance(accept, _accepted(results), pdu.encode_associate(accept))


def reject_primitive(request: A_ASSOCIATE, rejection: Rejection) -> A_ASSOCIATE:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = UID(APPLICATION_CONTEXT)
    primitive.calling_ae_title = request.calling_ae_title or "UNKNOWN"
    primitive.called_ae_title = request.called_ae_title or "UNKNOWN"
    primitive.result = rejection.result
    primitive.result_source = rejection.source
    primitive.diagnostic = rejection.reason
    return primitive
