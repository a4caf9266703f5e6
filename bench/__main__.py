"""``python -m bench [qido ...]``: start the peers, measure dicomrst and the anchors in one run."""

from __future__ import annotations

import argparse

from bench import qido, wado

SUITES = {"qido": qido.run, "wado": wado.run}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("suites", nargs="*", choices=[*SUITES, []][:-1] or None, default=list(SUITES))
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (median, min, max reported)")
    args = parser.parse_args()
    for name in args.suites or SUITES:
        SUITES[name](runs=args.runs)


if __name__ == "__main__":
    main()
