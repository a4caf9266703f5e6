# -*- test-case-name: tests.unit.test_wado_parts -*-
"""``multipart/related`` framing for WADO-RS responses (PS3.18 §8.6.1.2; RFC 2387, 2046).

The writer only makes the bytes around the parts; the caller writes each part's body
itself right after its header (so an instance's bytes go straight from the DICOM
connection to the response)::

    w = MultipartWriter()
    request.setHeader("Content-Type", w.content_type())
    for part in parts:
        request.write(w.part_header("application/dicom; transfer-syntax=…", url))
        request.write(part_bytes)            # any number of writes
    request.write(w.close())

which produces ``--B CRLF headers CRLF CRLF body CRLF --B CRLF … body CRLF --B-- CRLF``:
the CRLF before each delimiter belongs to the delimiter (RFC 2046 §5.1.1), so it is
emitted by the next `part_header` or by `close`, never by the body.
"""

from __future__ import annotations

import re
import secrets

# RFC 2046 bchars: DIGIT / ALPHA / "'" / "(" / ")" / "+" / "_" / "," / "-" / "." / "/" / ":" / "=" / "?" / " "
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
# RFC 2045 token characters: a boundary made only of these needs no quotes.
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
_CRLF = b"\r\n"


def _header_value(name: str, value: str) -> bytes:
    if "\r" in value or "\n" in value or "\x00" in value:
        raise ValueError(f"{name} header value contains a line break: {value!r}")
    return value.encode("ascii")  # UnicodeEncodeError is a ValueError


class MultipartWriter:
    """Delimiters and part headers of one ``multipart/related`` body.

    `boundary`: 1-70 RFC 2046 characters, not ending in a space; by default 32 random
    hex digits (which cannot occur by chance in the parts).
    """

    __slots__ = ("_closed", "_delimiter", "_started", "boundary")

    def __init__(self, boundary: str | None = None) -> None:
        if boundary is None:
            boundary = secrets.token_hex(16)
        elif not _BOUNDARY.fullmatch(boundary):
            raise ValueError(f"invalid multipart boundary {boundary!r} (RFC 2046 5.1.1)")
        self.boundary = boundary
        self._delimiter = b"--" + boundary.encode("ascii")
        self._started = False
        self._closed = False

    def content_type(self, part_type: str = "application/dicom", transfer_syntax: str | None = None) -> str:
        """The response's Content-Type, e.g.
        ``multipart/related; type="application/dicom"; boundary=…``."""
        boundary = self.boundary if _TOKEN.fullmatch(self.boundary) else f'"{self.boundary}"'
        value = f'multipart/related; type="{part_type}"; boundary={boundary}'
        if transfer_syntax:
            value += f"; transfer-syntax={transfer_syntax}"
        return value

    def part_header(
        self, content_type: str, content_location: str | None = None, content_length: int | None = None
    ) -> bytes:
        """The delimiter and headers that open the next part, up to and including the
        empty line; the part's body follows."""
        if self._closed:
            raise ValueError("the multipart body is already closed")
        lines = [
            _CRLF + self._delimiter if self._started else self._delimiter,
            b"Content-Type: " + _header_value("Content-Type", content_type),
        ]
        if content_location is not None:
            lines.append(b"Content-Location: " + _header_value("Content-Location", content_location))
        if content_length is not None:
            if content_length < 0:
                raise ValueError(f"negative Content-Length {content_length}")
            lines.append(b"Content-Length: %d" % content_length)
        self._started = True
        return _CRLF.join(lines) + _CRLF + _CRLF

    def close(self) -> bytes:
        """The close delimiter that ends the body (after the last part's bytes)."""
        if self._closed:
            raise ValueError("the multipart body is already closed")
        self._closed = True
        return (_CRLF if self._started else b"") + self._delimiter + b"--" + _CRLF


def part_content_type(media_type: str = "application/dicom", transfer_syntax: str | None = None) -> str:
    """A part's Content-Type, e.g. ``application/dicom; transfer-syntax=1.2.840.10008.1.2.1``."""
    return f"{media_type}; transfer-syntax={transfer_syntax}" if transfer_syntax else media_type
