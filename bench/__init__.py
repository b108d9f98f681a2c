"""Benchmarks (pytest-benchmark suites) and the one-command GPU check."""
