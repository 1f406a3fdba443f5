"""Benchmarks (`make bench`): each script measures against a baseline taken in the same run and writes
benchmarks/results/<name>.json; benchmarks/report.py turns those into docs/benchmarks.md and its figures."""
