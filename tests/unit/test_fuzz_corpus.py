"""Every seed and every kept finding of the fuzz harnesses (tests/fuzz), replayed without
atheris: a harness must return quietly on each, and each must stay quick."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.fuzz import Harness, load

FUZZ = Path(__file__).parent.parent / "fuzz"


def inputs(name: str) -> list[Path]:
    return sorted(
        p for kind in ("corpus", "regressions") for p in (FUZZ / kind / name).glob("*") if p.is_file()
    )


class CorpusTests(SynchronousTestCase):
    def test_every_harness_has_seeds(self) -> None:
        for name in load():
            self.assertTrue(inputs(name), f"tests/fuzz/corpus/{name}/ holds no seed")

    def test_no_corpus_without_a_harness(self) -> None:
        names = set(load())
        for kind in ("corpus", "regressions"):
            if not (FUZZ / kind).is_dir():
                continue
            for directory in (FUZZ / kind).iterdir():
                if directory.is_dir():
                    self.assertIn(directory.name, names, f"tests/fuzz/{kind}/{directory.name} has no harness")


def _replay(name: str, harness: Harness) -> object:
    def test(self: SynchronousTestCase) -> None:
        for path in inputs(name):
            try:
                harness(path.read_bytes())
            except Exception as e:
                self.fail(f"{path.relative_to(FUZZ)}: {e!r}")

    test.__name__ = f"test_{name}"
    test.__doc__ = f"The seeds and regressions of the {name!r} harness pass through it."
    return test


for _name, _harness in load().items():
    setattr(CorpusTests, f"test_{_name}", _replay(_name, _harness))
