"""Benchmarks: jaxnum beside its peers, in one process, written to BENCHMARKS.md."""
