"""Which writer handles which ``tips-export --format``: one table, resolved only when a format is used.

Entries are ``"module:function"`` strings so that this module imports nothing from ``tips`` (the model class
imports it for ``TIPS.save_pretrained(format=...)``, and the writers import the model class: no cycle).

Model writers are called ``writer(model, out, **options) -> Path | dict[str, Path]``; head writers
``writer(head, out, model=None, **options)``. A new format registers itself with one line here (or, from
outside the package, with :func:`register_writer`).
"""

from __future__ import annotations

import importlib
from typing import Callable

MODEL_WRITERS: dict[str, str] = {
    "official": "tips.formats.official:export_official",
    "pretrained": "tips.formats.pretrained:save_pretrained",
    "transformers": "tips.formats.hf:export_transformers",
    "timm": "tips.formats.timm:export_timm",
    "onnx": "tips.formats.onnx:write_onnx",
}
HEAD_WRITERS: dict[str, str] = {
    "official": "tips.formats.dpt:export_official_head",
    "pretrained": "tips.formats.dpt:save_pretrained_head",
    "transformers": "tips.formats.hf_dpt:export_transformers_dpt",
}


def register_writer(fmt: str, target: str | Callable, kind: str = "model") -> None:
    """Make ``tips-export --format fmt`` (``kind="model"``) or ``--head ... --format fmt`` (``"head"``) call ``target``."""
    table = {"model": MODEL_WRITERS, "head": HEAD_WRITERS}.get(kind)
    if table is None:
        raise ValueError(f"writer kind must be 'model' or 'head', got {kind!r}")
    table[fmt] = target  # type: ignore[assignment]


def formats(kind: str = "model") -> list[str]:
    return sorted(MODEL_WRITERS if kind == "model" else HEAD_WRITERS)


def get_writer(fmt: str, kind: str = "model") -> Callable:
    """The writer function registered for ``fmt``; an unknown format raises an error listing the known ones."""
    table = MODEL_WRITERS if kind == "model" else HEAD_WRITERS
    if fmt not in table:
        what = "model" if kind == "model" else "head (--head)"
        raise ValueError(f"no {what} writer for format {fmt!r}; known: {sorted(table) or 'none yet'}")
    target = table[fmt]
    if callable(target):
        return target
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)
