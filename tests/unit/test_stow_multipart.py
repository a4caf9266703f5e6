"""Tests for dicomrst.stow.multipart: the incremental multipart/related parser.

Every well-formed case is parsed whole, byte by byte and in random splits (fixed seeds),
and must give the same parts; every malformed case must raise MultipartError from the
call that found it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from twisted.trial.unittest import SynchronousTestCase

from dicomrst.stow.multipart import (
    MultipartError,
    MultipartParser,
    check_boundary,
    parse_media_type,
)
from tests.support.stow import BOUNDARY, multipart_body


def dicom_parts(*contents: bytes) -> list[tuple[list[tuple[str, str]], bytes]]:
    return [([("Content-Type", "application/dicom")], c) for c in contents]


class Recorder:
    """A PartHandler that records what it is told."""

    def __init__(self) -> None:
        self.parts: list[tuple[list[tuple[str, str]], bytes]] = []
        self.data_calls = 0
        self._current: bytearray | None = None
        self._headers: list[tuple[str, str]] = []
        self.events: list[str] = []

    def part_begin(self, headers: list[tuple[str, str]]) -> None:
        assert self._current is None, "part_begin inside a part"
        self._current = bytearray()
        self._headers = headers
        self.events.append("begin")

    def part_data(self, data: bytes) -> None:
        assert self._current is not None, "part_data outside a part"
        assert data, "empty part_data"
        self._current += data
        self.data_calls += 1

    def part_end(self) -> None:
        assert self._current is not None, "part_end outside a part"
        self.parts.append((self._headers, bytes(self._current)))
        self._current = None
        self.events.append("end")


def splits(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(data):
        n = rng.choice((1, 2, 3, 5, 7, 13, 64, 500, 4096))
        out.append(data[i : i + n])
        i += n
    return out


def feed_all(chunks: Iterable[bytes], boundary: bytes = BOUNDARY) -> tuple[MultipartParser, Recorder]:
    recorder = Recorder()
    parser = MultipartParser(boundary, recorder)
    for chunk in chunks:
        parser.feed(chunk)
    parser.finish()
    return parser, recorder


class WellFormedTests(SynchronousTestCase):
    def assertParses(
        self, body: bytes, expected: list[tuple[list[tuple[str, str]], bytes]], boundary: bytes = BOUNDARY
    ) -> None:
        """Whole, byte by byte, and in five random splittings: always the same parts."""
        feeds = [[body], [body[i : i + 1] for i in range(len(body))]]
        feeds += [splits(body, seed) for seed in range(5)]
        for chunks in feeds:
            parser, recorder = feed_all(chunks, boundary)
            self.assertEqual(recorder.parts, expected)
            self.assertEqual(parser.parts, len(expected))
            self.assertTrue(parser.complete)

    def test_two_parts(self) -> None:
        parts = dicom_parts(b"first", b"second part")
        self.assertParses(
            multipart_body(parts),
            [([("content-type", "application/dicom")], b"first"),
             ([("content-type", "application/dicom")], b"second part")],
        )

    def test_preamble_epilogue_and_transport_padding_are_ignored(self) -> None:
        body = multipart_body(
            dicom_parts(b"one", b"two"),
            preamble=b"This is a preamble.\r\nIt has lines; --dicomrst-test is not the boundary",
            epilogue=b"an epilogue\r\n--" + BOUNDARY + b"-- even this is ignored",
            padding=b" \t ",
        )
        self.assertParses(body, [([("content-type", "application/dicom")], b"one"),
                                 ([("content-type", "application/dicom")], b"two")])

    def test_parts_with_more_headers_or_none(self) -> None:
        parts = [
            ([("Content-Type", "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"),
              ("Content-Length", "3"), ("Content-Location", "/x")], b"abc"),
            ([], b"no headers at all"),
        ]
        self.assertParses(
            multipart_body(parts),
            [
                ([("content-type", "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"),
                  ("content-length", "3"), ("content-location", "/x")], b"abc"),
                ([], b"no headers at all"),
            ],
        )

    def test_folded_header_is_joined(self) -> None:
        body = (b"--" + BOUNDARY + b"\r\nContent-Type: application/dicom;\r\n\ttransfer-syntax=1.2\r\n\r\n"
                + b"X\r\n--" + BOUNDARY + b"--")
        self.assertParses(body, [([("content-type", "application/dicom; transfer-syntax=1.2")], b"X")])

    def test_content_that_looks_like_a_boundary(self) -> None:
        tricky = (
            b"\r\n--dicomrst-test.boundary"  # a prefix of the delimiter
            + b"--" + BOUNDARY  # the boundary without CRLF before it
            + b"\r\n\r\n--\r\n"
            + b"\r\n-" + BOUNDARY
        )
        self.assertParses(multipart_body(dicom_parts(tricky, b"")), [
            ([("content-type", "application/dicom")], tricky),
            ([("content-type", "application/dicom")], b""),
        ])

    def test_binary_content_with_every_byte(self) -> None:
        content = bytes(range(256)) * 40
        expected = [([("content-type", "application/dicom")], content)]
        self.assertParses(multipart_body(dicom_parts(content)), expected)

    def test_close_delimiter_without_trailing_crlf_or_with_one(self) -> None:
        body = multipart_body(dicom_parts(b"a"))
        for ending in (b"", b"\r\n"):
            _, recorder = feed_all([body + ending])
            self.assertEqual([c for _, c in recorder.parts], [b"a"])

    def test_large_part_is_handed_on_as_it_arrives(self) -> None:
        content = b"\x00\x01" * (2 * 1024 * 1024)
        body = multipart_body(dicom_parts(content))
        recorder = Recorder()
        parser = MultipartParser(BOUNDARY, recorder)
        step = 64 * 1024
        for i in range(0, len(body) - step, step):
            parser.feed(body[i : i + step])
        # Everything but the last bytes already reached the handler, before the part ended.
        self.assertEqual(recorder.events, ["begin"])
        self.assertGreater(recorder._current is not None and len(recorder._current), len(content) - 2 * step)
        parser.feed(body[i + step :])
        parser.finish()
        self.assertEqual(recorder.parts[0][1], content)

    def test_data_after_completion_is_ignored(self) -> None:
        recorder = Recorder()
        parser = MultipartParser(BOUNDARY, recorder)
        parser.feed(multipart_body(dicom_parts(b"a")))
        self.assertTrue(parser.complete)
        parser.feed(b"anything at all")
        parser.finish()
        self.assertEqual(len(recorder.parts), 1)


class MalformedTests(SynchronousTestCase):
    def assertMalformed(self, body: bytes, message: str, boundary: bytes = BOUNDARY) -> Recorder:
        """Whole and byte by byte: MultipartError mentioning `message`; then the parser stays failed."""
        for chunks in ([body], [body[i : i + 1] for i in range(len(body))], splits(body, 7)):
            recorder = Recorder()
            parser = MultipartParser(boundary, recorder)
            with self.assertRaises(MultipartError) as raised:
                for chunk in chunks:
                    parser.feed(chunk)
                parser.finish()
            self.assertIn(message, str(raised.exception))
            self.assertRaises(MultipartError, parser.finish)
            self.assertRaises(MultipartError, parser.feed, b"more")
            self.assertFalse(parser.complete)
        return recorder

    def test_empty_body(self) -> None:
        self.assertMalformed(b"", "does not contain the multipart boundary")

    def test_wrong_boundary(self) -> None:
        body = multipart_body(dicom_parts(b"a"), boundary=b"another-boundary")
        self.assertMalformed(body, "does not contain the multipart boundary")

    def test_boundary_that_is_a_prefix_of_the_real_one(self) -> None:
        # The URL said "dicomrst-test", the body uses "dicomrst-test.boundary=1".
        self.assertMalformed(multipart_body(dicom_parts(b"a")), "followed by other characters",
                             boundary=b"dicomrst-test")

    def test_truncated_final_part(self) -> None:
        body = multipart_body(dicom_parts(b"complete", b"cut short here"))
        recorder = self.assertMalformed(body[: body.index(b"short") + 3], "truncated")
        self.assertEqual([c for _, c in recorder.parts], [b"complete"])

    def test_truncated_inside_the_part_headers(self) -> None:
        body = multipart_body(dicom_parts(b"a"))
        self.assertMalformed(body[: body.index(b"Content-Type") + 5], "truncated")

    def test_truncated_inside_the_close_delimiter(self) -> None:
        body = multipart_body(dicom_parts(b"a"))
        self.assertMalformed(body[:-1], "truncated")

    def test_no_parts(self) -> None:
        self.assertMalformed(b"--" + BOUNDARY + b"--\r\n", "no parts")

    def test_ends_after_the_first_boundary(self) -> None:
        self.assertMalformed(b"--" + BOUNDARY + b"\r\n", "ended")

    def test_malformed_header_line(self) -> None:
        body = b"--" + BOUNDARY + b"\r\nContent-Type application/dicom\r\n\r\nX\r\n--" + BOUNDARY + b"--"
        self.assertMalformed(body, "malformed part header line")

    def test_headers_without_end(self) -> None:
        body = b"--" + BOUNDARY + b"\r\nX-Filler: " + b"a" * 20000
        self.assertMalformed(body, "too long")


class MediaTypeTests(SynchronousTestCase):
    def test_boundary_quoted_or_not(self) -> None:
        for value in (
            'multipart/related; type="application/dicom"; boundary="a:b=c"',
            "multipart/related;type=\"application/dicom\";boundary=a:b=c",
            'Multipart/Related; Type="application/dicom" ; BOUNDARY=a:b=c ;',
        ):
            media = parse_media_type(value)
            self.assertEqual(media.essence, "multipart/related")
            self.assertEqual(media.params, {"type": "application/dicom", "boundary": "a:b=c"})

    def test_quoted_pair(self) -> None:
        self.assertEqual(parse_media_type(r'a/b; x="q\"uote"').params, {"x": 'q"uote'})

    def test_unparsable(self) -> None:
        for value in ("", "multipart", "multipart/related; boundary", 'a/b; x="unterminated'):
            self.assertRaises(MultipartError, parse_media_type, value)

    def test_boundary_rules(self) -> None:
        self.assertEqual(check_boundary("a" * 70), b"a" * 70)
        self.assertEqual(check_boundary("with space'()+_,-./:=?x"), b"with space'()+_,-./:=?x")
        for bad in ("", "a" * 71, "trailing ", "semi;colon", "qu\"ote", "é"):
            self.assertRaises(MultipartError, check_boundary, bad)
