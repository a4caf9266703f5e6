"""Benchmarks: ``python -m bench`` (see bench/README.rst)."""
