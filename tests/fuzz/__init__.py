"""Fuzz harnesses for the parsers that read network input, run with atheris (libFuzzer).

A harness is a function of one ``bytes`` input, registered with ``@harness(name)`` in one of
the `HARNESS_MODULES`.  It feeds the input to a parser and returns quietly when the parser
accepts it or rejects it with its declared error; any other exception, a hang (libFuzzer's
``-timeout``) or a memory blow-up is a finding.

- ``python -m tests.fuzz`` fuzzes every harness for ``--seconds`` in all (default 60,
  split evenly), starting from ``corpus/<name>/`` (seeds) and ``regressions/<name>/``
  (inputs that once failed).  New findings are copied to ``findings/<name>/`` and the
  command exits 1.  ``--seconds 3600 pdu`` fuzzes one harness for an hour.
- ``tests.unit.test_fuzz_corpus`` runs every seed and regression through its harness
  without atheris: a finding, once moved into ``regressions/<name>/``, is a test.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

Harness = Callable[[bytes], None]

# Each module registers its harnesses when imported; `load` imports them all.
HARNESS_MODULES = ("tests.fuzz.network_harnesses", "tests.fuzz.web_harnesses")

_registry: dict[str, Harness] = {}


def harness(name: str) -> Callable[[Harness], Harness]:
    """Register `function` as the harness called `name` (also its corpus directory)."""

    def register(function: Harness) -> Harness:
        if name in _registry:
            raise ValueError(f"two fuzz harnesses named {name!r}")
        _registry[name] = function
        return function

    return register


def load() -> dict[str, Harness]:
    """Every registered harness by name (importing the harness modules)."""
    for module in HARNESS_MODULES:
        importlib.import_module(module)
    return dict(sorted(_registry.items()))
