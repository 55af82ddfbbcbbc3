"""Which writer handles which ``--format`` and which reader each detected layout calls: ``MODEL_WRITERS`` /
``HEAD_WRITERS`` and, mirroring them, ``MODEL_READERS`` / ``HEAD_READERS``; :func:`save`, the one call that writes
a model or a head. (ONNX is written only: an inference graph, not a checkpoint.)

Model writers are called ``writer(model, out, **options) -> Path | dict[str, Path]``; head writers
``writer(head, out, model=None, **options)``. A new format registers itself with one line here (or, from
outside the package, with :func:`register_writer`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from ..models.dpt import DenseHead
from ..models.tips import TIPS
from . import dpt, hf, hf_dpt, official, pretrained, timm
from .dpt import export_official_head, save_pretrained_head
from .hf import export_transformers
from .hf_dpt import export_transformers_dpt
from .official import export_official
from .onnx import write_onnx
from .sentence_transformers import write_sentence_transformers
from .timm import export_timm

MODEL_WRITERS: dict[str, Callable[..., Any]] = {
    "official": export_official,
    "pretrained": pretrained.save_pretrained,
    "transformers": export_transformers,
    "timm": export_timm,
    "onnx": write_onnx,
    "sentence-transformers": write_sentence_transformers,
}
HEAD_WRITERS: dict[str, Callable[..., Any]] = {
    "official": export_official_head,
    "pretrained": save_pretrained_head,
    "transformers": export_transformers_dpt,
}

# Readers: model readers are called ``reader(path, text=None, heads=None) -> TIPS``; head readers
# ``reader(path, task=None) -> DenseHead``. Each compares what a config or sidecar says with the weights' headers
# before it builds anything (tips.formats.common.read_checked).
MODEL_READERS: dict[str, Callable[..., Any]] = {
    "official": official.read,
    "pretrained": lambda path, text=None, heads=None: pretrained.read(_no_options(path, text=text, heads=heads)),
    "transformers": hf.read,
    "timm": timm.read,
    "sentence-transformers": hf.read,  # our transformers folder with sentence-transformers' files beside it
}
HEAD_READERS: dict[str, Callable[..., Any]] = {
    "official": dpt.read_official,
    "pretrained": dpt.read_pretrained,
    "transformers": hf_dpt.read,
}


def _no_options(path: Any, **options: Any) -> Any:
    given = [k for k, v in options.items() if v]
    if given:
        raise ValueError(f"{path}: our folder holds its own architecture; {given[0]}= does not apply")
    return path


def register_writer(fmt: str, writer: Callable[..., Any], kind: str = "model") -> None:
    """Make ``tips-export --format fmt`` (``kind="model"``) or ``--head ... --format fmt`` (``"head"``) call ``writer``."""
    table = {"model": MODEL_WRITERS, "head": HEAD_WRITERS}.get(kind)
    if table is None:
        raise ValueError(f"writer kind must be 'model' or 'head', got {kind!r}")
    table[fmt] = writer


def formats(kind: str = "model") -> list[str]:
    return sorted(MODEL_WRITERS if kind == "model" else HEAD_WRITERS)


def get_writer(fmt: str, kind: str = "model") -> Callable[..., Any]:
    """The writer function registered for ``fmt``; an unknown format raises an error listing the known ones."""
    table = MODEL_WRITERS if kind == "model" else HEAD_WRITERS
    if fmt not in table:
        what = "model" if kind == "model" else "head (--head)"
        raise ValueError(f"no {what} writer for format {fmt!r}; known: {sorted(table) or 'none yet'}")
    return table[fmt]


def save(obj: TIPS | DenseHead, out: str | os.PathLike, format: str = "pretrained", **options: Any) -> Path | dict[str, Path]:
    """Write a model or a DPT head in ``format`` (default ours: a folder ``tips.load`` / ``tips.load_head`` reads).

    format: ``"pretrained"``, ``"official"``, ``"transformers"``, ``"timm"``, ``"onnx"`` (models) or any registered
    with :func:`register_writer`; ``options`` go to that writer (``name=`` for ``"official"``, ``model=`` for a
    head in the transformers layout). Returns the folder, or a dict of the files written.
    """
    if isinstance(obj, DenseHead):
        return get_writer(format, "head")(obj, out, **options)
    if isinstance(obj, TIPS):
        return get_writer(format, "model")(obj, out, **options)
    raise TypeError(f"tips.save writes a TIPS model or a DenseHead, got {type(obj).__name__}")


def save_pretrained(obj: TIPS | DenseHead, directory: str | os.PathLike) -> Path:
    """``tips.save(obj, directory)``: our folder for a model or a DPT head (``tips.load`` / ``tips.load_head`` read it)."""
    if not isinstance(obj, (TIPS, DenseHead)):
        raise TypeError(f"tips.save_pretrained writes a TIPS model or a DenseHead, got {type(obj).__name__}; "
                        f"for other formats use tips.save(obj, out, format=...)")
    return save(obj, directory, "pretrained")
