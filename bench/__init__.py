"""Benchmarks of ernie_cluster: `python -m bench [--quick]` (see bench/__main__.py), `python -m bench.report`."""
