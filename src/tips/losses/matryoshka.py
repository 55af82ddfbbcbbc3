"""Matryoshka representation learning: a contrastive loss on nested prefixes of the embeddings.

The image and text embeddings (B, D) are truncated to their first d features for each d in ``dims`` and the
wrapped loss (:class:`ContrastiveLoss`, which L2-normalises each prefix) is applied to each; the result is
Σ_k w_k·L(x[:, :d_k]) / Σ_k w_k, so with one width it equals the wrapped loss and adding widths keeps its
scale. List the full width D in ``dims`` to keep the full embedding trained.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .contrastive import ContrastiveLoss


class MatryoshkaContrastiveLoss(nn.Module):
    """Wraps ``loss`` over prefixes ``dims`` (e.g. ``(768, 384, 192, 96)``) with ``weights`` (default all 1)."""

    def __init__(self, loss: ContrastiveLoss, dims: Sequence[int], weights: Sequence[float] | None = None) -> None:
        super().__init__()
        dims = [int(d) for d in dims]
        if not dims or any(d < 1 for d in dims) or len(set(dims)) != len(dims):
            raise ValueError(f"loss.matryoshka_dims must be distinct positive widths, got {dims}")
        weights = [1.0] * len(dims) if weights is None else [float(w) for w in weights]
        if len(weights) != len(dims):
            raise ValueError(f"{len(weights)} Matryoshka weights for {len(dims)} widths {dims}: give one per width")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"Matryoshka weights must be >= 0 with a positive sum, got {weights}")
        self.loss, self.dims, self.weights = loss, dims, weights

    def forward(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """image, text (B, D) not normalised → (weighted mean loss, {"contrastive@<d>": loss at width d})."""
        width = image.shape[-1]
        if max(self.dims) > width:
            raise ValueError(f"loss.matryoshka_dims {self.dims} exceed the embedding width {width}")
        total = image.new_zeros((), dtype=torch.float32)
        stats: dict[str, torch.Tensor] = {}
        for d, w in zip(self.dims, self.weights):
            term = self.loss(image[:, :d], text[:, :d], logit_scale, logit_bias)
            stats[f"contrastive@{d}"] = term.detach()
            total = total + w * term
        return total / sum(self.weights), stats
