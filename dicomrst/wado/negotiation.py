# -*- test-case-name: tests.unit.test_wado_parts -*-
"""Accept negotiation for WADO-RS retrieves (PS3.18 §8.7.5-8.7.8).

Instance resources (study, series, instance) are answered with
``multipart/related; type="application/dicom"``, one Part-10 object per part; a single
instance may also be answered as a bare ``application/dicom`` body. What is negotiated
is the transfer syntax of the parts: `select_instance_media` turns the ``Accept`` header
and the ``accept=`` query parameter into a `TransferSyntaxChoice` (q-values per transfer
syntax UID plus the q of ``transfer-syntax=*``), and `part_transfer_syntax` decides, per
part, in which syntax an instance stored (or received from the PACS) in a given syntax
goes out.

Rules, as implemented:

* Media ranges that produce DICOM instances: ``multipart/related`` with
  ``type=application/dicom`` (quoted or not), ``multipart/related`` without ``type``
  (``application/dicom`` is its default), ``multipart/*`` and ``*/*`` (these two match the
  default media type only), and single-part ``application/dicom`` when the resource is a
  single instance (``single_instance=True``; otherwise it is ignored, §8.7.3.5 / §10.4.4).
* ``transfer-syntax=<UID>`` asks for that syntax, ``transfer-syntax=*`` for any (the
  stored syntax is passed through, except Implicit VR Little Endian and Explicit VR Big
  Endian, which never go out over HTTP and become Explicit VR Little Endian), no
  parameter means the default, Explicit VR Little Endian. Asking for Implicit VR LE or
  big endian explicitly is ignored like any unsupported value (§8.7.7).
* Each syntax gets the q of its most specific matching range: the media range first
  (typed ``multipart/related`` / ``application/dicom`` > untyped ``multipart/related`` >
  ``multipart/*`` / ``*/*``), then a UID (or the default) over ``*``. ``q=0`` excludes.
* Everything else is ignored: ``application/octet-stream`` (and OHIF's
  ``multipart/related; type=application/octet-stream``) asks for bulk data, not
  instances; ``application/dicom+json``, rendered types, junk. If nothing acceptable is
  left: `NotAcceptable` (406) naming what we can produce.
* DICOM and rendered media types among the acceptable types of one source: `BadRequest`
  (400, §8.7.5).
* ``accept=`` in the query is consulted first; when it yields nothing acceptable, the
  header (§8.7.8.1 steps 2-3).
* **No Accept header** (or an empty one) is treated as ``*/*``, i.e. the default media
  type with Explicit VR Little Endian. PS3.18 §8.7.5 says such a request gets 406, but
  many clients (curl, scripts, some viewers) send none, and QIDO here does the same.

`select_metadata_media` does the same for ``.../metadata``: ``application/dicom+json``
(default), also ``application/json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dicomrst.common.accept import MediaRange, best_json_media, sources
from dicomrst.common.transcode import can_decompress
from dicomrst.common.uids import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    NOT_FOR_WEB,
    is_uid,
)
from dicomrst.errors import BadRequest, NotAcceptable

# Syntaxes whose data set we can turn into Explicit VR LE without a pixel codec.
REENCODABLE = frozenset((IMPLICIT_VR_LE, EXPLICIT_VR_BE, DEFLATED_EXPLICIT_VR_LE))

INSTANCE_MEDIA_TYPE = 'multipart/related; type="application/dicom"'

# Media types that make an Accept "DICOM" or "rendered" for the mixing rule (§8.7.5).
_DICOM_TYPES = frozenset(
    ("application/dicom", "application/dicom+json", "application/dicom+xml", "application/octet-stream")
)
_RENDERED_MAIN = frozenset(("image", "video", "text"))
_RENDERED_OTHER = frozenset(("application/pdf",))

# Media-range specificity for the instance media types.
_TYPED, _UNTYPED, _WILDCARD = 2, 1, 0


@dataclass(frozen=True, slots=True)
class TransferSyntaxChoice:
    """What the client accepts for the parts of an instance retrieve.

    ``syntaxes`` are the transfer syntax UIDs asked for by name (or as the default,
    Explicit VR LE), highest q first (ties in the order the client gave them), each with
    its q > 0; ``excluded`` are UIDs named with ``q=0``; ``wildcard`` is the q of
    ``transfer-syntax=*`` (0.0 when not accepted). ``multipart`` is False only for a
    single instance answered as a bare ``application/dicom`` body.
    """

    syntaxes: tuple[tuple[str, float], ...]
    wildcard: float = 0.0
    excluded: frozenset[str] = frozenset()
    multipart: bool = True
    _q: dict[str, float] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        self._q.update(self.syntaxes)
        self._q.update(dict.fromkeys(self.excluded, 0.0))

    @property
    def any(self) -> bool:
        """``transfer-syntax=*`` is acceptable."""
        return self.wildcard > 0.0

    def quality(self, transfer_syntax: str) -> float:
        """The q this choice gives `transfer_syntax` (0.0: not acceptable)."""
        return self._q.get(transfer_syntax, self.wildcard)

    @property
    def media_type(self) -> str:
        """The response's media type without the boundary."""
        return INSTANCE_MEDIA_TYPE if self.multipart else "application/dicom"


