"""Which faiss index a collection gets: the most exact one that fits the memory budget.

Inner product on L2-normalised vectors (cosine). The order, most to least exact:

- ``Flat``: every vector in float32, exact (n·d·4 bytes);
- ``IVF{nlist},SQ8``: inverted lists over k-means cells, each vector in 8-bit scalar quantisation (n·d bytes);
- ``OPQ{m},IVF{nlist},PQ{m}``: a learnt rotation, then m bytes per vector (product quantisation).

``nlist`` follows faiss's guideline of about 4·√n cells, with at least 39 training points per cell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ID_BYTES = 8  # faiss stores an int64 id per vector in inverted lists
PQ_BYTES = (64, 48, 32, 24, 16, 8)  # bytes per vector tried for PQ, largest first


@dataclass(frozen=True)
class IndexPlan:
    factory: str  # a faiss index_factory string
    bytes_estimate: int  # the index's size in memory, roughly
    exact: bool
    nlist: int | None  # inverted-list cells (None for Flat)


def parse_memory(text: str | int) -> int:
    """``"1GB"``, ``"512MB"``, ``"2g"`` or a byte count → bytes (powers of 1024)."""
    if isinstance(text, int):
        return text
    units = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30, "gb": 2**30, "t": 2**40, "tb": 2**40}
    s = text.strip().lower()
    number = s.rstrip("kmgtb")
    unit = s[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in units or not math.isfinite(value) or value <= 0:
        raise ValueError(f"memory {text!r}: expected a size such as 1GB, 512MB or 2000000000")
    return int(value * units[unit])


def nlist_for(n: int) -> int:
    """About 4·√n cells, and at least 39 training vectors per cell."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def plan_index(n: int, d: int, max_memory: int, allow_flat: bool = True) -> IndexPlan:
    """The most exact index for ``n`` vectors of width ``d`` whose estimated size stays within ``max_memory`` bytes
    (quantised even when Flat would fit, with ``allow_flat=False``: region indexes hold K² vectors per image)."""
    if n < 1 or d < 1:
        raise ValueError(f"cannot index {n} vectors of width {d}")
    flat = n * d * 4
    if flat <= max_memory and allow_flat:
        return IndexPlan("Flat", flat, True, None)
    nlist = nlist_for(n)
    centroids = nlist * d * 4
    sq8 = n * (d + ID_BYTES) + centroids
    if sq8 <= max_memory:
        return IndexPlan(f"IVF{nlist},SQ8", sq8, False, nlist)
    for m in PQ_BYTES:
        if d % m:
            continue
        pq = n * (m + ID_BYTES) + centroids + d * d * 4 + 256 * d * 4
        if pq <= max_memory:
            return IndexPlan(f"OPQ{m},IVF{nlist},PQ{m}", pq, False, nlist)
    smallest = n * (8 + ID_BYTES) + centroids
    raise ValueError(f"{n} vectors of width {d} need about {smallest / 2**30:.2f} GiB even at 8 bytes each; "
                     f"--max-memory {max_memory / 2**30:.2f} GiB is too small: raise it or index fewer vectors")
