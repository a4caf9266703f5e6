"""``python -m bench [SUITE ...]`` (qido, wado, stow, s3, wado-slow): start the peers, measure
dicomrst and the anchors in the same run."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from bench import qido, s3, stow, wado


def _wado_slow(runs: int) -> None:
    # One run: a ~1 GB study (2000 slices) to a client reading at 10 MB/s, for peak RSS.
    wado.run(runs=1, slices=2000, only_slow=True)


SUITES: dict[str, Callable[[int], None]] = {
    "qido": lambda runs: qido.run(runs=runs),
    "wado": lambda runs: wado.run(runs=runs),
    "wado-slow": _wado_slow,
    # The 105 MB study against storescu and Orthanc's STOW-RS, then a ~1 GB upload for peak RSS.
    "stow": lambda runs: stow.run(runs=runs),
    "s3": lambda runs: s3.run(runs=runs),
}
DEFAULT = ("qido", "wado", "stow", "s3")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "suites", nargs="*", metavar="SUITE", help=f"one of {', '.join(SUITES)}; default {' '.join(DEFAULT)}"
    )
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (median, min, max reported)")
    args = parser.parse_args()
    for name in args.suites or DEFAULT:
        if name not in SUITES:
            parser.error(f"unknown suite {name!r}; choose from {', '.join(SUITES)}")
        SUITES[name](args.runs)


if __name__ == "__main__":
    main()
