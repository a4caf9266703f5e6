# -*- test-case-name: tests.unit.test_qido_query -*-
"""The six QIDO-RS resources (PS3.18 §10.6): query level, the UIDs the path fixes, shape."""

from __future__ import annotations

from dataclasses import dataclass

from dicomrst.common.uids import is_uid
from dicomrst.errors import BadRequest
from dicomrst.qido.attributes import IMAGE, RANK, SERIES, STUDY, UNIQUE_KEY


def _path_uid(value: str | None, what: str) -> str | None:
    if value is not None and not is_uid(value):
        raise BadRequest(f"invalid {what} in the path: {value!r}")
    return value


@dataclass(frozen=True)
class Target:
    """A QIDO resource: the query level, the UIDs its path fixes, and its shape.

    Build one with the constructors below; they validate the path UIDs (400).
    """

    level: str
    resource: str  # the URI template, for messages
    study: str | None = None
    series: str | None = None
    # Upper levels whose default attributes the response adds (PS3.18 §10.6.3.3):
    # All Series adds the study's; All Instances the study's and series'; Study's
    # Instances the series'.
    adds: tuple[str, ...] = ()

    @property
    def relational(self) -> bool:
        """True when the C-FIND lacks an upper unique key (a relational query)."""
        return (RANK[self.level] >= 1 and self.study is None) or (self.level == IMAGE and self.series is None)

    @classmethod
    def studies(cls) -> Target:
        return cls(STUDY, "/studies")

    @classmethod
    def study_series(cls, study: str) -> Target:
        return cls(SERIES, "/studies/{study}/series", _path_uid(study, "Study Instance UID"))

    @classmethod
    def study_series_instances(cls, study: str, series: str) -> Target:
        return cls(
            IMAGE,
            "/studies/{study}/series/{series}/instances",
            _path_uid(study, "Study Instance UID"),
            _path_uid(series, "Series Instance UID"),
        )

    @classmethod
    def study_instances(cls, study: str) -> Target:
        return cls(
            IMAGE, "/studies/{study}/instances", _path_uid(study, "Study Instance UID"), adds=(SERIES,)
        )

    @classmethod
    def all_series(cls) -> Target:
        return cls(SERIES, "/series", adds=(STUDY,))

    @classmethod
    def all_instances(cls) -> Target:
        return cls(IMAGE, "/instances", adds=(STUDY, SERIES))

    def path_keys(self) -> dict[int, str]:
        keys = {}
        if self.study is not None:
            keys[UNIQUE_KEY[STUDY]] = self.study
        if self.series is not None:
            keys[UNIQUE_KEY[SERIES]] = self.series
        return keys
