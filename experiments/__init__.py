"""Study drivers: run from the repository root as ``python -m experiments.NAME`` (see README.md here)."""
