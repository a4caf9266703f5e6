# -*- test-case-name: tests.unit.test_move -*-
"""Which storage presentation contexts we propose (C-GET) and accept (our listeners).

The listeners of ``server.dimse[]`` are the destination of C-MOVE sub-operations.  They
prefer Explicit VR Little Endian (it streams to HTTP untouched), take Implicit VR Little
Endian (converted on the way out), and, only on a listener configured with
``uncompressed: false``, the compressed syntaxes too, so a PACS can send what it stored
instead of decompressing it (which some cannot: DICOM-RST's troubleshooting notes).
"""

from __future__ import annotations

from typing import Any

import attrs
from pynetdicom import StoragePresentationContexts
from pynetdicom.pdu_primitives import A_ASSOCIATE, SCP_SCU_RoleSelectionNegotiation

from dicomrst.common.uids import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    JPEG_2000,
    JPEG_2000_LOSSLESS,
    JPEG_BASELINE,
    JPEG_EXTENDED,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR_LOSSLESS,
    RLE_LOSSLESS,
)
from dicomrst.dimse.echo import VERIFICATION_CONTEXT
from dicomrst.ul.negotiation import (
    Acceptance,
    AcceptorPolicy,
    ContextProposal,
    Rejection,
)

UNCOMPRESSED_SYNTAXES: tuple[str, ...] = (EXPLICIT_VR_LE, IMPLICIT_VR_LE)
# Lossless first.  All come after the uncompressed ones: where a PACS offers a choice in
# one context we never ask it to compress (least of all lossily) what it stored plain;
# a compressed syntax is taken when the PACS offers it without a plain alternative,
# which is how PACS offer what they stored compressed.
COMPRESSED_SYNTAXES: tuple[str, ...] = (
    DEFLATED_EXPLICIT_VR_LE,
    RLE_LOSSLESS,
    JPEG_LS_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LOSSLESS,
    JPEG_2000_LOSSLESS,
    JPEG_BASELINE,
    JPEG_EXTENDED,
    JPEG_LS_NEAR_LOSSLESS,
    JPEG_2000,
)

STORAGE_SOP_CLASSES: tuple[str, ...] = tuple(str(cx.abstract_syntax) for cx in StoragePresentationContexts)

#: The root of the standard storage SOP classes (PS3.4 Annex B, PS3.6 Annex A).
_STORAGE_ROOT = "1.2.840.10008.5.1.4.1.1."
_DICOM_ROOT = "1.2.840.10008."

# C-GET brings its instances back on the same association, so every pooled association
# also carries a context with the SCP role for every storage SOP class pynetdicom knows
# (120, which with the Q/R and Verification contexts stays under the limit of 128).
# Explicit VR Little Endian comes first: what arrives in it streams to HTTP untouched
# (PS3.18 forbids Implicit VR).
STORAGE_CONTEXTS: tuple[ContextProposal, ...] = tuple(
    ContextProposal(uid, UNCOMPRESSED_SYNTAXES, scu_role=True, scp_role=True) for uid in STORAGE_SOP_CLASSES
)


def receivable_syntaxes(uncompressed: bool) -> tuple[str, ...]:
    """The transfer syntaxes a listener takes instances in, best first."""
    return UNCOMPRESSED_SYNTAXES if uncompressed else UNCOMPRESSED_SYNTAXES + COMPRESSED_SYNTAXES


def is_storage_sop_class(uid: str) -> bool:
    """A SOP class a PACS may send to a C-MOVE destination with C-STORE.

    The standard storage classes (those pynetdicom knows and any newer one under the
    storage root), and private SOP classes (outside the DICOM root), which a PACS proposes
    to a move destination only to store them.  Other standard services (Q/R, worklist,
    print, ...) are not storage and are not accepted.
    """
    return uid in _STORAGE_SET or uid.startswith(_STORAGE_ROOT) or not uid.startswith(_DICOM_ROOT)


