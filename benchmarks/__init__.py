"""Benchmarks and the helpers they share with the tests: tools beside the package, never imported by it."""
