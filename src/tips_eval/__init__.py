"""Jobs that evaluate frozen TIPS features (dense probes, zero-shot, retrieval, kNN)."""
