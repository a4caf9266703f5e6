# -*- test-case-name: tests.unit.test_render -*-
"""The query parameters and media types of WADO-RS rendered and thumbnail resources.

PS3.18 §8.3.5 (Table 8.3.5-1 rendered, 8.3.5-2 thumbnail), as implemented:

* ``window=center,width,function``: two decimal numbers and one of the keywords
  ``linear``, ``linear-exact``, ``sigmoid`` (query values are case-sensitive, §8.3.1; they
  name the VOI LUT Functions LINEAR, LINEAR_EXACT, SIGMOID).  All three are required and
  the width must be one the function allows (≥ 1 for linear, > 0 for the others, PS3.3
  C.11.2.1.2): else 400.  Thumbnails do not take it (not in Table 8.3.5-2): ignored there,
  as any unsupported parameter (§8.3).
* ``viewport=vw,vh[,sx,sy,sw,sh]``: vw, vh positive integers; sx, sy, sw, sh decimal
  numbers, each may be elided (``512,512,,,256,256``; the ABNF's optional group has all
  four commas), and trailing ones omitted with their commas (``512,512,10,10``, as the
  text allows); their
  absolute values are the region's corner and size, a negative sw (sh) flips the image
  horizontally (vertically).  Thumbnails take only ``vw,vh`` (400 otherwise).  Anything
  ill-formed (or a region of zero size): 400.
* ``quality=1..100`` (400 otherwise); used for JPEG only, the one lossy type we make.
  Thumbnails do not take it: ignored.
* ``annotation``: a list of keywords; empty or a non-keyword value is a 400.  We burn in
  nothing (no patient data in images we make), so every keyword is "unsupported": ignored,
  and listed in `RenderOptions.unsupported_annotations` for the Warning header §8.3.5.1.1
  requires (``Warning: 299 <service>: The following annotation values are not
  supported: <values>``).
* ``iccprofile``, ``charset``: not supported, ignored (§8.3).

Media types (`select_rendered_media`): ``image/jpeg`` (the default for ``*/*`` and
``image/*``), ``image/png``, ``image/gif``; ``accept=`` first, then the header (§8.7.8.1);
DICOM and rendered types mixed in one source: 400 (§8.7.5); nothing we make: 406.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import attrs

from dicomrst.common.accept import MediaRange, sources
from dicomrst.errors import BadRequest, NotAcceptable

JPEG = "image/jpeg"
PNG = "image/png"
GIF = "image/gif"
#: What we render to, the default first.
RENDERED_MEDIA_TYPES = (JPEG, PNG, GIF)
DEFAULT_QUALITY = 90

#: window's function keyword → the VOI LUT Function (0028,1056) it names.
WINDOW_FUNCTIONS = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "sigmoid": "SIGMOID"}

_DECIMAL = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_INTEGER = re.compile(r"\d+")
_KEYWORD = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


@attrs.frozen
class Window:
    """A VOI window (PS3.3 C.11.2.1.2): center, width and the VOI LUT Function
    (``LINEAR``, ``LINEAR_EXACT`` or ``SIGMOID``)."""

    center: float
    width: float
    function: str = "LINEAR"


@attrs.frozen
class Viewport:
    """``viewport=vw,vh,sx,sy,sw,sh`` (§8.3.5.1.3).  sx, sy, sw, sh as sent (None:
    elided); `region` resolves them against an image."""

    width: int
    height: int
    sx: float | None = None
    sy: float | None = None
    sw: float | None = None
    sh: float | None = None

    def region(self, columns: int, rows: int) -> tuple[int, int, int, int, bool, bool]:
        """(left, top, right, bottom, flip horizontally, flip vertically): the pixels of a
        `columns` × `rows` image the viewport crops, clipped to the image.

        The absolute values of sx, sy are the top-left corner (default 0, 0), those of
        sw, sh the size (default: to the right and bottom edges); a negative sw or sh
        flips the cropped region.  `BadRequest` when nothing of the image is left.
        """
        left = round(abs(self.sx)) if self.sx is not None else 0
        top = round(abs(self.sy)) if self.sy is not None else 0
        right = left + round(abs(self.sw)) if self.sw is not None else columns
        bottom = top + round(abs(self.sh)) if self.sh is not None else rows
        right, bottom = min(right, columns), min(bottom, rows)
        if right <= left or bottom <= top:
            raise BadRequest(
                f"the viewport's region ({left},{top})-({right},{bottom}) holds no pixel of the "
                f"{columns}x{rows} image"
            )
        flip_h = self.sw is not None and self.sw < 0
        flip_v = self.sh is not None and self.sh < 0
        return left, top, right, bottom, flip_h, flip_v


@attrs.frozen
class RenderOptions:
    """What a rendered or thumbnail request asks for, parsed and checked."""

    media_type: str = JPEG
    quality: int = DEFAULT_QUALITY
    window: Window | None = None
    viewport: Viewport | None = None
    unsupported_annotations: tuple[str, ...] = ()

    def warning(self, service: str) -> str | None:
        """The Warning header value §8.3.5.1.1 requires when annotations were asked for
        (`service`: the service's base URI), else None."""
        if not self.unsupported_annotations:
            return None
        values = ",".join(self.unsupported_annotations)
        return f"299 {service}: The following annotation values are not supported: {values}"


def _decimal(name: str, text: str) -> float:
    text = text.strip()
    if not _DECIMAL.fullmatch(text):
        raise BadRequest(f"{name}: {text!r} is not a decimal number")
    return float(text)


def parse_window(value: str) -> Window:
    """``center,width,function`` → `Window`; `BadRequest` when ill-formed."""
    parts = value.split(",")
    if len(parts) != 3:
        raise BadRequest(f"window must be center,width,function (PS3.18 8.3.5.1.4), not {value!r}")
    center = _decimal("window center", parts[0])
    width = _decimal("window width", parts[1])
    function = WINDOW_FUNCTIONS.get(parts[2].strip())
    if function is None:
        raise BadRequest(f"window function must be linear, linear-exact or sigmoid, not {parts[2]!r}")
    if function == "LINEAR" and width < 1:
        raise BadRequest("a linear window needs a width of at least 1 (PS3.3 C.11.2.1.2.1)")
    if width <= 0:
        raise BadRequest(f"a {parts[2].strip()} window needs a width greater than 0")
    return Window(center, width, function)


def parse_viewport(value: str, *, thumbnail: bool = False) -> Viewport:
    """``vw,vh[,sx,sy,sw,sh]`` → `Viewport`; `BadRequest` when ill-formed."""
    parts = value.split(",")
    if len(parts) not in (2, 6) and not (2 < len(parts) < 6 and not thumbnail):
        raise BadRequest(f"viewport must be vw,vh[,sx,sy,sw,sh] (PS3.18 8.3.5.1.3), not {value!r}")
    if thumbnail and len(parts) != 2:
        raise BadRequest("a thumbnail's viewport takes only vw,vh (PS3.18 8.3.5.1.3)")
    size = []
    for name, text in zip(("vw", "vh"), parts[:2], strict=True):
        text = text.strip()
        if not _INTEGER.fullmatch(text) or int(text) < 1:
            raise BadRequest(f"viewport {name} must be a positive integer, not {text!r}")
        if int(text) > 16384:
            raise BadRequest(f"viewport {name} of {text} pixels is larger than this server renders (16384)")
        size.append(int(text))
    region: list[float | None] = []
    for name, text in zip(("sx", "sy", "sw", "sh"), parts[2:], strict=False):
        region.append(None if not text.strip() else _decimal(f"viewport {name}", text))
    if 2 < len(parts) < 6 and not parts[-1].strip():
        raise BadRequest(f"viewport: trailing values are omitted with their commas, not elided ({value!r})")
    region += [None] * (4 - len(region))
    for name, number in zip(("sw", "sh"), region[2:], strict=True):
        if number is not None and round(abs(number)) == 0:
            raise BadRequest(f"viewport {name} must not be 0")
    return Viewport(size[0], size[1], *region)


def parse_quality(value: str) -> int:
    text = value.strip()
    if not _INTEGER.fullmatch(text) or not 1 <= int(text) <= 100:
        raise BadRequest(f"quality must be an integer from 1 to 100 (PS3.18 8.3.5.1.2), not {value!r}")
    return int(text)


def parse_annotation(value: str) -> tuple[str, ...]:
    """The keywords of ``annotation=`` (every one unsupported here); `BadRequest` for an
    empty list or a value that is not a keyword."""
    values = [v.strip() for v in value.split(",")]
    if not values or any(not _KEYWORD.fullmatch(v) for v in values):
        raise BadRequest(f"annotation must be a list of keywords (PS3.18 8.3.5.1.1), not {value!r}")
    return tuple(dict.fromkeys(values))


def parse_rendered_query(
    params: Mapping[str, str | None], media_type: str = JPEG, *, thumbnail: bool = False
) -> RenderOptions:
    """The options of a rendered (or, with `thumbnail`, thumbnail) request.

    `params`: query parameter name → its values joined with commas (None or absent: not
    given), as `dicomrst.web.requests.query_param` returns them.  `media_type`: what
    `select_rendered_media` chose.  Raises `BadRequest` (400) for a supported parameter
    with an invalid value.
    """
    window = viewport = None
    quality = DEFAULT_QUALITY
    annotations: tuple[str, ...] = ()
    value = params.get("viewport")
    if value is not None:
        viewport = parse_viewport(value, thumbnail=thumbnail)
    if not thumbnail:
        value = params.get("window")
        if value is not None:
            window = parse_window(value)
        value = params.get("quality")
        if value is not None:
            quality = parse_quality(value)
        value = params.get("annotation")
        if value is not None:
            annotations = parse_annotation(value)
    return RenderOptions(media_type, quality, window, viewport, annotations)


# -- media types ------------------------------------------------------------------------

_DICOM_TYPES = frozenset(
    ("application/dicom", "application/dicom+json", "application/dicom+xml", "application/octet-stream")
)


def _is_dicom(rng: MediaRange) -> bool:
    if rng.media in _DICOM_TYPES:
        return True
    return rng.media == "multipart/related" and rng.params.get("type", "application/dicom") in _DICOM_TYPES


def _is_rendered(rng: MediaRange) -> bool:
    main = rng.media.partition("/")[0]
    return main in ("image", "video", "text") or rng.media == "application/pdf"


def _q(ranges: list[MediaRange], media: str) -> float:
    """The q of `media` under its most specific matching range (0.0: not acceptable)."""
    best: tuple[int, float] = (-1, 0.0)
    main = media.partition("/")[0]
    for rng in ranges:
        if rng.media == media:
            spec = 2
        elif rng.media == f"{main}/*":
            spec = 1
        elif rng.media == "*/*":
            spec = 0
        else:
            continue
        if spec > best[0] or (spec == best[0] and rng.q > best[1]):
            best = (spec, rng.q)
    return best[1]


def select_rendered_media(
    accept_header: str | None,
    accept_param: str | None = None,
    *,
    allowed: tuple[str, ...] = RENDERED_MEDIA_TYPES,
) -> str:
    """The media type of a rendered or thumbnail response.

    `allowed`: what this resource can be rendered to (default JPEG, PNG, GIF), the
    default first; ``*/*`` and ``image/*`` match every one, the default wins ties.  No
    Accept (or an empty one) is treated as ``*/*`` (see `dicomrst.wado.negotiation`).
    `BadRequest` for DICOM and rendered types mixed in one source, `NotAcceptable` when
    none of `allowed` is acceptable.
    """
    for ranges in sources(accept_header, accept_param):
        acceptable = [r for r in ranges if r.q > 0]
        if any(_is_dicom(r) for r in acceptable) and any(_is_rendered(r) for r in acceptable):
            raise BadRequest("the Accept mixes DICOM and rendered media types (PS3.18 8.7.5)")
        best, best_q = None, 0.0
        for media in allowed:
            q = _q(ranges, media)
            if q > best_q:
                best, best_q = media, q
        if best is not None:
            return best
    raise NotAcceptable("rendered images are available as " + ", ".join(allowed))
