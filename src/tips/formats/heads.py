"""``tips.load_head``: one entry point over every DPT head layout (official Scenic zip, legacy flat ``.npz``,
ours, transformers' ``tipsv2_dpt``), each read by its own module."""

from __future__ import annotations

import os
from pathlib import Path

from . import hub
from ..models.dpt import DenseHead
from .detect import detect
from .registry import HEAD_READERS


def load_head(path: str | os.PathLike, task: str | None = None) -> DenseHead:
    """Load a DPT head in eval mode from any layout.

    path: an official Scenic zip (``tips_v2_b14_depth_dpt.zip``), a legacy flat ``.npz``, our folder (or its
        ``model.safetensors``), a transformers ``tipsv2_dpt`` folder (:mod:`tips.formats.hf_dpt`), or an
        official name such as ``"tips-v2-b14-depth"`` (fetched on request, see :mod:`tips.formats.hub`).
    task: "segmentation" / "depth" / "normals" to check what the file holds (or to pick one head of a file
        holding several).
    """
    p = Path(path)
    if not p.exists():
        url = hub.resolve_head_name(str(path))
        if url is None:
            raise FileNotFoundError(
                f"{path}: no such file or folder, and not an official head name ({', '.join(sorted(hub.OFFICIAL_HEADS))})"
            )
        p = hub.cached_file(url, name=str(path))
    layout = detect(p)
    if "head" not in layout.holds:
        raise ValueError(f"{p}: a model ({layout.format} layout), not a DPT head; read it with tips.load")
    folder_kind = layout.format in ("pretrained", "transformers")
    return HEAD_READERS[layout.format](p.parent if folder_kind and p.is_file() else p, task)
