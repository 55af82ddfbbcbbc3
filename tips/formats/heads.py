"""``tips.load_head``: one entry point over every DPT head layout (official Scenic zip, legacy flat ``.npz``,
ours, transformers' ``tipsv2_dpt``), each read by its own module."""

from __future__ import annotations

import os
from pathlib import Path

from . import hub
from ..models.dpt import DenseHead
from .common import CONFIG_NAME
from .dpt import FORMAT, is_pretrained_head, load_official_head, load_pretrained_head
from .hf_dpt import is_transformers_dpt, load_transformers_head


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
        p = hub.cached_file(url)
    if p.is_dir():
        if is_pretrained_head(p):
            return load_pretrained_head(p, task)
        if is_transformers_dpt(p):
            return load_transformers_head(p, task)
        raise FileNotFoundError(f"{p}: folder holds no DPT head ({CONFIG_NAME} with format {FORMAT!r}, or a "
                                "transformers tipsv2_dpt folder)")
    if p.suffix == ".safetensors" and is_pretrained_head(p.parent):
        return load_pretrained_head(p.parent, task)
    if p.suffix == ".safetensors" and is_transformers_dpt(p.parent):
        return load_transformers_head(p.parent, task)
    if p.suffix in (".zip", ".npz"):
        return load_official_head(p, task)
    raise ValueError(f"{p}: unsupported head file {p.suffix!r} (expected a Scenic .zip, a flat .npz, our folder "
                     "or a transformers tipsv2_dpt folder)")
