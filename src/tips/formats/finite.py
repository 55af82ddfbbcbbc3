"""Non-finite weights, found with one host sync: what ``tips.load`` warns about and what training never saves."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Iterable

import torch

log = logging.getLogger("tips")


class NonFiniteWeightsWarning(UserWarning):
    """A loaded checkpoint holds NaN or infinite values; the model's outputs will be NaN."""


def nonfinite_names(tensors: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the floating tensors holding a NaN or an infinity. One ``isfinite`` per tensor on its device and a
    single host read for all of them; a sharded (DTensor) tensor is checked on this rank's shard."""
    names: list[str] = []
    flags: list[torch.Tensor] = []
    for name, tensor in tensors:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        if local.is_meta or not (local.is_floating_point() or local.is_complex()) or local.numel() == 0:
            continue
        names.append(name)
        flags.append(torch.isfinite(local.detach()).all().reshape(1).to(flags[0].device if flags else local.device))
    if not flags:
        return []
    finite = torch.cat(flags).tolist()
    return [n for n, ok in zip(names, finite) if not ok]


def describe(names: list[str], limit: int = 5) -> str:
    """``a, b, c … (12 tensors)``: a few names of a long list."""
    shown = ", ".join(names[:limit])
    return f"{shown} … ({len(names)} tensors)" if len(names) > limit else shown


def warn_nonfinite(model: torch.nn.Module, source: str | os.PathLike) -> list[str]:
    """Warn (naming the tensors) when ``model``, loaded from ``source``, holds non-finite weights; returns them."""
    bad = nonfinite_names(model.state_dict().items())
    if bad:
        warnings.warn(f"{source}: {len(bad)} weight tensors are not finite (NaN or inf): {describe(bad)}; the model's "
                      "outputs will be NaN (a diverged training run? load an earlier checkpoint)",
                      NonFiniteWeightsWarning, stacklevel=3)
    return bad
