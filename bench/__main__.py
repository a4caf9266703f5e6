"""``python -m bench [SUITE ...]`` (qido, wado, stow, s3, wado-slow, viewer, index,
index-stow, index-scan, qido-cpu, idle, soak): start the peers, measure dicomrst and the
anchors in the same run.  ``soak`` (not in the default set) runs mixed load for
``--minutes`` (default 30) and writes its figures to ``--out``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from bench import idle, index, qido, s3, soak, stow, viewer, wado


def _wado_slow(runs: int) -> None:
    # One run: a ~1 GB study (2000 slices) to a client reading at 10 MB/s, for peak RSS.
    wado.run(runs=1, slices=2000, only_slow=True)


SUITES: dict[str, Callable[[int], None]] = {
    "qido": lambda runs: qido.run(runs=runs),
    # The gateway's CPU time per query alone (about half a minute; not in the default set).
    "qido-cpu": lambda runs: qido.run_cpu(runs=runs),
    "wado": lambda runs: wado.run(runs=runs),
    "wado-slow": _wado_slow,
    # The 105 MB study against storescu and Orthanc's STOW-RS, then a ~1 GB upload for peak RSS.
    "stow": lambda runs: stow.run(runs=runs),
    "s3": lambda runs: s3.run(runs=runs),
    # OHIF-like client, warm and cold cache, rendered; about 2 minutes (not in the default set).
    "viewer": lambda runs: viewer.run(runs=runs),
    # 10,000 instances in Orthanc, LOCAL (SQLite and PostgreSQL) and S3; several minutes
    # (not in the default set).
    "index": lambda runs: index.run(runs=runs),
    # RSS of the default configuration, idle and after one query; under a minute.
    "idle": lambda runs: idle.run(runs=runs),
    # Only the index suite's STOW-RS of the CT study into LOCAL, against Orthanc's STOW-RS
    # and storescu, in about a minute (not in the default set).
    "index-stow": lambda runs: index.run_stow(runs=runs),
    # Only the index suite's S3 reconcile scan (10,000 objects, ~5 GB in moto); a few minutes.
    "index-scan": lambda runs: index.run_scan(runs=runs),
    "soak": lambda runs: None,  # run with its own options, below
}
DEFAULT = ("qido", "wado", "stow", "s3")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "suites", nargs="*", metavar="SUITE", help=f"one of {', '.join(SUITES)}; default {' '.join(DEFAULT)}"
    )
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (median, min, max reported)")
    parser.add_argument("--minutes", type=float, default=30.0, help="soak: how long to run (default 30)")
    parser.add_argument("--out", type=Path, help="soak: output directory (default ./soak-DATE-TIME)")
    parser.add_argument("--interval", type=float, help="soak: seconds between samples (default 10)")
    parser.add_argument(
        "--studies", type=int, help="index-scan: studies of ten instances in the bucket (default 1000)"
    )
    parser.add_argument("--profile", help="qido-cpu: run the gateway under cProfile, stats to this file")
    args = parser.parse_args()
    for name in args.suites or DEFAULT:
        if name not in SUITES:
            parser.error(f"unknown suite {name!r}; choose from {', '.join(SUITES)}")
        if name == "index-scan" and args.studies:
            index.run_scan(
                runs=args.runs, n_studies=args.studies, n_patients=min(index.N_PATIENTS, args.studies)
            )
        elif name == "qido-cpu" and args.profile:
            qido.run_cpu(runs=args.runs, profile=args.profile)
        elif name == "soak":
            soak.run(minutes=args.minutes, out=args.out, interval=args.interval)
        else:
            SUITES[name](args.runs)


if __name__ == "__main__":
    main()
