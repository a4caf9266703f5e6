"""Tests for the wildcard matching the gateway does itself (dicomrst.qido.matching).

A C-FIND result the PACS returns is checked again against the query's optional keys, so
a wildcard value from the query is matched here against text from the PACS.  A regex
built from the pattern backtracked exponentially (``*a*a*a…*b``): one search blocked the
reactor past ``request-timeout`` (issue 11).  The matcher now takes at most
(pattern + 1) x (text + 1) steps; hypothesis checks it against a plain reference matcher.
"""

from __future__ import annotations

import json
from functools import cache

from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from dicomrst.common.matching import WildcardPattern, wildcard_steps
from dicomrst.errors import BadRequest
from dicomrst.qido.query import parse_query
from dicomrst.qido.target import Target
from dicomrst.qido.values import MAX_WILDCARD_LENGTH
from dicomrst.web.app import GatewayApp
from tests.support.fakes import FakeBackend

# The longest LO pattern (64 characters): 31 stars that a regex would try every split of.
PATHOLOGICAL = "*" + "a*" * 31 + "b"
EVERY_A = "a" * 64


def reference(pattern: str, text: str, ignore_case: bool = False) -> bool:
    """PS3.4 C.2.2.2.4 wildcard matching, by its definition: plain recursion on both ends.
    Ignoring case compares characters by their case folding (one character each: "?"
    matches "ß", whose folding is "ss")."""
    fold = str.casefold if ignore_case else str
    units = [c if c in "*?" else fold(c) for c in pattern]
    chars = [fold(c) for c in text]

    @cache
    def match(p: int, t: int) -> bool:
        if p == len(units):
            return t == len(chars)
        if units[p] == "*":
            return match(p + 1, t) or (t < len(chars) and match(p, t + 1))
        return t < len(chars) and units[p] in ("?", chars[t]) and match(p + 1, t + 1)

    return match(0, 0)


def tokens(pattern: str) -> list[str | int]:
    return [0 if c == "*" else 1 if c == "?" else c for c in pattern]


class PathologicalTests(SynchronousTestCase):
    def test_steps_are_bounded_by_pattern_times_text(self) -> None:
        for pattern, text in (
            (PATHOLOGICAL, EVERY_A),
            ("*" + "a*" * 127 + "b", "a" * 10_000),
            ("*?" * 100 + "x", "y" * 5000),
            ("a*b*c*d*e*" * 20, "abcde" * 500),
        ):
            matched, steps = wildcard_steps(tokens(pattern), list(text))
            self.assertEqual(matched, reference(pattern, text) if len(text) < 600 else matched)
            self.assertLessEqual(steps, (len(pattern) + 1) * (len(text) + 1), pattern[:20])

    def test_a_search_with_the_pattern_completes(self) -> None:
        # Through the gateway: the PACS returns the results unfiltered (as Orthanc does
        # for keys it does not index) and the gateway filters them.  Before, this search
        # did not finish.
        clock = Clock()
        pacs = FakeBackend("PACS")
        pacs.results = [self._study(i) for i in range(20)]
        stub = StubTreq(GatewayApp({"PACS": pacs}, clock).resource())
        d = stub.get("http://gateway.example/aets/PACS/studies", params={"StudyDescription": PATHOLOGICAL})
        stub.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(self.successResultOf(response.content())), [])

    @staticmethod
    def _study(i: int) -> Dataset:
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = f"1.2.3.{i}"
        ds.StudyDescription = EVERY_A
        return ds

    def test_longer_patterns_are_a_400(self) -> None:
        target = Target.studies()
        parse_query(target, {"PatientComments": ["*" * MAX_WILDCARD_LENGTH]})
        with self.assertRaises(BadRequest) as e:
            parse_query(target, {"PatientComments": ["a" * MAX_WILDCARD_LENGTH + "*"]})
        self.assertIn("PatientComments", e.exception.message)
        self.assertIn(f"longer than {MAX_WILDCARD_LENGTH}", e.exception.message)


# Case pairs whose folding is not one ASCII letter: ß/ẞ fold to "ss", K (Kelvin) to "k".
ALPHABET = "abABßẞkK\u212a"


@st.composite
def pattern_and_text(draw: st.DrawFn) -> tuple[str, str]:
    """A text, and a pattern either drawn at random or made from the text by turning
    characters into "?", runs into "*" and letters into other cases (mostly matching)."""
    text = draw(st.text(alphabet=ALPHABET + "*?", max_size=14))
    if draw(st.booleans()):
        return draw(st.text(alphabet=ALPHABET + "*?", max_size=12)), text
    pattern = []
    i = 0
    while i < len(text):
        action = draw(st.sampled_from(["keep", "keep", "any", "star", "case", "other"]))
        if action == "star":
            i += draw(st.integers(0, 3))
            pattern.append("*")
            continue
        char = text[i]
        pattern.append(
            {"keep": char, "any": "?", "case": char.swapcase(), "other": draw(st.sampled_from(ALPHABET))}[
                action
            ]
        )
        i += 1
    if draw(st.booleans()):
        pattern.insert(draw(st.integers(0, len(pattern))), "*")
    return "".join(pattern), text


class AgreementTests(SynchronousTestCase):
    @settings(max_examples=1000, deadline=None, database=None, derandomize=True)
    @given(pattern_and_text())
    def test_case_sensitive(self, pair: tuple[str, str]) -> None:
        pattern, text = pair
        self.assertEqual(WildcardPattern(pattern).matches(text), reference(pattern, text), (pattern, text))

    @settings(max_examples=1000, deadline=None, database=None, derandomize=True)
    @given(pattern_and_text())
    def test_ignoring_case(self, pair: tuple[str, str]) -> None:
        pattern, text = pair
        self.assertEqual(
            WildcardPattern(pattern, ignore_case=True).matches(text),
            reference(pattern, text, ignore_case=True),
            (pattern, text),
        )

    @settings(max_examples=300, deadline=None, database=None, derandomize=True)
    @given(st.text(alphabet="a*?", max_size=40), st.text(alphabet="ab", max_size=60))
    def test_steps_bound(self, pattern: str, text: str) -> None:
        matched, steps = wildcard_steps(tokens(pattern), list(text))
        self.assertEqual(matched, reference(pattern, text))
        self.assertLessEqual(steps, (len(pattern) + 1) * (len(text) + 1))
