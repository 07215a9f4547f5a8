"""Benchmarks: each prints a ratio measured in one run (``harness bench``, ``make bench``)."""
