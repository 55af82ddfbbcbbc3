"""Checkpoint and deployment formats that tips-export writes (one module per format)."""
