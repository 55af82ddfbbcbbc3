"""Checkpoint layouts, one module per layout, converted to and from our models."""
