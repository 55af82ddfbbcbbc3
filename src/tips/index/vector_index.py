"""A faiss index of normalised embeddings with its rows (ids and metadata) and the space it was built in.

An index folder holds ``index.faiss`` (faiss's own binary format: no pickle), ``rows.parquet`` (one row per vector:
``id`` and any metadata columns, in faiss's row order) and ``index.json`` (the embedding space, the faiss factory,
the tuned ``nprobe`` with the recall figures that chose it, the vector count). The folder is written whole and
swapped in (:func:`tips.io.atomic.staged_dir`), so a killed build or ``add`` leaves the previous index intact.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..formats.optional import require
from ..io.atomic import staged_dir, write_json_atomic
from .planning import IndexPlan, plan_index
from .space import EmbeddingSpace, check_same_space

log = logging.getLogger("tips.index")
INDEX_FILE, ROWS_FILE, INFO_FILE = "index.faiss", "rows.parquet", "index.json"
FORMAT, VERSION = "tips-index", 1
TRAIN_POINTS_PER_CELL = 50  # k-means training sample: faiss wants >= 39 per cell; more costs time, not recall


def _faiss():
    return require("faiss", "tips-index", extra="index")


def _arrow():
    return require("pyarrow", "tips-index", extra="index"), require("pyarrow.parquet", "tips-index", extra="index")


def normalised(vectors: np.ndarray, name: str = "vectors") -> np.ndarray:
    """(N, D) float → (N, D) float32 C-contiguous, each row of unit L2 norm; a non-finite or zero row is refused."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected an (N, D) array, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    bad = np.flatnonzero(~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0))
    if bad.size:
        raise ValueError(f"{name}: {bad.size} rows are zero or not finite (first: row {bad[0]}); drop them first")
    return x / norms


@dataclass
class SearchResult:
    """scores (Q, k) cosine similarities, best first; rows[q][j] the metadata dict of hit j of query q
    (``id`` and the index's other columns, plus ``row``: the vector's position in the index)."""

    scores: np.ndarray
    rows: list[list[dict[str, Any]]]


