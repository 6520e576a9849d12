"""Benchmarks of the container: wall time per stack as the platform runs it (python -m bench.container)."""