_STORAGE_SET = frozenset(STORAGE_SOP_CLASSES)


def listener_contexts(uncompressed: bool) -> tuple[ContextProposal, ...]:
    """Verification and every storage SOP class pynetdicom knows, with our syntaxes."""
    syntaxes = receivable_syntaxes(uncompressed)
    return (VERIFICATION_CONTEXT, *(ContextProposal(uid, syntaxes) for uid in STORAGE_SOP_CLASSES))


@attrs.frozen
class StoragePolicy(AcceptorPolicy):
    """A listener's acceptor policy that also takes storage SOP classes it does not list.

    A PACS sends what it stores, including SOP classes newer than our pynetdicom or private
    ones; refusing the context would fail those sub-operations for no reason.
    """

    storage_syntaxes: tuple[str, ...] = UNCOMPRESSED_SYNTAXES
    # Decisions by proposal: a PACS opens an association with the same proposal for
    # every C-MOVE, and deciding costs milliseconds of pynetdicom objects (validated
    # UIDs for some 120 contexts) before the move's first instance can arrive.
    _decisions: dict[tuple[Any, ...], Acceptance | Rejection] = attrs.field(
        init=False, factory=dict, eq=False, repr=False, hash=False
    )

    def decide(self, request: A_ASSOCIATE, protocol_version: int = 1) -> Acceptance | Rejection:
        key = _proposal_key(request, protocol_version)
        decision = self._decisions.get(key)
        if decision is None:
            if len(self._decisions) >= DECISIONS_KEPT:
                self._decisions.clear()
            decision = self._decisions[key] = self._decide(request, protocol_version)
        if isinstance(decision, Acceptance):
            # One dict per association, whatever its user does with it.
            return Acceptance(decision.primitive, dict(decision.contexts), decision.encoded)
        return decision

    def _decide(self, request: A_ASSOCIATE, protocol_version: int) -> Acceptance | Rejection:
        # Only the SOP classes proposed go to the negotiation: each one listed costs
        # pynetdicom objects, and a listener lists some 120.
        proposed = {str(cx.abstract_syntax) for cx in request.presentation_context_definition_list}
        contexts = [p for p in self.contexts if p.abstract_syntax in proposed]
        listed = {p.abstract_syntax for p in contexts}
        syntaxes = self.storage_syntaxes
        for uid in sorted(proposed - listed):
            if is_storage_sop_class(uid):
                contexts.append(ContextProposal(uid, syntaxes))
        return AcceptorPolicy(
            self.aet,
            tuple(contexts),
            max_pdu=self.max_pdu,
            check_called_aet=self.check_called_aet,
            allowed_callers=self.allowed_callers,
        ).decide(request, protocol_version)


#: Distinct proposals whose decisions a listener keeps (it forgets all past that).
DECISIONS_KEPT = 32


def _proposal_key(request: A_ASSOCIATE, protocol_version: int) -> tuple[Any, ...]:
    """All of an A-ASSOCIATE-RQ that AcceptorPolicy.decide reads."""
    return (
        protocol_version,
        str(request.application_context_name),
        request.calling_ae_title,
        request.called_ae_title,
        tuple(
            (cx.context_id, str(cx.abstract_syntax), tuple(str(ts) for ts in cx.transfer_syntax))
            for cx in request.presentation_context_definition_list
        ),
        tuple(
            (str(item.sop_class_uid), item.scu_role, item.scp_role)
            for item in request.user_information
            if isinstance(item, SCP_SCU_RoleSelectionNegotiation)
        ),
    )


def listener_policy(
    aet: str, uncompressed: bool, max_pdu: int, allowed_callers: frozenset[str] = frozenset()
) -> StoragePolicy:
    return StoragePolicy(
        aet,
        listener_contexts(uncompressed),
        max_pdu=max_pdu,
        allowed_callers=allowed_callers,
        storage_syntaxes=receivable_syntaxes(uncompressed),
    )
