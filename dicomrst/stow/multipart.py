# -*- test-case-name: tests.unit.test_stow_multipart -*-
"""An incremental ``multipart/related`` parser (RFC 2046 §5.1.1, RFC 2387), fed bytes.

It holds at most one delimiter's worth of body bytes (plus one part's header block) no
matter how large the parts are: part data is handed on as it arrives, so the caller
decides what stays in memory.  No Twisted here; the web layer feeds it the request body
chunk by chunk and the tests feed it byte by byte.
"""

from __future__ import annotations

import re
from typing import Protocol

import attrs

#: Largest header block of one part; a part's headers are a few short lines.
MAX_HEADER_BYTES = 16 * 1024
#: RFC 2046 §5.1.1: bchars, 1 to 70 of them, not ending in a space.
_BOUNDARY = re.compile(rb"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$")
_LWSP = b" \t"


class MultipartError(ValueError):
    """The body is not a well-formed multipart body for its boundary."""


class PartHandler(Protocol):
    """Receives what the parser finds, in order."""

    def part_begin(self, headers: list[tuple[str, str]]) -> None:
        """A part starts; `headers` are (lower-case name, value) pairs as sent."""

    def part_data(self, data: bytes) -> None:
        """The next bytes of the current part's content (never empty)."""

    def part_end(self) -> None:
        """The current part is complete (its closing delimiter was seen)."""


@attrs.frozen
class MediaType:
    """A parsed Content-Type: lower-case ``type/subtype`` and parameters (names lower-case)."""

    essence: str
    params: dict[str, str]


_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAM = re.compile(
    rf'\s*;\s*(?P<name>{_TOKEN})\s*=\s*(?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<token>[^;\s"]*))\s*',
)
_ESSENCE = re.compile(rf"\s*(?P<type>{_TOKEN})/(?P<subtype>{_TOKEN})\s*")


