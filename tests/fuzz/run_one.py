"""One harness under atheris: ``python -m tests.fuzz.run_one NAME [libFuzzer args...]``.

Run by ``python -m tests.fuzz`` in a process of its own (libFuzzer owns the process).
Only `dicomrst` is instrumented for coverage: the fuzzer is steered by our branches.
"""

from __future__ import annotations

import sys

import atheris


def main() -> None:
    name, libfuzzer_args = sys.argv[1], sys.argv[2:]
    with atheris.instrument_imports(include=["dicomrst"]):
        from tests.fuzz import load

        harnesses = load()
    atheris.Setup([sys.argv[0], *libfuzzer_args], harnesses[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
