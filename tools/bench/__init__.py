"""Benchmarks, each runnable as `python tools/bench/bench_NAME.py` from the repository root."""
