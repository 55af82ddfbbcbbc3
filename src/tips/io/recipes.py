"""Bundled recipes: the YAML files under ``tips/configs/`` (pretraining, fine-tuning, probes, model sizes,
accelerate launch files) travel in the wheel, and ``--config NAME`` finds one from any folder.

A NAME that is an existing file is that file; otherwise ``pretrain/demo_cpu``, ``pretrain/demo_cpu.yaml``,
``configs/pretrain/demo_cpu.yaml`` (the path inside a clone) and a unique stem such as ``demo_cpu`` all name
the bundled ``tips/configs/pretrain/demo_cpu.yaml``.
"""

from __future__ import annotations

import os
from pathlib import Path

RECIPES = Path(__file__).resolve().parents[1] / "configs"


def list_recipes() -> list[str]:
    """Every bundled recipe as ``folder/stem`` (e.g. ``pretrain/demo_cpu``), sorted."""
    return sorted(p.relative_to(RECIPES).with_suffix("").as_posix() for p in RECIPES.rglob("*.yaml"))


def resolve_recipe(name: str | os.PathLike) -> Path:
    """The file ``name`` names: itself when it exists, else the bundled recipe it names; else a one-line error."""
    path = Path(name)
    if path.is_file():
        return path
    key = path.as_posix().removesuffix(".yaml").removesuffix(".yml")
    for prefix in ("tips/configs/", "configs/"):
        key = key.removeprefix(prefix)
    known = list_recipes()
    if key in known:
        return RECIPES / f"{key}.yaml"
    by_stem = [k for k in known if k.rsplit("/", 1)[-1] == key]
    if len(by_stem) == 1:
        return RECIPES / f"{by_stem[0]}.yaml"
    hint = f"one of {', '.join(by_stem)}" if by_stem else "list them with --list-configs"
    raise FileNotFoundError(f"config {name}: no such file and not a bundled recipe ({hint})")


def describe_recipes() -> str:
    """The ``--list-configs`` text: one bundled recipe per line with its first comment line."""
    lines = []
    for key in list_recipes():
        first = (RECIPES / f"{key}.yaml").read_text(encoding="utf-8").splitlines()[:1]
        note = first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""
        lines.append(f"{key:36s} {note}".rstrip())
    return "\n".join(lines)
