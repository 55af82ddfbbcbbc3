"""Content digests of files: the one sha256 the package records in manifests, caches and download checks."""

from __future__ import annotations

import hashlib
import os

CHUNK = 1 << 20  # 1 MiB: large files are hashed without being read into memory at once


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()