class Index:
    """Build with :meth:`build`, grow with :meth:`add`, read with :meth:`open`, query with :meth:`search`."""

    def __init__(self, index: Any, space: EmbeddingSpace, rows: Any, info: dict[str, Any]) -> None:
        self.index, self.space, self.rows, self.info = index, space, rows, info

    def __len__(self) -> int:
        return int(self.index.ntotal)

    # ------------------------------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        rows: dict[str, list],
        space: EmbeddingSpace,
        max_memory: int,
        recall_target: float = 0.95,
        k: int = 10,
        sample: int = 1000,
        seed: int = 0,
        allow_flat: bool = True,
    ) -> Index:
        """vectors (N, D), normalised here; rows: columns of N values each, ``id`` among them. The factory is the
        most exact that fits ``max_memory`` (:func:`plan_index`); an approximate index's ``nprobe`` is the smallest
        power of two whose recall@k on ``sample`` of the vectors (each query's own row left out) reaches
        ``recall_target``."""
        faiss = _faiss()
        x = normalised(vectors)
        n, d = x.shape
        if d != space.width:
            raise ValueError(f"vectors are {d} wide but the space says width {space.width}")
        table = _rows_table(rows, n)
        plan = plan_index(n, d, max_memory, allow_flat)
        started = time.perf_counter()
        index = faiss.index_factory(d, plan.factory, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            rng = np.random.default_rng(seed)
            train = x if n <= TRAIN_POINTS_PER_CELL * plan.nlist else x[rng.choice(n, TRAIN_POINTS_PER_CELL * plan.nlist, replace=False)]
            index.train(train)
        index.add(x)
        built_s = time.perf_counter() - started
        nprobe, tuning = (None, []) if plan.exact else tune_nprobe(index, x, recall_target, k, sample, seed)
        info = {"format": FORMAT, "version": VERSION, "space": space.to_dict(), "factory": plan.factory,
                "bytes_estimate": plan.bytes_estimate, "max_memory": max_memory, "count": n, "nprobe": nprobe,
                "recall_target": recall_target, "tuning": tuning, "build_seconds": round(built_s, 3)}
        log.info("index %s over %d vectors of width %d (estimated %.1f MiB)%s", plan.factory, n, d,
                 plan.bytes_estimate / 2**20, f", nprobe {nprobe}" if nprobe else "")
        return cls(index, space, table, info)

    def add(self, vectors: np.ndarray, rows: dict[str, list], space: EmbeddingSpace) -> None:
        """Append vectors (M, D) of the same space; the trained quantisers are kept, old rows keep their positions."""
        check_same_space(self.space, space)
        pa, _ = _arrow()
        x = normalised(vectors)
        table = _rows_table(rows, len(x))
        if table.schema.names != self.rows.schema.names:
            raise ValueError(f"new rows have columns {table.schema.names}, the index has {self.rows.schema.names}")
        self.index.add(x)
        self.rows = pa.concat_tables([self.rows, table.cast(self.rows.schema)])
        self.info["count"] = len(self)

    # ------------------------------------------------------------------------------------------ files
    def save(self, folder: str | os.PathLike) -> None:
        """Write the folder whole, then swap it in."""
        faiss = _faiss()
        _, pq = _arrow()
        with staged_dir(folder) as tmp:
            faiss.write_index(self.index, str(tmp / INDEX_FILE))
            pq.write_table(self.rows, tmp / ROWS_FILE)
            write_json_atomic(tmp / INFO_FILE, self.info)

    @classmethod
    def open(cls, folder: str | os.PathLike) -> Index:
        faiss = _faiss()
        _, pq = _arrow()
        folder = Path(folder)
        missing = [n for n in (INFO_FILE, INDEX_FILE, ROWS_FILE) if not (folder / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} is not a tips index (no {', '.join(missing)}): build one with tips-index")
        try:
            info = json.loads((folder / INFO_FILE).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{folder / INFO_FILE}: not JSON ({e}); rebuild the index with tips-index") from None
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise ValueError(f"{folder / INFO_FILE}: not a tips index description (format {FORMAT!r} expected)")
        space = EmbeddingSpace.from_dict(info.get("space") or {}, str(folder / INFO_FILE))
        index = faiss.read_index(str(folder / INDEX_FILE))
        rows = pq.read_table(folder / ROWS_FILE)
        if index.ntotal != rows.num_rows or index.d != space.width:
            raise ValueError(f"{folder}: {INDEX_FILE} holds {index.ntotal} vectors of width {index.d}, {ROWS_FILE} "
                             f"{rows.num_rows} rows and the space width {space.width}: rebuild the index")
        if info.get("nprobe"):
            faiss.extract_index_ivf(index).nprobe = int(info["nprobe"])
        return cls(index, space, rows, info)

    # ------------------------------------------------------------------------------------------ search
    def search(self, queries: np.ndarray, k: int, space: EmbeddingSpace) -> SearchResult:
        """queries (Q, D) embedded in ``space`` (refused unless it is the index's) → the top ``k`` rows each."""
        check_same_space(self.space, space)
        scores, positions = self.index.search(normalised(queries, "queries"), min(k, len(self)))
        kept = [[int(p) for p in row if p >= 0] for row in positions]
        records = iter(self.rows.take([p for row in kept for p in row]).to_pylist())
        hits = [[{**next(records), "row": p} for p in row] for row in kept]
        return SearchResult(scores=scores, rows=hits)


def _rows_table(rows: dict[str, list], n: int) -> Any:
    pa, _ = _arrow()
    if "id" not in rows:
        raise ValueError("rows need an 'id' column")
    bad = {c: len(v) for c, v in rows.items() if len(v) != n}
    if bad:
        raise ValueError(f"row columns must have one value per vector ({n}); got {bad}")
    return pa.table({c: list(v) for c, v in rows.items()})


def tune_nprobe(index: Any, x: np.ndarray, target: float, k: int, sample: int, seed: int) -> tuple[int, list[dict]]:
    """The smallest power-of-two nprobe whose recall@k against exact search reaches ``target``.

    x (N, D) normalised, already in the index. Queries are ``sample`` of its rows; each query's own row is left out
    of both the exact and the approximate top k (it would be found trivially). Returns (nprobe, one dict per nprobe
    tried: nprobe, recall, ms per query).
    """
    faiss = _faiss()
    ivf = faiss.extract_index_ivf(index)
    rng = np.random.default_rng(seed + 1)
    picked = rng.choice(len(x), min(sample, len(x)), replace=False)
    queries = x[picked]
    _, exact = faiss.knn(queries, x, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    truth = [[p for p in row if p != own][:k] for row, own in zip(exact, picked)]
    tried, nprobe = [], 1
    while True:
        ivf.nprobe = nprobe
        started = time.perf_counter()
        _, found = index.search(queries, k + 1)
        ms = (time.perf_counter() - started) * 1000 / len(queries)
        hits = [len(set(t) & set([p for p in row if p != own][:k])) for t, row, own in zip(truth, found, picked)]
        recall = float(np.sum(hits) / max(1, sum(len(t) for t in truth)))
        tried.append({"nprobe": nprobe, "recall": round(recall, 4), "ms_per_query": round(ms, 4)})
        if recall >= target or nprobe >= ivf.nlist:
            break
        nprobe = min(nprobe * 2, ivf.nlist)
    if tried[-1]["recall"] < target:
        log.warning("recall@%d %.3f at nprobe=%d (every cell) is under the target %.3f: the quantiser loses more "
                    "than the target allows; raise --max-memory", k, tried[-1]["recall"], nprobe, target)
    return nprobe, tried
