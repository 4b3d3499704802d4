"""Benchmarks (print figures; not tests)."""
