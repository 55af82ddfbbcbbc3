"""The embedding layout index tools read (clip-retrieval's): one ``.npy`` of vectors and one ``.parquet`` of rows
per chunk, side by side.

    img_emb/img_emb_{i}.npy            (N, D) CLS1 (alt-text space), float16 or float32
    img_emb_syn/img_emb_syn_{i}.npy    (N, D) CLS2 (synthetic-caption space)
    metadata/metadata_{i}.parquet      N rows: id, source (path or shard key), caption when present
    region_emb/region_emb_{i}.npy      (N·K², D) value-readout features pooled over a K×K grid, normalised
    region_metadata/region_metadata_{i}.parquet   id, source, cell, x0, y0, x1, y1 (fractions of the image)
    text_emb/text_emb_{i}.npy + text_metadata/text_metadata_{i}.parquet   prompts and their embeddings

``i`` is the chunk number (not padded; read in numeric order). Every file is written atomically; vectors are read
with ``numpy.load(allow_pickle=False)``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..formats.optional import require
from ..io.atomic import atomic_path

VECTOR_DIRS = {"cls_alt": "img_emb", "cls_syn": "img_emb_syn", "region": "region_emb", "text": "text_emb"}
ROW_DIRS = {"cls_alt": "metadata", "cls_syn": "metadata", "region": "region_metadata", "text": "text_metadata"}


def _parquet():
    feature = "the npy/parquet embedding layout"
    return require("pyarrow", feature, extra="index"), require("pyarrow.parquet", feature, extra="index")


def vector_file(folder: str | os.PathLike, kind: str, chunk: int) -> Path:
    return Path(folder) / VECTOR_DIRS[kind] / f"{VECTOR_DIRS[kind]}_{chunk}.npy"


def row_file(folder: str | os.PathLike, kind: str, chunk: int) -> Path:
    return Path(folder) / ROW_DIRS[kind] / f"{ROW_DIRS[kind]}_{chunk}.parquet"


def write_vectors(folder: str | os.PathLike, kind: str, chunk: int, vectors: np.ndarray) -> Path:
    """vectors (N, D) float16/float32 → ``<dir>/<dir>_{chunk}.npy``, atomically."""
    path = vector_file(folder, kind, chunk)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, np.ascontiguousarray(vectors), allow_pickle=False)
    return path


def write_rows(folder: str | os.PathLike, kind: str, chunk: int, rows: dict[str, list[Any]]) -> Path:
    """Columns of equal length (``id`` among them) → ``<dir>/<dir>_{chunk}.parquet``, atomically."""
    pa, pq = _parquet()
    path = row_file(folder, kind, chunk)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(pa.table(rows), tmp)
    return path


def chunks(folder: str | os.PathLike, kind: str) -> list[int]:
    """The chunk numbers of ``kind`` present in ``folder``, in numeric order."""
    pattern = re.compile(rf"{VECTOR_DIRS[kind]}_(\d+)\.npy")
    found = (pattern.fullmatch(p.name) for p in (Path(folder) / VECTOR_DIRS[kind]).glob("*.npy"))
    return sorted(int(m.group(1)) for m in found if m)


def has_layout(folder: str | os.PathLike, kind: str = "cls_alt") -> bool:
    return bool(chunks(folder, kind))


def read_embeddings(folder: str | os.PathLike, kind: str) -> tuple[np.ndarray, dict[str, list[Any]]]:
    """Every chunk of ``kind`` → ((N, D) float32 vectors, rows as columns); a chunk whose vector and row counts
    differ, or whose rows are missing, is refused by name."""
    _, pq = _parquet()
    numbers = chunks(folder, kind)
    if not numbers:
        raise FileNotFoundError(f"{Path(folder) / VECTOR_DIRS[kind]}: no {VECTOR_DIRS[kind]}_*.npy chunks")
    vectors, columns = [], {}
    for i in numbers:
        v = np.load(vector_file(folder, kind, i), mmap_mode="r", allow_pickle=False)
        rows_path = row_file(folder, kind, i)
        if not rows_path.is_file():
            raise FileNotFoundError(f"{rows_path}: missing (the rows of {vector_file(folder, kind, i).name})")
        table = pq.read_table(rows_path)
        if v.ndim != 2 or table.num_rows != v.shape[0]:
            raise ValueError(f"{vector_file(folder, kind, i)} holds {v.shape} vectors but {rows_path.name} "
                             f"{table.num_rows} rows: re-extract chunk {i}")
        vectors.append(np.asarray(v, dtype=np.float32))
        for name, values in table.to_pydict().items():
            columns.setdefault(name, []).extend(values)
    return np.concatenate(vectors), columns
