"""Average checkpoints of one architecture into one (a "model soup", as EmbeddingGemma merges checkpoints trained
on different data mixtures); ``tips-merge`` runs :func:`merge` and writes the result.

Each checkpoint is a ``tips.save`` folder, a training checkpoint folder (its ``export/`` is used) or anything
else :func:`tips.load` reads (without ``with_heads``). Every floating tensor is the weighted mean of the
inputs (weights normalised to sum 1; default equal). The logit scales are log(1/τ), so averaging them averages
the temperatures in log space (a weighted geometric mean of τ). Checkpoints whose configs, tensor names or
shapes differ are refused, naming the first difference.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file

from ..formats.common import WEIGHTS_NAME
from ..formats.loading import load, model_folder
from ..models.tips import TIPS

HEADS_PREFIX = "heads."


class MergeMismatch(ValueError):
    """Two checkpoints do not share an architecture; the message names the first differing field or tensor."""


def resolve_checkpoint(path: str | os.PathLike) -> Path | str:
    """A training checkpoint folder → its ``export/``, a run folder → its ``final/``; anything else is returned
    for :func:`tips.load`."""
    p = model_folder(path)
    return p if p.exists() else str(path)


def read_heads(source: Path | str) -> dict[str, torch.Tensor]:
    """The ``heads.*`` tensors a training export stores beside the towers; raises when there are none."""
    weights = Path(source) / WEIGHTS_NAME
    heads = {k: v for k, v in load_file(str(weights)).items() if k.startswith(HEADS_PREFIX)} if weights.is_file() else {}
    if not heads:
        raise MergeMismatch(f"{source}: --with-heads, but this checkpoint holds no heads.* tensors "
                            f"(only training checkpoints' export/ folders carry the distillation heads)")
    return heads


def _first_config_difference(a: dict, b: dict, prefix: str = "") -> str | None:
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            found = _first_config_difference(va, vb, f"{prefix}{key}.")
            if found:
                return found
        elif va != vb:
            return f"config {prefix}{key}: {va!r} vs {vb!r}"
    return None


def check_same_layout(ref: dict[str, torch.Tensor], other: dict[str, torch.Tensor], names: tuple[str, str]) -> None:
    """Raise :class:`MergeMismatch` at the first tensor (in ``ref`` order) missing, extra, or of another shape/dtype."""
    for key, tensor in ref.items():
        if key not in other:
            raise MergeMismatch(f"{names[1]} has no tensor {key!r} (present in {names[0]})")
        if other[key].shape != tensor.shape or other[key].dtype != tensor.dtype:
            raise MergeMismatch(f"tensor {key!r}: {names[0]} has {tuple(tensor.shape)} {tensor.dtype}, "
                                f"{names[1]} has {tuple(other[key].shape)} {other[key].dtype}")
    extra = [k for k in other if k not in ref]
    if extra:
        raise MergeMismatch(f"{names[1]} has tensor {extra[0]!r} that {names[0]} lacks")


def average(states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Weighted mean (weights already normalised) of each floating tensor, in float64, cast back; others must agree."""
    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            acc = sum(w * s[key].double() for w, s in zip(weights, states))
            out[key] = acc.to(first.dtype)
        else:
            if any(not torch.equal(s[key], first) for s in states[1:]):
                raise MergeMismatch(f"non-floating tensor {key!r} differs between checkpoints and cannot be averaged")
            out[key] = first.clone()
    return out


def normalise_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise ValueError(f"--weights gives {len(weights)} values for {count} checkpoints: give one per checkpoint")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"--weights must be >= 0 with a positive sum, got {list(weights)}")
    return [w / sum(weights) for w in weights]


def merge(
    checkpoints: Sequence[str | os.PathLike],
    weights: Sequence[float] | None = None,
    with_heads: bool = False,
) -> tuple[TIPS, dict[str, torch.Tensor]]:
    """Average ``checkpoints`` → (model with the averaged towers and temperatures, averaged heads or {})."""
    if len(checkpoints) < 2:
        raise ValueError(f"tips-merge needs at least two checkpoints, got {len(checkpoints)}")
    w = normalise_weights(weights, len(checkpoints))
    sources = [resolve_checkpoint(c) for c in checkpoints]
    models = [load(s) for s in sources]
    names = [str(s) for s in sources]
    ref = models[0]
    for name, model in zip(names[1:], models[1:]):
        check_same_layout(ref.state_dict(), model.state_dict(), (names[0], name))
        diff = _first_config_difference(ref.cfg.to_dict(), model.cfg.to_dict())  # e.g. heads, activation
        if diff:
            raise MergeMismatch(f"{names[0]} and {name} differ in architecture, {diff}")
        if model.has_temperature != ref.has_temperature:
            raise MergeMismatch(f"{names[0]} and {name} differ in which temperatures they carry "
                                f"({ref.has_temperature} vs {model.has_temperature})")
        kinds = [getattr(m.tokenizer, "kind", None) for m in (ref, model)]
        if kinds[0] != kinds[1]:
            raise MergeMismatch(f"{names[0]} and {name} carry different tokenizers ({kinds[0]} vs {kinds[1]})")
    ref.load_state_dict(average([m.state_dict() for m in models], w))
    heads: dict[str, torch.Tensor] = {}
    if with_heads:
        all_heads = [read_heads(s) for s in sources]
        for name, h in zip(names[1:], all_heads[1:]):
            check_same_layout(all_heads[0], h, (names[0], name))
        heads = average(all_heads, w)
    return ref, heads
