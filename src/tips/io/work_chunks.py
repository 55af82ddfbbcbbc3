"""Work split into fixed chunks that any number of processes share and a rerun skips: the resumable-job helper of
``tips-extract`` and ``tips-caption``.

- A chunk is a unit of input fixed by the job (one input shard, or a run of consecutive files), never by the number
  of processes, so a job killed on 8 processes can be finished on 2.
- Chunk i goes to process i mod n (:func:`chunks_for_process`); the process is told by ``torchrun`` /
  ``accelerate launch`` (``RANK``, ``WORLD_SIZE``) or by explicit flags for SLURM arrays (:func:`process_place`).
- A finished chunk has a done marker, written atomically after its outputs: the chunk's settings, its input
  (name, bytes), and the size and sha256 of every output. A chunk is done only when the marker matches the settings
  and input of this run and every output still has those bytes (:func:`is_done`), so a half-written or edited
  output is redone, never trusted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from .atomic import write_json_atomic
from .hashing import sha256_file

T = TypeVar("T")


def process_place(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world size): the explicit values (SLURM arrays: ``--rank $SLURM_ARRAY_TASK_ID --world-size
    $SLURM_ARRAY_TASK_COUNT``), else ``RANK`` / ``WORLD_SIZE`` as torchrun and accelerate set them, else (0, 1)."""
    if (rank is None) != (world_size is None):
        raise ValueError("--rank and --world-size go together")
    if rank is None:
        rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1} (world size {world_size})")
    return rank, world_size


def chunks_for_process(chunks: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Chunk i goes to process i mod world_size."""
    return list(chunks[rank::world_size])


def file_record(path: str | os.PathLike, root: str | os.PathLike) -> dict[str, Any]:
    """An output as a marker records it: its path relative to ``root`` (the marker's folder), bytes, sha256."""
    path = Path(path)
    return {"name": Path(os.path.relpath(path, root)).as_posix(), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def read_marker(path: str | os.PathLike) -> dict[str, Any] | None:
    """The marker at ``path``, or None when it is absent or unreadable (a chunk to redo)."""
    try:
        marker = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def write_marker(path: str | os.PathLike, settings: dict[str, Any], inputs: dict[str, Any],
                 outputs: Sequence[str | os.PathLike], **extra: Any) -> dict[str, Any]:
    """Record a finished chunk (call after its outputs are in place); ``extra`` holds the chunk's own totals."""
    root = Path(path).parent
    marker = {"settings": settings, "input": inputs, "outputs": [file_record(p, root) for p in outputs], **extra}
    write_json_atomic(path, marker)
    return marker


def matches(marker: dict[str, Any] | None, settings: dict[str, Any], inputs: dict[str, Any]) -> bool:
    """The marker is for these settings and this input (its outputs are not read: see :func:`is_done`)."""
    return marker is not None and marker.get("settings") == settings and marker.get("input") == inputs


def is_done(path: str | os.PathLike, settings: dict[str, Any], inputs: dict[str, Any]) -> bool:
    """A marker for these settings and this input whose every output (beside the marker) has the recorded bytes."""
    marker = read_marker(path)
    if not matches(marker, settings, inputs):
        return False
    folder = Path(path).parent
    for out in marker.get("outputs") or []:
        name = str(out.get("name", ""))
        target = folder / name
        if not name or Path(name).is_absolute() or ".." in Path(name).parts or not target.is_file() or target.stat().st_size != out.get("bytes") or sha256_file(target) != out.get("sha256"):
            return False
    return True
