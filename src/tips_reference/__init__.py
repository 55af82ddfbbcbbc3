"""Independent re-implementations of the official TIPS reference encoders and checkpoint layouts, for parity tests."""