DEFAULT_CHOICE = TransferSyntaxChoice(((EXPLICIT_VR_LE, 1.0),))


# -- the mixing rule ------------------------------------------------------------------


def _is_rendered(media: str) -> bool:
    main = media.partition("/")[0]
    return main in _RENDERED_MAIN or media in _RENDERED_OTHER


def _is_dicom(rng: MediaRange) -> bool:
    if rng.media in _DICOM_TYPES:
        return True
    return rng.media == "multipart/related" and rng.params.get("type", "application/dicom") in _DICOM_TYPES


def _check_mixing(ranges: list[MediaRange]) -> None:
    acceptable = [r for r in ranges if r.q > 0]
    if any(_is_dicom(r) for r in acceptable) and any(_is_rendered(r.media) for r in acceptable):
        raise BadRequest("the Accept mixes DICOM and rendered media types (PS3.18 8.7.5)")


# -- instances --------------------------------------------------------------------------


def _valid_syntax(value: str) -> bool:
    return value == "*" or is_uid(value)


class _Table:
    """q per transfer syntax under the most specific matching range, for one media form."""

    def __init__(self) -> None:
        self.named: dict[str, tuple[tuple[int, int], float]] = {}  # uid → (specificity, q)
        self.order: dict[str, int] = {}
        self.wildcard: tuple[tuple[int, int], float] = ((-1, -1), 0.0)

    def add(self, syntax: str, media_specificity: int, q: float) -> None:
        if syntax == "*":
            spec = (media_specificity, 0)
            if spec > self.wildcard[0] or (spec == self.wildcard[0] and q > self.wildcard[1]):
                self.wildcard = (spec, q)
            return
        spec = (media_specificity, 1)
        self.order.setdefault(syntax, len(self.order))
        old = self.named.get(syntax)
        if old is None or spec > old[0] or (spec == old[0] and q > old[1]):
            self.named[syntax] = (spec, q)

    def choice(self, multipart: bool) -> TransferSyntaxChoice:
        wildcard_spec, wildcard_q = self.wildcard
        syntaxes = []
        excluded = []
        for uid, (spec, q) in self.named.items():
            # A UID's own entry is more specific than * in the same or a less specific
            # range; a * in a more specific range than the UID's entry wins.
            if wildcard_spec > spec:
                q = wildcard_q
            if q > 0:
                syntaxes.append((uid, q))
            else:
                excluded.append(uid)
        syntaxes.sort(key=lambda item: (-item[1], self.order[item[0]]))
        return TransferSyntaxChoice(tuple(syntaxes), max(wildcard_q, 0.0), frozenset(excluded), multipart)