def shown(value: str, limit: int = 80) -> str:
    """`value` quoted for an error message, cut short if long."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} characters)"


def parse_media_type(value: str) -> MediaType:
    """Parse a Content-Type header value; `MultipartError` if it does not parse.

    Parameter values may be tokens or quoted strings (RFC 9110 §5.6.6); a boundary
    commonly needs quoting since ``=``, ``/`` and ``?`` are not token characters, yet many
    clients send it bare, which is accepted too.
    """
    match = _ESSENCE.match(value)
    if match is None:
        raise MultipartError(f"cannot parse media type {shown(value)}")
    essence = f"{match['type']}/{match['subtype']}".lower()
    params: dict[str, str] = {}
    pos = match.end()
    while pos < len(value):
        param = _PARAM.match(value, pos)
        if param is None or param.end() == pos:
            if value[pos:].strip(" \t;") == "":
                break
            raise MultipartError(f"cannot parse the parameters of media type {shown(value)}")
        if param["quoted"] is not None:
            param_value = re.sub(r"\\(.)", r"\1", param["quoted"])
        else:
            param_value = param["token"]
        params.setdefault(param["name"].lower(), param_value)
        pos = param.end()
    return MediaType(essence, params)


def check_boundary(boundary: str) -> bytes:
    """The boundary as bytes; `MultipartError` unless RFC 2046 allows it."""
    try:
        raw = boundary.encode("ascii")
    except UnicodeEncodeError:
        raise MultipartError("the multipart boundary is not ASCII") from None
    if not _BOUNDARY.match(raw):
        raise MultipartError(
            f"invalid multipart boundary {shown(boundary)}: 1 to 70 characters of RFC 2046's set, "
            "not ending in a space"
        )
    return raw


# States
_PREAMBLE = "preamble"  # looking for the first delimiter
_AFTER_DELIMITER = "after-delimiter"  # a delimiter was seen: "--", padding or CRLF follow
_HEADERS = "headers"
_BODY = "body"
_EPILOGUE = "epilogue"  # after the close delimiter: ignored


class MultipartParser:
    """Feed it the body with `feed`, then call `finish`.

    Every problem raises `MultipartError` from the call that found it; after that the
    parser is dead (further calls raise again).  `parts` counts completed parts.
    """

    def __init__(self, boundary: bytes, handler: PartHandler) -> None:
        self._handler = handler
        # The body is parsed as if it began with CRLF, so a first boundary at the very
        # start and one after a preamble line are the same case.
        self._delimiter = b"\r\n--" + boundary
        self._buf = bytearray(b"\r\n")
        self._state = _PREAMBLE
        self._error: MultipartError | None = None
        self.parts = 0

    @property
    def complete(self) -> bool:
        """True once the close delimiter has been seen."""
        return self._state == _EPILOGUE

    def feed(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        if self._state == _EPILOGUE:
            return  # RFC 2046: the epilogue is to be ignored
        self._buf += data
        try:
            self._run()
        except MultipartError as e:
            self._error = e
            self._buf = bytearray()
            raise

    def finish(self) -> None:
        """The body has ended; raise `MultipartError` unless it ended well."""
        if self._error is not None:
            raise self._error
        if self._state == _EPILOGUE:
            return
        if self._state == _PREAMBLE:
            error = MultipartError("the body does not contain the multipart boundary")
        elif self._state in (_HEADERS, _BODY) or self.parts:
            error = MultipartError("the body ended before the closing boundary (truncated)")
        else:
            error = MultipartError("the body ended right after the first boundary")
        self._error = error
        raise error

    def _run(self) -> None:
        while True:
            state = self._state
            if state == _PREAMBLE:
                if not self._find_delimiter(emit=False):
                    return
            elif state == _AFTER_DELIMITER:
                if not self._after_delimiter():
                    return
            elif state == _HEADERS:
                if not self._headers():
                    return
            elif state == _BODY:
                if not self._find_delimiter(emit=True):
                    return
            else:
                self._buf = bytearray()
                return

    def _find_delimiter(self, emit: bool) -> bool:
        buf = self._buf
        index = buf.find(self._delimiter)
        if index < 0:
            # Keep what could be the start of a delimiter split across chunks.
            keep = len(self._delimiter) - 1
            if len(buf) > keep:
                cut = len(buf) - keep
                if emit:
                    with memoryview(buf) as view:
                        chunk = bytes(view[:cut])
                    self._handler.part_data(chunk)
                del buf[:cut]
            return False
        if emit:
            if index:
                with memoryview(buf) as view:
                    chunk = bytes(view[:index])
                self._handler.part_data(chunk)
            self.parts += 1
            self._handler.part_end()
        del buf[: index + len(self._delimiter)]
        self._state = _AFTER_DELIMITER
        return True

    def _after_delimiter(self) -> bool:
        buf = self._buf
        if len(buf) < 2:
            return False
        if buf[:2] == b"--":
            if self.parts == 0:
                raise MultipartError("the multipart body has no parts")
            self._state = _EPILOGUE
            self._buf = bytearray()
            return False
        # transport-padding (LWSP) then CRLF.
        i = 0
        while i < len(buf) and buf[i] in _LWSP:
            i += 1
        if i + 2 > len(buf):
            if i > 1024:
                raise MultipartError("too much padding after a multipart boundary")
            return False
        if buf[i : i + 2] != b"\r\n":
            raise MultipartError(
                "a multipart boundary is followed by other characters (wrong boundary?)"
            )
        del buf[: i + 2]
        self._state = _HEADERS
        return True

    def _headers(self) -> bool:
        buf = self._buf
        if buf[:2] == b"\r\n":
            block = b""
            del buf[:2]
        else:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEADER_BYTES:
                    raise MultipartError("the headers of a part are too long (or the part is malformed)")
                return False
            block = bytes(buf[:end])
            del buf[: end + 4]
        self._handler.part_begin(_parse_headers(block))
        # The content starts here; it ends before the CRLF of the next delimiter, so an
        # empty part is one whose delimiter follows at once.
        self._state = _BODY
        return True


def _parse_headers(block: bytes) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    if not block:
        return headers
    for raw in block.split(b"\r\n"):
        line = raw.decode("latin-1")
        if line[:1] in (" ", "\t"):
            if not headers:
                raise MultipartError("a part's header block starts with a continuation line")
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}")
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or not re.fullmatch(_TOKEN, name):
            raise MultipartError(f"malformed part header line {line[:80]!r}")
        headers.append((name.lower(), value.strip(" \t")))
    return headers
