"""Writes one extraction chunk: its safetensors file and the npy/parquet files index tools read.

Per chunk ``i`` (rows in encoding order; ``ids`` names each):

- ``features-{i:05d}.safetensors``: ``cls_alt`` (N, D), ``cls_syn`` (N, D), optionally ``patch_tokens``
  (N, h, w, D), or ragged ``patch_tokens.<row>`` (h, w, D) with keep-aspect;
- ``img_emb/img_emb_{i}.npy``, ``img_emb_syn/img_emb_syn_{i}.npy`` and ``metadata/metadata_{i}.parquet``
  (id, source) — the layout of :mod:`tips.inference.embedding_files`;
- with ``regions`` K: ``region_emb/region_emb_{i}.npy`` (N·K², D) and ``region_metadata/region_metadata_{i}.parquet``
  (id, source, cell, x0, y0, x1, y1).

Memory is one chunk's rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from ..io.atomic import atomic_path
from .embedding_files import write_rows, write_vectors
from .regions import region_boxes

NUMPY_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.float32}


def chunk_file(chunk: int) -> str:
    return f"features-{chunk:05d}.safetensors"


class ChunkWriter:
    """Collects one chunk's rows (:meth:`add`), then writes every file of the chunk at once (:meth:`close`)."""

    def __init__(self, out_dir: Path, chunk: int, save_dtype: torch.dtype, metadata: dict[str, str], ragged: bool,
                 sources: dict[str, str], regions: int | None = None, patch_dtype: torch.dtype | None = None) -> None:
        self.out_dir, self.chunk, self.save_dtype = out_dir, chunk, save_dtype
        self.patch_dtype = patch_dtype or save_dtype  # upsampled patch tokens are stored as float16
        self.metadata, self.ragged, self.sources, self.regions = metadata, ragged, sources, regions
        self.ids: list[str] = []
        self.cls_alt: list[torch.Tensor] = []
        self.cls_syn: list[torch.Tensor] = []
        self.patches: list[torch.Tensor] = []
        self.region_rows: list[torch.Tensor] = []
        self.region_boxes: list[list[list[float]]] = []  # per image: K² boxes (its grid may differ with keep-aspect)
        self.shapes: dict[str, tuple[int, ...]] = {}

    def add(self, ids: list[str], cls_alt: torch.Tensor, cls_syn: torch.Tensor, patches: torch.Tensor | None,
            regions: torch.Tensor | None = None, grid: tuple[int, int] | None = None) -> None:
        """cls_alt, cls_syn (B, D); patches (B, h, w, D) or None; regions (B, K², D) over a patch ``grid`` (h, w)."""
        self.ids += ids
        self.cls_alt.append(cls_alt)
        self.cls_syn.append(cls_syn)
        if patches is not None:
            patches = patches.to(self.patch_dtype)  # now: a chunk of upsampled tokens is held in float16
            self.patches += list(patches) if self.ragged else [patches]
        if regions is not None:
            self.region_rows.append(regions)
            self.region_boxes += [region_boxes(*grid, self.regions).tolist()] * len(ids)

    def close(self) -> list[Path]:
        """Write the chunk's files (nothing for an empty chunk); returns them."""
        if not self.ids:
            return []
        cast = lambda t: t.to(self.save_dtype).contiguous()  # noqa: E731
        cls_alt, cls_syn = torch.cat(self.cls_alt), torch.cat(self.cls_syn)
        tensors = {"cls_alt": cast(cls_alt), "cls_syn": cast(cls_syn)}
        if self.patches:
            cast_patches = lambda t: t.to(self.patch_dtype).contiguous()  # noqa: E731
            if self.ragged:
                tensors.update({f"patch_tokens.{i:06d}": cast_patches(p) for i, p in enumerate(self.patches)})
            else:
                tensors["patch_tokens"] = cast_patches(torch.cat(self.patches))
        self.shapes = {k: tuple(v.shape[1:]) for k, v in tensors.items() if not k.startswith("patch_tokens.")}
        if self.ragged and self.patches:
            self.shapes["patch_tokens.<row>"] = tuple(self.patches[0].shape[-1:])
        path = self.out_dir / chunk_file(self.chunk)
        meta = {**self.metadata, "count": str(len(self.ids)), "chunk": str(self.chunk),
                "ragged_patch_tokens": str(self.ragged)}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        np_dtype = NUMPY_DTYPES.get(self.save_dtype, np.float32)
        sources = [self.sources.get(i, i) for i in self.ids]
        files = [path,
                 write_vectors(self.out_dir, "cls_alt", self.chunk, cls_alt.float().numpy().astype(np_dtype)),
                 write_vectors(self.out_dir, "cls_syn", self.chunk, cls_syn.float().numpy().astype(np_dtype)),
                 write_rows(self.out_dir, "cls_alt", self.chunk, {"id": self.ids, "source": sources})]
        if self.region_rows:
            k = self.regions
            vectors = torch.cat(self.region_rows)  # (N, K², D)
            files.append(write_vectors(self.out_dir, "region", self.chunk,
                                       vectors.reshape(-1, vectors.shape[-1]).float().numpy().astype(np_dtype)))
            rows = {"id": [i for i in self.ids for _ in range(k * k)], "source": [s for s in sources for _ in range(k * k)],
                    "cell": [c for _ in self.ids for c in range(k * k)]}
            rows |= {name: [b[j] for boxes in self.region_boxes for b in boxes] for j, name in enumerate(("x0", "y0", "x1", "y1"))}
            files.append(write_rows(self.out_dir, "region", self.chunk, rows))
        return files
