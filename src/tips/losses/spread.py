"""Spread-out regularisers on a batch of embeddings: EmbeddingGemma's GOR and DINOv2's KoLeo.

Both act on one set of embeddings x (B, D) (e.g. CLS1, CLS2 or text), L2-normalised here, in fp32. Each
returns ``(loss, stats)``: a scalar to weight and add, and detached scalars to log.

- ``gor`` (global orthogonal regulariser): for uniformly spread unit vectors in D dimensions the cosine c
  between two different ones has mean 0 and second moment 1/D. With M1 = mean c and M2 = mean c² over the
  non-matching pairs (i ≠ j), L = M1² + max(0, M2 − 1/D). Rows of this rank are scored against the rows of
  every rank (gathered with grad), so pairs span the global batch. M1 and M2 are means, so their global values
  are the means of the per-rank ones; L is not linear in them, so each rank returns its first-order expansion
  around the global values, L(M̄) + ∇L(M̄)·(M_r − M̄): its value averages over ranks to L(M̄) and its gradient,
  averaged by DDP, is the gradient of the global loss.
- ``koleo``: L = −(1/B) Σ_i log(‖x̂_i − x̂_nn(i)‖ + eps), nn(i) the nearest other row by dot product; per
  rank, as DINOv2 computes it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import all_reduce_, fp32_region, rank_and_world
from .contrastive import gather_with_grad

SPREAD_KINDS = ("none", "gor", "koleo")


def _check(x: torch.Tensor, name: str) -> None:
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"{name} needs embeddings (B, D) with B >= 2, got {tuple(x.shape)}")


class GlobalOrthogonalRegularizer(nn.Module):
    """M1² + max(0, M2 − 1/D) over the cosines of non-matching pairs; see the module docstring.

    rank / world_size: default to ``torch.distributed`` at call time (0 / 1 when not initialised).
    """

    def __init__(self, rank: int | None = None, world_size: int | None = None) -> None:
        super().__init__()
        self.rank, self.world_size = rank, world_size

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x (B, D), same B on every rank → (loss scalar fp32, {"gor_mean_cos", "gor_second_moment"})."""
        _check(x, "GOR")
        rank, world = rank_and_world(self.rank, self.world_size)
        with fp32_region(x):
            x = F.normalize(x.float(), dim=-1)
            batch, dim = x.shape
            cos = x @ gather_with_grad(x).t()  # (B, world·B)
            rows = torch.arange(batch, device=x.device)
            off_diagonal = torch.ones_like(cos, dtype=torch.bool)
            off_diagonal[rows, rows + rank * batch] = False
            c = cos[off_diagonal]  # (B·(world·B − 1),)
            m1, m2 = c.mean(), c.square().mean()  # this rank's moments
            g1, g2 = (all_reduce_(torch.stack([m1, m2]).detach()) / world).unbind()  # global moments
            excess = g2 - 1.0 / dim
            loss = g1.square() + F.relu(excess) + 2 * g1 * (m1 - g1) + (excess > 0).float() * (m2 - g2)
        return loss, {"gor_mean_cos": g1, "gor_second_moment": g2}


class KoLeoLoss(nn.Module):
    """Kozachenko–Leonenko entropy estimator: −mean log distance to the nearest neighbour in the batch."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x (B, D) → (loss scalar fp32, {"koleo_nn_distance": mean, "koleo_min_distance": min})."""
        _check(x, "KoLeo")
        with fp32_region(x):
            x = F.normalize(x.float(), dim=-1)
            with torch.no_grad():
                dots = x @ x.t()  # (B, B)
                dots.fill_diagonal_(-2.0)  # below any cosine, so a row is never its own neighbour
                nearest = dots.argmax(dim=1)  # (B,)
            distance = (x - x[nearest]).norm(dim=-1)  # (B,)
            loss = -torch.log(distance + self.eps).mean()
        d = distance.detach()
        return loss, {"koleo_nn_distance": d.mean(), "koleo_min_distance": d.min()}


def build_spread_loss(kind: str, rank: int | None = None, world_size: int | None = None) -> nn.Module | None:
    """``loss.spread``: ``"none"`` → None, ``"gor"`` → :class:`GlobalOrthogonalRegularizer`, ``"koleo"`` → :class:`KoLeoLoss`."""
    if kind not in SPREAD_KINDS:
        raise ValueError(f"loss.spread must be one of {SPREAD_KINDS}, got {kind!r}")
    if kind == "gor":
        return GlobalOrthogonalRegularizer(rank, world_size)
    if kind == "koleo":
        return KoLeoLoss()
    return None