def _instance_tables(ranges: list[MediaRange], single_instance: bool) -> tuple[_Table, _Table]:
    multipart, single = _Table(), _Table()
    for rng in ranges:
        syntax = rng.params.get("transfer-syntax", EXPLICIT_VR_LE)
        if not _valid_syntax(syntax) or syntax in NOT_FOR_WEB:
            continue
        if rng.media == "multipart/related":
            part_type = rng.params.get("type")
            if part_type is None:
                multipart.add(syntax, _UNTYPED, rng.q)
            elif part_type == "application/dicom":
                multipart.add(syntax, _TYPED, rng.q)
        elif rng.media in ("*/*", "multipart/*"):
            # Wildcards match the default media type (and so the default syntax) only.
            multipart.add(EXPLICIT_VR_LE, _WILDCARD, rng.q)
        elif rng.media == "application/dicom" and single_instance:
            single.add(syntax, _TYPED, rng.q)
    return multipart, single


def _best(choice: TransferSyntaxChoice) -> float:
    return max([q for _, q in choice.syntaxes] + [choice.wildcard])


def _instance_not_acceptable(single_instance: bool) -> NotAcceptable:
    also = "; a single instance also as application/dicom" if single_instance else ""
    return NotAcceptable(
        "instances are available as " + INSTANCE_MEDIA_TYPE + " with transfer-syntax="
        f"{EXPLICIT_VR_LE} (the default), * (as stored) or the stored syntax{also}"
    )


def select_instance_media(
    accept_header: str | None, accept_param: str | None, *, single_instance: bool = False
) -> TransferSyntaxChoice:
    """The media type and transfer syntaxes for an instance retrieve, or an error.

    `single_instance`: the target is one instance, so a bare ``application/dicom`` body
    is possible (the result's ``multipart`` is then False when the client prefers it).
    Raises `BadRequest` for DICOM mixed with rendered types and `NotAcceptable` when
    nothing we produce is acceptable.
    """
    for ranges in sources(accept_header, accept_param):
        _check_mixing(ranges)
        multipart, single = _instance_tables(ranges, single_instance)
        as_multipart, as_single = multipart.choice(multipart=True), single.choice(multipart=False)
        best_multi, best_single = _best(as_multipart), _best(as_single)
        if best_multi <= 0 and best_single <= 0:
            continue
        return as_single if best_single > best_multi else as_multipart
    raise _instance_not_acceptable(single_instance)


# -- per part ---------------------------------------------------------------------------


def part_transfer_syntax(choice: TransferSyntaxChoice, stored_ts: str) -> str | None:
    """The transfer syntax a part stored in `stored_ts` goes out in, or None.

    Candidates are the stored syntax itself (not for Implicit VR LE or big endian) and
    Explicit VR LE (by re-encoding Implicit VR LE, big endian or deflate, or by
    decompressing where pydicom has a decoder for `stored_ts`). The higher q wins; on a
    tie the stored syntax (no transcoding). None: nothing acceptable can be made, the
    caller fails the part (or answers 406 when it is the only one).
    """
    stored_q = 0.0 if stored_ts in NOT_FOR_WEB else choice.quality(stored_ts)
    if stored_ts == EXPLICIT_VR_LE:
        return stored_ts if stored_q > 0 else None
    explicit_q = choice.quality(EXPLICIT_VR_LE)
    if explicit_q > stored_q and (stored_ts in REENCODABLE or can_decompress(stored_ts)):
        return EXPLICIT_VR_LE
    return stored_ts if stored_q > 0 else None


# -- metadata ---------------------------------------------------------------------------

def select_metadata_media(accept_header: str | None, accept_param: str | None = None) -> str:
    """The media type of a ``.../metadata`` response: ``application/dicom+json`` (the
    default; also for ``*/*``, ``application/*`` and a missing Accept) or
    ``application/json`` when only that is asked for. Else `NotAcceptable` (406);
    `BadRequest` for DICOM mixed with rendered types.
    """
    for ranges in sources(accept_header, accept_param):
        _check_mixing(ranges)
        media = best_json_media(ranges)
        if media is not None:
            return media
    raise NotAcceptable("metadata is available as application/dicom+json or application/json")
