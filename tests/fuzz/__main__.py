"""``python -m tests.fuzz [--seconds N] [NAME ...]``: fuzz the harnesses (see __init__)."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.fuzz import load

HERE = Path(__file__).parent
ARTIFACTS = ("crash-", "timeout-", "oom-", "leak-", "slow-unit-")


def fuzz(name: str, seconds: int, work: Path, per_input_timeout: int) -> tuple[bool, str]:
    """Fuzz `name` for `seconds`: (no finding, a one-line summary)."""
    corpus = work / "corpus"
    artifacts = work / "artifacts"
    corpus.mkdir()
    artifacts.mkdir()
    # The first directory collects what the fuzzer finds interesting: a scratch copy, so
    # the committed seeds stay small and hand-picked.
    seeds = [d for d in (HERE / "corpus" / name, HERE / "regressions" / name) if d.is_dir()]
    for seed_dir in seeds:
        for seed in seed_dir.iterdir():
            shutil.copy(seed, corpus / f"{seed_dir.name}-{seed.name}")
    command = [
        sys.executable,
        "-m",
        "tests.fuzz.run_one",
        name,
        f"-max_total_time={seconds}",
        f"-timeout={per_input_timeout}",
        "-rss_limit_mb=2048",
        "-max_len=65536",
        "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/",
        str(corpus),
    ]
    log = work / "log"
    with log.open("wb") as out:
        status = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=HERE.parent.parent
        ).returncode
    text = log.read_text("utf-8", "replace")
    found = [a for a in artifacts.iterdir() if a.name.startswith(ARTIFACTS)]
    runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", text)
    summary = f"{name}: {runs[-1] if runs else '?'} inputs ({seconds} s budget)"
    if status == 0 and not found:
        return True, summary + ", no finding"
    keep = HERE / "findings" / name
    keep.mkdir(parents=True, exist_ok=True)
    for artifact in found:
        shutil.copy(artifact, keep / artifact.name)
    tail = "\n".join(text.splitlines()[-40:])
    return False, (
        f"{summary}: FINDING (exit status {status}); inputs copied to {keep}\n{tail}\n"
        f"(move an input into tests/fuzz/regressions/{name}/ once fixed: "
        "tests.unit.test_fuzz_corpus then replays it)"
    )


def main(argv: list[str] | None = None) -> int:
    harnesses = load()
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"harnesses (default all: {', '.join(harnesses)})"
    )
    parser.add_argument(
        "--seconds", type=int, default=60, help="fuzzing time in all, split evenly (default 60)"
    )
    parser.add_argument(
        "--timeout", type=int, default=2, help="seconds one input may take before it is a finding (default 2)"
    )
    args = parser.parse_args(argv)
    names = args.names or list(harnesses)
    unknown = [n for n in names if n not in harnesses]
    if unknown:
        parser.error(f"no harness named {', '.join(unknown)} (known: {', '.join(harnesses)})")
    each = max(1, args.seconds // len(names))
    clean = True
    with tempfile.TemporaryDirectory(prefix="dicomrst-fuzz-") as tmp:
        for name in names:
            work = Path(tmp) / name
            work.mkdir()
            ok, summary = fuzz(name, each, work, args.timeout)
            print(summary, flush=True)
            clean = clean and ok
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
