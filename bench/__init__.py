"""Benchmarks, one per capability, each printing a ratio against its peer measured in the same run.
Run from the repository root: ``python -m bench.NAME`` (or ``python bench/NAME.py``)."""
