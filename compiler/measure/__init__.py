"""Measurement: the perf_analyzer driver, thread-budget tuning, the benchmark suites and their report."""
