"""Benchmark suite for lightning_grow (issue 9): quality, GroMo comparison, cost, right-sizing.

Run ``python -m benchmarks`` (or ``make bench``); it writes ``benchmarks/RESULTS.md`` and the
plots next to it. ``python -m benchmarks --help`` lists the quick-run and section flags.
"""
